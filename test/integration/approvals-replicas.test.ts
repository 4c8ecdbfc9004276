import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { HttpGateway } from '../../server/http.js';
import { loadDevIssuer, type DevIssuer } from '../../server/identity/dev-issuer.js';
import { createRuntime } from '../../server/runtime.js';
import { runCli } from '../helpers/cli.js';
import { textOf, writeGatewayConfig } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Two HTTP replicas with `state.postgres` on a real PostgreSQL (each with its own folder,
 * audit chain and dev issuer key shared by copy): the agent's call waits on replica A; the
 * approver answers on replica B with the CLI; the write runs once, on A.
 */

const policy = {
  rules: [
    {
      id: 'sre-writes',
      match: {
        groups: ['sre'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['write'],
      },
      effect: 'approve',
      approval: { approvers: { groups: ['dba'] }, timeout: '5m', hold: '20s' },
    },
  ],
};

describe.skipIf(!pgInfo.available)('approvals across replicas (state.postgres)', () => {
  const stateDb = `gatehouse_state_replicas_${randomBytes(4).toString('hex')}`;
  const dirs: string[] = [];
  const replicas: HttpGateway[] = [];
  let issuer: DevIssuer;
  let su: pg.Client;
  let client: Client | undefined;
  const extra: Client[] = [];

  beforeAll(async () => {
    su = await connectAs(pgInfo, 'superuser');
    await su.query(`CREATE DATABASE ${stateDb}`);
    await su.query(`DELETE FROM canary WHERE id = 9301`);
    process.env.GH_TEST_STATE_PASSWORD = pgInfo.superuser.password;
    let keyFile: string | undefined;
    for (const name of ['a', 'b']) {
      const dir = await mkdtemp(path.join(tmpdir(), `gatehouse-replica-${name}-`));
      dirs.push(dir);
      const configFile = await writeGatewayConfig(dir, { pg: pgInfo, policy });
      const config = parse(await readFile(configFile, 'utf8')) as Record<string, unknown>;
      await writeFile(
        configFile,
        stringify({
          ...config,
          http: { listen: '127.0.0.1:0' },
          state: {
            file: 'state.json',
            postgres: {
              host: pgInfo.host,
              port: pgInfo.port,
              database: stateDb,
              user: pgInfo.superuser.user,
              password: { env: 'GH_TEST_STATE_PASSWORD' },
              schema: 'gatehouse',
            },
          },
        }),
      );
      // One issuer for both replicas, as one IdP would be.
      if (keyFile) {
        await writeFile(path.join(dir, 'dev-issuer.json'), await readFile(keyFile), {
          mode: 0o600,
        });
      }
      keyFile ??= path.join(dir, 'dev-issuer.json');
      issuer = await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true });
      replicas.push(
        await HttpGateway.start(await createRuntime(configFile, { transport: 'http' })),
      );
    }
  });

  afterAll(async () => {
    await client?.close();
    await Promise.allSettled(extra.map((c) => c.close()));
    await Promise.allSettled(replicas.map((r) => r.shutdown()));
    await su?.query(`DELETE FROM canary WHERE id = 9301`);
    await su?.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
      [stateDb],
    );
    await su?.query(`DROP DATABASE IF EXISTS ${stateDb}`);
    await su?.end();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('the agent waits on A, the approver answers on B, the write runs once on A', async () => {
    const [a, b] = replicas as [HttpGateway, HttpGateway];
    const mint = (sub: string, groups: string[]) =>
      issuer.mint({ sub, groups, ttlSec: 600, audience: 'gatehouse' });
    client = new Client({ name: 'agent', version: '1' });
    await client.connect(
      new StreamableHTTPClientTransport(a.url, {
        requestInit: { headers: { Authorization: `Bearer ${await mint('sam', ['sre'])}` } },
      }),
    );
    const started = Date.now();
    const call = client.callTool(
      {
        name: 'postgres_query',
        arguments: {
          target: 'app-db-rw',
          sql: `INSERT INTO canary (id, v) VALUES (9301, 'replica')`,
        },
      },
      undefined,
      { timeout: 60_000 },
    ) as Promise<CallToolResult>;

    // B sees the pending approval that A created.
    const dora = await mint('dora', ['dba']);
    let id: string | undefined;
    for (let i = 0; i < 100 && !id; i++) {
      const listed = await runCli(['approvals', 'list', '--json', '--server', b.url.origin], {
        GATEHOUSE_TOKEN: dora,
      });
      const pending = (
        JSON.parse(listed.stdout || '[]') as Array<{ id: string; status: string }>
      ).find((p) => p.status === 'pending');
      id = pending?.id;
      if (!id) await sleep(100);
    }
    expect(id).toMatch(/^apr_/);
    const answered = await runCli(['approvals', 'approve', id!, '--server', b.url.origin], {
      GATEHOUSE_TOKEN: dora,
    });
    expect(answered.status).toBe(0);
    const approvedAt = Date.now();

    const r = await call;
    expect(r.isError, textOf(r)).toBeFalsy();
    // Released by NOTIFY, well before the 20 s hold.
    expect(Date.now() - approvedAt).toBeLessThan(3_000);
    expect(Date.now() - started).toBeLessThan(20_000);
    const rows = await su.query<{ v: string }>('SELECT v FROM canary WHERE id = 9301');
    expect(rows.rows).toEqual([{ v: 'replica' }]);

    // On A's chain: the decision, the consume and the outcome; on B's: the answer.
    const lines = async (dir: string) =>
      (await readFile(path.join(dir, 'audit.jsonl'), 'utf8'))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { kind: string; approval?: { id: string; event?: string } })
        .filter((l) => l.approval?.id === id);
    const onA = await lines(dirs[0]!);
    const onB = await lines(dirs[1]!);
    expect(onA.map((l) => l.approval?.event ?? l.kind)).toEqual([
      'requested',
      'consumed',
      'outcome',
    ]);
    expect(onB.map((l) => l.approval?.event)).toEqual(['approved']);
  });

  it('the same call sent at once to both replicas is one approval; it runs once and both get its result', async () => {
    const [a, b] = replicas as [HttpGateway, HttpGateway];
    const mint = (sub: string, groups: string[]) =>
      issuer.mint({ sub, groups, ttlSec: 600, audience: 'gatehouse' });
    const token = await mint('sam', ['sre']);
    const connect = async (url: URL) => {
      const c = new Client({ name: 'agent', version: '1' });
      await c.connect(
        new StreamableHTTPClientTransport(url, {
          requestInit: { headers: { Authorization: `Bearer ${token}` } },
        }),
      );
      extra.push(c);
      return c;
    };
    const [ca, cb] = await Promise.all([connect(a.url), connect(b.url)]);
    const args = {
      target: 'app-db-rw',
      sql: `UPDATE canary SET v = v || '+' WHERE id = 9301`,
    };
    const calls = [ca, cb].map(
      (c) =>
        c.callTool({ name: 'postgres_query', arguments: args }, undefined, {
          timeout: 60_000,
        }) as Promise<CallToolResult>,
    );
    const dora = await mint('dora', ['dba']);
    let ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      const listed = await runCli(['approvals', 'list', '--json', '--server', a.url.origin], {
        GATEHOUSE_TOKEN: dora,
      });
      ids = (JSON.parse(listed.stdout || '[]') as Array<{ id: string; status: string }>)
        .filter((p) => p.status === 'pending')
        .map((p) => p.id);
      if (ids.length > 0) break;
      await sleep(100);
    }
    await sleep(300); // both calls are in
    expect(ids).toHaveLength(1);
    await runCli(['approvals', 'approve', ids[0]!, '--server', b.url.origin], {
      GATEHOUSE_TOKEN: dora,
    });
    const [ra, rb] = await Promise.all(calls);
    expect(ra!.isError, textOf(ra!)).toBeFalsy();
    expect(rb!.structuredContent).toEqual(ra!.structuredContent);
    const rows = await su.query<{ v: string }>('SELECT v FROM canary WHERE id = 9301');
    expect(rows.rows).toEqual([{ v: 'replica+' }]);
  });
});
