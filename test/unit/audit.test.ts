import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import {
  appendFile,
  mkdir,
  mkdtemp,
  readFile,
  rename,
  rm,
  symlink,
  truncate,
  unlink,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  auditChainFile,
  AuditIntegrityError,
  AuditLog,
  auditHash,
  auditWriterId,
  GENESIS_PREV,
  isChainName,
  listAuditChains,
  mergeByTime,
  openAuditChain,
  readAuditLines,
  verifyAuditFile,
  type AuditLine,
  type AuditRecord,
} from '../../recordings/audit.js';
import { canonicalJson } from '../../recordings/canonical.js';
import { auditTail, auditVerify, auditVerifyChains } from '../../recordings/commands.js';
import { capture } from '../helpers/io.js';

let dir: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'gatehouse-audit-'));
  file = path.join(dir, 'logs', 'audit.jsonl');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function rec(i: number, over: Partial<AuditRecord> = {}): AuditRecord {
  return {
    kind: 'decision',
    callId: `call-${i}`,
    session: 'sess-1',
    sub: 'alice',
    groups: ['dba'],
    tool: 'postgres_query',
    target: 'main',
    operation: 'read',
    input: { sql: `select ${i}`, params: [] },
    decision: { effect: 'allow', rule: 'readers', reason: 'reads are fine' },
    ...over,
  };
}

async function writeLog(n: number): Promise<AuditLine[]> {
  const log = await AuditLog.open(file);
  const out: AuditLine[] = [];
  for (let i = 1; i <= n; i++) out.push(await log.append(rec(i)));
  await log.close();
  return out;
}

async function fileLines(): Promise<string[]> {
  const text = await readFile(file, 'utf8');
  return text.split('\n').slice(0, -1);
}

async function setLines(lines: string[]): Promise<void> {
  await writeFile(file, lines.map((l) => l + '\n').join(''));
}

async function waitFor(check: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('canonicalJson', () => {
  it('sorts keys at every depth and drops whitespace and undefined members', () => {
    const value = { b: 1, a: { d: [3, { z: true, y: null }], c: 'x' }, u: undefined };
    expect(canonicalJson(value)).toBe('{"a":{"c":"x","d":[3,{"y":null,"z":true}]},"b":1}');
  });

  it('orders keys by UTF-16 code units and writes numbers as ECMAScript does (RFC 8785)', () => {
    const value = { '\ufb33': 1, '\ud83d\ude00': 2, '\u20ac': 3, '1': 4, '\r': 5, '\u00f6': 6 };
    expect(canonicalJson(value)).toBe(
      '{"\\r":5,"1":4,"\u00f6":6,"\u20ac":3,"\ud83d\ude00":2,"\ufb33":1}',
    );
    expect(canonicalJson([-0, 1e21, 1e-7, 0.1, 333333333.3333333, 4.5])).toBe(
      '[0,1e+21,1e-7,0.1,333333333.3333333,4.5]',
    );
    expect(canonicalJson('a\u0001"\\\n')).toBe('"a\\u0001\\"\\\\\\n"');
  });

  it('is stable through a parse round trip', () => {
    const value = { s: 'line\nbreak \u2028 "q"', n: [1.5, -2, 1e300], o: { '': 0, __proto__x: 1 } };
    const once = canonicalJson(value);
    expect(canonicalJson(JSON.parse(once))).toBe(once);
  });

  it('treats a "toJSON" key in data as data, and honours toJSON on Dates', () => {
    expect(canonicalJson({ toJSON: 'x' })).toBe('{"toJSON":"x"}');
    expect(canonicalJson({ t: new Date(0) })).toBe('{"t":"1970-01-01T00:00:00.000Z"}');
  });

  it.each([
    ['NaN', { a: NaN }],
    ['Infinity', [Infinity]],
    ['bigint', { a: 1n }],
    ['function', { a: () => 1 }],
    ['Map', { a: new Map() }],
  ])('refuses %s instead of changing the evidence', (_name, value) => {
    expect(() => canonicalJson(value)).toThrow(TypeError);
  });

  it('refuses cycles but accepts shared references', () => {
    const shared = { x: 1 };
    expect(canonicalJson({ a: shared, b: shared })).toBe('{"a":{"x":1},"b":{"x":1}}');
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => canonicalJson(cyclic)).toThrow(/cycle/);
  });
});

