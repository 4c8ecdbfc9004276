import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { recordingsList, recordingsReplay, recordingsShow } from '../../recordings/commands.js';
import {
  listRecordings,
  readRecording,
  RecordingLookupError,
  SessionRecorder,
  type RecordingHeader,
} from '../../recordings/session.js';
import { capture } from '../helpers/io.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'gatehouse-rec-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function header(session: string, over: Partial<RecordingHeader> = {}): RecordingHeader {
  return {
    session,
    identity: { sub: 'alice', groups: ['dba'] },
    client: { name: 'claude-code', version: '1.0.0' },
    start: '2025-01-01T10:00:00.000Z',
    transport: 'stdio',
    ...over,
  };
}

function call(i: number, time: string) {
  return {
    time,
    callId: `call-${i}`,
    tool: 'postgres_query',
    request: { target: 'main', sql: `select ${i}` },
    decision: { effect: 'allow', rule: 'readers', reason: 'reads are fine' },
    result: { content: [{ type: 'text', text: `result ${i}\nsecond line` }] },
    durationMs: 5,
  };
}

async function session(
  id: string,
  calls: ReturnType<typeof call>[],
  over: Partial<RecordingHeader> = {},
) {
  const r = await SessionRecorder.create(dir, header(id, over));
  for (const c of calls) await r.record(c);
  await r.close();
  return r.file;
}

