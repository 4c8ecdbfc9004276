import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { BoundedQuery } from '../../tools/postgres/bounded-query.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/**
 * The executor's one-round-trip query, straight on a pg client: whatever the server answers,
 * the promise settles and the connection stays usable (or the process would be at risk:
 * node-postgres throws from its socket handler on protocol messages a query cannot take).
 */
describe.skipIf(!pgInfo.available)('BoundedQuery on a real PostgreSQL', () => {
  let client: pg.Client;
  beforeAll(async () => {
    client = await connectAs(pgInfo, 'writer');
  });
  afterAll(async () => {
    await client?.end();
  });

  const run = (sql: string, params: unknown[] = [], limit = 10, budget?: number) => {
    const q = new BoundedQuery(sql, params, limit, budget);
    void client.query(q);
    return q.promise;
  };
  const stillUsable = async () => expect((await run('SELECT 41 + 1')).rows).toEqual([[42]]);

  it('returns typed rows, fields and the command', async () => {
    const r = await run('SELECT $1::int AS a, $2::text AS b, now() AS t', [7, 'x']);
    expect(r.fields.map((f) => f.name)).toEqual(['a', 'b', 't']);
    expect(r.rows[0]?.slice(0, 2)).toEqual([7, 'x']);
    expect(r.rows[0]?.[2]).toBeInstanceOf(Date);
    expect(r).toMatchObject({ suspended: false, command: 'SELECT', rowCount: 1 });
  });

  it('stops at the limit and says the statement had more', async () => {
    const r = await run('SELECT generate_series(1, 1000000)', [], 4);
    expect(r.rows).toEqual([[1], [2], [3], [4]]);
    expect(r).toMatchObject({ suspended: true, rowCount: null });
    await stillUsable();
  });

  it('keeps rows only up to its byte budget, reads and drops the rest, and stays usable', async () => {
    const r = await run(
      "SELECT repeat('x', 100000) AS wide FROM generate_series(1, 50)",
      [],
      100,
      250_000,
    );
    expect(r.rows).toHaveLength(2);
    expect(r).toMatchObject({ overBudget: true, suspended: true });
    await stillUsable();
  });

  it('reports rows affected by a write', async () => {
    await run('BEGIN');
    const r = await run('UPDATE canary SET v = v WHERE id IN (SELECT id FROM canary LIMIT 2)');
    await run('ROLLBACK');
    expect(r).toMatchObject({ fields: [], rows: [], command: 'UPDATE', rowCount: 2 });
  });

  it('rejects on a server error and leaves the connection usable', async () => {
    await expect(run('SELECT * FROM no_such_table')).rejects.toMatchObject({ code: '42P01' });
    await expect(run('SELEC 1')).rejects.toMatchObject({ code: '42601' });
    await stillUsable();
  });

  it('refuses COPY TO STDOUT and COPY FROM STDIN without breaking the connection', async () => {
    await expect(run('COPY canary TO STDOUT')).rejects.toThrow(/COPY TO STDOUT/);
    await stillUsable();
    await expect(run('COPY canary FROM STDIN')).rejects.toBeTruthy();
    await stillUsable();
  });
});
