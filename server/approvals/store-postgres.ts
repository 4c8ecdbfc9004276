import { createHash } from 'node:crypto';
import pg from 'pg';
import { connectFailure } from '../../tools/postgres/check.js';
import { connectionConfig, type ResolvedPostgresTarget } from '../../tools/postgres/pool.js';
import { log } from '../kernel/log.js';
import { head } from '../kernel/text.js';
import type { ApprovalRecord, GrantRecord, StateStore } from './types.js';

/**
 * The state store for replicas on several machines: approvals and grants in two tables of
 * their own schema in PostgreSQL.
 *
 * Exactly-once comes from row locks: `update` reads the record `FOR UPDATE`, so two replicas
 * consuming the same approval run one after the other and the second sees `consumed`.
 *
 * Records are stored as `json`, not `jsonb`: a record carries what targets returned and what
 * agents sent, and jsonb refuses both `\u0000` (a NUL in an SSH command's output) and a lone
 * UTF-16 surrogate, so storing the result of a call that already ran would fail. `json` keeps
 * the exact text JSON.stringify wrote, which also makes numbers round-trip exactly. SQL never
 * looks inside it: the columns it filters and sorts on are copied out of the record.
 *
 * watch() has two paths. NOTIFY is fast but lossy (nothing is queued for a LISTEN connection
 * that is down), so a poll reports every approval written by a transaction that the previous
 * poll could not see: each write stamps the row with its transaction id, and a poll asks for
 * rows stamped at or after the previous poll snapshot's xmin. A timestamp would not do: a
 * transaction that stamps `now()` and commits after a poll has already moved past that time
 * would never be reported.
 */

export interface PostgresStoreOptions {
  connection: {
    host: string;
    port: number;
    database: string;
    user: string;
    password?: string;
    /** As a postgres target's `ssl` (default disable); `sslCa` the CA's PEM text. */
    ssl?: 'disable' | 'require' | 'verify-full';
    sslCa?: string;
  };
  /** The schema holding the tables, created on first open (config allows [a-z_][a-z0-9_]*). */
  schema: string;
  /** How often watch() polls for changes whose NOTIFY it may have missed (default 1 s). */
  pollMs?: number;
}

/** pg_current_xact_id() and pg_current_snapshot() (xid8) came in PostgreSQL 13. */
const MIN_SERVER_VERSION = 130_000;
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 30_000;

type Sql = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<R[]>;

export async function openPostgresStore(opts: PostgresStoreOptions): Promise<StateStore> {
  const { host, port, database, user, password, ssl = 'disable', sslCa } = opts.connection;
  // In connectFailure's shape, so a failed state connection is worded as a target's would be.
  const target: ResolvedPostgresTarget = {
    name: 'state.postgres',
    host,
    port,
    database,
    user,
    password,
    ssl,
    sslCa,
    poolSize: 4,
    connectTimeoutMs: 10_000,
  };
  const config: pg.ClientConfig = {
    ...connectionConfig(target),
    connectionTimeoutMillis: target.connectTimeoutMs,
    // A LISTEN connection whose peer vanished without a FIN would otherwise look alive forever.
    keepAlive: true,
    // A replica that hangs mid-transaction must not hold an approval's row lock for long.
    options: '-c idle_in_transaction_session_timeout=60000',
  };
  const pool = new pg.Pool({
    ...config,
    application_name: 'gatehouse-state',
    max: target.poolSize,
    idleTimeoutMillis: 30_000,
  });
  pool.on('error', (err) =>
    log.warn({ err: errorText(err, password) }, 'postgres state store: idle connection failed'),
  );
  const store = new PostgresStore(pool, config, target, opts.schema, opts.pollMs ?? 1_000);
  try {
    await store.prepare();
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }
  return store;
}

