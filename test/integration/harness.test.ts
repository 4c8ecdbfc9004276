import { existsSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import type { TestProject } from 'vitest/node';
import { luhnValid } from '../../policies/masking.js';
import globalSetup from '../helpers/global-setup.js';
import { snapshotState, type PgState } from '../helpers/pg-state.js';
import { connectAs, PgUnavailableError, seedFixtures, startPostgres } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/** The top-level keys of two snapshots that differ. */
const changed = (a: PgState, b: PgState): string[] =>
  (Object.keys(a) as Array<keyof PgState>)
    .filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]))
    .sort();

/** The SQLSTATE of a failed login, or 'connected'. */
const loginError = (user: string, password: string) =>
  connectAs(pgInfo, 'reader', { user, password }).then(
    async (client) => {
      await client.end();
      return 'connected';
    },
    (err: { code?: string }) => err.code,
  );

describe('the PostgreSQL harness when PostgreSQL is missing', () => {
  it('calls missing binaries unavailable, not a crash', async () => {
    await expect(startPostgres({ binDir: '/nonexistent' })).rejects.toBeInstanceOf(
      PgUnavailableError,
    );
  });

  it('skips the integration tests without CI and fails the run under CI', async () => {
    const saved = { CI: process.env.CI, GATEHOUSE_PG_BINDIR: process.env.GATEHOUSE_PG_BINDIR };
    const provided: Record<string, unknown> = {};
    const project = {
      provide: (key: string, value: unknown) => (provided[key] = value),
    } as unknown as TestProject;
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    process.env.GATEHOUSE_PG_BINDIR = '/nonexistent';
    try {
      delete process.env.CI;
      await globalSetup(project);
      expect(provided.pg).toMatchObject({
        available: false,
        reason: expect.stringContaining('/nonexistent') as unknown,
      });
      expect(stderr).toHaveBeenCalledWith(
        expect.stringMatching(/PostgreSQL integration tests skipped: .*\/nonexistent/),
      );

      process.env.CI = 'true';
      await expect(globalSetup(project)).rejects.toThrow(/CI is set and PostgreSQL is required/);
    } finally {
      stderr.mockRestore();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

if (!pgInfo.available) it.skip(`PostgreSQL harness: ${pgInfo.reason ?? 'unavailable'}`, () => {});

describe.skipIf(!pgInfo.available)('the PostgreSQL harness', () => {
  let su: pg.Client;
  let before: PgState;

  beforeAll(async () => {
    su = await connectAs(pgInfo, 'superuser');
    before = await snapshotState(su);
  });
  afterAll(async () => {
    await su?.end();
  });

  it('runs on a loopback port, as the PID it reports, without durability', async () => {
    expect(pgInfo.host).toBe('127.0.0.1');
    expect(pgInfo.database).toBe('app');
    const { rows } = await su.query<{ addr: string; listen: string; fsync: string; pid: string }>(
      `SELECT host(inet_server_addr()) AS addr, current_setting('listen_addresses') AS listen,
              current_setting('fsync') AS fsync, split_part(pg_read_file('postmaster.pid'), E'\\n', 1) AS pid`,
    );
    expect(rows[0]).toEqual({
      addr: '127.0.0.1',
      listen: '127.0.0.1',
      fsync: 'off',
      pid: String(pgInfo.pid),
    });
    expect(() => process.kill(pgInfo.pid, 0)).not.toThrow();
  });

  it('checks passwords on every connection (SCRAM, no trust)', async () => {
    const hba = await su.query<{ type: string; auth_method: string; error: string | null }>(
      'SELECT type, auth_method, error FROM pg_hba_file_rules',
    );
    expect(hba.rows.length).toBeGreaterThan(0);
    for (const rule of hba.rows)
      expect(rule).toMatchObject({ auth_method: 'scram-sha-256', error: null });
    const verifiers = await su.query<{ rolname: string; scram: boolean }>(
      `SELECT rolname, rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolcanlogin ORDER BY rolname`,
    );
    expect(verifiers.rows).toEqual([
      { rolname: 'gatehouse_reader', scram: true },
      { rolname: 'gatehouse_writer', scram: true },
      { rolname: 'postgres', scram: true },
    ]);

    expect(await loginError(pgInfo.reader.user, 'not-the-password')).toBe('28P01');
    expect(await loginError(pgInfo.superuser.user, pgInfo.reader.password)).toBe('28P01');
    expect(await loginError('nobody', 'nothing')).toBe('28P01');
    expect(await loginError(pgInfo.reader.user, pgInfo.reader.password)).toBe('connected');
  });

  it('gives every role a distinctive password, new each run', () => {
    const passwords = [pgInfo.superuser.password, pgInfo.reader.password, pgInfo.writer.password];
    for (const p of passwords) expect(p).toMatch(/^pw-[0-9a-f]{24}$/);
    expect(new Set(passwords).size).toBe(3);
  });

  it('seeds the corpus fixtures: PII-shaped customers, users, canary, canary_seq', async () => {
    const columns = await su.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_name = 'customers' ORDER BY ordinal_position`,
    );
    expect(columns.rows.map((r) => r.column_name)).toEqual(
      expect.arrayContaining(['id', 'name', 'email', 'country', 'card', 'ssn']),
    );

    const customers = await su.query<{ email: string; card: string | null; ssn: string | null }>(
      'SELECT email, card, ssn FROM customers',
    );
    expect(customers.rows.length).toBeGreaterThanOrEqual(20);
    for (const c of customers.rows) expect(c.email).toMatch(/^[a-z.]+@example\.(com|org)$/);
    const cards = customers.rows.flatMap((c) => (c.card ? [c.card.replace(/\D/g, '')] : []));
    expect(cards.length).toBeGreaterThanOrEqual(10);
    for (const card of cards) expect(luhnValid(card), card).toBe(true);
    expect(cards).toEqual(expect.arrayContaining(['4111111111111111', '5555555555554444']));
    const ssns = customers.rows.flatMap((c) => (c.ssn ? [c.ssn] : []));
    expect(ssns.length).toBeGreaterThan(0);
    for (const ssn of ssns) expect(ssn).toMatch(/^\d{3}-\d{2}-\d{4}$/);

    const users = await su.query<{ email: string; password: string }>(
      'SELECT email, password FROM users',
    );
    expect(users.rows.length).toBeGreaterThan(0);
    for (const u of users.rows) expect(u.password).toMatch(/^\$2b\$12\$.{53}$/);
    expect(before.canary?.length).toBeGreaterThan(0);
    // Other test files share this server and may have called nextval() already.
    expect(before.canarySeq?.lastValue).toMatch(/^\d+$/);
    expect(typeof before.canarySeq?.isCalled).toBe('boolean');
  });

  it('lets the reader read, and refuses it every write (42501)', async () => {
    const reader = await connectAs(pgInfo, 'reader');
    try {
      const { rows } = await reader.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM customers',
      );
      expect(rows[0]!.n).toBeGreaterThanOrEqual(20);
      await reader.query('SELECT last_value FROM canary_seq');
      for (const sql of [
        "INSERT INTO canary VALUES (900, 'reader')",
        "UPDATE customers SET name = 'x' WHERE id = 1",
        'DELETE FROM canary',
        'TRUNCATE canary',
        "SELECT nextval('canary_seq')",
        'CREATE TABLE pwned (a int)',
        'CREATE TEMP TABLE pwned (a int)',
        'DROP TABLE canary',
      ]) {
        await expect(reader.query(sql), sql).rejects.toMatchObject({ code: '42501' });
      }
    } finally {
      await reader.end();
    }
  });

  it('lets the writer change rows, and refuses it schema changes (42501)', async () => {
    const writer = await connectAs(pgInfo, 'writer');
    try {
      // Inside a transaction that is rolled back: other test files compare snapshots meanwhile.
      await writer.query('BEGIN');
      const ins = await writer.query<{ id: number }>(
        "INSERT INTO canary VALUES (900, 'writer') RETURNING id",
      );
      expect(ins.rows).toEqual([{ id: 900 }]);
      expect((await writer.query("UPDATE canary SET v = 'w2' WHERE id = 900")).rowCount).toBe(1);
      expect((await writer.query('DELETE FROM canary WHERE id = 900')).rowCount).toBe(1);
      await writer.query('ROLLBACK');
      for (const sql of [
        'TRUNCATE canary',
        'CREATE TABLE pwned (a int)',
        'DROP TABLE canary',
        'ALTER TABLE canary ADD COLUMN x int',
      ]) {
        await expect(writer.query(sql), sql).rejects.toMatchObject({ code: '42501' });
      }
    } finally {
      await writer.end();
    }
    // nextval would move canary_seq under other tests' feet: ask the catalog instead.
    const { rows } = await su.query<Record<string, boolean>>(
      `SELECT has_sequence_privilege('gatehouse_writer', 'canary_seq', 'USAGE') AS writer_usage,
              has_sequence_privilege('gatehouse_reader', 'canary_seq', 'USAGE') AS reader_usage,
              has_sequence_privilege('gatehouse_reader', 'canary_seq', 'SELECT') AS reader_select`,
    );
    expect(rows[0]).toEqual({ writer_usage: true, reader_usage: false, reader_select: true });
  });

  it('snapshotState is stable across calls and connections, and matches the tables', async () => {
    expect(await snapshotState(su)).toEqual(before);
    const other = await connectAs(pgInfo, 'superuser');
    try {
      expect(await snapshotState(other)).toEqual(before);
    } finally {
      await other.end();
    }
    const canary = await su.query('SELECT * FROM canary ORDER BY id');
    expect(before.canary).toEqual(canary.rows);
    const seq = await su.query<{ last_value: string; is_called: boolean }>(
      'SELECT last_value, is_called FROM canary_seq',
    );
    expect(before.canarySeq).toEqual({
      lastValue: seq.rows[0]!.last_value,
      isCalled: seq.rows[0]!.is_called,
    });
  });

  it('snapshotState sees changes to rows, schema, roles, privileges and objects', async () => {
    // Seen from inside one transaction that is rolled back, so no other test ever sees them.
    await su.query('BEGIN');
    try {
      await su.query("INSERT INTO canary VALUES (901, 'harness')");
      const rowsChanged = await snapshotState(su);
      expect(changed(before, rowsChanged)).toEqual(['canary', 'data']);
      expect(rowsChanged.canary).toContainEqual({ id: 901, v: 'harness' });
      await su.query("UPDATE customers SET name = 'Mallory' WHERE id = 1");
      expect((await snapshotState(su)).data['public.customers']).not.toEqual(
        before.data['public.customers'],
      );

      const steps: Array<[string, string[]]> = [
        ['GRANT INSERT ON canary TO gatehouse_reader', ['privileges']],
        ["ALTER ROLE gatehouse_reader PASSWORD 'pw-changed'", ['roles']],
        ['CREATE ROLE harness_tmp', ['objects', 'roles']],
        ['ALTER DATABASE app SET work_mem = 8192', ['roles']],
        [
          "CREATE FUNCTION harness_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
          ['objects', 'schema'],
        ],
        ['CREATE TABLE harness_tmp (a int)', ['data', 'objects', 'privileges', 'schema']],
        ['CREATE INDEX harness_idx ON customers (country)', ['objects', 'schema']],
        ['SELECT lo_create(0)', ['objects']],
      ];
      for (const [sql, expected] of steps) {
        const previous = await snapshotState(su);
        await su.query(sql);
        expect(changed(previous, await snapshotState(su)), sql).toEqual(expected);
      }
    } finally {
      await su.query('ROLLBACK');
    }
    expect(await snapshotState(su)).toEqual(before);
  });

  it('leaves the shared fixtures exactly as it found them', async () => {
    expect(await snapshotState(su)).toEqual(before);
  });
});

describe.skipIf(!pgInfo.available)('a standalone server (the API the benchmark uses)', () => {
  it('starts its own server, sees committed changes from other sessions, and stops exactly its PID', async () => {
    const server = await startPostgres();
    const { info } = server;
    let dataDir = '';
    try {
      expect(info.port).not.toBe(pgInfo.port);
      expect(info.pid).not.toBe(pgInfo.pid);
      expect(info.reader.password).not.toBe(pgInfo.reader.password);
      await seedFixtures(info);
      const su = await connectAs(info, 'superuser');
      const writer = await connectAs(info, 'writer');
      try {
        dataDir = (await su.query<{ d: string }>("SELECT current_setting('data_directory') AS d"))
          .rows[0]!.d;
        const initial = await snapshotState(su);
        await writer.query("INSERT INTO canary VALUES (902, 'committed')");
        const inserted = await snapshotState(su);
        expect(changed(initial, inserted)).toEqual(['canary', 'data']);
        await writer.query('DELETE FROM canary WHERE id = 902');
        expect(await snapshotState(su)).toEqual(initial);

        await writer.query("SELECT nextval('canary_seq')");
        const bumped = await snapshotState(su);
        expect(changed(initial, bumped)).toEqual(['canarySeq', 'data']);
        expect(bumped.canarySeq).toEqual({ lastValue: '1', isCalled: true });
      } finally {
        await writer.end();
        await su.end();
      }
    } finally {
      await server.stop();
    }
    expect(() => process.kill(info.pid, 0)).toThrow(/ESRCH/);
    expect(dataDir).not.toBe('');
    expect(existsSync(path.dirname(dataDir))).toBe(false);
    // The shared server is untouched by this one's start and stop.
    expect(() => process.kill(pgInfo.pid, 0)).not.toThrow();
  });
});
