import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { InFlight, Lifecycle, type ShutdownSteps } from '../../server/lifecycle.js';
import { verifyAuditFile } from '../../recordings/audit.js';
import { CLI, cliEnv } from '../helpers/cli.js';
import { textOf, writeGatewayConfig } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Where the writes of this file go: a table of its own, dropped at the end. */
const TABLE = 'lifecycle_writes';

const policy = {
  rules: [
    {
      id: 'read',
      match: { tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
      limits: { timeout: '60s' },
    },
    {
      id: 'write',
      match: { tools: ['postgres_query'], targets: ['app-db-rw'], operations: ['write'] },
      effect: 'allow',
      limits: { timeout: '60s' },
    },
  ],
};

interface AuditEntry {
  kind: 'decision' | 'outcome';
  callId: string;
  input: unknown;
  decision: { effect: string; rule: string };
  outcome?: { status: string; code?: string } | null;
}

interface RecordedLine {
  type: string;
  callId?: string;
  result?: CallToolResult;
}

interface RpcMessage {
  jsonrpc: string;
  id?: unknown;
  result?: CallToolResult & Record<string, unknown>;
  error?: { code: number; message: string };
}

/** A gateway's state directory: config, dev issuer, audit log and recordings. */
async function gatewayDir(): Promise<{ dir: string; configFile: string; token: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-lifecycle-'));
  const configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy });
  const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
    create: true,
  });
  const token = await issuer.mint({
    sub: 'alice',
    groups: ['agents'],
    audience: 'gatehouse',
    ttlSec: 600,
  });
  return { dir, configFile, token };
}

async function auditOf(dir: string): Promise<AuditEntry[]> {
  const text = await readFile(path.join(dir, 'audit.jsonl'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditEntry);
}

async function recordingOf(dir: string): Promise<RecordedLine[]> {
  const recDir = path.join(dir, 'recordings');
  const files = await readdir(recDir).catch(() => [] as string[]);
  const lines: RecordedLine[] = [];
  for (const f of files)
    for (const l of (await readFile(path.join(recDir, f), 'utf8')).split('\n').filter(Boolean))
      lines.push(JSON.parse(l) as RecordedLine);
  return lines;
}

/** The audit lines of the call whose input holds `marker`. */
const linesOf = (audit: AuditEntry[], marker: string) =>
  audit.filter((l) => JSON.stringify(l.input).includes(marker));

async function expectChainIntact(dir: string): Promise<void> {
  expect(await verifyAuditFile(path.join(dir, 'audit.jsonl'))).toMatchObject({ ok: true });
}

/**
 * The real binary over real stdio, driven line by line (so a test can close stdin or stdout
 * at any moment, and send what no SDK client would).
 */
class RawGateway {
  readonly child: ChildProcessWithoutNullStreams;
  readonly messages: RpcMessage[] = [];
  readonly notJson: string[] = [];
  stderr = '';
  /** When the child exited (parent's clock), with its code and signal. */
  readonly exited: Promise<{ at: number; code: number | null; signal: string | null }>;
  private out = '';

  constructor(configFile: string, token: string) {
    this.child = spawn(process.execPath, [...CLI, 'serve', '--config', configFile], {
      env: cliEnv({ GATEHOUSE_TOKEN: token, GATEHOUSE_LOG_LEVEL: 'info' }),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => resolve({ at: Date.now(), code, signal })),
    );
    this.child.stdout.on('data', (d: Buffer) => {
      this.out += d.toString();
      let nl: number;
      while ((nl = this.out.indexOf('\n')) !== -1) {
        const line = this.out.slice(0, nl);
        this.out = this.out.slice(nl + 1);
        try {
          this.messages.push(JSON.parse(line) as RpcMessage);
        } catch {
          this.notJson.push(line);
        }
      }
    });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    // A pipe the test destroys on purpose must not fail the test run.
    this.child.stdin.on('error', () => undefined);
    this.child.stdout.on('error', () => undefined);
  }

  send(msg: unknown): void {
    this.child.stdin.write(typeof msg === 'string' ? `${msg}\n` : `${JSON.stringify(msg)}\n`);
  }

  call(id: number, name: unknown, args: unknown): void {
    this.send({ jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args } });
  }

  /** The first message (from index `from`) that `match` accepts, within `ms`. */
  async next(match: (m: RpcMessage) => boolean, from = 0, ms = 30_000): Promise<RpcMessage> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.messages.slice(from).find(match);
      if (found) return found;
      if (Date.now() > deadline)
        throw new Error(`no matching message; got ${JSON.stringify(this.messages)}`);
      await sleep(20);
    }
  }

  response(id: unknown): Promise<RpcMessage> {
    return this.next((m) => m.id === id && ('result' in m || 'error' in m));
  }

  async initialize(): Promise<void> {
    this.send({
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: {
        protocolVersion: '2025-06-18',
        capabilities: {},
        clientInfo: { name: 'lifecycle-test', version: '1.0.0' },
      },
    });
    await this.response(0);
    this.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  }

  /** When the gateway logged a line holding `text` (parent's clock, bounded wait). */
  async logged(text: string, ms = 30_000): Promise<number> {
    const deadline = Date.now() + ms;
    while (!this.stderr.includes(text)) {
      if (Date.now() > deadline) throw new Error(`never logged ${text}; stderr:\n${this.stderr}`);
      await sleep(10);
    }
    return Date.now();
  }
}

