import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GovernanceError } from '../../server/kernel/errors.js';
import { classifyFunction, classifySql, stricter } from '../../tools/postgres/classify.js';
import {
  ADMIN_FUNCTIONS,
  READ_FUNCTIONS,
  UNKNOWN_FUNCTIONS,
  WRITE_FUNCTIONS,
} from '../../tools/postgres/functions.js';

interface CorpusCase {
  sql: string;
  params?: unknown[];
  expect: 'read' | 'write' | 'ddl' | 'admin' | 'unknown' | 'invalid';
  tags?: string[];
  note?: string;
}

function corpus(name: string): Array<[string, CorpusCase]> {
  const text = readFileSync(new URL(`../corpus/${name}`, import.meta.url), 'utf8');
  return text
    .split('\n')
    .map((line, i) => [line, i + 1] as const)
    .filter(([line]) => line.trim() !== '')
    .map(([line, n]) => {
      const c = JSON.parse(line) as CorpusCase;
      return [`${name}:${n} ${c.expect} ${JSON.stringify(c.sql).slice(0, 70)}`, c];
    });
}

async function expectInvalid(sql: string): Promise<GovernanceError> {
  const err: unknown = await classifySql(sql).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(GovernanceError);
  const g = err as GovernanceError;
  expect(g.code).toBe('INVALID_INPUT');
  expect(g.message).toMatch(/^syntax error at position \d+: \S/);
  return g;
}

describe.each(['sql.jsonl', 'sql-extra.jsonl'])('corpus %s', (file) => {
  it.each(corpus(file))('%s', async (_title, c) => {
    if (c.expect === 'invalid') {
      await expectInvalid(c.sql);
      return;
    }
    const r = await classifySql(c.sql);
    expect(r.operation, r.reason).toBe(c.expect);
    if (c.tags) expect([...r.tags].sort()).toEqual([...c.tags].sort());
    expect(r.reason).not.toBe('');
  });
});

describe('extra corpus', () => {
  it('has at least 25 cases, each with a note', () => {
    const cases = corpus('sql-extra.jsonl');
    expect(cases.length).toBeGreaterThanOrEqual(25);
    for (const [, c] of cases) expect(c.note, c.sql).toBeTruthy();
  });
});

describe('classifySql result shape', () => {
  it('describes every statement and reports the strictest', async () => {
    const r = await classifySql('SELECT 1; COMMIT; DROP TABLE canary');
    expect(r.statements.map((s) => [s.kind, s.operation])).toEqual([
      ['SelectStmt', 'read'],
      ['TransactionStmt', 'admin'],
      ['DropStmt', 'ddl'],
    ]);
    expect(r.operation).toBe('admin');
    expect(r.reason).toBe(r.statements[1]?.reason);
    expect(r.statements[2]?.reason).toBe('statement is ddl (DropStmt)');
  });

  it('unions tags over statements', async () => {
    const r = await classifySql('DELETE FROM a; UPDATE b SET x = 1 WHERE id = 2; TRUNCATE c');
    expect(r.tags).toEqual(['unbounded']);
    expect(r.statements.map((s) => s.tags)).toEqual([['unbounded'], [], ['unbounded']]);
    expect(r.operation).toBe('ddl');
  });

  it('names the function in the reason', async () => {
    const r = await classifySql("SELECT * FROM pg_read_file('/etc/passwd')");
    expect(r.reason).toBe('calls pg_read_file(), which reads server files');
    const q = await classifySql('SELECT s.f()');
    expect(q.reason).toBe('calls s.f(), a function outside pg_catalog');
  });

  it('says when EXPLAIN ANALYZE runs the statement', async () => {
    const r = await classifySql('EXPLAIN ANALYZE DELETE FROM canary');
    expect(r.reason).toMatch(/^EXPLAIN ANALYZE runs it: /);
  });

  it('ranks admin > unknown > ddl > write > read', () => {
    expect(stricter('read', 'write')).toBe('write');
    expect(stricter('ddl', 'write')).toBe('ddl');
    expect(stricter('ddl', 'unknown')).toBe('unknown');
    expect(stricter('admin', 'unknown')).toBe('admin');
  });
});

