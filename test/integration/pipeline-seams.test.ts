import { readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import type { AuditRecord } from '../../recordings/audit.js';
import { verifyAuditFile } from '../../recordings/audit.js';
import type { TargetKind } from '../../tools/kind.js';
import { TARGET_KINDS } from '../../tools/kinds.js';
import { bindTool, type ToolDefinition } from '../../tools/types.js';
import { GovernanceError } from '../../server/kernel/errors.js';
import { createMcpServer } from '../../server/mcp.js';
import { newSession } from '../../server/session.js';
import { startGateway, textOf, type TestClient, type TestGateway } from '../helpers/gateway.js';
import { snapshotState } from '../helpers/pg-state.js';
import { connectAs } from '../helpers/postgres.js';

/**
 * The pipeline's seams (#7): a target kind added by a test alone (one list entry plus its own
 * module) serves a `kind: 'text'` tool through masking and rendering; explain and the real
 * call agree on every corpus case; an audit log that cannot be written fails the call closed.
 */

const pgInfo = inject('pg');

/** A fake target kind: its targets greet, its one tool echoes text (with what it is given). */
interface EchoTarget {
  kind: 'echo';
  name: string;
  description?: string | undefined;
  greeting: string;
}
const EchoTargetSchema = z.strictObject({
  kind: z.literal('echo'),
  description: z.string().optional(),
  greeting: z.string(),
});
const EchoInput = z.strictObject({ target: z.string(), text: z.string() });
const echoTool: ToolDefinition<z.output<typeof EchoInput>, { loud: boolean }, EchoTarget> = {
  name: 'echo_text',
  title: 'Echo',
  description: 'Echo text from an echo target',
  inputSchema: EchoInput,
  outputSchema: z.object({ output: z.string(), exitCode: z.number() }),
  annotations: { readOnlyHint: true },
  operations: ['read', 'shout'],
  tags: [],
  async describe(input) {
    const loud = input.text === input.text.toUpperCase();
    return {
      target: input.target,
      parts: [
        { operation: loud ? 'shout' : 'read', tags: [], reason: `echo ${input.text.length}` },
      ],
      auditInput: { text: input.text },
      plan: { loud },
    };
  },
  async execute(input, ctx) {
    const output = `${ctx.target.greeting} ${input.text}${ctx.plan.loud ? '!' : ''}`;
    return {
      kind: 'text',
      structured: { output, exitCode: 0 },
      maskedFields: ['output'],
      bytes: Buffer.byteLength(output),
      exitCode: 0,
    };
  },
};
const echoKind: TargetKind<EchoTarget> = {
  kind: 'echo',
  configSchema: EchoTargetSchema,
  summary: (t) => `echo ${t.greeting}`,
  secretRefs: () => [],
  open(env) {
    return {
      tools: [
        bindTool(echoTool, {
          targetKind: 'echo',
          async resolve(name) {
            const target = name === null ? undefined : env.target(name);
            if (!target) throw new GovernanceError('INVALID_INPUT', `no echo target ${name}`);
            return { target, secrets: [] };
          },
        }),
      ],
      check: async () => [{ level: 'ok', text: 'echo answers' }],
      close: async () => {},
    };
  },
};

interface Case {
  sql: string;
  params?: Array<string | number | boolean | null>;
}
const corpus = (file: string): Case[] =>
  readFileSync(new URL(`../corpus/${file}`, import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Case);

const policy = {
  rules: [
    {
      id: 'analysts-read',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
      mask: ['pii'],
      limits: { maxRows: 20, timeout: '5s' },
    },
    {
      id: 'analysts-write-approve',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['write'] },
      effect: 'approve',
      approval: { approvers: { groups: ['dba'] }, hold: '100ms' },
    },
    {
      id: 'writers-write',
      match: { groups: ['writers'], tools: ['postgres_query'], targets: ['app-db-rw'] },
      effect: 'allow',
    },
    { id: 'no-unbounded', match: { tags: ['unbounded'] }, effect: 'deny' },
    { id: 'no-ddl', match: { operations: ['ddl'] }, effect: 'deny' },
    {
      id: 'echo-read',
      match: { tools: ['echo_text'], targets: ['echo-1'], operations: ['read'] },
      effect: 'allow',
      mask: ['pii'],
    },
    {
      id: 'echo-shout-approve',
      match: { tools: ['echo_text'], operations: ['shout'] },
      effect: 'approve',
      approval: { approvers: { groups: ['dba'] }, hold: '100ms' },
    },
  ],
  masking: {
    pii: { detectors: ['email', 'credit_card'], columns: ['*.password'], style: 'redact' },
  },
};

describe.skipIf(!pgInfo.available)('the pipeline seams', () => {
  let gw: TestGateway;
  let analyst: TestClient;
  let outsider: TestClient;
  let su: pg.Client;
  let auditFile: string;
  const audit = async () =>
    (await readFile(auditFile, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditRecord);

  beforeAll(async () => {
    gw = await startGateway({
      pg: pgInfo,
      policy,
      extraTargets: { 'echo-1': { kind: 'echo', greeting: 'hello', description: 'says hello' } },
      runtime: { kinds: [...TARGET_KINDS, echoKind] },
    });
    auditFile = path.join(gw.dir, 'audit.jsonl');
    analyst = await gw.connect(await gw.mint('ana', ['analysts']));
    outsider = await gw.connect(await gw.mint('olga', ['nobody']));
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
    await gw?.close();
  });
  afterEach(() => vi.restoreAllMocks());

  describe('a target kind added in one list', () => {
    it('lists its tool, and list_targets shows its target with the operations policy allows', async () => {
      const { tools } = await analyst.client.listTools();
      expect(tools.map((t) => t.name)).toEqual([
        'list_targets',
        'explain',
        'await_approval',
        'review_approvals',
        'postgres_query',
        'echo_text',
      ]);
      const listed = (await analyst.call('list_targets', {})).structuredContent as {
        targets: Array<{ name: string; kind: string; tools: unknown[] }>;
      };
      expect(listed.targets.find((t) => t.name === 'echo-1')).toEqual({
        name: 'echo-1',
        kind: 'echo',
        description: 'says hello',
        tools: [
          {
            tool: 'echo_text',
            operations: [
              { operation: 'read', effect: 'allow' },
              { operation: 'shout', effect: 'approve' },
            ],
          },
        ],
      });
    });

    it('passes a text output through masking and rendering, fenced, with its audit outcome', async () => {
      const r = await analyst.call('echo_text', {
        target: 'echo-1',
        text: 'mail me at bob@example.com',
      });
      expect(r.isError, textOf(r)).toBeFalsy();
      const s = r.structuredContent as { output: string; exitCode: number };
      expect(s.exitCode).toBe(0);
      expect(s.output).toMatch(/^hello mail me at /);
      expect(s.output).not.toContain('bob@example.com');
      const text = textOf(r);
      expect(text).not.toContain('bob@example.com');
      expect(text).toMatch(/^echo-1: exitCode: 0\noutput:\nThe block below is data from echo-1/);
      expect(text).toMatch(/<untrusted-data id="[0-9a-f]{12}">\nhello mail me at /);
      const last = (await audit()).at(-1)!;
      expect(last).toMatchObject({
        kind: 'outcome',
        tool: 'echo_text',
        target: 'echo-1',
        operation: 'read',
        input: { text: 'mail me at bob@example.com' },
        decision: { effect: 'allow', rule: 'echo-read' },
        outcome: { status: 'ok', exitCode: 0, bytes: 32 },
        masked: { email: 1 },
      });
    });

    it('runs its calls through the same policy: approve, deny, unknown target', async () => {
      const loud = await analyst.call('echo_text', { target: 'echo-1', text: 'HEY' });
      expect(textOf(loud)).toMatch(
        /^APPROVAL_PENDING: approval apr_\S+ is waiting for an approver \(group dba\) under rule echo-shout-approve/,
      );
      const other = await analyst.call('echo_text', { target: 'echo-2', text: 'hi' });
      expect(textOf(other)).toBe('INVALID_INPUT: unknown target "echo-2"');
      const sql = await analyst.call('postgres_query', { target: 'echo-1', sql: 'SELECT 1' });
      expect(textOf(sql)).toBe(
        'INVALID_INPUT: target "echo-1" is of kind echo; postgres_query works on postgres targets',
      );
    });
  });

  describe('explain and the real call agree', () => {
    const sqlCases = [...corpus('sql.jsonl'), ...corpus('sql-extra.jsonl')];

    /** The decision line the real call left, compared with what explain said before it. */
    async function agree(client: TestClient, tool: string, input: Record<string, unknown>) {
      const explained = await client.call('explain', { tool, input });
      const before = (await audit()).length;
      const real = await client.call(tool, input);
      const lines = (await audit()).slice(before);
      // One decision line and one outcome line per call, whatever stage it stopped at (and,
      // for a call held for approval, the approval's own line between them).
      const kinds = lines.map((l) => l.kind);
      expect(kinds).toEqual(
        kinds.length === 3 ? ['decision', 'approval', 'outcome'] : ['decision', 'outcome'],
      );
      const decision = lines[0]!;
      if (explained.isError) {
        // explain refused the question: the call is refused with the same code, before policy.
        const code = (explained.structuredContent as { code: string }).code;
        expect((real.structuredContent as { code: string }).code).toBe(code);
        expect(decision.decision.rule).toBe('input');
        return;
      }
      const e = explained.structuredContent as {
        effect: string;
        rule: string;
        reason: string;
        operation: string;
        refusal?: string;
      };
      expect(decision.decision, `${tool} ${JSON.stringify(input)}`).toEqual({
        effect: e.effect,
        rule: e.rule,
        reason: e.reason,
      });
      expect(decision.operation).toBe(e.operation);
      const code = (real.structuredContent as { code?: string }).code;
      // A held call is denied at once, so the corpus never fills the identity's queue.
      const held = (real.structuredContent as { approvalId?: string }).approvalId;
      if (code === 'APPROVAL_PENDING' && held) {
        await gw.rt.approvals.answer(
          held,
          { sub: 'dba-bot', groups: ['dba'] },
          'deny',
          undefined,
          'api',
        );
      }
      if (e.effect === 'deny') expect(code).toBe('DENIED');
      else if (e.refusal) expect(code).toBe('INVALID_INPUT');
      // Held (approvers by group) or refused (approvers: client, and this client shows no forms).
      else if (e.effect === 'approve')
        expect(['APPROVAL_PENDING', 'APPROVAL_UNAVAILABLE']).toContain(code);
      else expect(code ?? 'none').not.toMatch(/^(DENIED|APPROVAL_)/);
    }

    it('on every SQL corpus case, for an analyst and an outsider', async () => {
      const state = await snapshotState(su);
      for (const c of sqlCases) {
        const input = { target: 'app-db', sql: c.sql, ...(c.params ? { params: c.params } : {}) };
        await agree(analyst, 'postgres_query', input);
        await agree(outsider, 'postgres_query', input);
      }
      // Reads ran read-only; nothing else ran.
      expect(await snapshotState(su)).toEqual(state);
    }, 120_000);

    it('on tools that do not exist or are not in this release, and on bad input', async () => {
      await agree(analyst, 'ssh_exec', { target: 'x', command: 'ls' });
      await agree(analyst, 'no_such_tool', {});
      await agree(analyst, 'postgres_query', { target: 'app-db' });
      await agree(analyst, 'postgres_query', { target: 'app-db', sql: 'SELECT 1', extra: 1 });
      await agree(analyst, 'postgres_query', { target: 'app-db', sql: 'SELEC 1' });
      await agree(analyst, 'postgres_query', { target: 'app-db', sql: 'SELECT 1; SELECT 2' });
      await agree(analyst, 'echo_text', { target: 'echo-1', text: 'hi' });
      await agree(analyst, 'echo_text', { target: 'echo-1', text: 'HI' });
      await agree(outsider, 'echo_text', { target: 'echo-2', text: 'hi' });
      const later = await analyst.call('explain', { tool: 'kubectl', input: {} });
      expect(textOf(later)).toBe(
        'INVALID_INPUT: tool kubectl is not available in this release of Gatehouse',
      );
    });
  });

  it('on every test case of the demo policy, which also gets the decision its test expects', async () => {
    const text = readFileSync(
      new URL('../../policies/examples/demo.yaml', import.meta.url),
      'utf8',
    );
    const demo = parse(text) as {
      tests: Array<{
        identity: { sub: string; groups: string[] };
        call: { tool: string; input: Record<string, unknown> };
        expect: { effect: string; rule: string };
      }>;
    };
    const demoGw = await startGateway({
      pg: pgInfo,
      policy: text,
      extraTargets: {
        'demo-db': {
          kind: 'postgres',
          host: pgInfo.host,
          port: pgInfo.port,
          database: pgInfo.database,
          user: pgInfo.reader.user,
          password: { env: 'GH_TEST_READER_PASSWORD' },
        },
      },
    });
    try {
      expect(demo.tests.length).toBeGreaterThan(3);
      for (const t of demo.tests) {
        const client = await demoGw.connect(await demoGw.mint(t.identity.sub, t.identity.groups));
        const explained = (await client.call('explain', t.call)).structuredContent;
        expect(explained, JSON.stringify(t)).toMatchObject(t.expect);
        const real = await client.call(t.call.tool, t.call.input);
        const line = (await readFile(path.join(demoGw.dir, 'audit.jsonl'), 'utf8'))
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as AuditRecord)
          .findLast((l) => l.kind === 'decision')!;
        expect(line.decision).toMatchObject(t.expect);
        if (t.expect.effect === 'allow') expect(real.isError, textOf(real)).toBeFalsy();
        else expect(real.isError).toBe(true);
        await client.close();
      }
    } finally {
      await demoGw.close();
    }
  });

  it("bounds the client's name and version before the recording keeps them", async () => {
    const session = newSession('memory', () => token);
    const token = await gw.mint('ana', ['analysts']);
    const server = createMcpServer(gw.rt, session);
    const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
    const client = new Client({ name: 'n'.repeat(9_000_000), version: 'v\u202e'.repeat(1000) });
    await server.connect(serverSide);
    await client.connect(clientSide);
    await client.callTool({ name: 'list_targets', arguments: {} });
    await client.close();
    await server.close();
    await session.recorder?.close();
    const file = path.join(gw.dir, 'recordings', `${session.id}.jsonl`);
    const { size } = await stat(file);
    expect(size).toBeLessThan(64 * 1024);
    const header = JSON.parse((await readFile(file, 'utf8')).split('\n')[0]!) as {
      client: { name: string; version: string };
    };
    expect(header.client.name).toHaveLength(256);
    expect(header.client.version.length).toBeLessThanOrEqual(256);
  });

  describe('an audit log that cannot be written', () => {
    it('refuses to run a write whose decision line fails, and the target is unchanged', async () => {
      const writer = await gw.connect(await gw.mint('wes', ['writers']));
      const input = { target: 'app-db-rw', sql: "INSERT INTO canary VALUES (701, 'audit')" };
      const explained = await writer.call('explain', { tool: 'postgres_query', input });
      expect(explained.structuredContent).toMatchObject({ effect: 'allow', rule: 'writers-write' });
      const state = await snapshotState(su);
      vi.spyOn(gw.rt.audit, 'append').mockRejectedValue(new Error('ENOSPC: no space left'));
      // A write the policy allows: it would run, but its decision cannot be put on record.
      const r = await writer.call('postgres_query', input);
      expect(textOf(r)).toMatch(/^INTERNAL: /);
      expect(await snapshotState(su)).toEqual(state);
      const row = await su.query('SELECT 1 FROM canary WHERE id = 701');
      expect(row.rowCount).toBe(0);
    });

    it('withholds the result when the outcome line fails', async () => {
      const real = gw.rt.audit.append.bind(gw.rt.audit);
      vi.spyOn(gw.rt.audit, 'append').mockImplementation(async (rec, opts) => {
        if (rec.kind === 'outcome') throw new Error('EIO: i/o error');
        return real(rec, opts);
      });
      const r = await analyst.call('postgres_query', {
        target: 'app-db',
        sql: "SELECT 'secret-row-value' AS v",
      });
      expect(r.isError).toBe(true);
      expect(textOf(r)).toBe(
        'INTERNAL: the audit log could not be written; the result is withheld',
      );
      expect(JSON.stringify(r)).not.toContain('secret-row-value');
      vi.restoreAllMocks();
      // The log stays a valid chain: the decision line is there, the outcome is not.
      const v = await verifyAuditFile(auditFile);
      expect(v.ok).toBe(true);
    });
  });
});
