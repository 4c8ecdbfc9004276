import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadDevIssuer, type DevIssuer } from '../../server/identity/dev-issuer.js';
import { cliEnv } from '../helpers/cli.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));

/**
 * #8.7: README's client setup for `serve` works as written: the MCP Inspector CLI with the
 * server command after `--` (the Inspector takes `--config` itself), a token file, and a token
 * re-minted into that file taking effect without restarting anything.
 */
describe('connecting a client to serve, as README shows', () => {
  let dir: string;
  let configFile: string;
  let tokenFile: string;
  let issuer: DevIssuer;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-client-'));
    configFile = path.join(dir, 'gatehouse.yaml');
    tokenFile = path.join(dir, 'alice.jwt');
    await writeFile(path.join(dir, 'policy.yaml'), 'rules: []\n');
    await writeFile(
      configFile,
      stringify({
        identity: {
          audience: 'gatehouse',
          devIssuer: { keyFile: 'dev-issuer.json' },
          clockToleranceSec: 0,
        },
        policies: ['./policy.yaml'],
        audit: { file: 'audit.jsonl' },
        recordings: { dir: 'recordings' },
        state: { file: 'state.json' },
      }),
    );
    issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    await writeFile(
      tokenFile,
      await issuer.mint({ sub: 'alice', groups: ['analysts'], ttlSec: 600, audience: 'gatehouse' }),
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('the Inspector CLI lists and calls tools with the server command after --', async () => {
    const inspector = path.join(
      root,
      'node_modules/@modelcontextprotocol/inspector/cli/build/cli.js',
    );
    const server = [
      '--',
      process.execPath,
      path.join(root, 'dist/server/cli.js'),
      'serve',
      '--config',
      configFile,
      '--token-file',
      tokenFile,
    ];
    const env = cliEnv({ NODE_NO_WARNINGS: '1' });
    const list = await run(
      process.execPath,
      [inspector, '--cli', '--method', 'tools/list', ...server],
      {
        cwd: dir,
        env,
        timeout: 60_000,
      },
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
    const call = await run(
      process.execPath,
      [inspector, '--cli', '--method', 'tools/call', '--tool-name', 'list_targets', ...server],
      { cwd: dir, env, timeout: 60_000 },
    );
    expect(JSON.parse(call.stdout)).toMatchObject({ structuredContent: { targets: [] } });
  });

  it('a token re-minted into the token file takes effect on the next call, no restart', async () => {
    const client = new Client({ name: 'renewal-test', version: '1.0.0' });
    await client.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: [
          path.join(root, 'dist/server/cli.js'),
          'serve',
          '--config',
          configFile,
          '--token-file',
          tokenFile,
        ],
        cwd: dir,
        env: cliEnv(),
        stderr: 'ignore',
      }),
    );
    try {
      const text = async () =>
        ((await client.callTool({ name: 'list_targets', arguments: {} })) as CallToolResult)
          .content[0]!;
      expect(await text()).toMatchObject({
        type: 'text',
        text: expect.stringContaining('targets') as unknown,
      });
      // The file now holds a token that has expired: calls stop working at once.
      await writeFile(
        tokenFile,
        await issuer.mint({
          sub: 'alice',
          groups: ['analysts'],
          ttlSec: 1,
          audience: 'gatehouse',
        }),
      );
      await new Promise((r) => setTimeout(r, 2100));
      expect(await text()).toMatchObject({ text: 'UNAUTHENTICATED: token expired' });
      // Re-minted: the same session works again.
      await writeFile(
        tokenFile,
        await issuer.mint({
          sub: 'alice',
          groups: ['analysts'],
          ttlSec: 600,
          audience: 'gatehouse',
        }),
      );
      expect(await text()).toMatchObject({ text: expect.stringContaining('targets') as unknown });
    } finally {
      await client.close();
    }
  });
});