describe('AuditLog', () => {
  it('writes a chain that verifies, in canonical form, as returned', async () => {
    const written = await writeLog(5);
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 5 });
    const lines = await fileLines();
    expect(lines).toHaveLength(5);
    lines.forEach((text, i) => {
      const line = JSON.parse(text) as AuditLine;
      expect(text).toBe(canonicalJson(line));
      expect(line).toEqual(written[i]);
      expect(line.seq).toBe(i + 1);
      expect(line.prev).toBe(i === 0 ? GENESIS_PREV : written[i - 1]!.hash);
      const { hash, ...rest } = line;
      expect(hash).toBe(auditHash(line.prev, rest));
      expect(Date.parse(line.time)).not.toBeNaN();
    });
  });

  it('records outcome, approval and masked counts, and leaves the caller object alone', async () => {
    const log = await AuditLog.open(file);
    const r = rec(1, {
      kind: 'outcome',
      approval: { id: 'ap-1', approver: 'bob', answer: 'approved' },
      outcome: { status: 'ok', rows: 3, durationMs: 12 },
      masked: { email: 2 },
    });
    const copy = structuredClone(r);
    const line = await log.append(r);
    await log.close();
    expect(r).toEqual(copy);
    expect(line).toMatchObject({ ...copy, seq: 1 });
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 1 });
  });

  it('a line appended with durable: false is in the file at once, and chains with the next', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1), { durable: false });
    // Readers see it before any flush (it is in the file, not in a buffer of ours).
    expect((await readFile(file, 'utf8')).split('\n').filter(Boolean)).toHaveLength(1);
    await log.append(rec(2, { kind: 'outcome', outcome: { status: 'ok', durationMs: 1 } }));
    await log.close();
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 2 });
  });

  it('continues the chain after a reopen', async () => {
    const first = await writeLog(2);
    const log = await AuditLog.open(file);
    const third = await log.append(rec(3));
    await log.append(rec(4));
    await log.close();
    expect(third.seq).toBe(3);
    expect(third.prev).toBe(first[1]!.hash);
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 4 });
  });

  it('keeps 50 concurrent appends in one unforked chain', async () => {
    const log = await AuditLog.open(file);
    const lines = await Promise.all(Array.from({ length: 50 }, (_, i) => log.append(rec(i + 1))));
    await log.close();
    // Serialized in call order: the i-th append got seq i+1.
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(lines.map((l) => l.callId)).toEqual(lines.map((_, i) => `call-${i + 1}`));
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 50 });
  });

  it('refuses to open on a torn last line instead of starting a new chain', async () => {
    await writeLog(3);
    const size = (await readFile(file)).length;
    await truncate(file, size - 20);
    await expect(AuditLog.open(file)).rejects.toThrow(AuditIntegrityError);
    await expect(AuditLog.open(file)).rejects.toThrow(/torn/);
    // And nothing was appended by the refused opens.
    expect((await readFile(file)).length).toBe(size - 20);
  });

  it('refuses to open when the last line was edited', async () => {
    await writeLog(2);
    const lines = await fileLines();
    lines[1] = lines[1]!.replace('"alice"', '"mallory"');
    await setLines(lines);
    await expect(AuditLog.open(file)).rejects.toThrow(/hash mismatch/);
  });

  it('rejects an append when the file path no longer leads to the log, then recovers', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1));
    const logs = path.dirname(file);
    // Root ignores permissions: break the path instead, by making its parent a plain file.
    await rename(logs, path.join(dir, 'moved'));
    await writeFile(logs, 'not a directory');
    await expect(log.append(rec(2))).rejects.toThrow(/gone or unreachable/);
    await unlink(logs);
    await rename(path.join(dir, 'moved'), logs);
    const next = await log.append(rec(3));
    await log.close();
    expect(next.seq).toBe(2);
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 2 });
  });

  it('rejects an append when someone else wrote to the file', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1));
    await appendFile(file, '{"forged":true}\n');
    await expect(log.append(rec(2))).rejects.toThrow(/changed size/);
    await log.close();
  });

  it('rejects an append when the file was deleted', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1));
    await unlink(file);
    await expect(log.append(rec(2))).rejects.toThrow(AuditIntegrityError);
    await log.close();
  });

  it.skipIf(!existsSync('/dev/full'))('rejects an append whose write fails (ENOSPC)', async () => {
    await mkdir(path.dirname(file), { recursive: true });
    await symlink('/dev/full', file);
    const log = await AuditLog.open(file);
    await expect(log.append(rec(1))).rejects.toMatchObject({ code: 'ENOSPC' });
    // The failed line cannot be cut back on a device: the log stops taking lines.
    await expect(log.append(rec(2))).rejects.toThrow(/unusable after a failed write/);
    await log.close();
  });

  it('rejects a record that cannot be serialized, and the chain goes on', async () => {
    const log = await AuditLog.open(file);
    await expect(log.append(rec(1, { input: { n: 1n } }))).rejects.toThrow();
    const ok = await log.append(rec(2));
    await log.close();
    expect(ok.seq).toBe(1);
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 1 });
  });

  it('finishes pending appends on close and refuses appends after it', async () => {
    const log = await AuditLog.open(file);
    const pending = [log.append(rec(1)), log.append(rec(2))];
    await log.close();
    await expect(Promise.all(pending)).resolves.toHaveLength(2);
    await expect(log.append(rec(3))).rejects.toThrow(/closed/);
    await log.close();
  });
});

