import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { openPostgresStore } from '../../server/approvals/store-postgres.js';
import type { ApprovalRecord, GrantRecord, StateStore } from '../../server/approvals/types.js';
import { log } from '../../server/kernel/log.js';
import { connectAs } from '../helpers/postgres.js';

/**
 * The PostgreSQL state backend (CONTRACT section 2, `state: postgres`: shared by replicas on
 * several machines) against a real server: an approval is used once (section 5) however many
 * replicas race for it, no answer is lost, and a change reaches the other replicas' waiters.
 * Everything lives in a database of its own, created and dropped here: other files compare
 * the main test database before and after their calls.
 */

const pgInfo = inject('pg');
const LISTEN_APP = 'gatehouse-state-listen';

const approval = (id: string, over: Partial<ApprovalRecord> = {}): ApprovalRecord => ({
  id,
  status: 'pending',
  createdAt: 1_700_000_000_000,
  expiresAt: 1_700_000_900_000,
  requester: { sub: 'alice', groups: ['dev'] },
  session: 'sess-1',
  callId: 'call-1',
  tool: 'postgres_query',
  target: 'app',
  operation: 'write',
  input: 'DELETE FROM orders WHERE id = 1',
  args: { target: 'app', sql: 'DELETE FROM orders WHERE id = 1' },
  digest: 'a'.repeat(64),
  policyVersion: 'b'.repeat(64),
  rule: 'writes-need-a-dba',
  ruleReason: 'writes need a DBA',
  approvers: { groups: ['dba'] },
  quorum: 1,
  answers: [],
  ...over,
});

const grant = (id: string, over: Partial<GrantRecord> = {}): GrantRecord => ({
  id,
  sub: 'alice',
  tool: 'postgres_query',
  target: 'app',
  operation: 'write',
  rule: 'writes-need-a-dba',
  policyVersion: 'b'.repeat(64),
  approvalId: 'apr_1',
  createdAt: 1_700_000_000_000,
  expiresAt: 1_700_000_900_000,
  approvers: 'client',
  ...over,
});

