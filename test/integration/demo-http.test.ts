import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { cliEnv } from '../helpers/cli.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

/**
 * #9.6: `gatehouse demo --transport http` serves the demo over HTTP and prints a URL and a
 * token; a client with that token queries the demo database, one without is refused.
 */
describe('gatehouse demo --transport http', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('prints a URL and a token that work, and stops on SIGTERM', async () => {
    const home = await mkdtemp(path.join(tmpdir(), 'gatehouse-demo-http-'));
    dirs.push(home);
    const child = spawn(
      process.execPath,
      [
        path.join(root, 'dist/server/cli.js'),
        'demo',
        '--transport',
        'http',
        '--listen',
        '127.0.0.1:0',
      ],
      {
        cwd: home,
        env: cliEnv({ HOME: home, XDG_STATE_HOME: '' }),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => resolve(code)),
    );
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    try {
      const deadline = Date.now() + 60_000;
      let m: RegExpMatchArray | null = null;
      while (!(m = /serving MCP over HTTP at (\S+)[\s\S]*?\nToken:\n(\S+)\n/.exec(stderr))) {
        if (Date.now() > deadline) throw new Error(`no URL and token; stderr:\n${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const [, url, token] = m as unknown as [string, string, string];
      expect(new URL(url).hostname).toBe('127.0.0.1');

      const unauthenticated = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
        },
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {} }),
      });
      expect(unauthenticated.status).toBe(401);
      expect(unauthenticated.headers.get('www-authenticate')).toMatch(
        /^Bearer resource_metadata="/,
      );

      const client = new Client({ name: 'demo-http-test', version: '1.0.0' });
      await client.connect(
        new StreamableHTTPClientTransport(new URL(url), {
          requestInit: { headers: { Authorization: `Bearer ${token}` } },
        }),
      );
      const r = (await client.callTool({
        name: 'postgres_query',
        arguments: { target: 'demo-db', sql: 'SELECT email FROM customers ORDER BY id LIMIT 2' },
      })) as CallToolResult;
      expect(r.isError, JSON.stringify(r)).toBeFalsy();
      const text = r.content[0]?.type === 'text' ? r.content[0].text : '';
      expect(text).toMatch(/^demo-db: read, 2 rows/);
      expect(text).toMatch(/\n[a-z]\*\*\*@example\.com\n/); // masked by the demo policy (partial)
      await client.close();
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    // HTTP mode writes nothing on stdout.
    expect(stdout).toBe('');
  }, 90_000);
});
