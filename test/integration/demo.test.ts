import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
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
 */
describe('gatehouse demo', () => {
  let cwd: string;
  let client: Client;
  let stderr = '';

  beforeAll(async () => {
    if (!existsSync(builtCli))
      throw new Error(`${builtCli} is missing: run npm run build (npm test does it for you)`);
    cwd = await mkdtemp(path.join(tmpdir(), 'gatehouse-demo-'));
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [builtCli, 'demo'],
      cwd,
      env: cliEnv(),
      stderr: 'pipe',
    });
    transport.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    client = new Client({ name: 'demo-test', version: '1.0.0' });
    await client.connect(transport);
  }, 60_000);
  afterAll(async () => {
    await client?.close();
    if (cwd) await rm(cwd, { recursive: true, force: true });
  });

  it("passes its policy's own tests, and refuses pg_sleep, which would stall the embedded database", async () => {
    const run = promisify(execFile);
    const config = path.join(cwd, '.gatehouse', 'demo', 'gatehouse.yaml');
    const { stdout } = await run(
      process.execPath,
      [builtCli, 'policy', 'test', '--config', config],
      {
        env: cliEnv(),
      },
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
    const env = cliEnv({ NODE_NO_WARNINGS: '1' });
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
  }, 90_000);
});
