import { createHash } from 'node:crypto';
import pg from 'pg';
import { GovernanceError } from '../../server/kernel/errors.js';
import { log } from '../../server/kernel/log.js';

/** A postgres target with its credentials resolved by the gateway (never by the agent). */
export interface ResolvedPostgresTarget {
  name: string;
  host: string;
  port: number;
  database: string;
  user: string;
  password: string | undefined;
  ssl: 'disable' | 'require' | 'verify-full';
  sslCa: string | undefined;
  poolSize: number;
  connectTimeoutMs: number;
}

export type PoolMode = 'read' | 'write';

/** Why a connection is being retired mid-call (for the log). */
export type RetireReason = 'timeout' | 'cancelled' | 'oversize' | 'connection-lost';

export interface PoolOptions {
  /** How long a retired connection's slot waits for its backend to go (then freed anyway). */
  reapTimeoutMs?: number;
  /** How often the side connection looks for the backend. */
  reapPollMs?: number;
  /** How long `closeAll` waits for cleanups and in-flight calls before it gives up on them. */
  closeGraceMs?: number;
}

const sleep = (ms: number) =>
  new Promise<void>((resolve) => {
    setTimeout(resolve, ms).unref();
  });

/**
 * Connection pools, one per (target, mode, statement timeout, credential). Read pools open
 * their sessions with `default_transaction_read_only=on`, so a read needs no BEGIN/ROLLBACK
 * round trips and the server itself refuses a write that slipped past the classifier.
 *
 * A connection given up mid-statement (timeout, cancel, an oversized message, a cut socket)
 * is retired, not released: some functions never check for interrupts (libxml2 XPath, large
 * array output), so neither statement_timeout nor a closed socket stops their backend. Were
 * its pool slot freed at once, an agent repeating such a read would stack busy backends
 * until the database ran out of CPU, memory and connections. The slot stays taken until the
 * backend is gone from pg_stat_activity, so busy backends never exceed `poolSize`.
 */
export class PostgresPools {
  private readonly pools = new Map<string, pg.Pool>();
  private readonly reaps = new Set<Promise<void>>();
  private readonly reapTimeoutMs: number;
  private readonly reapPollMs: number;
  private readonly closeGraceMs: number;
  private giveUp!: () => void;
  /** Set by closeAll: no pool is opened after it (a late call would keep the process alive). */
  private closed = false;
  /** Settles when shutdown stops waiting for backends. */
  private readonly givenUp = new Promise<void>((resolve) => (this.giveUp = resolve));

  constructor(opts: PoolOptions = {}) {
    this.reapTimeoutMs = opts.reapTimeoutMs ?? 180_000;
    this.reapPollMs = opts.reapPollMs ?? 250;
    this.closeGraceMs = opts.closeGraceMs ?? 5_000;
  }

  get(target: ResolvedPostgresTarget, mode: PoolMode, statementTimeoutMs: number): pg.Pool {
    // A pool opened after shutdown closed the others would hold idle connections (and the
    // process) for idleTimeoutMillis, and run a statement nothing is left to audit.
    if (this.closed)
      throw new GovernanceError(
        'TARGET_ERROR',
        `the gateway is shutting down; ${target.name} is closed`,
      );
    // The credential is part of the key (as a digest) so a rotated password gets a fresh pool.
    const credential = createHash('sha256')
      .update(target.password ?? '')
      .digest('hex')
      .slice(0, 16);
    const key = [
      target.name,
      mode,
      statementTimeoutMs,
      credential,
      target.host,
      target.port,
      target.database,
      target.user,
    ].join('\0');
    let pool = this.pools.get(key);
    if (!pool) {
      const options = [
        mode === 'read' ? '-c default_transaction_read_only=on' : '',
        // The classifier parses as PostgreSQL does with standard_conforming_strings on (its
        // only mode). A server, database or role that turns it off would read '\' differently
        // and see other statements in the same text; the startup option overrides all three.
        '-c standard_conforming_strings=on',
        // A pooled session must never sit in an open transaction holding locks.
        '-c idle_in_transaction_session_timeout=60000',
      ]
        .filter(Boolean)
        .join(' ');
      pool = new pg.Pool({
        ...connectionConfig(target),
        max: target.poolSize,
        idleTimeoutMillis: 30_000,
        connectionTimeoutMillis: target.connectTimeoutMs,
        statement_timeout: statementTimeoutMs,
        application_name: 'gatehouse',
        options,
      });
      // An idle client's error (server restart) must not crash the process.
      pool.on('error', (err) =>
        log.warn(
          { target: target.name, code: (err as { code?: string }).code },
          'idle postgres connection failed',
        ),
      );
      this.pools.set(key, pool);
    }
    return pool;
  }