describe('one writer per audit file', () => {
  const lockFile = () => `${file}.lock`;
  const holder = (pid: number, host = os.hostname()) =>
    JSON.stringify({ pid, host, since: '2025-01-01T00:00:00.000Z' });

  it('refuses a second open in the same process until the first is closed', async () => {
    const log = await AuditLog.open(file);
    await expect(AuditLog.open(file)).rejects.toThrow(/already open in this process/);
    await log.close();
    const again = await AuditLog.open(file);
    await again.close();
  });

  it('holds a lock file while open and removes it on close', async () => {
    const log = await AuditLog.open(file);
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ pid: process.pid });
    await log.close();
    expect(existsSync(lockFile())).toBe(false);
  });

  it('refuses to open while another live process holds the lock', async () => {
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(lockFile(), holder(process.ppid));
    await expect(AuditLog.open(file)).rejects.toThrow(/in use by process/);
    await writeFile(lockFile(), holder(12345, 'some-other-host'));
    await expect(AuditLog.open(file)).rejects.toThrow(/some-other-host/);
    // The refused opens left the holder's lock alone.
    expect(await readFile(lockFile(), 'utf8')).toContain('some-other-host');
  });

  it('takes over a stale lock left by a crashed process', async () => {
    await mkdir(path.dirname(file), { recursive: true });
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    await writeFile(lockFile(), holder(dead));
    const log = await AuditLog.open(file);
    expect(JSON.parse(await readFile(lockFile(), 'utf8'))).toMatchObject({ pid: process.pid });
    await log.close();
  });

  it('releases the lock when it refuses a torn log', async () => {
    await writeLog(1);
    await appendFile(file, '{"torn":');
    await expect(AuditLog.open(file)).rejects.toThrow(/torn/);
    expect(existsSync(lockFile())).toBe(false);
  });
});

