import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startGateway, textOf, type TestClient, type TestGateway } from '../helpers/gateway.js';
import { connectAs, type PgInfo } from '../helpers/postgres.js';
import { snapshotState, type PgState } from '../helpers/pg-state.js';

/**
 * Issue #6, item 2: functions, operators and types outside pg_catalog ran as `read`. A
 * database of its own holds everything the probe used: extensions whose functions act
 * (tablefunc's crosstab runs SQL text, pg_visibility rewrites the visibility map), a user
 * function that writes a file on the server (IMMUTABLE, SECURITY DEFINER, owned by the
 * superuser: `COPY ... TO` a file works in a read-only transaction), a user function
 * shadowing a built-in name, a user operator, a domain whose CHECK calls it, a view and a
 * row-security policy calling it, an enum with a cast through it. Under a read-only policy no
 * call may create the file or change anything; ordinary reads still work.
 */

const base = inject('pg');
const DB = 'probe_catalog';

const policy = {
  rules: [
    {
      id: 'readers-read',
      match: { groups: ['readers'], tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
    },
  ],
};

describe.skipIf(!base.available)('#6.2 what a read reaches, checked against the catalog', () => {
  const info: PgInfo = { ...base, database: DB };
  let canaryDir: string;
  let admin: pg.Client;
  let gw: TestGateway;
  let trustingGw: TestGateway;
  let agent: TestClient;
  let trustingAgent: TestClient;
  let before: PgState;

  const leakFiles = async () => (await readdir(canaryDir)).sort();

  beforeAll(async () => {
    canaryDir = await mkdtemp(path.join(tmpdir(), 'gatehouse-leak-'));
    // The server (running as the postgres account) writes there when the trap springs.
    await chmod(canaryDir, 0o777);
    const root = await connectAs(base, 'superuser', { database: 'postgres' });
    try {
      await root.query(`DROP DATABASE IF EXISTS ${DB}`);
      await root.query(`CREATE DATABASE ${DB}`);
    } finally {
      await root.end();
    }
    admin = await connectAs(info, 'superuser');
    const reader = pg.escapeIdentifier(base.reader.user);
    const file = (n: string) => pg.escapeLiteral(path.join(canaryDir, n));
    await admin.query(`
      CREATE EXTENSION tablefunc;
      CREATE EXTENSION pg_visibility;
      CREATE EXTENSION pg_trgm;
      CREATE TABLE items (id int PRIMARY KEY, name text);
      INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g;
      -- COPY TO counts as read-only: it runs in a read-only transaction.
      CREATE FUNCTION leak(n int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN EXECUTE format('COPY (SELECT %s) TO %s', n, quote_literal(${file('leak-')} || n)); RETURN n; END $$;
      -- Volatility is not safety: an IMMUTABLE function may call a volatile one.
      CREATE FUNCTION pure(n int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT leak(n)';
      CREATE FUNCTION leak2(a int, b int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT leak(a) = b';
      CREATE FUNCTION lower(n int) RETURNS text LANGUAGE sql AS 'SELECT leak(n)::text';
      CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = leak2);
      CREATE DOMAIN checked AS int CHECK (leak(VALUE) > 0);
      CREATE TYPE boxed AS (v checked);
      -- A literal meeting a checked column is coerced to the domain: COALESCE(v, '5') runs it.
      CREATE TABLE measured (id int, v checked);
      CREATE DOMAIN plain_checked AS int CHECK (VALUE > 0);
      CREATE TABLE plain_measured (id int, v plain_checked);
      INSERT INTO plain_measured VALUES (1, 1);
      CREATE VIEW leaky_view AS SELECT id, leak(id) AS l FROM items;
      CREATE VIEW plain_view AS SELECT id, upper(name) AS name FROM items;
      CREATE VIEW view_over_leaky AS SELECT id FROM leaky_view;
      CREATE TABLE guarded (id int, v text);
      INSERT INTO guarded VALUES (1, 'a'), (2, 'b');
      ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
      ALTER TABLE guarded FORCE ROW LEVEL SECURITY;
      CREATE POLICY p ON guarded FOR SELECT USING (leak(id + 100) > 0);
      CREATE TYPE mood AS ENUM ('calm', 'busy');
      CREATE FUNCTION mood_text(m mood) RETURNS text LANGUAGE sql AS 'SELECT leak(7)::text';
      CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood);
      CREATE TABLE moods (id int, m mood);
      INSERT INTO moods VALUES (1, 'calm');
      REVOKE CREATE ON SCHEMA public FROM PUBLIC;
      GRANT CONNECT ON DATABASE ${DB} TO ${reader};
      GRANT USAGE ON SCHEMA public TO ${reader};
      GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${reader};
    `);

    // The trap is live: the reader's own read-only session springs it.
    const direct = await connectAs(info, 'reader');
    try {
      await direct.query('SET default_transaction_read_only = on');
      await direct.query('SELECT leak(1)');
    } finally {
      await direct.end();
    }
    expect(await leakFiles()).toEqual(['leak-1']);
    await rm(path.join(canaryDir, 'leak-1'));

    gw = await startGateway({ pg: info, policy });
    agent = await gw.connect(await gw.mint('rita', ['readers']));
    trustingGw = await startGateway({
      pg: info,
      policy,
      targets: { 'app-db': { trusted: ['extension:pg_trgm', 'public.plain_view'] } },
    });
    trustingAgent = await trustingGw.connect(await trustingGw.mint('rita', ['readers']));
    before = await snapshotState(admin);
  });

  afterAll(async () => {
    await gw?.close();
    await trustingGw?.close();
    await admin?.end();
    const root = await connectAs(base, 'superuser', { database: 'postgres' });
    try {
      await root.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
    } finally {
      await root.end();
    }
    await rm(canaryDir, { recursive: true, force: true });
  });

  const sql = (s: string) => ({ target: 'app-db', sql: s });

  it.each([
    ['a user function shadowing a built-in name', 'SELECT lower(5)', /public\.lower\(\)/],
    ['a user function in attribute notation', 'SELECT (5).leak', /x\.leak/],
    ['an IMMUTABLE user function in attribute notation', 'SELECT (5).pure', /x\.pure/],
    [
      'a user function on a column in attribute notation',
      'SELECT (i.id).leak FROM items i',
      /x\.leak/,
    ],
    ['an unqualified user operator', 'SELECT 1 === 2', /operator ===/],
    [
      'a user operator in a subquery',
      'SELECT * FROM items WHERE (SELECT 1 === id)',
      /operator ===/,
    ],
    ['a cast to a domain whose CHECK calls it', 'SELECT 3::checked', /public\.checked/],
    [
      'a domain in a column definition list',
      'SELECT * FROM (VALUES (4)) v(x) WHERE x::checked > 0',
      /public\.checked/,
    ],
    ['a view that calls it', 'SELECT * FROM leaky_view', /public\.leaky_view/],
    ['a view over that view', 'SELECT * FROM view_over_leaky', /public\.view_over_leaky/],
    ['a view under EXPLAIN (planned, folded)', 'EXPLAIN SELECT * FROM leaky_view', /leaky_view/],
    ['a row-security policy that calls it', 'SELECT count(*) FROM guarded', /row-security/],
    ['a cast through a user function', 'SELECT m::text FROM moods', /moods|mood/],
    [
      'tablefunc crosstab2 in attribute notation (runs SQL text)',
      "SELECT (('SELECT ''a''::text, ''b''::text, leak(9)::text')::text).crosstab2",
      /crosstab2/,
    ],
    [
      'pg_visibility in attribute notation (rewrites the visibility map)',
      "SELECT ('items'::regclass).pg_truncate_visibility_map",
      /pg_truncate_visibility_map/,
    ],
    [
      'a built-in that reads a table named at run time',
      "SELECT table_to_xml('leaky_view', true, false, '')",
      /table_to_xml/,
    ],
    [
      'a whole schema dumped as XML',
      "SELECT schema_to_xml('public', true, false, '')",
      /schema_to_xml/,
    ],
    [
      "a literal coerced to a checked column's domain",
      "SELECT COALESCE(v, '5') FROM measured",
      /measured/,
    ],
    ['a cast to a row type with a checked field', 'SELECT ROW(1)::boxed', /public\.boxed/],
    ['a pg_trgm operator the target does not trust', "SELECT 'abc' % 'abd'", /operator %/],
    [
      'a pg_trgm function the target does not trust',
      "SELECT similarity('abc', 'abd')",
      /similarity/,
    ],
  ])('#6.2 refuses %s, and nothing runs', async (_name, statement, why) => {
    const r = await agent.call('postgres_query', sql(statement));
    expect(r.isError, textOf(r)).toBe(true);
    expect(textOf(r)).toMatch(/^DENIED by rule default-deny: /);
    expect(textOf(r)).toMatch(why);
    // explain, the same decision path, says the same.
    const e = await agent.call('explain', { tool: 'postgres_query', input: sql(statement) });
    expect(e.structuredContent).toMatchObject({ effect: 'deny', operation: 'unknown' });
    expect(await leakFiles()).toEqual([]);
  });

  it('#6.2 leaves the database exactly as it was, and created no file', async () => {
    expect(await leakFiles()).toEqual([]);
    expect(await snapshotState(admin)).toEqual(before);
  });

  it.each([
    ['a table', 'SELECT id, name FROM items ORDER BY id', 5],
    ['a join with USING', 'SELECT i.id FROM items i JOIN items j USING (id) ORDER BY 1', 5],
    [
      'a column of a domain whose CHECK is built-in',
      "SELECT COALESCE(v, '5') FROM plain_measured",
      1,
    ],
    ['a CASE on a column', "SELECT CASE id WHEN 1 THEN 'one' ELSE 'other' END FROM items", 5],
    ['the table a view reads', 'SELECT count(*) FROM items WHERE id IN (1, 2)', 1],
    [
      'built-in functions on its columns',
      'SELECT id FROM items WHERE length(initcap(upper(name))) > 0',
      5,
    ],
  ])('#6.2 still answers an ordinary read of %s', async (_name, statement, rows) => {
    const r = await agent.call('postgres_query', sql(statement));
    expect(r.isError, textOf(r)).toBeFalsy();
    expect((r.structuredContent as { rows: unknown[] }).rows).toHaveLength(rows);
  });

  it('#6.2 reads what the target trusts: an extension by name, a view by schema.name', async () => {
    for (const statement of [
      "SELECT similarity('abc', 'abd') > 0",
      "SELECT 'abc' % 'abd'",
      'SELECT * FROM plain_view ORDER BY id',
    ]) {
      const r = await trustingAgent.call('postgres_query', sql(statement));
      expect(r.isError, `${statement}: ${textOf(r)}`).toBeFalsy();
    }
    // Trust is by name: the rest stays refused.
    const r = await trustingAgent.call('postgres_query', sql('SELECT * FROM leaky_view'));
    expect(textOf(r)).toMatch(/^DENIED/);
    expect(await leakFiles()).toEqual([]);
  });

  it('#6.2 sees an object created after the catalog was cached, on the next call', async () => {
    const statement = 'SELECT (6).sneaky';
    let r = await agent.call('postgres_query', sql(statement));
    // Not a function yet: a field selection on an integer, which PostgreSQL refuses.
    expect(textOf(r)).toMatch(/^TARGET_ERROR/);
    await admin.query(
      'CREATE FUNCTION sneaky(n int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT leak(n) $$',
    );
    try {
      r = await agent.call('postgres_query', sql(statement));
      expect(textOf(r)).toMatch(/^DENIED by rule default-deny: .*sneaky/);
      expect(await leakFiles()).toEqual([]);
    } finally {
      await admin.query('DROP FUNCTION sneaky(int)');
    }
  });
});
