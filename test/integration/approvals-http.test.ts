import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ElicitRequestSchema, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { HttpGateway } from '../../server/http.js';
import { loadDevIssuer, type DevIssuer } from '../../server/identity/dev-issuer.js';
import { createRuntime } from '../../server/runtime.js';
import { verifyAuditFile } from '../../recordings/audit.js';
import { CLI, cliEnv, runCli } from '../helpers/cli.js';
import { textOf, writeGatewayConfig } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Out-of-band approval over HTTP: the agent's call waits; a different identity answers with
 * `gatehouse approvals` (the real CLI, against the running server) or the API; the call then
 * runs exactly once. Checked on the real database, on the audit chain and at a webhook
 * receiver the test runs.
 */

const approvers = { groups: ['dba'] };
const policy = {
  rules: [
    { id: 'read', match: { tools: ['postgres_query'], operations: ['read'] }, effect: 'allow' },
    {
      id: 'sre-writes',
      match: {
        groups: ['sre'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers, timeout: '5m', hold: '20s' },
    },
    {
      id: 'contractor-writes',
      match: {
        groups: ['contractors'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers, timeout: '5m', hold: '20s', quorum: 2 },
    },
    {
      id: 'batch-writes',
      match: {
        groups: ['batch'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers, timeout: '5m', hold: '1s' },
    },
  ],
};

const HOOK_SECRET = 'hook-secret-for-tests-0123456789';

interface Hook {
  headers: Record<string, string | string[] | undefined>;
  raw: string;
  body: Record<string, unknown>;
}

describe.skipIf(!pgInfo.available)('out-of-band approval over HTTP', () => {
  let dir: string;
  let configFile: string;
  let issuer: DevIssuer;
  let server: HttpGateway;
  let base: string;
  let su: pg.Client;
  let receiver: Server;
  const hooks: Hook[] = [];
  const clients: Client[] = [];

  const mint = (sub: string, groups: string[]) =>
    issuer.mint({ sub, groups, ttlSec: 600, audience: 'gatehouse' });

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      let raw = '';
      req.on('data', (d: Buffer) => (raw += d.toString()));
      req.on('end', () => {
        hooks.push({ headers: req.headers, raw, body: JSON.parse(raw) as Record<string, unknown> });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;

    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-approvals-'));
    configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy });
    const config = parse(await readFile(configFile, 'utf8')) as Record<string, unknown>;
    process.env.GH_TEST_HOOK_SECRET = HOOK_SECRET;
    await writeFile(
      configFile,
      stringify({
        ...config,
        http: { listen: '127.0.0.1:0' },
        notifications: { webhook: { url: hookUrl, secret: { env: 'GH_TEST_HOOK_SECRET' } } },
      }),
    );
    issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    server = await HttpGateway.start(await createRuntime(configFile, { transport: 'http' }));
    base = server.url.origin;
    su = await connectAs(pgInfo, 'superuser');
    await su.query('DELETE FROM canary WHERE id >= 9200 AND id < 9300');
    await su.query(`INSERT INTO canary (id, v) VALUES (9299, 'n')`);
  });

  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.close()));
    await server?.shutdown();
    await su?.query('DELETE FROM canary WHERE id >= 9200 AND id < 9300');
    await su?.end();
    await new Promise((r) => receiver?.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  const agent = async (sub: string, groups: string[]) => {
    const client = new Client({ name: 'agent', version: '1' });
    await client.connect(
      new StreamableHTTPClientTransport(server.url, {
        requestInit: { headers: { Authorization: `Bearer ${await mint(sub, groups)}` } },
      }),
    );
    clients.push(client);
    return {
      call: async (tool: string, args: Record<string, unknown>) =>
        (await client.callTool({ name: tool, arguments: args }, undefined, {
          timeout: 60_000,
        })) as CallToolResult,
    };
  };
  const write = (sql: string) => ({ target: 'app-db-rw', sql });
  const api = async (token: string, method: 'GET' | 'POST', p: string, body?: unknown) => {
    const res = await fetch(`${base}${p}`, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  /** The pending approval whose statement contains `needle`, as `token` sees it. */
  const pendingWith = async (token: string, needle: string) => {
    for (let i = 0; i < 100; i++) {
      const r = await api(token, 'GET', '/approvals');
      const found = (r.body.approvals as Array<Record<string, unknown>>).find(
        (a) => a.status === 'pending' && JSON.stringify(a.input).includes(needle),
      );
      if (found) return found;
      await sleep(100);
    }
    throw new Error(`no pending approval with ${needle}`);
  };
  const value = async (id: number) =>
    (await su.query<{ v: string }>('SELECT v FROM canary WHERE id = $1', [id])).rows[0]?.v;
  const cli = (args: string[], token: string) =>
    runCli(['approvals', ...args, '--server', base], { GATEHOUSE_TOKEN: token });

  it('an approver answers with the CLI; the waiting call runs; the webhook hears both, signed', async () => {
    const sam = await agent('sam', ['sre']);
    const call = sam.call('postgres_query', {
      ...write(`INSERT INTO canary (id, v) VALUES (9201, 'by-approval')`),
      reason: 'restore canary 9201 (ticket OPS-7)',
    });
    const dora = await mint('dora', ['dba']);
    const pending = await pendingWith(dora, '9201');
    expect(pending).toMatchObject({
      requester: { sub: 'sam' },
      tool: 'postgres_query',
      target: 'app-db-rw',
      operation: 'write',
      purpose: 'restore canary 9201 (ticket OPS-7)',
      rule: 'sre-writes',
      mayAnswer: true,
    });
    expect(pending).not.toHaveProperty('args');

    const listed = await runCli(['approvals', 'list', '--server', base], { GATEHOUSE_TOKEN: dora });
    expect(listed.status).toBe(0);
    expect(listed.stdout).toContain(`${String(pending.id)}  pending  (you may answer)`);
    expect(listed.stdout).toContain(`│ INSERT INTO canary (id, v) VALUES (9201, 'by-approval')`);

    const approved = await cli(
      ['approve', String(pending.id), '--reason', 'checked the ticket'],
      dora,
    );
    expect(approved.stderr).toBe('');
    expect(approved.stdout).toBe(`${String(pending.id)}: approved\n`);
    expect(approved.status).toBe(0);

    const r = await call;
    expect(r.isError).toBeFalsy();
    expect(await value(9201)).toBe('by-approval');

    // The webhook: requested, then answered; signed over "<timestamp>.<body>".
    await waitFor(() => hooks.filter((h) => h.body.id === pending.id).length >= 2);
    const [requested, answered] = hooks.filter((h) => h.body.id === pending.id);
    expect(requested!.body).toMatchObject({
      event: 'approval.requested',
      requester: { sub: 'sam' },
    });
    expect(String(requested!.body.text)).toContain(
      `gatehouse approvals approve ${String(pending.id)}`,
    );
    expect(answered!.body).toMatchObject({ event: 'approval.answered', status: 'approved' });
    for (const h of [requested!, answered!]) {
      const ts = String(h.headers['x-gatehouse-timestamp']);
      const sig = createHmac('sha256', HOOK_SECRET).update(`${ts}.${h.raw}`).digest('hex');
      expect(h.headers['x-gatehouse-signature']).toBe(`sha256=${sig}`);
    }
  });

  it('the requester cannot approve its own call, even as a dba; a deny refuses it', async () => {
    const carl = await agent('carl', ['sre', 'dba']);
    const call = carl.call(
      'postgres_query',
      write(`INSERT INTO canary (id, v) VALUES (9202, 'own')`),
    );
    const carlToken = await mint('carl', ['sre', 'dba']);
    const pending = await pendingWith(await mint('dora', ['dba']), '9202');
    const own = await cli(['approve', String(pending.id)], carlToken);
    expect(own.status).toBe(1);
    expect(own.stderr).toMatch(/the requester cannot answer its own approval/);
    // A look-alike name is the same person.
    const lookalike = await api(
      await mint('cаrl', ['dba']),
      'POST',
      `/approvals/${String(pending.id)}/approve`,
      {},
    );
    expect(lookalike.status).toBe(403);
    // Not an approver at all.
    const stranger = await cli(['approve', String(pending.id)], await mint('eve', ['sre']));
    expect(stranger.status).toBe(1);
    expect(stranger.stderr).toMatch(/eve is not an approver for rule sre-writes/);

    const denied = await cli(
      ['deny', String(pending.id), '--reason', 'use the runbook'],
      await mint('dora', ['dba']),
    );
    expect(denied.status).toBe(0);
    const r = await call;
    expect(textOf(r)).toMatch(
      /^APPROVAL_DECLINED: approval apr_\S+ was denied by dora: use the runbook/,
    );
    expect(r.structuredContent).toMatchObject({
      code: 'APPROVAL_DECLINED',
      approvalId: pending.id,
    });
    expect(await value(9202)).toBeUndefined();
    // Decided: a late approve is refused (409).
    const late = await cli(['approve', String(pending.id)], await mint('dan', ['dba']));
    expect(late.status).toBe(1);
    expect(late.stderr).toMatch(/is already denied/);
  });

  it('approvers see the whole statement: padding shows as its count; one too long to show is not asked', async () => {
    const sam = await agent('sam', ['sre']);
    const long = `UPDATE canary SET v = 'p' WHERE id IN (${Array.from({ length: 2_000 }, (_, i) => 10_000 + i).join(', ')})`;
    const refused = await sam.call('postgres_query', write(long));
    expect(textOf(refused)).toMatch(
      /^INVALID_INPUT: rule sre-writes needs approval, and the statement is too long to show an approver whole \(\d+ characters as shown, at most 8000\)/,
    );
    // A tail hidden behind 30 000 blanks and 5 000 empty lines is in plain view.
    const call = sam.call(
      'postgres_query',
      write(
        `UPDATE canary SET v = 'q' WHERE id = 9205${' '.repeat(30_000)}${'\n'.repeat(5_000)}OR id = 9206`,
      ),
    );
    const dora = await mint('dora', ['dba']);
    const pending = await pendingWith(dora, '9206');
    const listed = await cli(['list'], dora);
    expect(listed.stdout).toContain(
      `│ UPDATE canary SET v = 'q' WHERE id = 9205⟨30000 blanks⟩\n    │ ⟨4999 blank lines⟩\n    │ OR id = 9206`,
    );
    await cli(['deny', String(pending.id)], dora);
    expect((await call).structuredContent).toMatchObject({ code: 'APPROVAL_DECLINED' });
  });

  it('an approver answers in a form on its own MCP session (review_approvals); never its own request', async () => {
    const sam = await agent('sam', ['sre']);
    const call = sam.call(
      'postgres_query',
      write(`INSERT INTO canary (id, v) VALUES (9207, 'reviewed')`),
    );
    const dora = await mint('dora', ['dba']);
    await pendingWith(dora, '9207');
    const shown: string[] = [];
    const reviewer = new Client(
      { name: 'approver', version: '1' },
      { capabilities: { elicitation: { form: {} } } },
    );
    reviewer.setRequestHandler(ElicitRequestSchema, (req) => {
      shown.push(String(req.params.message));
      return {
        action: 'accept',
        content: { decision: 'approve', reason: 'reviewed in my client' },
      };
    });
    await reviewer.connect(
      new StreamableHTTPClientTransport(server.url, {
        requestInit: { headers: { Authorization: `Bearer ${dora}` } },
      }),
    );
    clients.push(reviewer);
    const review = (await reviewer.callTool({
      name: 'review_approvals',
      arguments: {},
    })) as CallToolResult;
    expect(review.structuredContent).toMatchObject({
      reviewed: [{ answer: 'approve', status: 'approved' }],
    });
    expect(shown[0]).toContain(`│ INSERT INTO canary (id, v) VALUES (9207, 'reviewed')`);
    expect(shown[0]).toContain('You answer as dora.');
    expect((await call).isError).toBeFalsy();
    expect(await value(9207)).toBe('reviewed');

    // carl (sre and dba) is never shown his own request.
    const carl = await agent('carl', ['sre', 'dba']);
    const own = carl.call(
      'postgres_query',
      write(`INSERT INTO canary (id, v) VALUES (9208, 'own')`),
    );
    await pendingWith(dora, '9208');
    const carlReviewer = new Client(
      { name: 'approver', version: '1' },
      { capabilities: { elicitation: { form: {} } } },
    );
    let asked = 0;
    carlReviewer.setRequestHandler(ElicitRequestSchema, () => {
      asked++;
      return { action: 'accept', content: { decision: 'approve' } };
    });
    await carlReviewer.connect(
      new StreamableHTTPClientTransport(server.url, {
        requestInit: { headers: { Authorization: `Bearer ${await mint('carl', ['sre', 'dba'])}` } },
      }),
    );
    clients.push(carlReviewer);
    const none = (await carlReviewer.callTool({
      name: 'review_approvals',
      arguments: {},
    })) as CallToolResult;
    expect(none.structuredContent).toEqual({ reviewed: [], remaining: 0 });
    expect(asked).toBe(0);
    const pending = await pendingWith(dora, '9208');
    await api(dora, 'POST', `/approvals/${String(pending.id)}/deny`, {});
    expect((await own).structuredContent).toMatchObject({ code: 'APPROVAL_DECLINED' });
  });

  it('quorum 2 needs two different people', async () => {
    const cora = await agent('cora', ['contractors']);
    const call = cora.call(
      'postgres_query',
      write(`INSERT INTO canary (id, v) VALUES (9203, 'two')`),
    );
    const dora = await mint('dora', ['dba']);
    const pending = await pendingWith(dora, '9203');
    const first = await api(dora, 'POST', `/approvals/${String(pending.id)}/approve`, {});
    expect(first.body.approval).toMatchObject({ status: 'pending' });
    const again = await api(dora, 'POST', `/approvals/${String(pending.id)}/approve`, {});
    expect(again.status).toBe(409);
    await sleep(300);
    expect(await value(9203)).toBeUndefined();
    const second = await api(
      await mint('dan', ['dba']),
      'POST',
      `/approvals/${String(pending.id)}/approve`,
      {},
    );
    expect(second.body.approval).toMatchObject({ status: 'approved' });
    expect((await call).isError).toBeFalsy();
    expect(await value(9203)).toBe('two');
  });

  it('a held call answers APPROVAL_PENDING; await_approval runs it exactly once however often it is awaited', async () => {
    const bob = await agent('bob', ['batch']);
    const sql = `UPDATE canary SET v = v || 'x' WHERE id = 9299`;
    const held = await bob.call('postgres_query', write(sql));
    expect(held.isError).toBe(true);
    const sc = held.structuredContent as { code: string; approvalId: string };
    expect(sc.code).toBe('APPROVAL_PENDING');
    expect(textOf(held)).toContain(`Call await_approval with {"id": "${sc.approvalId}"}`);
    expect(await value(9299)).toBe('n');

    // Another identity cannot await it (nor learn it exists).
    const mallory = await agent('mallory', ['batch']);
    const theirs = await mallory.call('await_approval', { id: sc.approvalId });
    expect(textOf(theirs)).toMatch(/^INVALID_INPUT: no approval apr_\S+ for mallory/);

    // Still pending: await_approval waits its hold, then says so again.
    const stillPending = await bob.call('await_approval', { id: sc.approvalId });
    expect(stillPending.structuredContent).toMatchObject({
      code: 'APPROVAL_PENDING',
      approvalId: sc.approvalId,
    });

    await api(await mint('dora', ['dba']), 'POST', `/approvals/${sc.approvalId}/approve`, {});
    const results = await Promise.all(
      [1, 2, 3].map(() => bob.call('await_approval', { id: sc.approvalId })),
    );
    for (const r of results) expect(r.isError).toBeFalsy();
    expect(results[1]!.structuredContent).toEqual(results[0]!.structuredContent);
    const later = await bob.call('await_approval', { id: sc.approvalId });
    expect(later.structuredContent).toEqual(results[0]!.structuredContent);
    expect(await value(9299)).toBe('nx');

    // One consumed line on the chain; the chain verifies.
    const lines = await auditLines(dir);
    const consumed = lines.filter(
      (l) =>
        (l.approval as { id?: string; event?: string } | undefined)?.event === 'consumed' &&
        (l.approval as { id: string }).id === sc.approvalId,
    );
    expect(consumed).toHaveLength(1);
    const outcomes = lines.filter(
      (l) =>
        l.kind === 'outcome' && (l.approval as { id?: string } | undefined)?.id === sc.approvalId,
    );
    expect(outcomes.some((l) => (l.approval as { answer: string }).answer === 'approve')).toBe(
      true,
    );
    for (const f of await chainFiles(dir)) expect((await verifyAuditFile(f)).ok).toBe(true);
    // Every call has its outcome on record, the awaits answered from the stored result too.
    const decided = new Set(lines.filter((l) => l.kind === 'decision').map((l) => l.callId));
    const ended = new Set(lines.filter((l) => l.kind === 'outcome').map((l) => l.callId));
    expect([...decided].filter((id) => !ended.has(id))).toEqual([]);
    expect(
      outcomes.filter((l) => (l.approval as { answer: string }).answer === 'approve').length,
    ).toBeGreaterThanOrEqual(4);
  });

  it('one changed character of the SQL is a new approval; the approved one is not reused for it', async () => {
    const bob = await agent('bob', ['batch']);
    const a = `UPDATE canary SET v = 'A' WHERE id = 9299`;
    const first = await bob.call('postgres_query', write(a));
    const idA = (first.structuredContent as { approvalId: string }).approvalId;
    await api(await mint('dora', ['dba']), 'POST', `/approvals/${idA}/approve`, {});
    const changed = await bob.call('postgres_query', write(a.replace("'A'", "'B'")));
    expect(changed.structuredContent).toMatchObject({ code: 'APPROVAL_PENDING' });
    expect((changed.structuredContent as { approvalId: string }).approvalId).not.toBe(idA);
    expect(await value(9299)).not.toBe('B');
    // The exact call again joins its approved approval and runs.
    const same = await bob.call('postgres_query', write(a));
    expect(same.isError).toBeFalsy();
    expect(await value(9299)).toBe('A');
  });

  it('a stdio gateway on the same config waits on the shared state file; the answer comes through HTTP', async () => {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [...CLI, 'serve', '--config', configFile],
      env: cliEnv({ GATEHOUSE_TOKEN: await mint('sam', ['sre']), GATEHOUSE_LOG_LEVEL: 'error' }),
      stderr: 'pipe',
    });
    const client = new Client({ name: 'stdio-agent', version: '1' });
    await client.connect(transport);
    clients.push(client);
    const call = client.callTool(
      {
        name: 'postgres_query',
        arguments: write(`INSERT INTO canary (id, v) VALUES (9204, 'stdio')`),
      },
      undefined,
      { timeout: 60_000 },
    );
    const dora = await mint('dora', ['dba']);
    const pending = await pendingWith(dora, '9204');
    await api(dora, 'POST', `/approvals/${String(pending.id)}/approve`, {});
    const r = (await call) as CallToolResult;
    expect(r.isError).toBeFalsy();
    expect(await value(9204)).toBe('stdio');
  });

  it('grants: listed, revocable by an approver; revoke is audited', async () => {
    // No rule here grants a window: the list is empty and revoking an unknown grant is 404.
    const dora = await mint('dora', ['dba']);
    const listed = await cli(['grants'], dora);
    expect(listed.status).toBe(0);
    expect(listed.stdout).toBe('no open grants\n');
    const missing = await cli(['revoke', 'grt_nope'], dora);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/no grant grt_nope/);
  });
});

async function waitFor(test: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(50);
  }
}

async function chainFiles(dir: string): Promise<string[]> {
  return (await readdir(dir))
    .filter((f) => /^audit.*\.jsonl$/.test(f))
    .map((f) => path.join(dir, f));
}

async function auditLines(dir: string): Promise<Array<Record<string, unknown>>> {
  const out: Array<Record<string, unknown>> = [];
  for (const f of await chainFiles(dir)) {
    for (const l of (await readFile(f, 'utf8')).split('\n'))
      if (l) out.push(JSON.parse(l) as Record<string, unknown>);
  }
  return out;
}