describe('verifyAuditFile', () => {
  it('accepts an empty log', async () => {
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, '');
    expect(await verifyAuditFile(file)).toEqual({ ok: true, lines: 0 });
  });

  it('detects an edited field', async () => {
    await writeLog(4);
    const lines = await fileLines();
    lines[2] = lines[2]!.replace('"effect":"allow"', '"effect":"deny"');
    await setLines(lines);
    expect(await verifyAuditFile(file)).toEqual({
      ok: false,
      line: 3,
      reason: expect.stringMatching(/hash mismatch/) as unknown,
    });
  });

  it('detects an edit whose hash was recomputed, at the next line', async () => {
    await writeLog(4);
    const lines = await fileLines();
    const line = JSON.parse(lines[1]!) as AuditLine;
    const { hash: _h, ...rest } = { ...line, sub: 'mallory' };
    lines[1] = canonicalJson({ ...rest, hash: auditHash(rest.prev, rest) });
    await setLines(lines);
    const r = await verifyAuditFile(file);
    expect(r).toMatchObject({ ok: false, line: 3 });
    expect(!r.ok && r.reason).toMatch(/prev does not match the hash of line 2/);
  });

  it('detects a removed line', async () => {
    await writeLog(4);
    const lines = await fileLines();
    lines.splice(1, 1);
    await setLines(lines);
    const r = await verifyAuditFile(file);
    expect(r).toMatchObject({ ok: false, line: 2 });
    expect(!r.ok && r.reason).toMatch(/seq 3 where 2 was expected/);
  });

  it('detects a removed first line', async () => {
    await writeLog(3);
    await setLines((await fileLines()).slice(1));
    expect(await verifyAuditFile(file)).toMatchObject({ ok: false, line: 1 });
  });

  it('detects swapped lines', async () => {
    await writeLog(4);
    const lines = await fileLines();
    [lines[1], lines[2]] = [lines[2]!, lines[1]!];
    await setLines(lines);
    expect(await verifyAuditFile(file)).toMatchObject({ ok: false, line: 2 });
  });

  it('detects a torn last line', async () => {
    await writeLog(3);
    const size = (await readFile(file)).length;
    await truncate(file, size - 10);
    const r = await verifyAuditFile(file);
    expect(r).toMatchObject({ ok: false, line: 3 });
    expect(!r.ok && r.reason).toMatch(/torn/);
  });

  it('detects a complete last line with its newline cut off', async () => {
    await writeLog(2);
    const size = (await readFile(file)).length;
    await truncate(file, size - 1);
    expect(await verifyAuditFile(file)).toMatchObject({ ok: false, line: 2 });
  });

  it('detects a non-JSON line', async () => {
    await writeLog(3);
    const lines = await fileLines();
    lines.splice(1, 0, 'hello');
    await setLines(lines);
    expect(await verifyAuditFile(file)).toEqual({ ok: false, line: 2, reason: 'not valid JSON' });
  });

  it('detects a rewritten line with the same values (key order changed)', async () => {
    await writeLog(2);
    const lines = await fileLines();
    const { hash, ...rest } = JSON.parse(lines[0]!) as AuditLine;
    lines[0] = JSON.stringify({ hash, ...rest });
    await setLines(lines);
    const r = await verifyAuditFile(file);
    expect(r).toMatchObject({ ok: false, line: 1 });
    expect(!r.ok && r.reason).toMatch(/canonical/);
  });

  it('detects a duplicate key that hides a value from some parsers', async () => {
    await writeLog(1);
    const [line] = await fileLines();
    await setLines([line!.replace('{', '{"sub":"mallory",')]);
    expect(await verifyAuditFile(file)).toMatchObject({ ok: false, line: 1 });
  });
});

describe('readAuditLines', () => {
  it('reads every line, skipping an incomplete last one', async () => {
    await writeLog(3);
    await appendFile(file, '{"half":');
    const got: AuditLine[] = [];
    for await (const line of readAuditLines(file)) got.push(line);
    expect(got.map((l) => l.seq)).toEqual([1, 2, 3]);
  });

  it('follows appended lines and stops when aborted', async () => {
    await writeLog(2);
    const controller = new AbortController();
    const got: AuditLine[] = [];
    const reading = (async () => {
      for await (const line of readAuditLines(file, { follow: true, signal: controller.signal })) {
        got.push(line);
      }
    })();
    await waitFor(() => got.length === 2);
    const log = await AuditLog.open(file);
    await log.append(rec(3));
    await log.append(rec(4));
    await log.close();
    await waitFor(() => got.length === 4);
    controller.abort();
    await reading;
    expect(got.map((l) => l.callId)).toEqual(['call-1', 'call-2', 'call-3', 'call-4']);
  });
});

