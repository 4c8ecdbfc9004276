import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { createMcpServer } from '../../server/mcp.js';
import { createRuntime } from '../../server/runtime.js';
import { newSession } from '../../server/session.js';
import { CLI, cliEnv } from '../helpers/cli.js';
import {
  startGateway,
  textOf,
  writeGatewayConfig,
  type TestClient,
  type TestGateway,
} from '../helpers/gateway.js';

/**
 * #8.8: `gatehouse audit tail` through the real CLI, on an audit log a real gateway wrote: -n,
 * --since, the statement on each line, a refused input shown as refused (not as a policy's
 * deny), filter values checked, and -f waiting for a log that does not exist yet.
 */

const pgInfo = inject('pg');

const policy = {
  rules: [
    {
      id: 'analysts-read',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
    },
    {
      id: 'no-ddl',
      match: { tools: ['postgres_query'], operations: ['ddl', 'admin', 'unknown'] },
      effect: 'deny',
    },
  ],
};

const READ = "SELECT 1 AS one,\n       'x' AS two";

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function gatehouse(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...CLI, ...args], {
      env: cliEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** `audit tail --file <the gateway's log>` with these arguments, all at once. */
const tails = (...runs: string[][]) =>
  Promise.all(runs.map((args) => gatehouse(['audit', 'tail', '--file', auditFile, ...args])));

const lines = (text: string) => text.trimEnd().split('\n').filter(Boolean);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `pred` holds for what the stream has written so far. */
function waitForOutput(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  pred: (all: string) => boolean,
  ms = 20_000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    let all = '';
    const timer = setTimeout(
      () => reject(new Error(`timed out waiting on ${stream}; got: ${all}`)),
      ms,
    );
    const on = (d: Buffer) => {
      all += d.toString();
      if (pred(all)) {
        clearTimeout(timer);
        child[stream]!.off('data', on);
        resolve(all);
      }
    };
    child[stream]!.on('data', on);
  });
}

