import { request as httpRequest } from 'node:http';
import { execFile, spawn } from 'node:child_process';
import { get as httpGet } from 'node:http';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { HttpGateway } from '../../server/http.js';
import { loadDevIssuer, type DevIssuer } from '../../server/identity/dev-issuer.js';
import { createRuntime } from '../../server/runtime.js';
import { verifyAuditFile } from '../../recordings/audit.js';
import { CLI, cliEnv } from '../helpers/cli.js';
import { textOf, writeGatewayConfig } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');
const root = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The resource these gateways protect: the audience their tokens must carry (RFC 8707). */
const RESOURCE = 'https://gatehouse.test';
const IDP = 'https://idp.example.com/';
const ALLOWED_ORIGIN = 'https://app.example.com';

const policy = {
  rules: [
    {
      id: 'read',
      match: { tools: ['postgres_query'], targets: ['app-db'], operations: ['read'] },
      effect: 'allow',
      limits: { timeout: '60s' },
    },
  ],
};

interface Gw {
  dir: string;
  configFile: string;
  issuer: DevIssuer;
  mint(sub: string, opts?: { ttlSec?: number; audience?: string }): Promise<string>;
}

/** A gateway directory whose config has an `http:` section. */
async function gatewayDir(http: Record<string, unknown>): Promise<Gw> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-http-'));
  const configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy, clockToleranceSec: 0 });
  const config = parse(await readFile(configFile, 'utf8')) as Record<string, unknown>;
  await writeFile(configFile, stringify({ ...config, http }));
  const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
    create: true,
  });
  return {
    dir,
    configFile,
    issuer,
    mint: (sub, opts = {}) =>
      issuer.mint({
        sub,
        groups: ['agents'],
        ttlSec: opts.ttlSec ?? 600,
        audience: opts.audience ?? RESOURCE,
      }),
  };
}

const INIT = {
  jsonrpc: '2.0',
  id: 0,
  method: 'initialize',
  params: {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'raw', version: '1' },
  },
};

async function post(
  url: URL | string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      Accept: 'application/json, text/event-stream',
      ...headers,
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });

async function connectStreamable(url: URL, token: string): Promise<Client> {
  const client = new Client({ name: 'http-test', version: '1.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(url, { requestInit: { headers: bearer(token) } }),
  );
  return client;
}

const query = async (client: Client, sql: string, params?: unknown[]) =>
  (await client.callTool({
    name: 'postgres_query',
    arguments: { target: 'app-db', sql, ...(params ? { params } : {}) },
  })) as CallToolResult;

describe.skipIf(!pgInfo.available)('--transport http: an OAuth resource server', () => {
  let gw: Gw;
  let server: HttpGateway;
  const clients: Client[] = [];
  const dirs: string[] = [];

  beforeAll(async () => {
    gw = await gatewayDir({
      listen: '127.0.0.1:0',
      publicUrl: RESOURCE,
      authorizationServers: [IDP],
      allowedOrigins: [ALLOWED_ORIGIN],
      maxBodyBytes: '64KiB',
      limits: { callsPerMinute: 1000, concurrentCalls: 64 },
    });
    dirs.push(gw.dir);
    server = await HttpGateway.start(await createRuntime(gw.configFile, { transport: 'http' }));
  });
  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.close()));
    await server?.shutdown('test end');
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('serves the protected resource metadata (RFC 9728) at both paths, without a token', async () => {
    for (const p of [
      '/.well-known/oauth-protected-resource',
      '/.well-known/oauth-protected-resource/mcp',
    ]) {
      const r = await fetch(new URL(p, server.url));
      expect(r.status).toBe(200);
      expect(await r.json()).toMatchObject({
        resource: RESOURCE,
        authorization_servers: [IDP],
        bearer_methods_supported: ['header'],
      });
    }
  });

  it('GET /healthz: 200 {"status":"ok"} without a token', async () => {
    const r = await fetch(new URL('/healthz', server.url));
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ok' });
  });

  it('no token: 401 with a challenge naming the metadata, and no error code', async () => {
    const r = await post(server.url, INIT);
    expect(r.status).toBe(401);
    expect(r.headers.get('www-authenticate')).toBe(
      `Bearer resource_metadata="${RESOURCE}/.well-known/oauth-protected-resource"`,
    );
    // The same for the SSE endpoint.
    const sse = await fetch(server.sseUrl, { headers: { Accept: 'text/event-stream' } });
    expect(sse.status).toBe(401);
  });

  it('a token for another audience, an expired one and a forged one: 401 invalid_token', async () => {
    const otherAudience = await gw.mint('alice', { audience: 'gatehouse' });
    const expiring = await gw.mint('alice', { ttlSec: 1 });
    const stranger = await loadDevIssuer(path.join(gw.dir, 'stranger.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    const forged = await stranger.mint({ sub: 'alice', audience: RESOURCE, ttlSec: 600 });
    await sleep(2_100);
    const cases: Array<[string, RegExp]> = [
      [otherAudience, /audience/],
      [expiring, /expired/],
      [forged, /signature|key/],
      ['not-a-jwt', /./],
    ];
    for (const [token, reason] of cases) {
      const r = await post(server.url, INIT, bearer(token));
      expect(r.status).toBe(401);
      const challenge = r.headers.get('www-authenticate') ?? '';
      expect(challenge).toMatch(/^Bearer error="invalid_token", error_description="[^"]+"/);
      expect(challenge).toContain(
        `resource_metadata="${RESOURCE}/.well-known/oauth-protected-resource"`,
      );
      const body = (await r.json()) as { error: { message: string } };
      expect(body.error.message).toMatch(/^UNAUTHENTICATED: /);
      expect(body.error.message).toMatch(reason);
    }
  });

  it('a browser page of another origin gets 403; a listed origin and no Origin pass', async () => {
    const token = await gw.mint('alice');
    const evil = await post(server.url, INIT, { ...bearer(token), Origin: 'https://evil.example' });
    expect(evil.status).toBe(403);
    expect(((await evil.json()) as { error: { message: string } }).error.message).toMatch(
      /Origin "https:\/\/evil.example" is not in http.allowedOrigins/,
    );
    const listed = await post(server.url, INIT, { ...bearer(token), Origin: ALLOWED_ORIGIN });
    expect(listed.status).toBe(200);
    expect(listed.headers.get('access-control-allow-origin')).toBe(ALLOWED_ORIGIN);
    await listed.body?.cancel();
    // DNS rebinding: a foreign Host on a loopback bind (fetch cannot set Host).
    const rebound = await new Promise<number>((resolve, reject) =>
      httpGet(
        new URL('/.well-known/oauth-protected-resource', server.url),
        { headers: { Host: 'evil.example' } },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      ).on('error', reject),
    );
    expect(rebound).toBe(403);
  });

  it('a valid token queries PostgreSQL over Streamable HTTP', async () => {
    const client = await connectStreamable(server.url, await gw.mint('alice'));
    clients.push(client);
    const r = await query(client, 'SELECT 41 + 1 AS answer');
    expect(r.isError, textOf(r)).toBeFalsy();
    expect(r.structuredContent).toMatchObject({ rows: [[42]] });
  });

  it('a valid token queries PostgreSQL over HTTP+SSE', async () => {
    const client = new Client({ name: 'sse-test', version: '1.0.0' });
    await client.connect(
      new SSEClientTransport(server.sseUrl, {
        requestInit: { headers: bearer(await gw.mint('alice')) },
      }),
    );
    clients.push(client);
    const r = await query(client, `SELECT 'over sse' AS how`);
    expect(r.isError, textOf(r)).toBeFalsy();
    expect(r.structuredContent).toMatchObject({ rows: [['over sse']] });
  });

  it("another identity's token on an existing session is refused (403), over both transports", async () => {
    const transport = new StreamableHTTPClientTransport(server.url, {
      requestInit: { headers: bearer(await gw.mint('alice')) },
    });
    const client = new Client({ name: 'owner', version: '1.0.0' });
    await client.connect(transport);
    clients.push(client);
    const sid = transport.sessionId!;
    expect(sid).toBeTruthy();
    const bob = await gw.mint('bob');
    const call = {
      jsonrpc: '2.0',
      id: 7,
      method: 'tools/call',
      params: { name: 'list_targets', arguments: {} },
    };
    const r = await post(server.url, call, {
      ...bearer(bob),
      'Mcp-Session-Id': sid,
      'Mcp-Protocol-Version': '2025-06-18',
    });
    expect(r.status).toBe(403);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(
      /belongs to another identity/,
    );
    // Alice's session still works for alice.
    expect((await client.callTool({ name: 'list_targets', arguments: {} })).isError).toBeFalsy();

    // HTTP+SSE: bob posting into alice's SSE session.
    const sse = await fetch(server.sseUrl, {
      headers: { Accept: 'text/event-stream', ...bearer(await gw.mint('alice')) },
    });
    const reader = (sse.body as ReadableStream<Uint8Array>).getReader();
    let head = '';
    while (!head.includes('sessionId=')) {
      const { value } = await reader.read();
      head += new TextDecoder().decode(value);
    }
    const endpoint = /data: (\S+)/.exec(head)![1]!;
    const intoSse = await post(new URL(endpoint, server.url), call, bearer(bob));
    expect(intoSse.status).toBe(403);
    await reader.cancel();
  });

  it('an expired token stops working mid-session', async () => {
    const client = await connectStreamable(server.url, await gw.mint('carol', { ttlSec: 3 }));
    clients.push(client);
    expect((await client.callTool({ name: 'list_targets', arguments: {} })).isError).toBeFalsy();
    await sleep(3_200);
    await expect(client.callTool({ name: 'list_targets', arguments: {} })).rejects.toThrow(
      /UNAUTHENTICATED: token expired/,
    );
  });

  it('32 concurrent clients each get their own answers', async () => {
    const n = 32;
    const many = await Promise.all(
      Array.from({ length: n }, async (_, i) =>
        connectStreamable(server.url, await gw.mint(`agent-${i}`)),
      ),
    );
    clients.push(...many);
    const results = await Promise.all(
      many.map((c, i) =>
        query(c, 'SELECT $1::text AS mine, pg_sleep(0.05)::text AS s', [`v-${i}`]),
      ),
    );
    results.forEach((r, i) => {
      expect(r.isError, textOf(r)).toBeFalsy();
      expect(r.structuredContent).toMatchObject({ rows: [[`v-${i}`, '']] });
    });
  });

  it('a body over http.maxBodyBytes is refused with 413, before anything is parsed', async () => {
    const token = await gw.mint('alice');
    const big = JSON.stringify({ ...INIT, params: { ...INIT.params, pad: 'x'.repeat(70_000) } });
    const r = await post(server.url, big, bearer(token));
    expect(r.status).toBe(413);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(
      /at most 64 KiB/,
    );
  });

  it('a chunked body over the limit gets 413 and the process keeps serving (red team: it crashed 10 s later)', async () => {
    const token = await gw.mint('alice');
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(server.url, {
        method: 'POST',
        headers: {
          ...bearer(token),
          'Content-Type': 'application/json',
          Accept: 'application/json, text/event-stream',
          'Transfer-Encoding': 'chunked',
        },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      const chunk = 'a'.repeat(16 * 1024);
      for (let i = 0; i < 6; i++) req.write(chunk);
      req.end();
    });
    expect(status).toBe(413);
    // The discard timer fires after 10 s; the process (this test's own) must still be here.
    await sleep(10_500);
    expect((await fetch(new URL('/healthz', server.url))).status).toBe(200);
    const client = await connectStreamable(server.url, token);
    clients.push(client);
    expect((await query(client, 'SELECT 1 AS still')).isError).toBeFalsy();
  }, 30_000);

  it('a request whose id is still in flight in its session is refused (409, -32600); the first gets its own answer', async () => {
    const token = await gw.mint('gina');
    const init = await post(server.url, INIT, bearer(token));
    const sid = init.headers.get('mcp-session-id')!;
    await init.text();
    const headers = {
      ...bearer(token),
      'Mcp-Session-Id': sid,
      'Mcp-Protocol-Version': '2025-06-18',
    };
    await (
      await post(server.url, { jsonrpc: '2.0', method: 'notifications/initialized' }, headers)
    ).text();
    const call = (sql: string) => ({
      jsonrpc: '2.0',
      id: 9,
      method: 'tools/call',
      params: { name: 'postgres_query', arguments: { target: 'app-db', sql } },
    });
    const first = post(server.url, call('SELECT pg_sleep(0.5)::text AS s, 1 AS from_a'), headers);
    await sleep(100);
    const second = await post(server.url, call('SELECT 2 AS from_b'), headers);
    expect(second.status).toBe(409);
    expect(await second.json()).toMatchObject({ id: 9, error: { code: -32600 } });
    const text = await (await first).text();
    expect(text).toMatch(/from_a/);
    expect(text).not.toMatch(/from_b/);
    // Answered: the id is free again.
    const again = await post(server.url, call('SELECT 3 AS reused'), headers);
    expect(await again.text()).toMatch(/reused/);
  });

  it('open sessions are capped per identity (http.limits.sessions): 429 past it, free again once one ends', async () => {
    const capped = await gatewayDir({
      listen: '127.0.0.1:0',
      publicUrl: RESOURCE,
      limits: { callsPerMinute: 1000, concurrentCalls: 8, sessions: 2 },
    });
    dirs.push(capped.dir);
    const cgw = await HttpGateway.start(
      await createRuntime(capped.configFile, { transport: 'http' }),
    );
    try {
      const token = await capped.mint('fay');
      const a = await post(cgw.url, INIT, bearer(token));
      const sidA = a.headers.get('mcp-session-id')!;
      await a.text();
      await (await post(cgw.url, INIT, bearer(token))).text();
      const third = await post(cgw.url, INIT, bearer(token));
      expect(third.status).toBe(429);
      expect(((await third.json()) as { error: { message: string } }).error.message).toMatch(
        /fay has 2 open sessions \(http\.limits\.sessions: 2\)/,
      );
      // Another identity is not affected.
      const other = await post(cgw.url, INIT, bearer(await capped.mint('gus')));
      expect(other.status).toBe(200);
      await other.text();
      // Ending one frees a place.
      const del = await fetch(cgw.url, {
        method: 'DELETE',
        headers: { ...bearer(token), 'Mcp-Session-Id': sidA, 'Mcp-Protocol-Version': '2025-06-18' },
      });
      expect(del.status).toBe(200);
      const fourth = await post(cgw.url, INIT, bearer(token));
      expect(fourth.status).toBe(200);
      await fourth.text();
    } finally {
      await cgw.shutdown('test end');
    }
  });

  it('per-identity limits: LIMIT_EXCEEDED inside a session, 429 + Retry-After to open one', async () => {
    const limited = await gatewayDir({
      listen: '127.0.0.1:0',
      publicUrl: RESOURCE,
      limits: { callsPerMinute: 5, concurrentCalls: 1 },
    });
    dirs.push(limited.dir);
    const lgw = await HttpGateway.start(
      await createRuntime(limited.configFile, { transport: 'http' }),
    );
    try {
      const token = await limited.mint('dave');
      const client = await connectStreamable(lgw.url, token); // 1 of 5
      clients.push(client);
      // Concurrency: one call runs, a second at the same time is refused.
      const slow = query(client, 'SELECT pg_sleep(0.6)::text AS s'); // 2 of 5
      await sleep(200);
      const second = (await client.callTool({
        name: 'list_targets',
        arguments: {},
      })) as CallToolResult;
      expect(second.isError).toBe(true);
      expect(textOf(second)).toMatch(/^LIMIT_EXCEEDED: .*concurrentCalls/);
      expect(second.structuredContent).toMatchObject({ code: 'LIMIT_EXCEEDED' });
      expect((await slow).isError).toBeFalsy();
      // Rate: three more fit, the next is refused.
      for (let i = 0; i < 3; i++)
        expect(
          (await client.callTool({ name: 'list_targets', arguments: {} })).isError,
        ).toBeFalsy();
      const over = (await client.callTool({
        name: 'list_targets',
        arguments: {},
      })) as CallToolResult;
      expect(textOf(over)).toMatch(/^LIMIT_EXCEEDED: .*callsPerMinute/);
      // No session yet: HTTP 429 with Retry-After.
      const open = await post(lgw.url, INIT, bearer(token));
      expect(open.status).toBe(429);
      expect(Number(open.headers.get('retry-after'))).toBeGreaterThan(0);
      // Another identity has its own budget.
      const other = await connectStreamable(lgw.url, await limited.mint('erin'));
      clients.push(other);
      expect((await other.callTool({ name: 'list_targets', arguments: {} })).isError).toBeFalsy();
    } finally {
      await lgw.shutdown('test end');
    }
  });

  it('the MCP Inspector CLI lists the tools over HTTP', async () => {
    const inspector = path.join(
      root,
      'node_modules/@modelcontextprotocol/inspector/cli/build/cli.js',
    );
    const list = await run(
      process.execPath,
      [
        inspector,
        '--cli',
        server.url.href,
        '--transport',
        'http',
        '--header',
        `Authorization: Bearer ${await gw.mint('alice')}`,
        '--method',
        'tools/list',
      ],
      { env: cliEnv({ NODE_NO_WARNINGS: '1' }), timeout: 60_000 },
    );
    const names = (JSON.parse(list.stdout) as { tools: Array<{ name: string }> }).tools.map(
      (t) => t.name,
    );
    expect(names).toEqual([
      'list_targets',
      'explain',
      'await_approval',
      'review_approvals',
      'postgres_query',
    ]);
  });
});

describe.skipIf(!pgInfo.available)('gatehouse serve --transport http: SIGTERM', () => {
  let admin: pg.Client;
  let dir: string | undefined;

  beforeAll(async () => {
    admin = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await admin?.end();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('SIGTERM during calls: they finish, every decision has its outcome, then the process exits', async () => {
    const g = await gatewayDir({ publicUrl: RESOURCE });
    dir = g.dir;
    const child = spawn(
      process.execPath,
      [...CLI, 'serve', '--config', g.configFile, '--transport', 'http', '--listen', '127.0.0.1:0'],
      { env: cliEnv({ GATEHOUSE_LOG_LEVEL: 'info' }), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
      child.once('exit', (code) => resolve({ code, at: Date.now() })),
    );
    try {
      const deadline = Date.now() + 30_000;
      let m: RegExpExecArray | null;
      while (!(m = /serving MCP over HTTP at (http:\/\/127\.0\.0\.1:\d+\/mcp)/.exec(stderr))) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(stderr);
        await sleep(50);
      }
      const url = new URL(m[1]!);
      // Red team: refused tokens in a loop must not fill stderr (at most 20 lines a window).
      for (let i = 0; i < 60; i++) {
        const r = await post(url, INIT, bearer(`not.a.token${i}`));
        expect(r.status).toBe(401);
        await r.text();
      }
      expect(stderr.match(/bearer token refused/g)?.length ?? 0).toBeLessThanOrEqual(20);
      const n = 4;
      const cs = await Promise.all(
        Array.from({ length: n }, async (_, i) => connectStreamable(url, await g.mint(`t-${i}`))),
      );
      const calls = cs.map((c, i) =>
        query(c, `SELECT pg_sleep(1)::text AS s /* http-term-${i} */`),
      );
      for (;;) {
        const r = await admin.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%http-term-%' AND state = 'active' AND pid <> pg_backend_pid()`,
        );
        if ((r.rows[0] as { n: number }).n === n) break;
        await sleep(25);
      }
      child.kill('SIGTERM');
      const signalled = Date.now();
      const answers = await Promise.all(calls);
      for (const a of answers) expect(a.isError, textOf(a)).toBeFalsy();
      // A new request once shutdown began is not served.
      const late = await post(url, INIT, bearer(await g.mint('late'))).then(
        (r) => r.status,
        () => 'refused',
      );
      expect([503, 'refused']).toContain(late);
      const exit = await exited;
      expect(exit.code, stderr).toBe(0);
      expect(exit.at - signalled).toBeLessThan(8_000);
      await Promise.allSettled(cs.map((c) => c.close()));

      const lines = (await readFile(path.join(g.dir, 'audit.jsonl'), 'utf8'))
        .split('\n')
        .filter(Boolean)
        .map(
          (l) => JSON.parse(l) as { kind: string; callId: string; outcome?: { status: string } },
        );
      const decided = lines.filter((l) => l.kind === 'decision').map((l) => l.callId);
      const outcomes = lines.filter((l) => l.kind === 'outcome');
      expect(decided).toHaveLength(n);
      expect(outcomes.map((l) => l.callId).sort()).toEqual([...decided].sort());
      for (const o of outcomes) expect(o.outcome).toMatchObject({ status: 'ok' });
      expect(await verifyAuditFile(path.join(g.dir, 'audit.jsonl'))).toMatchObject({ ok: true });
      expect(stdout).toBe('');
      expect(stderr).not.toMatch(/is closed|audit write failed|recording failed/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 90_000);
});
