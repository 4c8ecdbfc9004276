import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { listAuditChains, type AuditLine } from '../../recordings/audit.js';
import { CLI, cliEnv, runCli } from '../helpers/cli.js';
import { writeGatewayConfig } from '../helpers/gateway.js';

const pgInfo = inject('pg');

const policy = {
  rules: [
    { id: 'read', match: { tools: ['postgres_query'], operations: ['read'] }, effect: 'allow' },
    { id: 'no-ddl', match: { operations: ['ddl'] }, effect: 'deny' },
  ],
};

const gatehouse = runCli;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(check: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await sleep(50);
  }
}

/**
 * CONTRACT section 2, "Several gateway processes may share one config ... Each writer keeps
 * its own hash chain (its replica or process id is in every line), and `audit verify` /
 * `audit tail` cover every chain the config's `audit` names" — proved with real stdio
 * gateways started at once on one config.
 */
describe.skipIf(!pgInfo.available)('many gateway processes, one audit trail', () => {
  let dir: string;
  let configFile: string;
  let base: string;
  let mint: (sub: string) => Promise<string>;
  const clients: Client[] = [];
  const subs = ['alice', 'bob', 'carol'];

  async function startGateway(sub: string, env: Record<string, string> = {}): Promise<Client> {
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [...CLI, 'serve', '--config', configFile],
      env: cliEnv({ GATEHOUSE_TOKEN: await mint(sub), ...env }),
      stderr: 'pipe',
    });
    const client = new Client({ name: `chains-${sub}`, version: '1.0.0' });
    await client.connect(transport);
    clients.push(client);
    return client;
  }

  const query = async (client: Client, sql: string) =>
    (await client.callTool({
      name: 'postgres_query',
      arguments: { target: 'app-db', sql },
    })) as CallToolResult;

  async function chainLines(file: string): Promise<string[]> {
    return (await readFile(file, 'utf8')).split('\n').filter(Boolean);
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-chains-'));
    configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy });
    base = path.join(dir, 'audit.jsonl');
    const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    mint = (sub) => issuer.mint({ sub, groups: ['agents'], audience: 'gatehouse', ttlSec: 600 });
    // Three gateways on one config, started in the same instant (two MCP clients and a
    // terminal): all of them serve.
    const started = await Promise.all(subs.map((sub) => startGateway(sub)));
    await Promise.all(
      started.map(async (client, i) => {
        for (let n = 1; n <= 2; n++) {
          const r = await query(client, `SELECT '${subs[i]}-${n}' AS marker`);
          expect(r.isError, JSON.stringify(r)).toBeFalsy();
        }
        expect((await query(client, 'DROP TABLE customers')).isError).toBe(true);
      }),
    );
  }, 120_000);

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('gives each writer a chain of its own, with its id in every line, and audits every call', async () => {
    const chains = await listAuditChains(base);
    expect(chains).toHaveLength(3);
    expect(chains[0]).toBe(base);
    for (const f of chains.slice(1)) expect(path.basename(f)).toMatch(/^audit\..+\.jsonl$/);
    const writers = new Set<string>();
    for (const file of chains) {
      const lines = (await chainLines(file)).map((l) => JSON.parse(l) as AuditLine);
      // Three calls, each a decision and an outcome line, one subject per gateway.
      expect(lines).toHaveLength(6);
      expect(lines[0]!.prev).toBe('0'.repeat(64));
      expect(new Set(lines.map((l) => l.writer)).size).toBe(1);
      expect(lines[0]!.writer).toMatch(/-\d+-\d{8}T\d{9}Z$/);
      writers.add(lines[0]!.writer!);
      expect(new Set(lines.map((l) => l.sub)).size).toBe(1);
      const calls = new Map<string, string[]>();
      for (const l of lines) calls.set(l.callId, [...(calls.get(l.callId) ?? []), l.kind]);
      expect([...calls.values()]).toEqual([
        ['decision', 'outcome'],
        ['decision', 'outcome'],
        ['decision', 'outcome'],
      ]);
    }
    expect(writers.size).toBe(3);
  });

  it('audit verify --config checks every chain', async () => {
    const r = await gatehouse(['audit', 'verify', '--config', configFile]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = r.stdout.trimEnd().split('\n');
    expect(out).toHaveLength(4);
    for (const file of await listAuditChains(base))
      expect(out).toContain(`ok: 6 lines, chain intact: ${file}`);
    expect(out.at(-1)).toBe('3 chains: all intact');
  });

  it('audit verify --config fails naming the chain and line when any line of any chain is edited', async () => {
    for (const file of await listAuditChains(base)) {
      const original = await readFile(file, 'utf8');
      const lines = original.split('\n');
      for (const i of [0, 4]) {
        const edited = [...lines];
        edited[i] = edited[i]!.replace(/"sub":"\w+"/, '"sub":"mallory"');
        expect(edited[i]).not.toBe(lines[i]);
        await writeFile(file, edited.join('\n'));
        const r = await gatehouse(['audit', 'verify', '--config', configFile]);
        expect(r.status).toBe(1);
        expect(r.stdout).toContain(
          `audit chain broken at line ${i + 1} of ${file}: hash mismatch: the line was edited`,
        );
        expect(r.stdout).toMatch(/^3 chains: 1 not intact$/m);
        expect(r.stdout.match(/^ok: /gm)).toHaveLength(2);
      }
      await writeFile(file, original);
    }
    expect((await gatehouse(['audit', 'verify', '--config', configFile])).status).toBe(0);
  }, 60_000);

  it('audit tail --json shows the calls of all three, merged in time order', async () => {
    const r = await gatehouse(['audit', 'tail', '--json', '--config', configFile]);
    expect(r.status).toBe(0);
    const lines = r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditLine);
    expect(lines).toHaveLength(18);
    for (const sub of subs)
      for (const n of [1, 2]) expect(r.stdout).toContain(`SELECT '${sub}-${n}' AS marker`);
    const times = lines.map((l) => Date.parse(l.time));
    expect(times).toEqual([...times].sort((a, b) => a - b));
    expect(new Set(lines.map((l) => l.writer)).size).toBe(3);

    // The filters work across chains: -n, --sub, --decision.
    const bob = await gatehouse(['audit', 'tail', '--config', configFile, '--sub', 'bob']);
    expect(bob.stdout.trimEnd().split('\n')).toHaveLength(6);
    const denied = await gatehouse([
      'audit',
      'tail',
      '--config',
      configFile,
      '--decision',
      'deny',
      '-n',
      '4',
    ]);
    const shown = denied.stdout.trimEnd().split('\n');
    expect(shown).toHaveLength(4);
    for (const l of shown) expect(l).toMatch(/ deny no-ddl .*sql: DROP TABLE customers$/);
  });

  it('a chain with a torn last line is reported, the others verify, and no gateway is stopped by it', async () => {
    // The gateways stop; then the base chain's last line is torn, as a crash mid-write leaves it.
    await Promise.all(clients.splice(0).map((c) => c.close()));
    const whole = (await stat(base)).size;
    await truncate(base, whole - 7);
    const r = await gatehouse(['audit', 'verify', '--config', configFile]);
    expect(r.status).toBe(1);
    const lines = await chainLines(base);
    expect(r.stdout).toContain(
      `audit chain broken at line 6 of ${base}: torn last line (a truncated tail): no trailing newline, as a crash mid-write leaves it; lines 1-5 verify`,
    );
    expect(r.stdout.match(/^ok: 6 lines, chain intact: /gm)).toHaveLength(2);
    expect(lines).toHaveLength(6);

    // A tail following the config sees a chain that appears after it started.
    const tail = spawn(
      process.execPath,
      [...CLI, 'audit', 'tail', '-f', '--json', '--config', configFile, '--sub', 'dave'],
      { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let followed = '';
    tail.stdout.on('data', (d: Buffer) => (followed += d.toString()));
    try {
      // A gateway started now is not stopped by the torn chain: it writes its own.
      const dave = await startGateway('dave');
      expect((await query(dave, "SELECT 'dave-1' AS marker")).isError).toBeFalsy();
      // Its decision line, then its outcome line.
      await waitFor(() => followed.split('dave-1').length === 3);
      expect(followed.trimEnd().split('\n')).toHaveLength(2);
      await dave.close();
      expect(await listAuditChains(base)).toHaveLength(4);
      expect(await stat(base).then((s) => s.size)).toBe(whole - 7);
    } finally {
      tail.kill('SIGTERM');
    }

    // What verify suggests keeps the lines that verify; then every chain is intact.
    const suggested = /truncate -s (\d+) /.exec(r.stdout);
    expect(suggested).not.toBeNull();
    await truncate(base, Number(suggested![1]));
    const again = await gatehouse(['audit', 'verify', '--config', configFile]);
    expect(again.stdout).toMatch(/^4 chains: all intact$/m);
    expect(again.status).toBe(0);
  }, 90_000);

  it('the README verifier checks each chain file', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const script = path.join(dir, 'verify.py');
    await writeFile(script, [...readme.matchAll(/```python\n([\s\S]*?)```/g)][0]![1]!);
    const chains = await listAuditChains(base);
    const r = spawnSync('python3', [script, ...chains], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(chains.length);
  });

  it('two processes with the same GATEHOUSE_REPLICA_ID: the second stops at start, clearly', async () => {
    const first = await startGateway('erin', { GATEHOUSE_REPLICA_ID: 'replica-a' });
    try {
      expect((await query(first, "SELECT 'erin-1' AS marker")).isError).toBeFalsy();
      const second = await gatehouse(['serve', '--config', configFile], {
        GATEHOUSE_TOKEN: await mint('erin'),
        GATEHOUSE_REPLICA_ID: 'replica-a',
      });
      expect(second.status).toBe(1);
      expect(second.stderr).toContain(`audit log ${path.join(dir, 'audit.replica-a.jsonl')}`);
      expect(second.stderr).toContain('is in use by process');
      expect(second.stderr).toContain('writer replica-a');
    } finally {
      await first.close();
    }
    const chain = (await chainLines(path.join(dir, 'audit.replica-a.jsonl'))).map(
      (l) => JSON.parse(l) as AuditLine,
    );
    expect(chain.map((l) => l.writer)).toEqual(['replica-a', 'replica-a']);
    // A restart of the replica continues its chain.
    const again = await startGateway('erin', { GATEHOUSE_REPLICA_ID: 'replica-a' });
    expect((await query(again, "SELECT 'erin-2' AS marker")).isError).toBeFalsy();
    await again.close();
    const continued = (await chainLines(path.join(dir, 'audit.replica-a.jsonl'))).map(
      (l) => JSON.parse(l) as AuditLine,
    );
    expect(continued.map((l) => l.seq)).toEqual([1, 2, 3, 4]);
    expect((await gatehouse(['audit', 'verify', '--config', configFile])).status).toBe(0);
  }, 60_000);
});