describe.skipIf(!pgInfo.available)('#7.6 the session lifecycle never loses an outcome', () => {
  let admin: pg.Client;
  const dirs: string[] = [];
  const children: RawGateway[] = [];

  /** Waits until a backend runs a statement holding `marker`; returns its pid. */
  async function running(marker: string, ms = 20_000): Promise<number> {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await admin.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()`,
        [`%${marker}%`],
      );
      if (r.rows[0]) return r.rows[0].pid;
      if (Date.now() > deadline) throw new Error(`no backend runs ${marker}`);
      await sleep(25);
    }
  }

  /** How many backends still run a statement holding `marker`. */
  async function stillRunning(marker: string): Promise<number> {
    const r = await admin.query(
      `SELECT 1 FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()`,
      [`%${marker}%`],
    );
    return r.rowCount ?? 0;
  }

  async function row(id: number): Promise<Array<{ id: number; v: string }>> {
    const r = await admin.query<{ id: number; v: string }>(
      `SELECT id, v FROM ${TABLE} WHERE id = $1`,
      [id],
    );
    return r.rows;
  }

  async function start(): Promise<{ gw: RawGateway; dir: string }> {
    const { dir, configFile, token } = await gatewayDir();
    dirs.push(dir);
    const gw = new RawGateway(configFile, token);
    children.push(gw);
    return { gw, dir };
  }

  beforeAll(async () => {
    admin = await connectAs(pgInfo, 'superuser');
    await admin.query(`DROP TABLE IF EXISTS ${TABLE};
      CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text NOT NULL);
      GRANT SELECT, INSERT ON ${TABLE} TO ${pgInfo.writer.user};
      GRANT SELECT ON ${TABLE} TO ${pgInfo.reader.user}`);
  });
  afterAll(async () => {
    for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    if (admin) {
      // The forced exit leaves its sleeping backend behind (nothing is left to reap it).
      await admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%lc-%' AND pid <> pg_backend_pid()`,
      );
      await admin.query(`DROP TABLE IF EXISTS ${TABLE}`);
      await admin.end();
    }
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('a write sent just before stdin closes is either run and fully on record, or never run', async () => {
    const { gw, dir } = await start();
    const marker = 'lc-eof';
    const init = {
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: {
        protocolVersion: '2025-06-18',
        capabilities: {},
        clientInfo: { name: 'printf', version: '1' },
      },
    };
    const call = {
      jsonrpc: '2.0',
      id: 1,
      method: 'tools/call',
      params: {
        name: 'postgres_query',
        arguments: { target: 'app-db-rw', sql: `INSERT INTO ${TABLE} VALUES (1, '${marker}')` },
      },
    };
    // `printf '<init>\n<initialized>\n<call>\n' | gatehouse serve`
    gw.child.stdin.end(
      [init, { jsonrpc: '2.0', method: 'notifications/initialized' }, call]
        .map((m) => JSON.stringify(m) + '\n')
        .join(''),
    );
    const shuttingDown = await gw.logged('"shutting down"');
    const exit = await gw.exited;
    expect(exit.code, gw.stderr).toBe(0);
    expect(exit.at - shuttingDown).toBeLessThan(4_000);

    const audit = linesOf(await auditOf(dir), marker);
    const recorded = (await recordingOf(dir)).filter((l) => l.type === 'call');
    if (audit.length === 0) {
      // Never started: nothing decided, nothing recorded, nothing written.
      expect(recorded).toEqual([]);
      expect(await row(1)).toEqual([]);
    } else {
      expect(audit.map((l) => l.kind)).toEqual(['decision', 'outcome']);
      expect(audit[1]!.outcome).toMatchObject({ status: 'ok' });
      expect(recorded.map((l) => l.callId)).toEqual([audit[0]!.callId]);
      expect(await row(1)).toEqual([{ id: 1, v: marker }]);
      // stdout was still open: the client got its answer too.
      expect((await gw.response(1)).result?.isError).toBeFalsy();
    }
    expect(gw.stderr).not.toMatch(/is closed|audit write failed|recording failed/);
    await expectChainIntact(dir);
  }, 60_000);

  it('a write in flight when the client closes stdout ends audited and recorded, then the process exits', async () => {
    const { gw, dir } = await start();
    await gw.initialize();
    const marker = 'lc-epipe';
    gw.call(1, 'postgres_query', {
      target: 'app-db-rw',
      sql: `INSERT INTO ${TABLE} SELECT 2, '${marker}' || pg_sleep(1.5)::text`,
    });
    await running(marker);
    // The client goes away from the gateway's stdout; stdin stays open.
    gw.child.stdout.destroy();
    const closed = Date.now();
    const exit = await gw.exited;
    expect(exit.code, gw.stderr).toBe(0);
    expect(exit.at - closed).toBeLessThan(6_000);
    expect(gw.stderr).toMatch(/EPIPE/);

    const audit = linesOf(await auditOf(dir), marker);
    expect(audit.map((l) => l.kind)).toEqual(['decision', 'outcome']);
    expect(audit[1]!.outcome).toMatchObject({ status: 'ok' });
    const recorded = (await recordingOf(dir)).filter((l) => l.type === 'call');
    expect(recorded.map((l) => l.callId)).toEqual([audit[0]!.callId]);
    expect(await row(2)).toEqual([{ id: 2, v: marker }]);
    expect(gw.stderr).not.toMatch(/is closed|audit write failed|recording failed/);
    await expectChainIntact(dir);
  }, 60_000);

  it('SIGTERM lets a call in flight finish: its answer, outcome and recording, then a prompt exit', async () => {
    const { gw, dir } = await start();
    await gw.initialize();
    const marker = 'lc-term';
    gw.call(1, 'postgres_query', { target: 'app-db', sql: `SELECT pg_sleep(1) /* ${marker} */` });
    await running(marker);
    gw.child.kill('SIGTERM');
    const signalled = Date.now();
    // A call that arrives once shutdown began is not started.
    await gw.logged('"shutting down"');
    gw.call(2, 'postgres_query', { target: 'app-db', sql: `SELECT 2 /* lc-late */` });
    const answer = await gw.response(1);
    expect(answer.result?.isError).toBeFalsy();
    const exit = await gw.exited;
    expect(exit.code, gw.stderr).toBe(0);
    expect(exit.at - signalled).toBeLessThan(4_000);

    const all = await auditOf(dir);
    const audit = linesOf(all, marker);
    expect(audit.map((l) => l.kind)).toEqual(['decision', 'outcome']);
    expect(audit[1]!.outcome).toMatchObject({ status: 'ok' });
    expect(linesOf(all, 'lc-late')).toEqual([]);
    const late = gw.messages.find((m) => m.id === 2);
    if (late) expect(late.error?.message).toMatch(/shutting down/);
    const recorded = (await recordingOf(dir)).filter((l) => l.type === 'call');
    expect(recorded.map((l) => l.callId)).toEqual([audit[0]!.callId]);
    await expectChainIntact(dir);
  }, 60_000);

  it('a second signal during shutdown cancels what runs, keeps its outcome, and exits at once', async () => {
    const { gw, dir } = await start();
    await gw.initialize();
    const marker = 'lc-force';
    gw.call(1, 'postgres_query', { target: 'app-db', sql: `SELECT pg_sleep(20) /* ${marker} */` });
    await running(marker);
    gw.child.kill('SIGTERM');
    await gw.logged('"shutting down"');
    gw.child.kill('SIGINT');
    const second = Date.now();
    const exit = await gw.exited;
    expect(exit.at - second).toBeLessThan(1_500);
    expect(exit.code).toBe(130);

    const audit = linesOf(await auditOf(dir), marker);
    expect(audit.map((l) => l.kind)).toEqual(['decision', 'outcome']);
    expect(audit[1]!.outcome).toMatchObject({ status: 'error', code: 'TIMEOUT' });
    const recorded = (await recordingOf(dir)).filter((l) => l.type === 'call');
    expect(recorded.map((l) => l.callId)).toEqual([audit[0]!.callId]);
    await expectChainIntact(dir);
  }, 60_000);

  it("a client's cancel stops the statement on the server; four cancelled sleeps leave a poolSize-4 pool usable", async () => {
    const { dir, configFile, token } = await gatewayDir();
    dirs.push(dir);
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [...CLI, 'serve', '--config', configFile],
      env: cliEnv({ GATEHOUSE_TOKEN: token }),
      stderr: 'pipe',
    });
    let stderr = '';
    transport.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const client = new Client({ name: 'cancel-test', version: '1.0.0' });
    await client.connect(transport);
    try {
      const marker = (i: number) => `lc-cancel-${i}`;
      const controllers = [0, 1, 2, 3].map(() => new AbortController());
      const calls = controllers.map((c, i) =>
        client
          .callTool(
            {
              name: 'postgres_query',
              arguments: { target: 'app-db', sql: `SELECT pg_sleep(30) /* ${marker(i)} */` },
            },
            undefined,
            { signal: c.signal },
          )
          .then(
            () => 'answered',
            (err: Error) => (/abort/i.test(err.message) ? 'aborted' : err.message),
          ),
      );
      for (let i = 0; i < 4; i++) await running(marker(i));
      for (const c of controllers) c.abort();
      const cancelled = Date.now();
      // The SDK client gives up at once (and sends notifications/cancelled).
      expect(await Promise.all(calls)).toEqual(['aborted', 'aborted', 'aborted', 'aborted']);
      // The statements are gone from the server, not only from the client.
      while ((await stillRunning('lc-cancel-')) > 0) {
        expect(Date.now() - cancelled, 'backends still run the cancelled sleeps').toBeLessThan(
          2_000,
        );
        await sleep(25);
      }
      console.info(`#7.6: cancelled statements left the server after ${Date.now() - cancelled} ms`);
      // The pool has its four slots back: a read works (it may wait for a slot, never fail).
      const next = (await client.callTool({
        name: 'postgres_query',
        arguments: { target: 'app-db', sql: 'SELECT 40 + 2 AS answer' },
      })) as CallToolResult;
      expect(next.isError, textOf(next)).toBeFalsy();
      expect(next.structuredContent).toMatchObject({ rows: [[42]] });

      // Each cancelled call is on record with its outcome.
      const deadline = Date.now() + 5_000;
      for (let i = 0; i < 4; i++) {
        let audit = linesOf(await auditOf(dir), marker(i));
        while (audit.length < 2 && Date.now() < deadline) {
          await sleep(50);
          audit = linesOf(await auditOf(dir), marker(i));
        }
        expect(audit.map((l) => l.kind)).toEqual(['decision', 'outcome']);
        expect(audit[1]!.outcome).toMatchObject({ status: 'error', code: 'TIMEOUT' });
      }
    } finally {
      await client.close();
    }
    expect(stderr).not.toMatch(/cannot connect/);
    await expectChainIntact(dir);
  }, 60_000);

  it('malformed JSON-RPC is answered, never fatal; a bad tools/call shape is refused and audited (rule: input)', async () => {
    const { gw, dir } = await start();
    await gw.initialize();
    let id = 100;
    const works = async () => {
      const n = ++id;
      gw.call(n, 'postgres_query', { target: 'app-db', sql: 'SELECT 1 AS still_serving' });
      const r = await gw.response(n);
      expect(r.result?.isError, JSON.stringify(r)).toBeFalsy();
    };
    const errorAfter = async (line: string, code: number, withId?: unknown) => {
      const from = gw.messages.length;
      gw.send(line);
      const m = await gw.next((x) => 'error' in x, from);
      expect(m.error?.code).toBe(code);
      if (withId === undefined) expect(m).not.toHaveProperty('id');
      else expect(m.id).toBe(withId);
      await works();
    };

    await errorAfter('this is not json', -32700);
    await errorAfter('{"jsonrpc": "2.0", "id": 7, "method": "tools/list"', -32700);
    await errorAfter(JSON.stringify([{ jsonrpc: '2.0', id: 8, method: 'tools/list' }]), -32600);
    await errorAfter(JSON.stringify({ jsonrpc: '2.0', id: null, method: 'tools/list' }), -32600);
    await errorAfter(
      JSON.stringify({ jsonrpc: '2.0', id: { a: 1 }, method: 'tools/list' }),
      -32600,
    );
    await errorAfter(
      JSON.stringify({ jsonrpc: '2.0', id: 1.5, method: 'tools/list' }),
      -32600,
      1.5,
    );
    await errorAfter(JSON.stringify({ jsonrpc: '1.0', id: 9, method: 'tools/list' }), -32600, 9);
    await errorAfter(
      JSON.stringify({ jsonrpc: '2.0', id: 10, method: 'tools/call', params: [1] }),
      -32600,
      10,
    );
    await errorAfter('42', -32600);
    // A line over the 10 MiB message limit is dropped whole; the session goes on.
    await errorAfter(`{"x":"${'y'.repeat(11 * 1024 * 1024)}"}`, -32600);
    // A blank line is nothing to answer.
    gw.send('');
    await works();

    // Red team: a second request with the id of one still running is refused (answers could
    // not be told apart, and a cancel naming the id would hit either call); once answered,
    // the id is free again.
    const from = gw.messages.length;
    gw.call(900, 'postgres_query', { target: 'app-db', sql: 'SELECT pg_sleep(0.5), 1 AS first' });
    gw.call(900, 'postgres_query', { target: 'app-db', sql: 'SELECT 2 AS second' });
    const dup = await gw.next((m) => m.id === 900 && 'error' in m, from);
    expect(dup.error).toMatchObject({
      code: -32600,
      message: expect.stringMatching(/still in flight/) as unknown,
    });
    const first = await gw.next((m) => m.id === 900 && 'result' in m, from);
    expect(JSON.stringify(first.result)).toMatch(/first/);
    expect(JSON.stringify(first.result)).not.toMatch(/second/);
    const again = gw.messages.length;
    gw.call(900, 'postgres_query', { target: 'app-db', sql: 'SELECT 3 AS reused' });
    expect(
      JSON.stringify((await gw.next((m) => m.id === 900 && 'result' in m, again)).result),
    ).toMatch(/reused/);

    // Shapes the SDK's own tools/call schema refused before any handler (so unaudited): now
    // INVALID_INPUT results from the pipeline, each with its decision (rule: input) on record.
    const bad: Array<[unknown, unknown]> = [
      [5, { target: 'app-db', sql: 'SELECT 1 /* lc-name-number */' }],
      [undefined, { target: 'app-db', sql: 'SELECT 1 /* lc-name-missing */' }],
      ['postgres_query', ['lc-args-array']],
      ['postgres_query', 'lc-args-string'],
    ];
    const callIds: string[] = [];
    for (const [name, args] of bad) {
      const n = ++id;
      gw.call(n, name, args);
      const r = await gw.response(n);
      expect(r.result?.isError, JSON.stringify(r)).toBe(true);
      expect(textOf(r.result!)).toMatch(
        typeof name === 'string'
          ? /^INVALID_INPUT: /
          : /^INVALID_INPUT: name: the tool name must be a string \(got (number|none)\)$/,
      );
      callIds.push((r.result!.structuredContent as { callId: string }).callId);
      await works();
    }
    gw.child.stdin.end();
    expect((await gw.exited).code, gw.stderr).toBe(0);
    expect(gw.notJson).toEqual([]);

    const audit = await auditOf(dir);
    for (const callId of callIds) {
      const lines = audit.filter((l) => l.callId === callId);
      expect(lines.map((l) => l.kind)).toEqual(['decision', 'outcome']);
      expect(lines[0]!.decision).toMatchObject({ effect: 'deny', rule: 'input' });
      expect(lines[1]!.outcome).toMatchObject({ status: 'error', code: 'INVALID_INPUT' });
    }
    await expectChainIntact(dir);
  }, 90_000);
});