  /**
   * Takes over a checked-out client whose statement was abandoned: cancels, then terminates
   * its backend from a side connection (same credentials: a role may signal its own
   * backends), and releases the client, destroyed, only once the backend has left
   * pg_stat_activity (or `reapTimeoutMs` passed, or shutdown gave up). Runs in the
   * background; the caller has already answered the agent.
   */
  retire(target: ResolvedPostgresTarget, client: pg.PoolClient, reason: RetireReason): void {
    const pid = (client as unknown as { processID?: number | null }).processID ?? undefined;
    const reap = this.reap(target, client, pid, reason).finally(() => this.reaps.delete(reap));
    this.reaps.add(reap);
  }

  private async reap(
    target: ResolvedPostgresTarget,
    client: pg.PoolClient,
    pid: number | undefined,
    reason: RetireReason,
  ): Promise<void> {
    const started = Date.now();
    const deadline = started + this.reapTimeoutMs;
    let side: pg.Client | undefined;
    let gone = pid === undefined;
    let givenUp = false;
    void this.givenUp.then(() => (givenUp = true));
    // The pid alone could be reused by a later backend; its start time pins this one.
    let backendStart: string | undefined;
    let signalled = false;
    try {
      while (!gone && !givenUp && Date.now() < deadline) {
        try {
          if (!side) {
            const c = new pg.Client({
              ...connectionConfig(target),
              connectionTimeoutMillis: target.connectTimeoutMs,
              application_name: 'gatehouse-reaper',
            });
            // A side connection that dies must not take the process with it.
            c.on('error', () => undefined);
            side = c;
            await c.connect();
          }
          if (!signalled) {
            const found = await side.query<{ s: string }>(
              'SELECT backend_start::text AS s FROM pg_catalog.pg_stat_activity WHERE pid = $1',
              [pid],
            );
            backendStart = found.rows[0]?.s;
            if (backendStart === undefined) {
              gone = true;
              break;
            }
            // Cancel first (a statement that checks for interrupts ends cleanly), then
            // terminate: the session is never reused, and a backend stuck in code that
            // ignores cancels dies at its next interrupt check instead of finishing its work.
            await side.query('SELECT pg_catalog.pg_cancel_backend($1)', [pid]);
            await side.query('SELECT pg_catalog.pg_terminate_backend($1)', [pid]);
            signalled = true;
          }
          const still = await side.query(
            'SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND backend_start::text = $2',
            [pid, backendStart],
          );
          if (still.rowCount === 0) {
            gone = true;
            break;
          }
        } catch (err) {
          log.warn(
            { target: target.name, backend: pid, err: (err as Error).message },
            'postgres cleanup: side connection failed; retrying',
          );
          const broken = side;
          side = undefined;
          broken?.end().catch(() => undefined);
        }
        await Promise.race([sleep(this.reapPollMs), this.givenUp]);
      }
    } finally {
      side?.end().catch(() => undefined);
      client.release(true);
      const ms = Date.now() - started;
      if (gone) {
        log.info(
          { target: target.name, backend: pid, reason, ms },
          'postgres backend of an abandoned statement is gone; pool slot freed',
        );
      } else {
        log.error(
          { target: target.name, backend: pid, reason, ms },
          'POSTGRES BACKEND STILL RUNNING after its statement was abandoned; freeing its pool slot anyway',
        );
      }
    }
  }

  /**
   * Bounded: shutdown waits `closeGraceMs` for backends being cleaned up and calls in flight,
   * then frees the slots it still holds and stops waiting (an uncancellable backend must not
   * hang the gateway's exit).
   */
  async closeAll(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    const grace = sleep(this.closeGraceMs);
    await Promise.race([Promise.allSettled([...this.reaps]), grace]);
    this.giveUp();
    // Each reap now finishes its current step and releases; a step stuck on a dead server
    // is bounded by the grace below.
    const ended = Promise.allSettled([...this.reaps, ...pools.map((p) => p.end())]);
    const timedOut = await Promise.race([
      ended.then(() => false),
      sleep(this.closeGraceMs).then(() => true),
    ]);
    if (timedOut)
      log.warn(
        { pools: pools.length },
        'postgres pools did not close within the grace period; not waiting longer',
      );
  }
}

/** Host, credentials and TLS, as the pools and the side connections use them. */
export function connectionConfig(target: ResolvedPostgresTarget): pg.ClientConfig {
  return {
    host: target.host,
    port: target.port,
    database: target.database,
    user: target.user,
    password: target.password,
    ssl:
      target.ssl === 'disable'
        ? false
        : {
            rejectUnauthorized: target.ssl === 'verify-full',
            ...(target.sslCa ? { ca: target.sslCa } : {}),
          },
  };
}
