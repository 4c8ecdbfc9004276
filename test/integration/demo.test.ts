import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliEnv } from '../helpers/cli.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const builtCli = path.join(root, 'dist/server/cli.js');
const run = promisify(execFile);

/**
 * `gatehouse demo` as a user meets it: the built binary, an MCP client over stdio, no token
 * to paste. Runs the compiled CLI, which `npm test` builds first (pretest).
 *
 * #8.6: it is started the way Claude Desktop starts servers, from a working directory it
 * cannot write (there, `/`): its state goes to a per-user directory (here a temp HOME), and
 * nothing is written where it was started.
 */
describe('gatehouse demo', () => {
  let home: string;
  let cwd: string;
  let state: string;
  let client: Client;
  let stderr = '';
  /** What the demo's children see: HOME is a temp dir, and no XDG_STATE_HOME overrides it. */
  const envWith = (home: string, extra: Record<string, string> = {}) =>
    cliEnv({ HOME: home, XDG_STATE_HOME: '', ...extra });

  beforeAll(async () => {
    if (!existsSync(builtCli))
      throw new Error(`${builtCli} is missing: run npm run build (npm test does it for you)`);
    home = await mkdtemp(path.join(tmpdir(), 'gatehouse-home-'));
    state = path.join(home, '.gatehouse', 'demo');
    // Read-only, like `/` for a user (root could still write there: the test checks it stays empty).
    cwd = await mkdtemp(path.join(tmpdir(), 'gatehouse-demo-cwd-'));
    await chmod(cwd, 0o555);
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [builtCli, 'demo'],
      cwd,
      env: envWith(home),
      stderr: 'pipe',
    });
    transport.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    client = new Client({ name: 'demo-test', version: '1.0.0' });
    await client.connect(transport);
  }, 60_000);
  afterAll(async () => {
    await client?.close();
    if (cwd) await rm(cwd, { recursive: true, force: true });
    if (home) await rm(home, { recursive: true, force: true });
  });

  it('keeps its state under the home directory, says where, and writes nothing where it was started', async () => {
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toContain('postgres_query');
    await client.callTool({ name: 'list_targets', arguments: {} });
    expect(stderr).toContain(`  state     ${state} (`);
    expect(stderr).toContain(`gatehouse audit tail --config ${path.join(state, 'gatehouse.yaml')}`);
    for (const f of ['gatehouse.yaml', 'dev-issuer.json', 'audit.jsonl', 'recordings'])
      expect(existsSync(path.join(state, f)), f).toBe(true);
    expect(await readdir(cwd)).toEqual([]);
    // README's next step: read the audit log through the config the demo wrote.
    const tail = await run(
      process.execPath,
      [builtCli, 'audit', 'tail', '--config', path.join(state, 'gatehouse.yaml')],
      { env: envWith(home) },
    );
    expect(tail.stdout).toMatch(/ demo-user list_targets /);
  });

  it('--dir puts the state elsewhere; a second demo on the same state directory is refused at once', async () => {
    const elsewhere = path.join(home, 'elsewhere');
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [builtCli, 'demo', '--dir', elsewhere],
      cwd,
      env: envWith(home),
      stderr: 'pipe',
    });
    let err = '';
    transport.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const second = new Client({ name: 'demo-test-dir', version: '1.0.0' });
    await second.connect(transport);
    try {
      const { tools } = await second.listTools();
      expect(tools.map((t) => t.name)).toContain('postgres_query');
      expect(err).toContain(`  state     ${elsewhere} (`);
      expect(existsSync(path.join(elsewhere, 'audit.jsonl'))).toBe(true);
      expect(existsSync(path.join(elsewhere, 'recordings'))).toBe(true);
    } finally {
      await second.close();
    }
    // The default directory is the first demo's: a third demo there says so, and how to run
    // beside it, before starting a database.
    const third = await run(process.execPath, [builtCli, 'demo'], { env: envWith(home) }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(third.code).toBe(1);
    expect(third.stderr).toMatch(
      /^gatehouse: another gatehouse demo \(process \d+\) is using the state directory .*: stop it, or give this one a directory of its own with --dir D\n$/,
    );
    expect(third.stderr).toContain(state);
    expect(await readdir(cwd)).toEqual([]);
  }, 60_000);

  it('uses $XDG_STATE_HOME/gatehouse/demo when that is set', async () => {
    const xdg = path.join(home, 'xdg-state');
    const dir = path.join(xdg, 'gatehouse', 'demo');
    // A live holder of that directory's audit lock (this process): the demo stops at once,
    // naming the directory it would have used.
    await mkdir(dir, { recursive: true });
    await writeFile(
      path.join(dir, 'audit.jsonl.lock'),
      JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() }),
    );
    const r = await run(process.execPath, [builtCli, 'demo'], {
      env: envWith(home, { XDG_STATE_HOME: xdg }),
    }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`using the state directory ${dir}:`);
  });

  it("passes its policy's own tests, and refuses pg_sleep, which would stall the embedded database", async () => {
    const config = path.join(state, 'gatehouse.yaml');
    const { stdout } = await run(
      process.execPath,
      [builtCli, 'policy', 'test', '--config', config],
      { env: envWith(home) },
    );
    expect(stdout).toMatch(/\d+ passed, 0 failed/);
    const r = (await client.callTool({
      name: 'postgres_query',
      arguments: { target: 'demo-db', sql: 'SELECT pg_sleep(600)' },
    })) as CallToolResult;
    expect((r.content[0] as { text: string }).text).toMatch(/^DENIED by rule no-sleep-in-demo: /);
  });

  it('lists the tools and returns masked rows', async () => {
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toContain('postgres_query');
    const r = (await client.callTool({
      name: 'postgres_query',
      arguments: {
        target: 'demo-db',
        sql: 'SELECT name, email, card FROM customers ORDER BY id LIMIT 5',
      },
    })) as CallToolResult;
    expect(r.isError, JSON.stringify(r.content)).toBeFalsy();
    const { rows } = r.structuredContent as { rows: string[][] };
    expect(rows).toHaveLength(5);
    // The target's name is not mistaken for a secret: the demo database password is random,
    // not a word such as "demo" that the output scrubbing would rewrite everywhere.
    const text = (r.content[0] as { text: string }).text;
    expect(text).toContain('demo-db');
    expect(JSON.stringify(r)).not.toContain('[secret]');
    for (const [, email, card] of rows) {
      expect(email).not.toMatch(/^[^*\s]+@/); // the local part is hidden
      expect(card).not.toMatch(/\d{12}/);
    }
    expect(stderr).toContain('gatehouse demo: serving MCP on stdio');
    expect(stderr).toMatch(/eyJ[\w-]+\.[\w-]+\.[\w-]+/);
  });

  it('denies DDL and holds writes for approval', async () => {
    const drop = (await client.callTool({
      name: 'postgres_query',
      arguments: { target: 'demo-db', sql: 'DROP TABLE customers' },
    })) as CallToolResult;
    expect(drop.content[0]).toMatchObject({
      text: 'DENIED by rule no-ddl: statement is ddl (DropStmt)',
    });
    const write = (await client.callTool({
      name: 'postgres_query',
      arguments: { target: 'demo-db', sql: "UPDATE customers SET country = 'FR' WHERE id = 1" },
    })) as CallToolResult;
    expect(write.content[0]).toMatchObject({
      text: expect.stringMatching(/^APPROVAL_UNAVAILABLE: /) as unknown,
    });
  });

  it('works from the repository mcp.json through the MCP Inspector CLI', async () => {
    const inspector = path.join(
      root,
      'node_modules/@modelcontextprotocol/inspector/cli/build/cli.js',
    );
    const base = [
      inspector,
      '--cli',
      '--config',
      path.join(root, 'mcp.json'),
      '--server',
      'gatehouse-demo',
    ];
    // A home of its own: the demo started above holds the state directory in `home`.
    const inspectorHome = await mkdtemp(path.join(tmpdir(), 'gatehouse-home-'));
    const env = envWith(inspectorHome, { NODE_NO_WARNINGS: '1' });
    const list = await run(process.execPath, [...base, '--method', 'tools/list'], {
      cwd: root,
      env,
      timeout: 60_000,
    });
    expect(JSON.parse(list.stdout)).toMatchObject({
      tools: expect.arrayContaining([
        expect.objectContaining({ name: 'postgres_query' }),
      ]) as unknown,
    });
    const call = await run(
      process.execPath,
      [
        ...base,
        '--method',
        'tools/call',
        '--tool-name',
        'postgres_query',
        '--tool-arg',
        'target=demo-db',
        '--tool-arg',
        'sql=SELECT email FROM customers ORDER BY id LIMIT 3',
      ],
      { cwd: root, env, timeout: 60_000 },
    );
    const result = JSON.parse(call.stdout) as CallToolResult;
    expect(result.isError).toBeFalsy();
    for (const [email] of (result.structuredContent as { rows: string[][] }).rows)
      expect(email).not.toMatch(/^[^*\s]+@/);
    // Run from the repository root as mcp.json says, the state still goes to the home directory.
    expect(existsSync(path.join(inspectorHome, '.gatehouse', 'demo', 'audit.jsonl'))).toBe(true);
    await rm(inspectorHome, { recursive: true, force: true });
  }, 90_000);
});
