import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { classifySql } from '../../tools/postgres/classify.js';
import { READ_FUNCTIONS } from '../../tools/postgres/functions.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/**
 * The classifier's function tables checked against the real server's catalog, so a version
 * that adds a function cannot slip one past unnoticed.
 */
describe.skipIf(!pgInfo.available)('classifier tables against pg_proc', () => {
  let su: pg.Client;
  beforeAll(async () => {
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
  });

  it('every pg_catalog function callable as an attribute (x.f) is read-safe or caught', async () => {
    // Callable with exactly one argument, of a type SQL can produce (not internal).
    const { rows } = await su.query<{ proname: string }>(`
      SELECT DISTINCT p.proname
        FROM pg_proc p
       WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.prokind = 'f'
         AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1
         AND p.proargtypes[0] <> 'internal'::regtype
       ORDER BY 1`);
    expect(rows.length).toBeGreaterThan(500);
    const missed: string[] = [];
    for (const { proname } of rows) {
      if (READ_FUNCTIONS.has(proname)) continue;
      const c = await classifySql(`SELECT t."${proname.replaceAll('"', '""')}" FROM t`);
      if (c.operation === 'read') missed.push(proname);
    }
    expect(missed).toEqual([]);
  });
});