class PostgresStore implements StateStore {
  readonly kind = 'postgres';
  private readonly where: string;
  private readonly approvals: string;
  private readonly grants: string;
  private readonly channel: string;
  private readonly listeners = new Set<(approvalId: string) => void>();
  /** The xmin of the last poll's snapshot: every write it could not see is stamped >= it. */
  private cursor = '0';
  /** id -> stamp of the rows the last poll reported, so a held-back xmin repeats nothing. */
  private reported = new Map<string, string>();
  private watching = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private pollFailing = false;
  private listenClient: pg.Client | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectMs = RECONNECT_MIN_MS;
  private listenLost = false;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly config: pg.ClientConfig,
    private readonly target: ResolvedPostgresTarget,
    private readonly schema: string,
    private readonly pollMs: number,
  ) {
    this.where = `PostgreSQL state store (${target.user}@${target.host}:${target.port}/${target.database}, schema ${schema})`;
    const s = pg.escapeIdentifier(schema);
    this.approvals = `${s}.approvals`;
    this.grants = `${s}.grants`;
    // A channel is an identifier: pg_notify refuses one over 63 bytes, LISTEN would cut it.
    const channel = `gatehouse_${schema}_approvals`;
    this.channel =
      channel.length <= 63
        ? channel
        : `gatehouse_${createHash('sha256').update(schema).digest('hex').slice(0, 32)}_approvals`;
  }

  /** Creates the schema and tables unless they exist, and takes the poll's starting point. */
  async prepare(): Promise<void> {
    await this.withClient('open the state tables', async (sql) => {
      const [found] = await sql<{ version: number; ready: boolean; xmin: string }>(
        `SELECT current_setting('server_version_num')::int AS version,
                to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AS ready,
                CASE WHEN current_setting('server_version_num')::int >= ${MIN_SERVER_VERSION}
                  THEN pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text END AS xmin`,
        [this.approvals, this.grants],
      );
      if (found!.version < MIN_SERVER_VERSION)
        throw new Error(`${this.where}: needs PostgreSQL 13 or later`);
      this.cursor = found!.xmin;
      // Existing tables need no DDL: a role given a ready-made schema needs no CREATE privilege.
      if (found!.ready) return;
      // One simple-protocol query is one transaction; the advisory lock makes a second process
      // opening at the same moment wait, then find the tables (concurrent CREATE ... IF NOT
      // EXISTS can fail with a unique violation in the catalog).
      const lockKey = pg.escapeLiteral(`gatehouse state ddl ${this.schema}`);
      await sql(`SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(${lockKey}, 0));
        CREATE SCHEMA IF NOT EXISTS ${pg.escapeIdentifier(this.schema)};
        CREATE TABLE IF NOT EXISTS ${this.approvals} (
          id text PRIMARY KEY,
          status text NOT NULL,
          created_at bigint NOT NULL,
          expires_at bigint NOT NULL,
          record json NOT NULL,
          updated_xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id()
        );
        CREATE INDEX IF NOT EXISTS approvals_updated_xid ON ${this.approvals} (updated_xid);
        CREATE TABLE IF NOT EXISTS ${this.grants} (
          id text PRIMARY KEY,
          created_at bigint NOT NULL,
          expires_at bigint NOT NULL,
          record json NOT NULL
        );`);
    });
  }

  /**
   * The insert, after looking for an open approval to join, in one transaction serialized per
   * requester (an advisory lock on the requester), so identical calls sent at once to any
   * replicas share one approval.
   */
  createApproval(
    rec: ApprovalRecord,
    joinable?: (open: ApprovalRecord) => boolean,
  ): Promise<{ record: ApprovalRecord; created: boolean }> {
    return this.withClient(`create approval ${rec.id}`, async (sql) => {
      await sql('BEGIN');
      if (joinable) {
        await sql('SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1, 0))', [
          `${this.approvals} ${rec.requester.sub}`,
        ]);
        const open = await sql<{ record: ApprovalRecord }>(
          `SELECT record FROM ${this.approvals}
            WHERE status IN ('pending', 'approved') AND expires_at > $1
            ORDER BY created_at, id`,
          [Date.now()],
        );
        const found = open.map((r) => r.record).find(joinable);
        if (found) {
          await sql('ROLLBACK');
          return { record: found, created: false };
        }
      }
      const text = JSON.stringify(rec);
      await sql(
        `WITH ins AS (
           INSERT INTO ${this.approvals} (id, status, created_at, expires_at, record)
           VALUES ($1, $2, $3, $4, $5::json) RETURNING id)
         SELECT pg_catalog.pg_notify($6, id) FROM ins`,
        [rec.id, rec.status, rec.createdAt, rec.expiresAt, text, this.channel],
      );
      await sql('COMMIT');
      return { record: JSON.parse(text) as ApprovalRecord, created: true };
    });
  }

  async getApproval(id: string): Promise<ApprovalRecord | undefined> {
    const rows = await this.withClient(`read approval ${id}`, (sql) =>
      sql<{ record: ApprovalRecord }>(`SELECT record FROM ${this.approvals} WHERE id = $1`, [id]),
    );
    return rows[0]?.record;
  }

  async listApprovals(): Promise<ApprovalRecord[]> {
    const rows = await this.withClient('list approvals', (sql) =>
      sql<{ record: ApprovalRecord }>(
        `SELECT record FROM ${this.approvals} ORDER BY created_at, id`,
      ),
    );
    return rows.map((r) => r.record);
  }

  updateApproval(
    id: string,
    change: (rec: ApprovalRecord) => ApprovalRecord | undefined,
  ): Promise<{ record: ApprovalRecord | undefined; changed: boolean }> {
    return this.update(`approval ${id}`, this.approvals, id, change, (sql, rec, text) =>
      sql(
        `WITH up AS (
           UPDATE ${this.approvals}
           SET status = $2, expires_at = $3, record = $4::json,
               updated_xid = pg_catalog.pg_current_xact_id()
           WHERE id = $1 RETURNING id)
         SELECT pg_catalog.pg_notify($5, id) FROM up`,
        [id, rec.status, rec.expiresAt, text, this.channel],
      ),
    );
  }

  async createGrant(rec: GrantRecord): Promise<void> {
    await this.withClient(`create grant ${rec.id}`, (sql) =>
      sql(
        `INSERT INTO ${this.grants} (id, created_at, expires_at, record) VALUES ($1, $2, $3, $4::json)`,
        [rec.id, rec.createdAt, rec.expiresAt, JSON.stringify(rec)],
      ),
    );
  }

  async listGrants(): Promise<GrantRecord[]> {
    const rows = await this.withClient('list grants', (sql) =>
      sql<{ record: GrantRecord }>(`SELECT record FROM ${this.grants} ORDER BY created_at, id`),
    );
    return rows.map((r) => r.record);
  }

  updateGrant(
    id: string,
    change: (rec: GrantRecord) => GrantRecord | undefined,
  ): Promise<{ record: GrantRecord | undefined; changed: boolean }> {
    return this.update(`grant ${id}`, this.grants, id, change, (sql, rec, text) =>
      sql(`UPDATE ${this.grants} SET expires_at = $2, record = $3::json WHERE id = $1`, [
        id,
        rec.expiresAt,
        text,
      ]),
    );
  }

  watch(listener: (approvalId: string) => void): () => void {
    if (this.closed) throw new Error(`${this.where}: closed`);
    this.listeners.add(listener);
    // Started by the first watcher: a CLI command that only reads holds no LISTEN connection.
    // The cursor was taken at open, so nothing written between open and now is missed.
    if (!this.watching) {
      this.watching = true;
      this.schedulePoll();
      void this.listen();
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  async prune(now: number, retainMs: number): Promise<void> {
    const cutoff = now - retainMs;
    await this.withClient('prune approvals and grants', async (sql) => {
      await sql(`DELETE FROM ${this.approvals} WHERE expires_at < $1`, [cutoff]);
      await sql(`DELETE FROM ${this.grants} WHERE expires_at < $1`, [cutoff]);
    });
  }

  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.reconnectTimer);
    this.listeners.clear();
    const listening = this.listenClient;
    this.listenClient = undefined;
    await Promise.allSettled([listening?.end(), this.polling]);
    await this.pool.end();
  }

  /**
   * The one write path for existing records: the row is locked until COMMIT, so `change`
   * always sees the latest record and concurrent updates queue instead of overwriting.
   */
  private update<R extends { readonly id: string }>(
    what: string,
    table: string,
    id: string,
    change: (rec: R) => R | undefined,
    write: (sql: Sql, rec: R, text: string) => Promise<unknown>,
  ): Promise<{ record: R | undefined; changed: boolean }> {
    return this.withClient(`update ${what}`, async (sql) => {
      await sql('BEGIN');
      const [found] = await sql<{ record: R }>(
        `SELECT record FROM ${table} WHERE id = $1 FOR UPDATE`,
        [id],
      );
      const next = found && change(structuredClone(found.record));
      if (next === undefined) {
        await sql('ROLLBACK');
        return { record: found?.record, changed: false };
      }
      const text = JSON.stringify(next);
      await write(sql, next, text);
      await sql('COMMIT');
      // As stored: what a later read returns (undefined fields dropped).
      return { record: JSON.parse(text) as R, changed: true };
    });
  }

  /**
   * Runs `fn` on a pooled connection. Failures of PostgreSQL become errors that say what
   * could not be done and why, never with the password; anything `fn` throws itself (a
   * caller's `change`) passes through. An open transaction is rolled back.
   */
  private async withClient<T>(what: string, fn: (sql: Sql) => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`${this.where}: cannot ${what}: the store is closed`);
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw new Error(
        `${this.where}: cannot ${what}: cannot connect: ${connectFailure(err, this.target)}`,
        { cause: err },
      );
    }
    const sql: Sql = async <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => {
      try {
        return (await client.query<R>(text, values)).rows;
      } catch (err) {
        throw new Error(`${this.where}: cannot ${what}: ${errorText(err, this.target.password)}`, {
          cause: err,
        });
      }
    };
    let broken = false;
    try {
      return await fn(sql);
    } catch (err) {
      await client.query('ROLLBACK').catch(() => (broken = true));
      throw err;
    } finally {
      client.release(broken);
    }
  }

  private schedulePoll(): void {
    if (this.closed) return;
    this.pollTimer = setTimeout(() => {
      this.polling = this.poll().finally(() => this.schedulePoll());
    }, this.pollMs);
    this.pollTimer.unref();
  }

  private async poll(): Promise<void> {
    let rows: Array<{ xmin: string; id: string | null; xid: string | null }>;
    try {
      rows = await this.withClient('poll for approval changes', (sql) =>
        sql(
          `SELECT snap.xmin, a.id, a.updated_xid::text AS xid
           FROM (SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text AS xmin) snap
           LEFT JOIN ${this.approvals} a ON a.updated_xid >= $1::xid8`,
          [this.cursor],
        ),
      );
    } catch (err) {
      if (!this.pollFailing && !this.closed)
        log.warn({ err: (err as Error).message }, 'postgres state store: poll failed; retrying');
      this.pollFailing = true;
      return;
    }
    if (this.pollFailing)
      log.info({ schema: this.schema }, 'postgres state store: poll works again');
    this.pollFailing = false;
    const reported = new Map<string, string>();
    for (const row of rows) {
      this.cursor = row.xmin;
      if (row.id === null || row.xid === null) continue;
      reported.set(row.id, row.xid);
      if (this.reported.get(row.id) !== row.xid) this.emit(row.id);
    }
    this.reported = reported;
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ ...this.config, application_name: 'gatehouse-state-listen' });
    this.listenClient = client;
    let lost = false;
    const onLost = (err: unknown) => {
      if (lost) return;
      lost = true;
      if (this.listenClient === client) this.listenClient = undefined;
      client.end().catch(() => undefined);
      if (this.closed) return;
      this.listenLost = true;
      log.warn(
        {
          schema: this.schema,
          err: errorText(err, this.target.password),
          retryMs: this.reconnectMs,
          pollMs: this.pollMs,
        },
        'postgres state store: LISTEN connection lost; polling meanwhile, reconnecting',
      );
      this.reconnectTimer = setTimeout(() => void this.listen(), this.reconnectMs);
      this.reconnectTimer.unref();
      this.reconnectMs = Math.min(this.reconnectMs * 2, RECONNECT_MAX_MS);
    };
    client.on('error', onLost);
    client.on('end', () => onLost(new Error('connection ended')));
    client.on('notification', (msg) => {
      if (msg.channel === this.channel && msg.payload) this.emit(msg.payload);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${pg.escapeIdentifier(this.channel)}`);
    } catch (err) {
      onLost(err);
      return;
    }
    if (this.closed) {
      await client.end().catch(() => undefined);
      return;
    }
    this.reconnectMs = RECONNECT_MIN_MS;
    if (this.listenLost)
      log.info({ schema: this.schema }, 'postgres state store: LISTEN connection back');
    this.listenLost = false;
  }

  private emit(approvalId: string): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(approvalId);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'postgres state store: a watcher threw');
      }
    }
  }
}

/** The driver's code and first line, the password blanked out (as connectFailure does). */
function errorText(err: unknown, password: string | undefined): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? `${e.code} ` : '';
  const firstLine = head(String(e.message ?? err).split('\n')[0] ?? '', 300);
  const text = `${code}${firstLine}`;
  return password ? text.replaceAll(password, '[secret]') : text;
}
