import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { verifyAuditFile } from '../../recordings/audit.js';
import { startGateway, textOf, type TestClient, type TestGateway } from '../helpers/gateway.js';
import { classifySql } from '../../tools/postgres/classify.js';
import { connectAs } from '../helpers/postgres.js';
import { snapshotState } from '../helpers/pg-state.js';

const pgInfo = inject('pg');

interface Case {
  sql: string;
  params?: Array<string | number | boolean | null>;
  expect: string;
  tags?: string[];
  note?: string;
}
const corpus = (file: string): Case[] =>
  readFileSync(new URL(`../corpus/${file}`, import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Case);
const cases = [...corpus('sql.jsonl'), ...corpus('sql-extra.jsonl')];

const policy = {
  rules: [
    {
      id: 'analysts-read',
      match: {
        groups: ['analysts'],
        tools: ['postgres_query'],
        targets: ['app-db'],
        operations: ['read'],
      },
      effect: 'allow',
      mask: ['pii'],
      limits: { maxRows: 50, timeout: '5s' },
    },
    {
      id: 'small-reads',
      match: {
        subjects: ['capped-*'],
        tools: ['postgres_query'],
        targets: ['app-db'],
        operations: ['read'],
      },
      effect: 'allow',
      limits: { maxRows: 3, timeout: '300ms' },
    },
    {
      id: 'readonly-read',
      match: {
        groups: ['readonly'],
        tools: ['postgres_query'],
        targets: ['app-db'],
        operations: ['read'],
      },
      effect: 'allow',
    },
    { id: 'no-ddl', match: { tools: ['postgres_query'], operations: ['ddl'] }, effect: 'deny' },
    {
      id: 'writers-write',
      match: {
        groups: ['writers'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['read', 'write'],
      },
      effect: 'allow',
    },
    {
      id: 'writes-need-approval',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['write'] },
      effect: 'approve',
      approval: { approvers: { groups: ['dba'] }, hold: '1s' },
    },
  ],
  masking: {
    pii: {
      detectors: ['email', 'credit_card'],
      columns: ['*.password', 'customers.ssn'],
      style: 'redact',
    },
  },
};

const ok = (r: CallToolResult) => {
  expect(r.isError, textOf(r)).toBeFalsy();
  return r.structuredContent as {
    columns: Array<{ name: string }>;
    rows: unknown[][];
    rowCount: number;
    truncated: boolean;
    operation: string;
  };
};

describe.skipIf(!pgInfo.available)('postgres_query against a real PostgreSQL', () => {
  let gw: TestGateway;
  let analyst: TestClient;
  let su: pg.Client;

  beforeAll(async () => {
    gw = await startGateway({ pg: pgInfo, policy });
    analyst = await gw.connect(await gw.mint('alice', ['analysts']));
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
    await gw?.close();
  });

  it('lists governed tools with schemas and annotations', async () => {
    const { tools } = await analyst.client.listTools();
    const names = tools.map((t) => t.name).sort();
    expect(names).toEqual([
      'await_approval',
      'explain',
      'list_targets',
      'postgres_query',
      'review_approvals',
    ]);
    for (const t of tools) {
      expect(t.outputSchema, t.name).toBeDefined();
      expect(t.annotations, t.name).toBeDefined();
      expect(t.inputSchema.additionalProperties, t.name).toBe(false);
    }
  });

  it('answers an allowed read with rows, fenced as untrusted data', async () => {
    const r = await analyst.call('postgres_query', {
      target: 'app-db',
      sql: 'SELECT id, name, country FROM customers ORDER BY id LIMIT 3',
    });
    const s = ok(r);
    expect(s.columns.map((c) => c.name)).toEqual(['id', 'name', 'country']);
    expect(s.rows).toHaveLength(3);
    expect(s.operation).toBe('read');
    expect(s.truncated).toBe(false);
    expect(textOf(r)).toMatch(
      /<untrusted-data id="[0-9a-f]+">[\s\S]*<\/untrusted-data id="[0-9a-f]+">/,
    );
  });

  it('binds parameters through the extended protocol', async () => {
    const s = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT id FROM customers WHERE id = $1',
        params: [2],
      }),
    );
    expect(s.rows).toEqual([[2]]);
    // A parameter is a value, never SQL.
    const s2 = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT count(*)::int FROM customers WHERE name = $1',
        params: ["x' OR '1'='1"],
      }),
    );
    expect(s2.rows).toEqual([[0]]);
  });

  it('masks emails and card numbers in values, and masked columns even under an alias', async () => {
    const r = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT email, card, ssn FROM customers ORDER BY id LIMIT 5',
      }),
    );
    const raw = await su.query<{ email: string; card: string; ssn: string }>(
      'SELECT email, card, ssn FROM customers ORDER BY id LIMIT 5',
    );
    const seen = JSON.stringify(r.rows);
    for (const row of raw.rows) {
      expect(seen).not.toContain(row.email);
      if (row.card) expect(seen).not.toContain(row.card);
      if (row.ssn) expect(seen).not.toContain(row.ssn);
    }
    const aliased = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT u.password AS p, u.id FROM users u ORDER BY id',
      }),
    );
    const pw = await su.query<{ password: string }>('SELECT password FROM users ORDER BY id');
    for (const row of pw.rows) expect(JSON.stringify(aliased.rows)).not.toContain(row.password);
    // A subquery and a CTE keep the column's origin too.
    const cte = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'WITH x AS (SELECT password FROM users) SELECT * FROM (SELECT password AS q FROM x) s',
      }),
    );
    for (const row of pw.rows) expect(JSON.stringify(cte.rows)).not.toContain(row.password);
  });

  it('caps rows with truncated: true, bounded by the rule', async () => {
    const capped = await gw.connect(await gw.mint('capped-bob', []));
    const s = ok(
      await capped.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT g FROM generate_series(1, 100000) g',
      }),
    );
    expect(s.rows).toHaveLength(3);
    expect(s.truncated).toBe(true);
    // Exactly at the cap is not truncated.
    const exact = ok(
      await capped.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT g FROM generate_series(1, 3) g',
      }),
    );
    expect(exact).toMatchObject({ rowCount: 3, truncated: false });
    // Rows past the cap are never computed: a trillion-row series answers within the
    // analysts' 5 s statement timeout (computing it whole would take hours). In the select
    // list the series is produced row by row; in FROM it would be materialized first.
    const huge = ok(
      await analyst.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT generate_series(1, 1000000000000) AS g',
      }),
    );
    expect(huge).toMatchObject({ rowCount: 50, truncated: true });
    expect(huge.rows[49]).toEqual(['50']);
    // The caller may ask for fewer, never for more.
    const fewer = ok(
      await capped.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT g FROM generate_series(1, 10) g',
        maxRows: 2,
      }),
    );
    expect(fewer.rows).toHaveLength(2);
    const more = ok(
      await capped.call('postgres_query', {
        target: 'app-db',
        sql: 'SELECT g FROM generate_series(1, 10) g',
        maxRows: 9,
      }),
    );
    expect(more.rows).toHaveLength(3);
  });

  it('survives the server terminating its connection mid-call, and answers TARGET_ERROR', async () => {
    const slow = analyst.call('postgres_query', {
      target: 'app-db',
      sql: "SELECT pg_sleep(3), 'victim' AS tag",
    });
    // Wait for the statement to be running, then kill its backend from outside.
    let killed = false;
    for (let i = 0; i < 100 && !killed; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const r = await su.query<{ k: boolean }>(
        `SELECT pg_terminate_backend(pid) AS k FROM pg_stat_activity
          WHERE query LIKE '%''victim''%' AND pid <> pg_backend_pid()`,
      );
      killed = r.rows.some((row) => row.k);
    }
    expect(killed).toBe(true);
    const r = await slow;
    expect(textOf(r)).toMatch(/^TARGET_ERROR: /);
    // Still serving, on a fresh connection.
    expect(
      ok(await analyst.call('postgres_query', { target: 'app-db', sql: 'SELECT 1 AS one' })).rows,
    ).toEqual([[1]]);
  });

  it('stops a statement at the rule timeout with TIMEOUT', async () => {
    const capped = await gw.connect(await gw.mint('capped-carol', []));
    const r = await capped.call('postgres_query', {
      target: 'app-db',
      sql: 'SELECT count(*) FROM generate_series(1, 200000000) a',
    });
    expect(r.isError).toBe(true);
    expect(textOf(r)).toMatch(/^TIMEOUT: /);
  });

  it('denies DDL naming the rule and the statement', async () => {
    const before = await snapshotState(su);
    const r = await analyst.call('postgres_query', { target: 'app-db', sql: 'DROP TABLE canary' });
    expect(r.isError).toBe(true);
    expect(textOf(r)).toBe('DENIED by rule no-ddl: statement is ddl (DropStmt)');
    expect(r.structuredContent).toMatchObject({ code: 'DENIED', rule: 'no-ddl' });
    expect(await snapshotState(su)).toEqual(before);
  });

  it('holds a call whose rule asks for approval: APPROVAL_PENDING, nothing runs', async () => {
    const before = await snapshotState(su);
    const r = await analyst.call('postgres_query', {
      target: 'app-db',
      sql: "INSERT INTO canary VALUES (7, 'x')",
    });
    expect(textOf(r)).toMatch(
      /^APPROVAL_PENDING: approval apr_\S+ is waiting for an approver \(group dba\) under rule writes-need-approval/,
    );
    expect(await snapshotState(su)).toEqual(before);
  });

  it('reports bad input as INVALID_INPUT', async () => {
    const syntax = await analyst.call('postgres_query', { target: 'app-db', sql: 'SELEC 1' });
    expect(textOf(syntax)).toMatch(/^INVALID_INPUT: syntax error at position \d+/);
    const unknownKey = await analyst.call('postgres_query', {
      target: 'app-db',
      sql: 'SELECT 1',
      database: 'postgres',
    });
    expect(textOf(unknownKey)).toMatch(/^INVALID_INPUT: /);
    const noTarget = await analyst.call('postgres_query', { sql: 'SELECT 1' });
    expect(textOf(noTarget)).toMatch(/^INVALID_INPUT: target/);
    const later = await analyst.call('ssh_exec', { target: 'web-1', argv: ['uptime'] });
    expect(textOf(later)).toBe(
      'INVALID_INPUT: tool ssh_exec is not available in this release of Gatehouse',
    );
  });

  it('denies targets the policy does not name, by default; a name not configured is unknown', async () => {
    const r = await analyst.call('postgres_query', { target: 'app-db-rw', sql: 'SELECT 1' });
    expect(textOf(r)).toMatch(/^DENIED by rule default-deny: /);
    // #8.4: a typo'd target says so, rather than hiding behind a policy denial.
    const ghost = await analyst.call('postgres_query', { target: 'no-such-db', sql: 'SELECT 1' });
    expect(textOf(ghost)).toBe('INVALID_INPUT: unknown target "no-such-db"');
  });

  it('list_targets shows only what this identity may do', async () => {
    const r = await analyst.call('list_targets', {});
    expect(r.isError).toBeFalsy();
    const { targets } = r.structuredContent as {
      targets: Array<{
        name: string;
        tools: Array<{ operations: Array<{ operation: string; effect: string }> }>;
      }>;
    };
    // writes-need-approval names no target, so every target offers the analyst "write: approve".
    expect(targets.map((t) => t.name)).toEqual(['app-db', 'app-db-rw', 'app-db-badpw']);
    expect(targets[2]!.tools[0]!.operations).toEqual([{ operation: 'write', effect: 'approve' }]);
    expect(targets[0]!.tools[0]!.operations).toEqual([
      { operation: 'read', effect: 'allow' },
      { operation: 'write', effect: 'approve' },
    ]);
    const stranger = await gw.connect(await gw.mint('mallory', []));
    const none = await stranger.call('list_targets', {});
    expect((none.structuredContent as { targets: unknown[] }).targets).toEqual([]);
  });

  it('parses strings as the classifier did, even where the role turns standard_conforming_strings off', async () => {
    // With the setting off, '\' opens a string the classifier (always "on") sees closed, and
    // the server would read a different statement from the same text.
    const sql = "SELECT '\\' AS a, $$' , current_user AS leaked -- $$ AS b";
    expect((await classifySql(sql)).operation).toBe('read');
    await su.query(`ALTER ROLE ${pgInfo.reader.user} SET standard_conforming_strings = off`);
    try {
      const plain = await connectAs(pgInfo, 'reader');
      try {
        // The control: a connection of that role without the gateway's options has it off.
        expect((await plain.query('SHOW standard_conforming_strings')).rows).toEqual([
          { standard_conforming_strings: 'off' },
        ]);
      } finally {
        await plain.end();
      }
      const s = ok(await analyst.call('postgres_query', { target: 'app-db', sql }));
      expect(s.columns.map((c) => c.name)).toEqual(['a', 'b']);
      expect(s.rows).toEqual([['\\', "' , current_user AS leaked -- "]]);
    } finally {
      await su.query(`ALTER ROLE ${pgInfo.reader.user} RESET standard_conforming_strings`);
    }
  });

  it('says, before and at the call, that several statements are refused after policy', async () => {
    const input = { target: 'app-db', sql: 'SELECT 1; SELECT 2' };
    const e = await analyst.call('explain', { tool: 'postgres_query', input });
    expect(e.structuredContent).toMatchObject({
      effect: 'allow',
      refusal: 'one statement per call (got 2): refused with INVALID_INPUT',
    });
    const r = await analyst.call('postgres_query', input);
    expect(textOf(r)).toBe('INVALID_INPUT: one statement per call (got 2)');
    const badKey = await analyst.call('explain', {
      tool: 'postgres_query',
      input: { ...input, extra: 1 },
    });
    expect(textOf(badKey)).toMatch(/^INVALID_INPUT: input: /);
  });

  it('explain gives the decision without executing', async () => {
    const before = await snapshotState(su);
    const r = await analyst.call('explain', {
      tool: 'postgres_query',
      input: { target: 'app-db', sql: 'DELETE FROM canary' },
    });
    expect(r.structuredContent).toMatchObject({
      effect: 'approve',
      rule: 'writes-need-approval',
      operation: 'write',
    });
    expect((r.structuredContent as { parts: Array<{ tags: string[] }> }).parts[0]!.tags).toContain(
      'unbounded',
    );
    expect(await snapshotState(su)).toEqual(before);
  });

  it('writes through the writer target when policy allows, in a session that is reset after', async () => {
    const writer = await gw.connect(await gw.mint('wendy', ['writers']));
    const s = ok(
      await writer.call('postgres_query', {
        target: 'app-db-rw',
        sql: "INSERT INTO canary VALUES (500, 'w') RETURNING id",
      }),
    );
    expect(s.rows).toEqual([[500]]);
    expect(s.operation).toBe('write');
    ok(
      await writer.call('postgres_query', {
        target: 'app-db-rw',
        sql: 'DELETE FROM canary WHERE id = 500',
      }),
    );
    const check = await su.query('SELECT count(*)::int AS n FROM canary WHERE id = 500');
    expect(check.rows[0]).toEqual({ n: 0 });
  });

  describe('the shared corpus under a read-only policy', () => {
    let reader: TestClient;
    beforeAll(async () => {
      reader = await gw.connect(await gw.mint('rita', ['readonly']));
    });

    it.each(cases)('$expect: $sql', async (c) => {
      const input = { target: 'app-db', sql: c.sql, ...(c.params ? { params: c.params } : {}) };
      const explained = await reader.call('explain', { tool: 'postgres_query', input });
      if (c.expect === 'invalid') {
        expect(textOf(explained)).toMatch(/^INVALID_INPUT: /);
        return;
      }
      expect(explained.isError, textOf(explained)).toBeFalsy();
      const ex = explained.structuredContent as {
        operation: string;
        effect: string;
        parts: Array<{ tags: string[] }>;
      };
      expect(ex.operation.split(',')).toContain(c.expect);
      for (const tag of c.tags ?? []) expect(ex.parts.flatMap((p) => p.tags)).toContain(tag);

      const before = await snapshotState(su);
      const r = await reader.call('postgres_query', input);
      if (c.expect === 'read') {
        // Every read is answered (it may legitimately be an error from the server, e.g. a
        // permission error for pg_catalog functions, but never a policy refusal).
        // (#8.4: a statement with placeholders and no params is INVALID_INPUT, saying so.)
        expect(textOf(r)).not.toMatch(
          /^(DENIED|APPROVAL_|INVALID_INPUT(?!: the statement has placeholder))/,
        );
      } else {
        expect(r.isError).toBe(true);
        expect(textOf(r)).toMatch(/^DENIED by rule (no-ddl|default-deny): /);
      }
      expect(await snapshotState(su)).toEqual(before);
    });
  });

  it('leaves an audit chain that verifies', async () => {
    const result = await verifyAuditFile(`${gw.dir}/audit.jsonl`);
    expect(result).toMatchObject({ ok: true });
  });

  it('writes every audit field of the contract on every line', async () => {
    const lines = (await readFile(`${gw.dir}/audit.jsonl`, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.length).toBeGreaterThan(100);
    const required = ['time', 'seq', 'callId', 'session', 'sub', 'groups', 'tool', 'target'];
    required.push('operation', 'input', 'decision', 'outcome', 'masked', 'prev', 'hash');
    for (const line of lines) {
      for (const key of required)
        expect(line, `${key} in line ${String(line.seq)}`).toHaveProperty(key);
      if (line.kind === 'outcome') {
        expect(line.outcome).toMatchObject({ status: expect.any(String) as unknown });
        expect(typeof line.masked).toBe('object');
      }
    }
    // A call refused before its input parsed is on record with what was sent.
    const bogus = lines.find(
      (l) => (l.input as { database?: string } | null)?.database === 'postgres',
    );
    expect(bogus).toMatchObject({
      target: 'app-db',
      input: { sql: 'SELECT 1', database: 'postgres' },
      decision: { effect: 'deny', rule: 'input' },
    });
  });
});