/** The order itself, without a process: what closes when, and what a signal does. */
describe('#7.6 the shutdown path (server/lifecycle.ts)', () => {
  const recordingSteps = (events: string[]): ShutdownSteps => ({
    stopInput: () => void events.push('stop input'),
    closeTransport: async () => void events.push('close transport'),
    closeRecording: async () => void events.push('close recording'),
    closeRuntime: async () => void events.push('close pools, then audit log'),
  });
  /** A call that runs until its signal aborts, then takes a moment to write its outcome. */
  const untilAborted = (events: string[], name: string) => (signal: AbortSignal) =>
    new Promise<string>((resolve) =>
      signal.addEventListener('abort', () =>
        setTimeout(() => {
          events.push(`${name} outcome`);
          resolve(`${name} cancelled`);
        }, 20),
      ),
    );

  it('lets calls finish, cancels those past the grace through their signal, closes only after, starts none late', async () => {
    const events: string[] = [];
    const calls = new InFlight();
    const lifecycle = new Lifecycle(calls, recordingSteps(events), {
      drainGraceMs: 200,
      cancelGraceMs: 2_000,
    });
    const client = new AbortController();
    const quick = calls.start(client.signal, async () => {
      await sleep(50);
      events.push('quick outcome');
      return 'quick done';
    });
    const stuck = calls.start(client.signal, untilAborted(events, 'stuck'));
    const first = lifecycle.shutdown('stdin closed');
    expect(lifecycle.shutdown('SIGTERM')).toBe(first);
    expect(calls.start(client.signal, async () => 'late')).toBeUndefined();
    await first;
    await lifecycle.ended;
    expect(await quick).toBe('quick done');
    expect(await stuck).toBe('stuck cancelled');
    expect(events).toEqual([
      'stop input',
      'quick outcome',
      'stuck outcome',
      'close transport',
      'close recording',
      'close pools, then audit log',
    ]);
  });

  it("a client's cancel aborts its own call only", async () => {
    const events: string[] = [];
    const calls = new InFlight();
    const mine = new AbortController();
    const cancelled = calls.start(mine.signal, untilAborted(events, 'mine'));
    let otherSignal: AbortSignal | undefined;
    const other = calls.start(new AbortController().signal, async (signal) => {
      otherSignal = signal;
      await sleep(100);
      return 'other done';
    });
    mine.abort();
    expect(await cancelled).toBe('mine cancelled');
    expect(otherSignal?.aborted).toBe(false);
    expect(await other).toBe('other done');
    await vi.waitFor(() => expect(calls.size).toBe(0));
  });

  it('a second signal during shutdown cancels what runs, waits for its outcome, and exits 128 + signal', async () => {
    const events: string[] = [];
    const calls = new InFlight();
    let exitCode: number | undefined;
    const lifecycle = new Lifecycle(calls, recordingSteps(events), {
      drainGraceMs: 60_000,
      exit: (code) => (exitCode = code),
    });
    const proc = new EventEmitter();
    const remove = lifecycle.handleSignals(proc as unknown as NodeJS.Process);
    try {
      const running = calls.start(new AbortController().signal, untilAborted(events, 'sleep'));
      proc.emit('SIGTERM');
      expect(lifecycle.shuttingDown).toBe(true);
      await sleep(50);
      expect(events).toEqual(['stop input']);
      proc.emit('SIGINT');
      await vi.waitFor(() => expect(exitCode).toBe(130));
      expect(await running).toBe('sleep cancelled');
      expect(events.slice(0, 2)).toEqual(['stop input', 'sleep outcome']);
    } finally {
      remove();
    }
  });
});
