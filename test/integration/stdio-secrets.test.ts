import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { writeGatewayConfig } from '../helpers/gateway.js';
import { CLI, cliEnv } from '../helpers/cli.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/** A raw JSON-RPC initialize request, as a client writes it on the server's stdin. */
const initialize = (clientInfo: { name: string; version: string }) => ({
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo },
});

const policy = {
  rules: [
    {
      id: 'read',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
      mask: ['pii'],
    },
    { id: 'no-ddl', match: { operations: ['ddl'] }, effect: 'deny' },
  ],
  // Pseudonyms, so the run uses the pseudonym key (a secret of its own, beside the state).
  masking: {
    pii: { detectors: ['email', 'credit_card'], columns: ['*.password'], style: 'pseudonym' },
  },
};

/**
 * The real binary over real stdio: stdout carries nothing but MCP, and the database password
 * appears nowhere — not in results, errors, the stderr log, the audit log or the recordings.
 */
describe.skipIf(!pgInfo.available)('gatehouse serve over stdio', () => {
  let dir: string;
  let configFile: string;
  let client: Client;
  let transport: StdioClientTransport;
  let stderr = '';
  let token: string;
  const results: CallToolResult[] = [];
  const clientErrors: Error[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-stdio-'));
    configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy });
    const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    token = await issuer.mint({
      sub: 'alice',
      groups: ['analysts'],
      audience: 'gatehouse',
      ttlSec: 600,
    });
    transport = new StdioClientTransport({
      command: process.execPath,
      args: [...CLI, 'serve', '--config', configFile],
      env: cliEnv({ GATEHOUSE_TOKEN: token, GATEHOUSE_LOG_LEVEL: 'debug' }),
      stderr: 'pipe',
    });
    transport.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    client = new Client({ name: 'stdio-test', version: '1.0.0' });
    // A stray byte on stdout would surface here as a parse error.
    client.onerror = (err) => clientErrors.push(err);
    await client.connect(transport);
  });
  afterAll(async () => {
    await client?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const call = async (name: string, args: Record<string, unknown>) => {
    const r = (await client.callTool({ name, arguments: args })) as CallToolResult;
    results.push(r);
    return r;
  };

  it('serves reads, refusals and target errors without leaking the password', async () => {
    expect(
      (
        await call('postgres_query', {
          target: 'app-db',
          sql: 'SELECT id, email FROM customers LIMIT 2',
        })
      ).isError,
    ).toBeFalsy();
    expect(
      (await call('postgres_query', { target: 'app-db', sql: 'DROP TABLE canary' })).isError,
    ).toBe(true);
    expect(
      (await call('postgres_query', { target: 'app-db', sql: 'SELECT * FROM no_such_table' }))
        .content[0],
    ).toMatchObject({
      text: expect.stringMatching(/^TARGET_ERROR: app-db: 42P01/) as unknown,
    });
    const bad = await call('postgres_query', { target: 'app-db-badpw', sql: 'SELECT 1' });
    expect(bad.content[0]).toMatchObject({
      text: expect.stringMatching(/^TARGET_ERROR: cannot connect to app-db-badpw/) as unknown,
    });
    // Ask the server to reveal its own settings: the password is not among them, and the
    // connection string is never in the session.
    await call('postgres_query', {
      target: 'app-db',
      sql: "SELECT current_setting('application_name'), current_user",
    });
    await call('postgres_query', { target: 'app-db', sql: 'SELECT usename, passwd FROM pg_user' });
    await call('list_targets', {});
    await call('explain', { tool: 'postgres_query', input: { target: 'app-db', sql: 'SELECT 1' } });
    // Errors that quote a stored value: a masked one (withheld everywhere, the stderr log
    // included) and an email (masked by its detector there too).
    await call('postgres_query', { target: 'app-db', sql: 'SELECT password::int FROM users' });
    await call('postgres_query', { target: 'app-db', sql: 'SELECT email::int FROM customers' });
    await client.close();
    // Give the process a moment to flush its last log lines.
    await new Promise((r) => setTimeout(r, 300));

    const audit = await readFile(path.join(dir, 'audit.jsonl'), 'utf8');
    const recDir = path.join(dir, 'recordings');
    const recordings = (
      await Promise.all((await readdir(recDir)).map((f) => readFile(path.join(recDir, f), 'utf8')))
    ).join('\n');
    expect(audit.length).toBeGreaterThan(0);
    expect(recordings.length).toBeGreaterThan(0);
    expect(stderr).toContain('serving MCP over stdio');
    const everything: Record<string, string> = {
      results: JSON.stringify(results),
      stderr,
      audit,
      recordings,
    };
    // Every other file the run wrote (state, config, policy), but the key files themselves.
    for (const f of await readdir(dir, { recursive: true })) {
      const file = path.join(dir, f);
      if (f === 'pseudonym.key' || f === 'dev-issuer.json') continue;
      try {
        everything[f] = await readFile(file, 'utf8');
      } catch {
        // a folder
      }
    }
    expect(clientErrors).toEqual([]);
    const key = (await readFile(path.join(dir, 'pseudonym.key'), 'utf8')).trim();
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    for (const secret of [
      pgInfo.reader.password,
      pgInfo.writer.password,
      pgInfo.superuser.password,
      // The wrong password app-db-badpw is configured with is a secret too.
      'not-the-password',
      key,
      key.slice(0, 32),
      Buffer.from(key, 'hex').toString('base64'),
    ]) {
      for (const [where, text] of Object.entries(everything))
        expect(text.includes(secret), `${where} leaks a secret`).toBe(false);
    }
    // The pseudonyms were made with it.
    expect(JSON.stringify(results)).toMatch(/email_[0-9a-f]{8}/);
    // No stored password hash or email reached any file or the log through an error text.
    const su = await connectAs(pgInfo, 'superuser');
    try {
      const stored = [
        ...(await su.query<{ v: string }>('SELECT password AS v FROM users')).rows,
        ...(await su.query<{ v: string }>('SELECT email AS v FROM customers')).rows,
      ].map((r) => r.v);
      expect(stored.length).toBeGreaterThan(20);
      for (const [where, text] of Object.entries(everything)) {
        expect(
          stored.filter((v) => text.includes(v)),
          `${where} holds a stored value`,
        ).toEqual([]);
      }
    } finally {
      await su.end();
    }
    expect(stderr).toContain('[withheld: the statement touches a masked column]');
  });

  it('gatehouse audit verify passes on that log, and fails on an edited or torn line', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const verify = () =>
      spawnSync(process.execPath, [...CLI, 'audit', 'verify', '--file', file], {
        env: cliEnv(),
        encoding: 'utf8',
      });
    const good = verify();
    expect(good.status, good.stderr + good.stdout).toBe(0);

    const original = await readFile(file, 'utf8');
    const lines = original.split('\n');
    lines[2] = lines[2]!.replace('"alice"', '"mallory"');
    await writeFile(file, lines.join('\n'));
    const edited = verify();
    expect(edited.status).toBe(1);
    expect(edited.stdout + edited.stderr).toMatch(/line 3/);

    await writeFile(file, original);
    await appendFile(file, original.split('\n')[0]!.slice(0, 40));
    const torn = verify();
    expect(torn.status).toBe(1);
    await writeFile(file, original);
    expect(verify().status).toBe(0);
  });

  it('refuses to start without a valid token, writing nothing to stdout', () => {
    const r = spawnSync(process.execPath, [...CLI, 'serve', '--config', configFile], {
      env: cliEnv({ GATEHOUSE_TOKEN: 'not-a-token' }),
      input: '',
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/UNAUTHENTICATED/);
  });

  it('writes nothing but JSON-RPC lines to stdout, even with debug logging', async () => {
    const child = spawn(process.execPath, [...CLI, 'serve', '--config', configFile], {
      env: cliEnv({ GATEHOUSE_TOKEN: token, GATEHOUSE_LOG_LEVEL: 'debug' }),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const send = (msg: object) => child.stdin.write(`${JSON.stringify(msg)}\n`);
    const responses = async (n: number) => {
      const deadline = Date.now() + 20_000;
      while (out.split('\n').filter(Boolean).length < n && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
    };
    send(initialize({ name: 'raw', version: '1' }));
    await responses(1);
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    send({ jsonrpc: '2.0', id: 2, method: 'tools/list' });
    send({
      jsonrpc: '2.0',
      id: 3,
      method: 'tools/call',
      params: { name: 'postgres_query', arguments: { target: 'app-db', sql: 'SELECT 1 AS one' } },
    });
    send({
      jsonrpc: '2.0',
      id: 4,
      method: 'tools/call',
      params: { name: 'postgres_query', arguments: { target: 'app-db', sql: 'SELEC 1' } },
    });
    await responses(4);
    child.stdin.end();
    await once(child, 'exit');

    const lines = out.split('\n').filter(Boolean);
    expect(lines).toHaveLength(4);
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ jsonrpc: '2.0' });
    // Calls run concurrently, so responses may come in any order (JSON-RPC matches them by id).
    expect(lines.map((l) => (JSON.parse(l) as { id: number }).id).sort()).toEqual([1, 2, 3, 4]);
    // The logs went to stderr, at debug level.
    expect(err).toContain('serving MCP over stdio');
  });

  it('records a session from its start, even one that makes no call', async () => {
    const recDir = path.join(dir, 'recordings');
    const before = new Set(await readdir(recDir));
    const started = new Date().toISOString();
    const child = spawn(process.execPath, [...CLI, 'serve', '--config', configFile], {
      env: cliEnv({ GATEHOUSE_TOKEN: token }),
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stdin.write(`${JSON.stringify(initialize({ name: 'no-calls', version: '9' }))}\n`);
    const deadline = Date.now() + 20_000;
    while (!out.includes('"id":1') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    child.stdin.write(
      `${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' })}\n`,
    );
    await new Promise((r) => setTimeout(r, 300));
    child.stdin.end();
    await once(child, 'exit');

    const added = (await readdir(recDir)).filter((f) => !before.has(f));
    expect(added).toHaveLength(1);
    const lines = (await readFile(path.join(recDir, added[0]!), 'utf8'))
      .split('\n')
      .filter(Boolean);
    expect(lines).toHaveLength(1);
    const header = JSON.parse(lines[0]!) as { type: string; start: string; client: unknown };
    expect(header).toMatchObject({ type: 'header', client: { name: 'no-calls', version: '9' } });
    expect(header.start >= started).toBe(true);
  });
});