describe.skipIf(!pgInfo.available)('approvals and grants in PostgreSQL', () => {
  const suffix = randomBytes(6).toString('hex');
  const database = `gatehouse_state_${suffix}`;
  const role = {
    user: `gatehouse_state_${suffix}`,
    password: `pw-${randomBytes(12).toString('hex')}`,
  };
  const connection = { host: pgInfo.host, port: pgInfo.port, database, ...role };
  const opened: StateStore[] = [];
  /** What the stores logged (tests run at level error: this is the only record). */
  const logged: Array<{ level: string; args: unknown[] }> = [];
  /** Superuser, connected to the test database. */
  let admin: pg.Client;

  const open = async (schema: string, pollMs?: number): Promise<StateStore> => {
    const store = await openPostgresStore({ connection, schema, pollMs });
    opened.push(store);
    return store;
  };

  /** The LISTEN backends of the test database that have run their LISTEN. */
  const listening = async (): Promise<number[]> =>
    (
      await admin.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity
         WHERE datname = $1 AND application_name = $2 AND query LIKE 'LISTEN %'`,
        [database, LISTEN_APP],
      )
    ).rows.map((r) => r.pid);

  /** How many of the stores' pooled connections wait for a lock. */
  const waitingForLocks = async (): Promise<number> => {
    // Read once, pg_stat_activity stays frozen until the reading transaction ends; the callers
    // read it inside one.
    await admin.query('SELECT pg_stat_clear_snapshot()');
    const { rows } = await admin.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
       WHERE datname = $1 AND application_name = 'gatehouse-state' AND wait_event_type = 'Lock'`,
      [database],
    );
    return rows[0]!.n;
  };

  /**
   * Runs `updates` while the superuser holds the record's row lock, and lets go only once all
   * 8 connections of the two replicas' pools wait on it: every one of them contends, none
   * finishes before the others have started.
   */
  const contended = async <T>(table: string, id: string, updates: () => Promise<T>): Promise<T> => {
    await admin.query('BEGIN');
    await admin.query(`SELECT 1 FROM ${table} WHERE id = $1 FOR UPDATE`, [id]);
    const done = updates();
    try {
      await vi.waitFor(async () => expect(await waitingForLocks()).toBe(8));
    } finally {
      await admin.query('COMMIT');
    }
    return done;
  };

  beforeAll(async () => {
    const su = await connectAs(pgInfo, 'superuser', { database: 'postgres' });
    try {
      const [db, user] = [pg.escapeIdentifier(database), pg.escapeIdentifier(role.user)];
      await su.query(`CREATE ROLE ${user} LOGIN PASSWORD ${pg.escapeLiteral(role.password)}`);
      await su.query(`CREATE DATABASE ${db}`);
      // Least privilege: the store's role may connect and create its schema, nothing more.
      await su.query(`GRANT CONNECT, CREATE ON DATABASE ${db} TO ${user}`);
    } finally {
      await su.end();
    }
    admin = await connectAs(pgInfo, 'superuser', { database });
    for (const level of ['error', 'warn', 'info'] as const) {
      const record = (...args: unknown[]) => void logged.push({ level, args });
      vi.spyOn(log, level).mockImplementation(record);
    }
  });

  afterAll(async () => {
    vi.restoreAllMocks();
    await Promise.allSettled(opened.map((s) => s.close()));
    await admin?.end();
    const su = await connectAs(pgInfo, 'superuser', { database: 'postgres' });
    try {
      // FORCE terminates whatever is still connected (a failed test's stores).
      await su.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(database)} WITH (FORCE)`);
      await su.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(role.user)}`);
    } finally {
      await su.end();
    }
  });

  it('creates its schema and tables on first open, in that schema only, also when four processes open at once', async () => {
    // Four processes reach CREATE SCHEMA together: the superuser blocks every schema creation
    // in the database until all four wait. Unserialized, all would find no schema, then all but
    // one fail on pg_namespace's unique index once the lock goes.
    await admin.query('BEGIN; LOCK TABLE pg_catalog.pg_namespace IN SHARE MODE');
    // `user` is a reserved word: every use of the schema name must be quoted.
    const opening = Promise.allSettled(Array.from({ length: 4 }, () => open('user')));
    try {
      await vi.waitFor(async () => expect(await waitingForLocks()).toBe(4));
    } finally {
      await admin.query('COMMIT');
    }
    expect((await opening).map((r) => r.status)).toEqual(Array(4).fill('fulfilled'));
    await open('user');
    const { rows } = await admin.query<{ schema: string; name: string }>(
      `SELECT n.nspname AS schema, c.relname AS name FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname IN ('user', 'public') ORDER BY 1, 2`,
    );
    expect(rows).toEqual(
      ['approvals', 'approvals_pkey', 'approvals_updated_xid', 'grants', 'grants_pkey'].map(
        (name) => ({ schema: 'user', name }),
      ),
    );
    const types = await admin.query<{ table: string; type: string }>(
      `SELECT attrelid::regclass::text AS table, format_type(atttypid, atttypmod) AS type
       FROM pg_attribute WHERE attname = 'record' AND attrelid IN ('"user".approvals'::regclass, '"user".grants'::regclass)
       ORDER BY 1`,
    );
    // json keeps NULs, lone surrogates and the exact number text that jsonb would refuse or rewrite.
    expect(types.rows).toEqual([
      { table: '"user".approvals', type: 'json' },
      { table: '"user".grants', type: 'json' },
    ]);
  });

  it('round-trips every field of approvals and grants exactly, and lists by creation time', async () => {
    const store = await open('roundtrip');
    const full = approval('apr_full', {
      status: 'consumed',
      createdAt: 1_700_000_000_123,
      expiresAt: 1_700_000_900_123,
      requester: { sub: 'alice', groups: ['dev', 'oncall'] },
      target: null,
      input: { sql: 'UPDATE t SET x = 1', argv: ['a', 'b c'] },
      purpose: 'fix the bad row',
      trace: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      approvers: { groups: ['dba'], subjects: ['bob'] },
      quorum: 2,
      grantMs: 900_000,
      answers: [
        {
          by: 'bob',
          groups: ['dba'],
          answer: 'approve',
          reason: 'ok',
          at: 1_700_000_100_001,
          via: 'api',
        },
        { by: 'carol', groups: [], answer: 'approve', at: 1_700_000_100_002, via: 'elicitation' },
      ],
      consumedBy: 'call-9',
      consumedAt: 1_700_000_200_999,
      // What a target returned: a NUL (SSH output), a lone surrogate, numbers at the edges.
      result: {
        content: [{ type: 'text', text: 'bin\u0000ary \ud800 é 😀 "quoted" \\' }],
        isError: false,
        rows: [[1, 0.1, -1.5e-7, 2 ** 53 - 1, -(2 ** 53 - 1), 1e300, 5e-324, 0, null, true]],
        nested: { deep: { deeper: [{}, [], ''] } },
      },
    });
    const older = approval('apr_older', { createdAt: 1_600_000_000_000 });
    await store.createApproval(full);
    await store.createApproval(older);

    const got = await store.getApproval('apr_full');
    expect(got).toEqual(full);
    expect(JSON.stringify(got)).toBe(JSON.stringify(full));
    expect((await store.listApprovals()).map((r) => r.id)).toEqual(['apr_older', 'apr_full']);
    expect(await store.getApproval('apr_missing')).toBeUndefined();
    await expect(store.createApproval(older)).rejects.toThrow(
      /^PostgreSQL state store \(.*schema roundtrip\): cannot create approval apr_older: 23505 duplicate key value/,
    );

    const g = grant('grt_full', {
      target: null,
      approvers: { subjects: ['bob'] },
      revokedAt: 1_700_000_300_000,
      revokedBy: 'bob',
    });
    await store.createGrant(grant('grt_later', { createdAt: 1_800_000_000_000 }));
    await store.createGrant(g);
    const grants = await store.listGrants();
    expect(grants.map((r) => r.id)).toEqual(['grt_full', 'grt_later']);
    expect(JSON.stringify(grants[0])).toBe(JSON.stringify(g));
  });

  it('update writes what change returns, nothing when it returns undefined, and never calls it for a missing record', async () => {
    const store = await open('update');
    await store.createApproval(approval('apr_u'));
    const unchanged = await store.updateApproval('apr_u', (r) => {
      r.status = 'denied'; // a change that mutates its copy and then decides not to write
      return undefined;
    });
    expect(unchanged).toEqual({ record: approval('apr_u'), changed: false });
    expect((await store.getApproval('apr_u'))?.status).toBe('pending');

    const change = vi.fn(() => undefined);
    expect(await store.updateApproval('apr_none', change)).toEqual({
      record: undefined,
      changed: false,
    });
    expect(change).not.toHaveBeenCalled();

    const approved = await store.updateApproval('apr_u', (r) => ({ ...r, status: 'approved' }));
    expect(approved).toEqual({ record: approval('apr_u', { status: 'approved' }), changed: true });
    expect(await store.getApproval('apr_u')).toEqual(approved.record);

    await store.createGrant(grant('grt_u'));
    const revoked = await store.updateGrant('grt_u', (r) => ({
      ...r,
      revokedAt: 5,
      revokedBy: 'bob',
    }));
    expect(revoked.changed).toBe(true);
    expect(await store.listGrants()).toEqual([grant('grt_u', { revokedAt: 5, revokedBy: 'bob' })]);

    // The caller's own error passes through untouched, and the row lock is released.
    await expect(
      store.updateApproval('apr_u', () => {
        throw new Error('change refused');
      }),
    ).rejects.toThrow(/^change refused$/);
    expect((await store.updateApproval('apr_u', (r) => r)).changed).toBe(true);
  });

  it('consumes an approval exactly once when two replicas race 20 times each', async () => {
    const [a, b] = [await open('race'), await open('race')];
    await a.createApproval(approval('apr_race', { status: 'approved' }));
    const outcomes = await contended('race.approvals', 'apr_race', () =>
      Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          (i % 2 ? a : b).updateApproval('apr_race', (r) =>
            r.status === 'approved'
              ? {
                  ...r,
                  status: 'consumed',
                  consumedBy: `call-${i}`,
                  consumedAt: 1_700_000_000_000 + i,
                }
              : undefined,
          ),
        ),
      ),
    );
    const winners = outcomes.flatMap((o, i) => (o.changed ? [i] : []));
    expect(winners).toHaveLength(1);
    for (const o of outcomes) expect(o.record?.consumedBy).toBe(`call-${winners[0]}`);
    expect((await b.getApproval('apr_race'))?.consumedBy).toBe(`call-${winners[0]}`);
  });

  it('loses no answer when 10 approvers answer at once through two replicas', async () => {
    const [a, b] = [await open('quorum'), await open('quorum')];
    await a.createApproval(approval('apr_q', { quorum: 10 }));
    const outcomes = await contended('quorum.approvals', 'apr_q', () =>
      Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          (i % 2 ? a : b).updateApproval('apr_q', (r) => {
            r.answers.push({
              by: `approver-${i}`,
              groups: ['dba'],
              answer: 'approve',
              at: 1_700_000_000_000 + i,
              via: 'api',
            });
            if (r.answers.length >= r.quorum) r.status = 'approved';
            return r;
          }),
        ),
      ),
    );
    expect(outcomes.every((o) => o.changed)).toBe(true);
    const stored = await a.getApproval('apr_q');
    expect(stored?.answers.map((x) => x.by).sort()).toEqual(
      Array.from({ length: 10 }, (_, i) => `approver-${i}`).sort(),
    );
    expect(stored?.status).toBe('approved');
  });

  it('tells a watcher on another replica at once (NOTIFY), and again after its LISTEN connection is killed', async () => {
    // 63 characters: the channel name would be too long, so it is derived from a digest.
    const schema = `watch_${'x'.repeat(57)}`;
    const a = await open(schema);
    // Polling once a minute: what arrives within seconds came by NOTIFY.
    const b = await open(schema, 60_000);
    const seen: string[] = [];
    const gone: string[] = [];
    b.watch((id) => seen.push(id));
    const unwatch = b.watch((id) => gone.push(id));
    await vi.waitFor(async () => expect(await listening()).toHaveLength(1));

    await a.createApproval(approval('apr_w'));
    await vi.waitFor(() => expect(seen).toEqual(['apr_w']));
    unwatch();
    await a.updateApproval('apr_w', (r) => ({ ...r, status: 'approved' }));
    await vi.waitFor(() => expect(seen).toEqual(['apr_w', 'apr_w']));
    expect(gone).toEqual(['apr_w']);

    const before = logged.length;
    const [old] = await listening();
    await admin.query('SELECT pg_terminate_backend($1)', [old]);
    await vi.waitFor(
      async () => {
        const now = await listening();
        expect(now).toHaveLength(1);
        expect(now).not.toContain(old);
      },
      { timeout: 10_000 },
    );
    const lost = logged
      .slice(before)
      .filter(({ args }) => /LISTEN connection lost/.test(String(args[1])));
    expect(lost).toHaveLength(1);
    expect(lost[0]?.level).toBe('warn');
    expect(lost[0]?.args[0]).toMatchObject({ retryMs: 250, pollMs: 60_000 });
    expect((lost[0]?.args[0] as { err: string }).err).toMatch(/^57P01 terminating connection/);
    await a.updateApproval('apr_w', (r) => ({ ...r, status: 'consumed' }));
    await vi.waitFor(() => expect(seen).toEqual(['apr_w', 'apr_w', 'apr_w']));
    await b.close();
    expect(await listening()).toEqual([]);
  });

  it('delivers by polling what was written before watch() and what NOTIFY lost while LISTEN was down', async () => {
    const a = await open('poll');
    const c = await open('poll', 100);
    const seen: string[] = [];
    // Written after open, before watch(): the first poll reports it.
    await a.createApproval(approval('apr_p'));
    c.watch((id) => seen.push(id));
    await vi.waitFor(() => expect(seen).toEqual(['apr_p']));

    // An open transaction elsewhere holds every snapshot's xmin back, so each poll finds the
    // row written after it again: it is reported once (or twice: NOTIFY and poll), not per poll.
    const holder = await connectAs(pgInfo, 'superuser', { database });
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT pg_current_xact_id()');
      await a.updateApproval('apr_p', (r) => ({ ...r, status: 'approved' }));
      await new Promise((r) => setTimeout(r, 300));
      const reported = seen.length;
      expect(reported).toBeGreaterThanOrEqual(2);
      await new Promise((r) => setTimeout(r, 500));
      expect(seen).toHaveLength(reported);
    } finally {
      await holder.end();
    }

    // A write still in progress while polls run, committed after them: a cursor that moved
    // past its transaction (a timestamp, or the snapshot's xmax) would never report it. It
    // sends no NOTIFY, so only the poll can.
    let before = seen.length;
    await admin.query('BEGIN');
    try {
      await admin.query(
        `UPDATE poll.approvals SET record = $2::json, updated_xid = pg_current_xact_id() WHERE id = $1`,
        ['apr_p', JSON.stringify(approval('apr_p', { status: 'denied' }))],
      );
      // Another write starts and ends meanwhile, as on a busy server: it moves xmax past.
      await a.createApproval(approval('apr_p2'));
      await new Promise((r) => setTimeout(r, 400));
      expect(seen.slice(before)).not.toContain('apr_p');
    } finally {
      await admin.query('COMMIT');
    }
    await vi.waitFor(() => expect(seen.slice(before)).toContain('apr_p'));

    await vi.waitFor(async () => expect(await listening()).toHaveLength(1));
    const [pid] = await listening();
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    await vi.waitFor(
      async () => {
        const left = await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid]);
        expect(left.rowCount).toBe(0);
      },
      { interval: 10 },
    );
    before = seen.length;
    await a.updateApproval('apr_p', (r) => ({ ...r, status: 'consumed' }));
    // Nobody was listening when that committed (the reconnect waits 250 ms): its notification
    // went nowhere.
    expect(await listening()).toEqual([]);
    await vi.waitFor(() => expect(seen).toHaveLength(before + 1));
    await vi.waitFor(async () => expect(await listening()).toHaveLength(1), { timeout: 10_000 });
    await c.close();
  });

  it('says why it cannot connect, never with the password', async () => {
    const wrong = `pw-wrong-${randomBytes(8).toString('hex')}`;
    const denied = openPostgresStore({
      connection: { ...connection, password: wrong },
      schema: 'nope',
    });
    await expect(denied).rejects.toThrow(
      /cannot open the state tables: cannot connect: authentication failed for user gatehouse_state_/,
    );
    const err = (await denied.catch((e: unknown) => e)) as Error;
    for (const text of [err.message, String(err.cause), err.stack ?? '']) {
      expect(text).not.toContain(wrong);
      expect(text).not.toContain(role.password);
    }
    await expect(
      openPostgresStore({ connection: { ...connection, port: 1 }, schema: 'nope' }),
    ).rejects.toThrow(/cannot connect: connection refused by 127\.0\.0\.1:1/);
  });

  it('prune drops only records that ended before the retention window; close is idempotent and leaves no connection', async () => {
    const store = await open('prune');
    const now = 1_800_000_000_000;
    const retainMs = 3_600_000;
    const old = now - retainMs - 1;
    const recent = now - retainMs + 1;
    await store.createApproval(approval('apr_old_pending', { expiresAt: old }));
    await store.createApproval(
      approval('apr_old_consumed', { status: 'consumed', expiresAt: old }),
    );
    await store.createApproval(
      approval('apr_recent_denied', { status: 'denied', expiresAt: recent }),
    );
    await store.createApproval(approval('apr_future', { expiresAt: now + 60_000 }));
    await store.createGrant(grant('grt_old', { expiresAt: old }));
    await store.createGrant(grant('grt_recent', { expiresAt: recent }));
    await store.prune(now, retainMs);
    expect((await store.listApprovals()).map((r) => r.id).sort()).toEqual([
      'apr_future',
      'apr_recent_denied',
    ]);
    expect((await store.listGrants()).map((r) => r.id)).toEqual(['grt_recent']);

    store.watch(() => undefined);
    await vi.waitFor(async () => expect(await listening()).toHaveLength(1));
    await Promise.all([store.close(), store.close()]);
    await store.close();
    await Promise.all(opened.map((s) => s.close()));
    await vi.waitFor(async () => {
      const left = await admin.query(
        'SELECT pid, application_name FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
        [database],
      );
      expect(left.rows).toEqual([]);
    });
    await expect(store.getApproval('apr_future')).rejects.toThrow(/the store is closed/);
    expect(() => store.watch(() => undefined)).toThrow(/closed/);
  });

  it('logged nothing that holds the password', () => {
    const text = JSON.stringify(logged);
    expect(text).toMatch(/LISTEN connection lost/);
    expect(text).not.toContain(role.password);
  });
});