describe('SessionRecorder', () => {
  it('writes a header and one line per call, read back as written', async () => {
    const r = await SessionRecorder.create(dir, header('s-1'));
    expect(r.file).toBe(path.join(dir, 's-1.jsonl'));
    const result = {
      isError: true,
      content: [{ type: 'text', text: 'DENIED by rule no-writes: nope' }],
      structuredContent: { code: 'DENIED', rule: 'no-writes', reason: 'nope', callId: 'c' },
    };
    await Promise.all([
      r.record({ ...call(1, '2025-01-01T10:00:01.000Z') }),
      r.record({ ...call(2, '2025-01-01T10:00:02.000Z'), result, decision: null }),
    ]);
    await r.close();

    const lines = (await readFile(r.file, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(3);
    expect(JSON.parse(lines[0]!)).toMatchObject({ type: 'header', session: 's-1' });

    const rec = await readRecording(dir, 's-1');
    expect(rec.header).toEqual(header('s-1'));
    expect(rec.events).toHaveLength(2);
    expect(rec.events[0]).toEqual(call(1, '2025-01-01T10:00:01.000Z'));
    expect(rec.events[1]!.result).toEqual(result);
    expect(rec.events[1]!.decision).toBeNull();
  });

  it('stamps a call with its start time when none is given', async () => {
    const r = await SessionRecorder.create(dir, header('s-2'));
    const before = Date.now();
    const { time: _t, ...ev } = call(1, '');
    await r.record({ ...ev, durationMs: 60_000 });
    await r.close();
    const { events } = await readRecording(dir, 's-2');
    const t = Date.parse(events[0]!.time);
    expect(t).toBeGreaterThanOrEqual(before - 60_000 - 5);
    expect(t).toBeLessThan(before);
  });

  it('never reuses or overwrites a session file', async () => {
    await session('s-3', []);
    await expect(SessionRecorder.create(dir, header('s-3'))).rejects.toMatchObject({
      code: 'EEXIST',
    });
  });

  it('refuses a session id that is not a plain file name', async () => {
    await expect(SessionRecorder.create(dir, header('../evil'))).rejects.toThrow(/cannot name/);
  });

  it('refuses to record after close', async () => {
    const r = await SessionRecorder.create(dir, header('s-4'));
    await r.close();
    await expect(r.record(call(1, '2025-01-01T10:00:00.000Z'))).rejects.toThrow(/closed/);
  });
});

describe('listRecordings and readRecording', () => {
  it('lists sessions oldest first with their call counts', async () => {
    await session('bbb', [call(1, '2025-01-02T00:00:00.000Z')], {
      start: '2025-01-02T00:00:00.000Z',
      identity: { sub: 'bob', groups: [] },
    });
    await session(
      'aaa',
      [call(1, '2025-01-01T00:00:00.000Z'), call(2, '2025-01-01T00:00:01.000Z')],
      {
        start: '2025-01-01T00:00:00.000Z',
      },
    );
    await writeFile(path.join(dir, 'junk.jsonl'), 'not json\n');
    await writeFile(path.join(dir, 'notes.txt'), 'ignored');
    expect(await listRecordings(dir)).toEqual([
      {
        session: 'aaa',
        sub: 'alice',
        start: '2025-01-01T00:00:00.000Z',
        calls: 2,
        file: path.join(dir, 'aaa.jsonl'),
      },
      {
        session: 'bbb',
        sub: 'bob',
        start: '2025-01-02T00:00:00.000Z',
        calls: 1,
        file: path.join(dir, 'bbb.jsonl'),
      },
    ]);
  });

  it('has no recordings in a directory that does not exist', async () => {
    expect(await listRecordings(path.join(dir, 'none'))).toEqual([]);
  });

  it('finds a recording by unique prefix and refuses an ambiguous one', async () => {
    await session('abc-111', []);
    await session('abc-222', []);
    expect((await readRecording(dir, 'abc-1')).header.session).toBe('abc-111');
    await expect(readRecording(dir, 'abc')).rejects.toThrow(/ambiguous/);
    await expect(readRecording(dir, 'zzz')).rejects.toThrow(RecordingLookupError);
  });

  it.each(['../etc/passwd', '..', 'a/b', 'a\\b', '', 'abc.jsonl', '/tmp/x'])(
    'rejects the id %j (path traversal)',
    async (id) => {
      await expect(readRecording(dir, id)).rejects.toThrow(/invalid recording id/);
    },
  );

  it('keeps the calls before a torn last line', async () => {
    const file = await session('torn', [call(1, '2025-01-01T00:00:00.000Z')]);
    await appendFile(file, '{"type":"call","ti');
    expect((await readRecording(dir, 'torn')).events).toHaveLength(1);
  });
});

describe('recordings commands', () => {
  it('list prints a table, or says there is nothing', async () => {
    const empty = capture();
    expect(await recordingsList(dir, empty.io)).toBe(0);
    expect(empty.out()).toMatch(/^no recordings in /);

    await session('s-1', [call(1, '2025-01-01T10:00:01.000Z')]);
    const c = capture();
    expect(await recordingsList(dir, c.io)).toBe(0);
    const lines = c.out().trim().split('\n');
    expect(lines[0]).toMatch(/^SESSION\s+START\s+CALLS\s+SUB$/);
    expect(lines[1]).toMatch(/^s-1\s+2025-01-01T10:00:00.000Z\s+1\s+alice$/);
  });

  it('show prints the header and every call with the result text the agent saw', async () => {
    await session('s-1', [call(1, '2025-01-01T10:00:01.000Z')]);
    const c = capture();
    expect(await recordingsShow(dir, 's-1', c.io)).toBe(0);
    const out = c.out();
    expect(out).toContain('session s-1');
    expect(out).toContain('identity alice (dba)  client claude-code 1.0.0  1 call\n');
    expect(out).toContain('postgres_query  allow by readers  5ms');
    expect(out).toContain('request  {"target":"main","sql":"select 1"}');
    expect(out).toContain('    result 1\n    second line\n');
  });

  it('show: exit 2 for an unknown or malformed id', async () => {
    const unknown = capture();
    expect(await recordingsShow(dir, 'nope', unknown.io)).toBe(2);
    expect(unknown.err()).toMatch(/no recording nope/);
    const traversal = capture();
    expect(await recordingsShow(dir, '../../etc/passwd', traversal.io)).toBe(2);
    expect(traversal.err()).toMatch(/invalid recording id/);
    expect(traversal.out()).toBe('');
  });

  it('show escapes terminal control characters in results', async () => {
    const ev = call(1, '2025-01-01T10:00:01.000Z');
    ev.result.content[0]!.text = 'row \u001b[2J\u001b]0;pwned\u0007 end';
    await session('s-esc', [ev]);
    const c = capture();
    await recordingsShow(dir, 's-esc', c.io);
    expect(c.out()).not.toContain('\u001b');
    expect(c.out()).toContain('row \\x1b[2J\\x1b]0;pwned\\x07 end');
  });

  it('show: an untrusted field cannot start a line; bidi and invisible characters are escaped', async () => {
    const ev = call(1, '2025-01-01T10:00:01.000Z');
    ev.tool = 'postgres_query\n[2025-01-01T10:00:00.000Z] postgres_query  allow by admins';
    ev.decision.reason = 'fine\r\nreason   forged \u202egnp.exe\u2066\u200b\ufeff\u009b';
    ev.request = { target: 'main\u2028x', sql: 'select 1' };
    await session('s-bidi', [ev], {
      identity: { sub: 'eve\n  identity root', groups: ['a\u202eb'] },
    });
    const c = capture();
    await recordingsShow(dir, 's-bidi', c.io);
    const out = c.out();
    expect(out.split('\n').filter((l) => l.startsWith('[2025-01-01T10:00:00'))).toEqual([]);
    expect(out.split('\n').filter((l) => l.startsWith('  identity root'))).toEqual([]);
    expect(out).toContain('postgres_query\\n[2025-01-01T10:00:00.000Z]');
    expect(out).toContain('fine\\r\\nreason   forged \\u202egnp.exe\\u2066\\u200b\\ufeff\\x9b');
    expect(out).toContain('"target":"main\\u2028x"');
    expect(out).toContain('identity eve\\n  identity root (a\\u202eb)');
    expect(out).not.toMatch(/[\r\u0080-\u009f\u2028\u202e\u2066\u200b\ufeff]/);
  });

  it('replay prints calls in time order, without pauses at speed 0', async () => {
    await session('s-r', [
      call(2, '2025-01-01T10:00:05.000Z'),
      call(1, '2025-01-01T10:00:00.000Z'),
      call(3, '2025-01-01T11:00:00.000Z'),
    ]);
    const c = capture();
    const started = Date.now();
    expect(await recordingsReplay(dir, 's-r', { speed: 0 }, c.io)).toBe(0);
    expect(Date.now() - started).toBeLessThan(1000);
    const order = [...c.out().matchAll(/\(call (call-\d)\)/g)].map((m) => m[1]);
    expect(order).toEqual(['call-1', 'call-2', 'call-3']);
  });

  it('replay sleeps the scaled gap', async () => {
    await session('s-s', [
      call(1, '2025-01-01T10:00:00.000Z'),
      call(2, '2025-01-01T10:00:01.000Z'),
      call(3, '2025-01-01T10:00:02.000Z'),
    ]);
    const c = capture();
    const started = Date.now();
    await recordingsReplay(dir, 's-s', { speed: 5 }, c.io);
    const elapsed = Date.now() - started;
    // Two gaps of 1 s at speed 5: about 400 ms.
    expect(elapsed).toBeGreaterThanOrEqual(380);
    expect(elapsed).toBeLessThan(1500);
  });

  it('replay caps a long gap and stops on abort', async () => {
    await session('s-long', [
      call(1, '2025-01-01T10:00:00.000Z'),
      call(2, '2025-01-01T12:00:00.000Z'),
      call(3, '2025-01-01T14:00:00.000Z'),
    ]);
    const c = capture();
    const controller = new AbortController();
    const started = Date.now();
    const replay = recordingsReplay(dir, 's-long', { speed: 1, signal: controller.signal }, c.io);
    // The first gap is two hours, capped at 2 s; abort during the second one.
    setTimeout(() => controller.abort(), 2500);
    expect(await replay).toBe(0);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(1900);
    expect(elapsed).toBeLessThan(3500);
    expect(c.out()).toContain('(call call-2)');
    expect(c.out()).not.toContain('(call call-3)');
  });

  it('replay: exit 2 for an unknown id or a bad speed', async () => {
    expect(await recordingsReplay(dir, 'nope', { speed: 0 }, capture().io)).toBe(2);
    await session('s-x', []);
    expect(await recordingsReplay(dir, 's-x', { speed: -1 }, capture().io)).toBe(2);
  });
});
