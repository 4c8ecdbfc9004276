import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ElicitResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startGateway, textOf, type TestGateway } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * In-band approval (`approvers: client`): the SDK Client answers the elicitation form as the
 * human at the client would. Every "no" (decline, cancel, deny, a malformed answer, silence
 * past the timeout and a late yes, a cancelled call, a client without the capability) is
 * checked on the real database, not only in the result: the row must not exist.
 */

const policy = {
  rules: [
    {
      id: 'read',
      match: { tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
    },
    {
      id: 'sre-confirm-writes',
      description: 'SREs confirm their own writes at their client',
      match: {
        groups: ['sre'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers: 'client', timeout: '2s' },
    },
    {
      id: 'ops-writes-with-reason',
      match: {
        groups: ['ops'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers: 'client', timeout: '10s', requireReason: true, grant: '1h' },
    },
  ],
};

/** Ids this file inserts into `canary` (deleted at the end): one per case. */
let nextId = 9_100;
const insert = (id: number, v = 'approved') => ({
  target: 'app-db-rw',
  sql: `INSERT INTO canary (id, v) VALUES (${id}, '${v}')`,
});

describe.skipIf(!pgInfo.available)('in-band approval by elicitation (approvers: client)', () => {
  let gw: TestGateway;
  let su: pg.Client;
  let token: string;

  beforeAll(async () => {
    gw = await startGateway({ pg: pgInfo, policy });
    su = await connectAs(pgInfo, 'superuser');
    token = await gw.mint('sam', ['sre']);
  });
  afterAll(async () => {
    await su?.query('DELETE FROM canary WHERE id >= 9100 AND id < 9200');
    await su?.end();
    await gw?.close();
  });

  const exists = async (id: number) =>
    (await su.query('SELECT 1 FROM canary WHERE id = $1', [id])).rowCount === 1;

  const answering = (answer: ElicitResult | (() => Promise<ElicitResult>)) => {
    const seen: Array<{ message: string; schema: unknown }> = [];
    return {
      seen,
      elicit: async (params: { message?: string; requestedSchema?: unknown }) => {
        seen.push({ message: String(params.message), schema: params.requestedSchema });
        return typeof answer === 'function' ? answer() : answer;
      },
    };
  };

  it('explain says who would be asked', async () => {
    const c = await gw.connect(token);
    const r = await c.call('explain', { tool: 'postgres_query', input: insert(nextId) });
    expect(r.structuredContent).toMatchObject({
      effect: 'approve',
      rule: 'sre-confirm-writes',
      approval: {
        approvers: 'client',
        quorum: 1,
        timeoutMs: 2_000,
        requireReason: false,
        who: 'the person at your MCP client, by an approval form (elicitation)',
      },
    });
    await c.close();
  });

  it('accept + approve runs the exact call, and the form showed what would run', async () => {
    const id = nextId++;
    const human = answering({
      action: 'accept',
      content: { decision: 'approve', reason: 'ok by me' },
    });
    const c = await gw.connect(token, { elicit: human.elicit });
    const r = await c.call('postgres_query', {
      ...insert(id),
      reason: 'fill the canary for the drill',
    });
    expect(textOf(r)).not.toMatch(/^[A-Z_]+:/);
    expect(r.isError).toBeFalsy();
    expect(await exists(id)).toBe(true);
    expect(human.seen).toHaveLength(1);
    const form = human.seen[0]!.message;
    expect(form).toContain(`INSERT INTO canary (id, v) VALUES (${id}, 'approved')`);
    expect(form).toContain('sam (groups: sre) asks to run postgres_query on app-db-rw (write)');
    expect(form).toContain('Rule: sre-confirm-writes');
    expect(form).toContain(`Purpose, in the agent's words: "fill the canary for the drill"`);
    expect(human.seen[0]!.schema).toMatchObject({
      properties: { decision: { enum: ['approve', 'deny'] } },
      required: ['decision'],
    });

    // Evidence: requested and approved lines, then the outcome naming the approval.
    const lines = await auditLines(gw);
    const mine = lines.filter((l) => (l.input as { sql?: string })?.sql?.includes(`(${id},`));
    expect(
      mine.map((l) => `${String(l.kind)}:${(l.approval as { event?: string })?.event ?? ''}`),
    ).toEqual(['decision:', 'approval:requested', 'approval:approved', 'outcome:']);
    const outcome = mine[3]!;
    expect(outcome.approval).toMatchObject({ approver: 'sam', answer: 'approve' });
    expect(outcome.reason).toBe('fill the canary for the drill');
    expect((mine[2]!.approval as { reason?: string }).reason).toBe('ok by me');
    // The recording keeps the form and the answer.
    const rec = await recordingText(gw);
    expect(rec).toContain('Gatehouse: approve this call?');
    expect(rec).toContain('"response":"accept: approve"');
    await c.close();
  });

  const refusals: Array<[string, ElicitResult, RegExp]> = [
    [
      'decline',
      { action: 'decline' },
      /^APPROVAL_DECLINED: approval form apr_\S+ was declined by the client \(rule sre-confirm-writes\); not approved/,
    ],
    [
      'cancel',
      { action: 'cancel' },
      /^APPROVAL_DECLINED: approval form apr_\S+ was cancelled by the client/,
    ],
    [
      'accept + deny',
      { action: 'accept', content: { decision: 'deny', reason: 'not today' } },
      /^APPROVAL_DECLINED: approval form apr_\S+ was answered "deny" \(rule sre-confirm-writes\): not today/,
    ],
    [
      'accept without a decision that fits the form',
      { action: 'accept', content: { decision: 'yes' } },
      /^APPROVAL_DECLINED: the client's answer to approval apr_\S+ did not fit the form/,
    ],
  ];
  for (const [name, answer, expected] of refusals) {
    it(`${name} does not run the call`, async () => {
      const id = nextId++;
      const c = await gw.connect(token, { elicit: answering(answer).elicit });
      const r = await c.call('postgres_query', insert(id));
      expect(r.isError).toBe(true);
      expect(textOf(r)).toMatch(expected);
      expect(r.structuredContent).toMatchObject({
        code: 'APPROVAL_DECLINED',
        rule: 'sre-confirm-writes',
        approvalId: expect.stringMatching(/^apr_/) as unknown,
      });
      expect(await exists(id)).toBe(false);
      await c.close();
    });
  }

  it('a client without the elicitation capability gets APPROVAL_UNAVAILABLE, never a yes', async () => {
    const id = nextId++;
    const c = await gw.connect(token);
    const r = await c.call('postgres_query', insert(id));
    expect(textOf(r)).toMatch(
      /^APPROVAL_UNAVAILABLE: rule sre-confirm-writes needs the person at this MCP client/,
    );
    expect(await exists(id)).toBe(false);
    await c.close();
  });

  it('silence past the timeout is APPROVAL_TIMEOUT, and a late yes runs nothing', async () => {
    const id = nextId++;
    const late = answering(async () => {
      await sleep(3_000); // the rule's timeout is 2s
      return { action: 'accept', content: { decision: 'approve' } };
    });
    const c = await gw.connect(token, { elicit: late.elicit });
    const started = Date.now();
    const r = await c.call('postgres_query', insert(id));
    expect(textOf(r)).toMatch(/^APPROVAL_TIMEOUT: no answer to approval apr_\S+ within 2s/);
    expect(Date.now() - started).toBeLessThan(2_900);
    await sleep(1_500); // the late yes arrives now
    expect(await exists(id)).toBe(false);
    await c.close();
  });

  it('a call cancelled while its form is open runs nothing', async () => {
    const id = nextId++;
    let asked!: () => void;
    const formOpen = new Promise<void>((r) => (asked = r));
    const c = await gw.connect(token, {
      elicit: async (_p, { signal }) => {
        asked();
        // The human is slow; the tool call is cancelled meanwhile; then the human says yes.
        await sleep(800);
        void signal;
        return { action: 'accept', content: { decision: 'approve' } };
      },
    });
    const abort = new AbortController();
    const call = c.call('postgres_query', insert(id), { signal: abort.signal });
    await formOpen;
    abort.abort('changed my mind');
    await expect(call).rejects.toThrow();
    await sleep(1_200);
    expect(await exists(id)).toBe(false);
    const lines = await auditLines(gw);
    const outcome = lines.find(
      (l) => l.kind === 'outcome' && (l.input as { sql?: string })?.sql?.includes(`(${id},`),
    );
    expect(outcome?.outcome).toMatchObject({ status: 'error', code: 'APPROVAL_DECLINED' });
    await c.close();
  });

  it('requireReason: INVALID_INPUT without a reason; with one, a grant window skips the next form', async () => {
    const ops = await gw.mint('olive', ['ops']);
    const human = answering({ action: 'accept', content: { decision: 'approve' } });
    const c = await gw.connect(ops, { elicit: human.elicit });
    const a = nextId++;
    const bare = await c.call('postgres_query', insert(a));
    expect(textOf(bare)).toMatch(/^INVALID_INPUT: rule ops-writes-with-reason needs a reason/);
    expect(human.seen).toHaveLength(0);
    expect(await exists(a)).toBe(false);

    const first = await c.call('postgres_query', { ...insert(a), reason: 'ticket OPS-1' });
    expect(first.isError).toBeFalsy();
    expect(human.seen).toHaveLength(1);
    // Same identity, target and operation within the grant: no second form.
    const b = nextId++;
    const second = await c.call('postgres_query', { ...insert(b), reason: 'ticket OPS-1, part 2' });
    expect(second.isError).toBeFalsy();
    expect(human.seen).toHaveLength(1);
    expect(await exists(b)).toBe(true);
    const used = (await auditLines(gw)).find(
      (l) => l.kind === 'approval' && (l.approval as { event?: string }).event === 'grant-used',
    );
    expect(used).toMatchObject({ sub: 'olive', reason: 'ticket OPS-1, part 2' });
    // The grant is olive's: sam (another group, another rule) still gets asked.
    await c.close();
  });

  it('progress notifications arrive while the form is open, and the traceparent is recorded', async () => {
    const id = nextId++;
    const c = await gw.connect(await gw.mint('sam', ['sre']), {
      elicit: async () => {
        await sleep(1_900);
        return { action: 'accept', content: { decision: 'approve' } };
      },
    });
    const trace = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const progress: string[] = [];
    const r = await c.call('postgres_query', insert(id), {
      meta: { traceparent: trace },
      onprogress: (p) => progress.push(String(p.message)),
    });
    expect(r.isError).toBeFalsy();
    expect(progress[0]).toMatch(/^waiting for your approval of apr_\S+ \(until /);
    const lines = (await auditLines(gw)).filter((l) =>
      (l.input as { sql?: string })?.sql?.includes(`(${id},`),
    );
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const l of lines) expect(l.trace).toBe(trace);
    await c.close();
  });
});

async function auditLines(gw: TestGateway): Promise<Array<Record<string, unknown>>> {
  const text = await readFile(path.join(gw.dir, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function recordingText(gw: TestGateway): Promise<string> {
  const dir = path.join(gw.dir, 'recordings');
  const files = await readdir(dir);
  return (await Promise.all(files.map((f) => readFile(path.join(dir, f), 'utf8')))).join('\n');
}