describe('audit commands', () => {
  it('verify: exit 0 on an intact chain', async () => {
    await writeLog(3);
    const c = capture();
    expect(await auditVerify(file, c.io)).toBe(0);
    expect(c.out()).toBe('ok: 3 lines, chain intact\n');
    await rm(file);
    await writeLog(1);
    const one = capture();
    await auditVerify(file, one.io);
    expect(one.out()).toBe('ok: 1 line, chain intact\n');
  });

  it('verify: exit 1 naming the first broken line', async () => {
    await writeLog(3);
    const lines = await fileLines();
    lines[1] = lines[1]!.replace('alice', 'alicf');
    await setLines(lines);
    const c = capture();
    expect(await auditVerify(file, c.io)).toBe(1);
    expect(c.out()).toMatch(/^audit chain broken at line 2: hash mismatch/);
  });

  it('verify: exit 1 on a missing file (a deleted log fails the check)', async () => {
    const c = capture();
    expect(await auditVerify(path.join(dir, 'nope.jsonl'), c.io)).toBe(1);
    expect(c.err()).toMatch(/no audit log at/);
  });

  async function mixedLog(): Promise<void> {
    const log = await AuditLog.open(file);
    await log.append(rec(1));
    await log.append(
      rec(1, { kind: 'outcome', outcome: { status: 'ok', rows: 2, durationMs: 7 } }),
    );
    await log.append(
      rec(2, {
        sub: 'bob',
        tool: 'ssh_exec',
        target: 'web1',
        operation: 'exec',
        decision: { effect: 'deny', rule: 'no-ssh', reason: 'no' },
      }),
    );
    await log.append(
      rec(3, { sub: 'bob', decision: { effect: 'deny', rule: 'no-writes', reason: 'no' } }),
    );
    await log.close();
  }

  it('tail: prints human lines, filtered by sub, tool and effect', async () => {
    await mixedLog();
    const all = capture();
    expect(await auditTail(file, { follow: false, json: false }, all.io)).toBe(0);
    const lines = all.out().trim().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(
      /^\S+Z alice postgres_query main read allow readers {2}sql: select 1$/,
    );
    expect(lines[1]).toMatch(
      / alice postgres_query main read allow readers ok 2 rows 7ms {2}sql: select 1$/,
    );

    const bob = capture();
    await auditTail(file, { follow: false, json: false, sub: 'bob' }, bob.io);
    expect(bob.out().trim().split('\n')).toHaveLength(2);

    const ssh = capture();
    await auditTail(file, { follow: false, json: false, tool: 'ssh_exec' }, ssh.io);
    expect(ssh.out()).toMatch(/ bob ssh_exec web1 exec deny no-ssh {2}sql: select 2\n$/);

    const denied = capture();
    await auditTail(
      file,
      { follow: false, json: false, decision: 'deny', tool: 'postgres_query' },
      denied.io,
    );
    expect(denied.out().trim().split('\n')).toEqual([
      expect.stringMatching(/deny no-writes {2}sql: select 3$/),
    ]);
  });

  it('tail: refused input is not a policy deny; the statement on one line; -n and --since', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1, { input: { sql: 'SELECT 1,\n  2 --\nFROM t', params: [] } }));
    const refusal = { effect: 'deny', rule: 'input', reason: 'sql: syntax error' };
    await log.append(rec(2, { operation: null, input: { sql: 'SELEC 1' }, decision: refusal }));
    const digest = { digest: 'sha256:ab', bytes: 200_000, preview: 'SELECT 1' };
    await log.append(rec(3, { input: { sql: digest }, decision: refusal }));
    await log.append(rec(4, { tool: 'list_targets', target: null, operation: null, input: {} }));
    await log.close();
    const c = capture();
    await auditTail(file, { follow: false, json: false }, c.io);
    const lines = c.out().trimEnd().split('\n');
    expect(lines[0]).toMatch(/ read allow readers {2}sql: SELECT 1,\\n {2}2 --\\nFROM t$/);
    expect(lines[1]).toMatch(/ postgres_query main - refused \(input\) {2}sql: SELEC 1$/);
    expect(lines[2]).toMatch(/ refused \(input\) {2}sql: SELECT 1… \(200000 bytes, sha256:ab\)$/);
    expect(lines[3]).toMatch(/ list_targets - - allow readers$/);

    const refused = capture();
    await auditTail(file, { follow: false, json: false, decision: 'refused' }, refused.io);
    expect(refused.out().trimEnd().split('\n')).toHaveLength(2);
    const denied = capture();
    await auditTail(file, { follow: false, json: false, decision: 'deny' }, denied.io);
    expect(denied.out()).toBe('');
    expect(denied.err()).toBe('gatehouse audit tail: no line matches --decision deny\n');

    const last = capture();
    await auditTail(file, { follow: false, json: false, lines: 2 }, last.io);
    expect(last.out().trimEnd().split('\n')).toEqual(lines.slice(2));
    const later = capture();
    await auditTail(file, { follow: false, json: false, since: Date.now() + 60_000 }, later.io);
    expect(later.out()).toBe('');
  });

  it('tail --json prints the raw lines', async () => {
    await mixedLog();
    const c = capture();
    await auditTail(file, { follow: false, json: true, decision: 'allow' }, c.io);
    const lines = await fileLines();
    expect(c.out()).toBe(lines.slice(0, 2).join('\n') + '\n');
  });

  it('tail -f picks up appended lines and stops on abort', async () => {
    await writeLog(1);
    const controller = new AbortController();
    const c = capture();
    const tail = auditTail(
      file,
      { follow: true, json: false, sub: 'carol', signal: controller.signal },
      c.io,
    );
    const log = await AuditLog.open(file);
    await log.append(rec(2, { sub: 'carol' }));
    await log.append(rec(3));
    await log.append(rec(4, { sub: 'carol', tool: 'kubectl' }));
    await waitFor(() => c.out().includes('kubectl'));
    controller.abort();
    expect(await tail).toBe(0);
    await log.close();
    const lines = c.out().trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/ carol postgres_query /);
    expect(lines[1]).toMatch(/ carol kubectl /);
  });

  it('tail: exit 2 on a missing file, exit 1 on a non-JSON line', async () => {
    const missing = capture();
    expect(
      await auditTail(path.join(dir, 'nope'), { follow: false, json: false }, missing.io),
    ).toBe(2);
    await writeLog(1);
    await appendFile(file, 'garbage\n');
    const bad = capture();
    expect(await auditTail(file, { follow: false, json: false }, bad.io)).toBe(1);
    expect(bad.err()).toMatch(/:2: not a JSON line/);
  });

  it('tail: escapes terminal control characters from recorded values', async () => {
    const log = await AuditLog.open(file);
    await log.append(rec(1, { sub: 'eve\u001b]0;owned\u0007' }));
    await log.close();
    const c = capture();
    await auditTail(file, { follow: false, json: false }, c.io);
    expect(c.out()).not.toContain('\u001b');
    expect(c.out()).toContain('eve\\x1b]0;owned\\x07');
  });

  it('tail: a newline in a field cannot forge a line; C1, bidi and invisible characters are escaped', async () => {
    const fake = '2025-01-01T00:00:00.000Z alice postgres_query main read allow readers';
    const log = await AuditLog.open(file);
    await log.append(
      rec(1, {
        target: `main\n${fake}`,
        sub: 'eve\t\r\u0085\u009b\u202e\u2067\u200d\u2029\ufeff\u061c',
      }),
    );
    await log.close();
    const c = capture();
    await auditTail(file, { follow: false, json: false }, c.io);
    const out = c.out();
    expect(out.trimEnd().split('\n')).toHaveLength(1);
    expect(out).toContain(`main\\n${fake}`);
    expect(out).toContain('eve\\t\\r\\x85\\x9b\\u202e\\u2067\\u200d\\u2029\\ufeff\\u061c');

    const j = capture();
    await auditTail(file, { follow: false, json: true }, j.io);
    expect(j.out()).not.toMatch(/[\u0080-\u009f\u202e\u2067\u2029\ufeff\u061c]|\u200d/);
    expect(j.out()).toContain('\\u0085\\u009b\\u202e\\u2067\\u200d\\u2029\\ufeff\\u061c');
    const parsed = JSON.parse(j.out()) as AuditLine;
    expect(parsed.sub).toBe('eve\t\r\u0085\u009b\u202e\u2067\u200d\u2029\ufeff\u061c');
    expect(parsed.target).toBe(`main\n${fake}`);
  });
});

