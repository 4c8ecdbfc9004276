import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { PostgresExecutor } from '../../tools/postgres/executor.js';
import { PostgresPools, type ResolvedPostgresTarget } from '../../tools/postgres/pool.js';
import type { ToolOutput } from '../../tools/types.js';

const pgInfo = inject('pg');

/**
 * The executor below the classifier: what a session keeps between calls. These statements
 * never reach it through postgres_query (the classifier calls set_config admin); here they
 * are handed to it as "read" on purpose, to prove the second line of defence on its own.
 */
describe.skipIf(!pgInfo.available)('postgres sessions between calls', () => {
  let pools: PostgresPools;
  let executor: PostgresExecutor;
  let target: ResolvedPostgresTarget;
  const limits = { maxRows: 100, timeoutMs: 5_000, maxOutputBytes: 1 << 20 };
  const rowsOf = (out: ToolOutput): unknown[][] => {
    if (out.kind !== 'rows') throw new Error(`expected rows, got ${out.kind}`);
    return out.rows;
  };
  const read = (sql: string) =>
    executor.run(
      target,
      { sql, params: [], maxRows: 100, operation: 'read', statementCount: 1 },
      limits,
      new AbortController().signal,
    );

  beforeAll(() => {
    pools = new PostgresPools();
    executor = new PostgresExecutor(pools);
    target = {
      name: 'app-db',
      host: pgInfo.host,
      port: pgInfo.port,
      database: pgInfo.database,
      user: pgInfo.reader.user,
      password: pgInfo.reader.password,
      ssl: 'disable',
      sslCa: undefined,
      // One connection: every call below gets the very session the previous one used.
      poolSize: 1,
      connectTimeoutMs: 5_000,
    };
  });
  afterAll(async () => {
    await pools?.closeAll();
  });

  it('resets a read session before reuse: settings, prepared statements, held cursors', async () => {
    const pid = async () => rowsOf(await read('SELECT pg_backend_pid()'));
    const first = await pid();
    await read("SELECT set_config('gatehouse.leak', 'from-the-last-call', false)");
    expect(rowsOf(await read("SELECT current_setting('gatehouse.leak', true)"))).toEqual([['']]);
    // Same session all along (pool of one): the reset, not a new connection, cleared it.
    // (A failed call closes its connection, so the checks below each start on a fresh one.)
    expect(await pid()).toEqual(first);
    await read('PREPARE leftover AS SELECT 1');
    await expect(read('EXECUTE leftover')).rejects.toMatchObject({
      message: expect.stringMatching(/26000/) as unknown,
    });
    await read('DECLARE held CURSOR WITH HOLD FOR SELECT 1');
    await expect(read('FETCH held')).rejects.toMatchObject({
      message: expect.stringMatching(/34000/) as unknown,
    });
  });

  it('keeps the session read-only, with its statement timeout, after a reset', async () => {
    await read("SELECT set_config('default_transaction_read_only', 'off', false)");
    await read("SELECT set_config('statement_timeout', '0', false)");
    expect(rowsOf(await read('SHOW default_transaction_read_only'))).toEqual([['on']]);
    expect(rowsOf(await read('SHOW statement_timeout'))).toEqual([['5s']]);
    await expect(read("INSERT INTO canary (v) VALUES ('x')")).rejects.toMatchObject({
      code: 'TARGET_ERROR',
      message: expect.stringMatching(/25006/) as unknown,
    });
  });

  it('cuts a running statement on abort, answers TIMEOUT, and the process lives on', async () => {
    const controller = new AbortController();
    const running = executor.run(
      target,
      { sql: 'SELECT pg_sleep(3)', params: [], maxRows: 10, operation: 'read', statementCount: 1 },
      limits,
      controller.signal,
    );
    setTimeout(() => controller.abort(), 200);
    await expect(running).rejects.toMatchObject({ code: 'TIMEOUT' });
    // node-postgres reports the cut socket as an 'error' event on the client too; unhandled,
    // it would have ended this process before the next line.
    await new Promise((r) => setTimeout(r, 100));
    expect(rowsOf(await read('SELECT 2 AS two'))).toEqual([[2]]);
  });
});