function stopped(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

let auditFile: string;

describe.skipIf(!pgInfo.available)('gatehouse audit tail', () => {
  let gw: TestGateway;
  let alice: TestClient;
  /** A time between the read and the refused calls. */
  let between: string;

  beforeAll(async () => {
    gw = await startGateway({ pg: pgInfo, policy });
    alice = await gw.connect(await gw.mint('alice', ['analysts']));
    auditFile = path.join(gw.dir, 'audit.jsonl');
    const read = await alice.call('postgres_query', { target: 'app-db', sql: READ });
    expect(read.isError, textOf(read)).toBeFalsy();
    // The log is hash-chained, so its times cannot be faked: --since takes a time between calls.
    await sleep(30);
    between = new Date().toISOString();
    await sleep(30);
    const drop = await alice.call('postgres_query', { target: 'app-db', sql: 'DROP TABLE canary' });
    expect(textOf(drop)).toMatch(/^DENIED by rule no-ddl/);
    const syntax = await alice.call('postgres_query', { target: 'app-db', sql: 'SELEC 1' });
    expect(textOf(syntax)).toMatch(/^INVALID_INPUT: syntax error/);
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('shows each line with its decision and statement; a syntax error is refused input, not a deny', async () => {
    const [r] = await tails([]);
    expect(r!.status, r!.stderr).toBe(0);
    const out = lines(r!.stdout);
    expect(out).toHaveLength(6); // a decision and an outcome line per call
    // The statement is on the line, its newlines escaped as any field's are: one line each.
    const read = String.raw`sql: SELECT 1 AS one,\n       'x' AS two`;
    expect(out[0]).toMatch(/ alice postgres_query app-db read allow analysts-read {2}/);
    expect(out[0]!.endsWith(read)).toBe(true);
    expect(out[1]).toMatch(/ allow analysts-read ok 1 row \d+ms {2}sql: SELECT 1 AS one,\\n/);
    expect(out[2]).toMatch(/ app-db ddl deny no-ddl {2}sql: DROP TABLE canary$/);
    expect(out[3]).toMatch(/ deny no-ddl error DENIED \d+ms {2}sql: DROP TABLE canary$/);
    expect(out[4]).toMatch(/ alice postgres_query app-db - refused \(input\) {2}sql: SELEC 1$/);
    expect(out[5]).toMatch(/ refused \(input\) error INVALID_INPUT \d+ms {2}sql: SELEC 1$/);
    expect(out.slice(4).join('\n')).not.toMatch(/ deny /);
  });

  it('-n N: the last N lines, of those the filters pass', async () => {
    const [all, two, denied, none, many, bad] = await tails(
      [],
      ['-n', '2'],
      ['--decision', 'deny', '-n', '1'],
      ['--lines', '0'],
      ['-n', '100'],
      ['-n', 'ten'],
    );
    const every = lines(all!.stdout);
    expect(two!.status, two!.stderr).toBe(0);
    expect(lines(two!.stdout)).toEqual(every.slice(4));
    expect(lines(denied!.stdout)).toEqual([every[3]]);
    expect(none!.stdout).toBe('');
    expect(lines(many!.stdout)).toEqual(every);
    expect(bad!.status).toBe(2);
    expect(bad!.stderr).toMatch(/^gatehouse: -n takes a number of lines, not "ten"\n/);
  });

  it('--since: a duration back from now, or an ISO time', async () => {
    const [all, recent, hour, days, future, bad] = await tails(
      [],
      ['--since', between],
      ['--since', '1h'],
      ['--since', '2d'],
      ['--since', '2999-01-01'],
      ['--since', 'yesterday'],
    );
    const every = lines(all!.stdout);
    expect(recent!.status, recent!.stderr).toBe(0);
    expect(lines(recent!.stdout)).toEqual(every.slice(2));
    expect(lines(hour!.stdout)).toEqual(every);
    expect(lines(days!.stdout)).toEqual(every);
    expect(future!.stdout).toBe('');
    expect(future!.stderr).toMatch(/no line matches --since 2999-01-01T00:00:00.000Z/);
    expect(bad!.status).toBe(2);
    expect(bad!.stderr).toMatch(/^gatehouse: --since takes a duration \(30s, 15m, 1h, 2d\) or/);
  });

  it('--decision: an unknown value is a usage error naming the allowed ones; refused and deny are apart', async () => {
    const [maybe, denied, refused] = await tails(
      ['--decision', 'maybe'],
      ['--decision', 'denied'],
      ['--decision', 'refused'],
    );
    expect(maybe!.status).toBe(2);
    expect(maybe!.stdout).toBe('');
    expect(maybe!.stderr).toBe(
      'gatehouse: --decision takes allow, deny, approve or refused, not "maybe"\n' +
        "see 'gatehouse audit tail --help'\n",
    );
    expect(denied!.status).toBe(2);
    expect(denied!.stderr).toMatch(/not "denied" \(did you mean "deny"\?\)/);
    expect(lines(refused!.stdout)).toEqual([
      expect.stringMatching(/refused \(input\) {2}sql: SELEC 1$/),
      expect.stringMatching(/refused \(input\) error INVALID_INPUT/),
    ]);
  });

  it('--tool and --sub take any name, and say when nothing matched (with the nearest name in the log)', async () => {
    const [tool, sub, both] = await tails(
      ['--tool', 'postgres-query'],
      ['--sub', 'bob'],
      ['--sub', 'alice', '--tool', 'postgres_query'],
    );
    expect(tool!.status).toBe(0);
    expect(tool!.stdout).toBe('');
    expect(tool!.stderr).toBe(
      'gatehouse audit tail: no line matches --tool postgres-query (did you mean "postgres_query"?)\n',
    );
    expect(sub!.stdout).toBe('');
    expect(sub!.stderr).toBe('gatehouse audit tail: no line matches --sub bob\n');
    expect(lines(both!.stdout)).toHaveLength(6);
    expect(both!.stderr).toBe('');
  });

  it('-f -n 1: the last line now, then each new one as it is written', async () => {
    const tail = spawn(
      process.execPath,
      [...CLI, 'audit', 'tail', '-f', '-n', '1', '--file', auditFile],
      { env: cliEnv() },
    );
    try {
      const first = await waitForOutput(tail, 'stdout', (s) => s.includes('\n'));
      expect(lines(first)).toEqual([expect.stringMatching(/INVALID_INPUT \d+ms {2}sql: SELEC 1$/)]);
      const more = waitForOutput(tail, 'stdout', (s) => lines(s).length >= 2);
      await alice.call('postgres_query', { target: 'app-db', sql: 'SELECT 42' });
      expect(lines(await more)).toEqual([
        expect.stringMatching(/ allow analysts-read {2}sql: SELECT 42$/),
        expect.stringMatching(/ allow analysts-read ok 1 row \d+ms {2}sql: SELECT 42$/),
      ]);
    } finally {
      tail.kill('SIGTERM');
    }
    expect(await stopped(tail)).toBe(0);
  });

  it('-f on a log that does not exist yet waits for it, then prints lines as they come', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-tail-'));
    const file = path.join(dir, 'audit.jsonl');
    const tail = spawn(process.execPath, [...CLI, 'audit', 'tail', '-f', '--file', file], {
      env: cliEnv(),
    });
    let rt: Awaited<ReturnType<typeof createRuntime>> | undefined;
    let client: Client | undefined;
    let session: ReturnType<typeof newSession> | undefined;
    try {
      const waiting = await waitForOutput(tail, 'stderr', (s) => s.includes('waiting'));
      expect(waiting).toBe(`gatehouse audit tail: waiting for ${file} to be created\n`);
      // A gateway started on that path creates the log, then writes a call's lines to it.
      const config = await writeGatewayConfig(dir, { pg: pgInfo, policy });
      const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
        create: true,
      });
      rt = await createRuntime(config);
      const token = await issuer.mint({
        sub: 'carol',
        groups: ['analysts'],
        ttlSec: 600,
        audience: 'gatehouse',
      });
      session = newSession('memory', () => token);
      const server = createMcpServer(rt, session);
      const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
      client = new Client({ name: 'tail-test', version: '1.0.0' });
      await server.connect(serverSide);
      await client.connect(clientSide);
      const arrived = waitForOutput(tail, 'stdout', (s) => lines(s).length >= 2);
      await client.callTool({
        name: 'postgres_query',
        arguments: { target: 'app-db', sql: 'SELECT 7' },
      });
      expect(lines(await arrived)).toEqual([
        expect.stringMatching(
          / carol postgres_query app-db read allow analysts-read {2}sql: SELECT 7$/,
        ),
        expect.stringMatching(/ carol .* ok 1 row \d+ms {2}sql: SELECT 7$/),
      ]);
    } finally {
      tail.kill('SIGTERM');
      await client?.close();
      await session?.recorder?.close();
      await rt?.close();
    }
    expect(await stopped(tail)).toBe(0);
    const verify = await gatehouse(['audit', 'verify', '--file', file]);
    expect(verify.stdout).toBe('ok: 2 lines, chain intact\n');
    await rm(dir, { recursive: true, force: true });
  });

  it('without -f a missing log is still an error (2)', async () => {
    const r = await gatehouse(['audit', 'tail', '--file', path.join(gw.dir, 'nope.jsonl')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^gatehouse: no audit log at /);
  });
});