describe('audit chains: one per writer (CONTRACT section 2)', () => {
  it('names a writer by GATEHOUSE_REPLICA_ID, else host, pid and start time', () => {
    expect(auditWriterId({ GATEHOUSE_REPLICA_ID: 'web-1' })).toBe('web-1');
    expect(auditWriterId({})).toMatch(new RegExp(`-${process.pid}-\\d{8}T\\d{9}Z$`));
    expect(auditWriterId({})).toBe(auditWriterId({}));
    for (const bad of ['../x', 'a/b', '.hidden', 'x'.repeat(129), 'a b', 'x.lock'])
      expect(() => auditWriterId({ GATEHOUSE_REPLICA_ID: bad })).toThrow(/GATEHOUSE_REPLICA_ID/);
  });

  it('puts each chain beside the base, and lists the base first, then the chains by name', async () => {
    expect(auditChainFile(file, 'web-1')).toBe(path.join(dir, 'logs', 'audit.web-1.jsonl'));
    expect(auditChainFile(path.join(dir, 'trail'), 'w')).toBe(path.join(dir, 'trail.w'));
    expect(await listAuditChains(file)).toEqual([]);
    await mkdir(path.dirname(file), { recursive: true });
    for (const name of [
      'audit.web-2.jsonl',
      'audit.web-1.jsonl',
      'audit.jsonl',
      'audit.web-1.jsonl.lock',
      'audit.jsonl.lock',
      'audit..jsonl',
      'audit-old.jsonl',
      'other.web-1.jsonl',
    ])
      await writeFile(path.join(dir, 'logs', name), '');
    expect(await listAuditChains(file)).toEqual(
      ['audit.jsonl', 'audit.web-1.jsonl', 'audit.web-2.jsonl'].map((n) =>
        path.join(dir, 'logs', n),
      ),
    );
    expect(isChainName('audit.h-1-20250101T000000000Z.jsonl', 'audit', '.jsonl')).toBe(true);
    expect(isChainName('audit.x.tmp.jsonl', 'audit', '.jsonl')).toBe(false);
  });

  it('writes the writer id into every line, and keeps chains apart', async () => {
    const a = await AuditLog.open(file, { writer: 'a' });
    const b = await openAuditChain(file, { env: {} });
    expect(b.file).toBe(auditChainFile(file, auditWriterId({})));
    const lines = [await a.append(rec(1)), await b.append(rec(2)), await a.append(rec(3))];
    await Promise.all([a.close(), b.close()]);
    expect(lines.map((l) => [l.writer, l.seq])).toEqual([
      ['a', 1],
      [auditWriterId({}), 1],
      ['a', 2],
    ]);
    expect(lines[1]!.prev).toBe(GENESIS_PREV);
    for (const f of await listAuditChains(file)) expect((await verifyAuditFile(f)).ok).toBe(true);
  });

  it('takes the base when it is free; a torn base is left closed and a chain of its own opens', async () => {
    const first = await openAuditChain(file, { env: {} });
    expect(first.file).toBe(file);
    await first.append(rec(1));
    await first.close();
    await appendFile(file, '{"torn":');
    const notices: string[] = [];
    const next = await openAuditChain(file, { env: {}, notice: (m) => notices.push(m) });
    expect(next.file).not.toBe(file);
    await next.close();
    expect(notices[0]).toMatch(/ends in a torn line/);
    // A base whose last complete line was edited is not a crash: refused.
    await setLines([(await fileLines())[0]!.replace('alice', 'mallory')]);
    await expect(openAuditChain(file, { env: {} })).rejects.toThrow(/hash mismatch/);
  });

  it('a replica always writes its own chain and continues it; a torn one is refused', async () => {
    const env = { GATEHOUSE_REPLICA_ID: 'r1' };
    const one = await openAuditChain(file, { env });
    expect(one.file).toBe(auditChainFile(file, 'r1'));
    await one.append(rec(1));
    await one.close();
    const two = await openAuditChain(file, { env });
    expect((await two.append(rec(2))).seq).toBe(2);
    await two.close();
    await appendFile(auditChainFile(file, 'r1'), '{"to');
    await expect(openAuditChain(file, { env })).rejects.toThrow(/torn/);
  });

  it('verify reports a torn tail with the bytes of the whole lines before it', async () => {
    await writeLog(2);
    const size = (await readFile(file)).length;
    await appendFile(file, '{"seq":3');
    expect(await verifyAuditFile(file)).toEqual({
      ok: false,
      line: 3,
      reason: expect.stringMatching(/torn/) as unknown,
      torn: { intactBytes: size },
    });
  });

  it('merges chains in time order, ties in source order', async () => {
    async function* of(...items: Array<[string, number]>) {
      for (const i of items) yield i;
    }
    const merged: string[] = [];
    for await (const [name] of mergeByTime(
      [of(['a1', 1], ['a2', 5], ['a3', 9]), of(), of(['b1', 2], ['b2', 5]), of(['c1', NaN])],
      ([, t]) => t,
    ))
      merged.push(name);
    expect(merged).toEqual(['c1', 'a1', 'b1', 'a2', 'b2', 'a3']);
  });

  it('verify and tail cover every chain of a base; --file stays one file', async () => {
    await writeLog(2);
    const other = await AuditLog.open(auditChainFile(file, 'w2'), { writer: 'w2' });
    await other.append(rec(7, { sub: 'bob' }));
    await other.close();
    const v = capture();
    expect(await auditVerifyChains(file, v.io)).toBe(0);
    expect(v.out()).toBe(
      `ok: 2 lines, chain intact: ${file}\n` +
        `ok: 1 line, chain intact: ${auditChainFile(file, 'w2')}\n` +
        '2 chains: all intact\n',
    );
    const t = capture();
    expect(await auditTail(file, { follow: false, json: false, chains: true }, t.io)).toBe(0);
    expect(
      t
        .out()
        .trimEnd()
        .split('\n')
        .map((l) => l.split(' ')[1]),
    ).toEqual(['alice', 'alice', 'bob']);
    const one = capture();
    expect(await auditVerify(file, one.io)).toBe(0);
    expect(one.out()).toBe('ok: 2 lines, chain intact\n');
    const missing = capture();
    expect(await auditVerifyChains(path.join(dir, 'none.jsonl'), missing.io)).toBe(1);
    expect(missing.err()).toMatch(/no audit log at/);
  });

  it('tail -f follows a chain that appears after it started', async () => {
    await writeLog(1);
    const controller = new AbortController();
    const c = capture();
    const tail = auditTail(
      file,
      { follow: true, json: false, chains: true, signal: controller.signal, pollMs: 20 },
      c.io,
    );
    await waitFor(() => c.out().includes('alice'));
    const late = await AuditLog.open(auditChainFile(file, 'late'), { writer: 'late' });
    await late.append(rec(2, { sub: 'zoe' }));
    await waitFor(() => c.out().includes('zoe'));
    controller.abort();
    expect(await tail).toBe(0);
    await late.close();
  });
});