describe('syntax errors', () => {
  it('reports the parser position, counted from 1 in characters', async () => {
    expect((await expectInvalid('SELEC 1')).message).toBe(
      'syntax error at position 1: syntax error at or near "SELEC"',
    );
    // 'é' is two bytes: the position must count characters, as PostgreSQL does.
    expect((await expectInvalid("SELECT 'é' + + ;")).message).toMatch(
      /^syntax error at position 16:/,
    );
  });

  it('rejects a NUL at its position', async () => {
    expect((await expectInvalid('SELECT 1\0; DROP TABLE canary')).message).toMatch(
      /^syntax error at position 9: NUL/,
    );
  });

  it('rejects whitespace-only input', async () => {
    await expectInvalid('  \n\t ');
  });
});

describe('deep trees', () => {
  it('walks a deeply nested statement without overflowing the stack', async () => {
    const sql = 'SELECT 1 ' + 'UNION SELECT 1 '.repeat(3000) + "UNION SELECT pg_read_file('x')";
    expect((await classifySql(sql)).operation).toBe('admin');
  });
});

describe('function lists', () => {
  it('keeps every denied name out of the read allowlist', () => {
    for (const n of [
      ...ADMIN_FUNCTIONS.keys(),
      ...WRITE_FUNCTIONS.keys(),
      ...UNKNOWN_FUNCTIONS.keys(),
    ])
      expect(READ_FUNCTIONS.has(n), n).toBe(false);
    for (const n of ['lo_get', 'pg_ls_waldir', 'pg_advisory_xact_lock', 'dblink', 'pg_stat_reset'])
      expect(READ_FUNCTIONS.has(n), n).toBe(false);
  });

  it('holds the generated PostgreSQL 15 catalog', () => {
    for (const n of ['count', 'percentile_cont', 'now', 'current_setting', 'lower', 'jsonb_agg'])
      expect(READ_FUNCTIONS.has(n), n).toBe(true);
    expect(READ_FUNCTIONS.size).toBeGreaterThan(2000);
  });

  it('resolves names by schema', () => {
    expect(classifyFunction(['lower']).operation).toBe('read');
    expect(classifyFunction(['pg_catalog', 'lower']).operation).toBe('read');
    expect(classifyFunction(['public', 'lower']).operation).toBe('unknown');
    expect(classifyFunction(['db', 'pg_catalog', 'lower']).operation).toBe('unknown');
    expect(classifyFunction(['ext', 'pg_read_file']).operation).toBe('admin');
    expect(classifyFunction(['ext', 'nextval']).operation).toBe('write');
  });
});

describe('COPY through STDOUT/STDIN', () => {
  it.each([
    ['COPY canary TO STDOUT', 'SELECT * FROM "canary"'],
    [
      'copy public.canary (id, v) to stdout with (format csv)',
      'SELECT "id", "v" FROM "public"."canary"',
    ],
    ['COPY "We""ird" TO STDOUT', 'SELECT * FROM "We""ird"'],
    ["COPY (SELECT ')' AS p, 'é' FROM t /* ) */) TO STDOUT", "SELECT ')' AS p, 'é' FROM t /* ) */"],
    ['  -- lead\n COPY ( SELECT (1) ) TO STDOUT (FORMAT csv, HEADER)', 'SELECT (1)'],
    ['COPY (DELETE FROM canary RETURNING *) TO STDOUT', 'DELETE FROM canary RETURNING *'],
  ])('%s runs as its query', async (sql, runAs) => {
    const c = await classifySql(sql);
    expect(c.runAs).toBe(runAs);
    expect(c.unsupported).toBeUndefined();
  });

  it('COPY FROM STDIN is refused as unsupported; server files and PROGRAM need nothing', async () => {
    expect((await classifySql('COPY canary FROM STDIN')).unsupported).toMatch(/COPY FROM STDIN/);
    const file = await classifySql("COPY canary TO '/tmp/x'");
    expect(file.runAs).toBeUndefined();
    expect(file.operation).toBe('admin');
    expect((await classifySql('SELECT 1')).runAs).toBeUndefined();
  });
});
