import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import {
  ElicitRequestSchema,
  type CallToolResult,
  type ElicitRequest,
  type ElicitResult,
  type Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { stringify } from 'yaml';
import { loadDevIssuer, type DevIssuer } from '../../server/identity/dev-issuer.js';
import { createMcpServer } from '../../server/mcp.js';
import { createRuntime, type Runtime, type RuntimeOptions } from '../../server/runtime.js';
import { newSession } from '../../server/session.js';
import type { PgInfo } from './postgres.js';

export interface TestGateway {
  dir: string;
  configFile: string;
  rt: Runtime;
  issuer: DevIssuer;
  mint(sub: string, groups: string[], ttlSec?: number): Promise<string>;
  connect(token: string | (() => string | undefined), opts?: ConnectOptions): Promise<TestClient>;
  close(): Promise<void>;
}

export interface ConnectOptions {
  /**
   * Declare the elicitation capability and answer `elicitation/create` with this (the human
   * at the client). Absent: the client declares no elicitation, as many clients do.
   */
  elicit?: (
    params: ElicitRequest['params'],
    extra: { signal: AbortSignal },
  ) => Promise<ElicitResult>;
}

export interface TestClient {
  client: Client;
  call(
    tool: string,
    args: Record<string, unknown>,
    opts?: {
      signal?: AbortSignal;
      onprogress?: (p: Progress) => void;
      meta?: Record<string, unknown>;
    },
  ): Promise<CallToolResult>;
  close(): Promise<void>;
}

/**
 * Write gatehouse.yaml and policy.yaml into `dir`. Targets: `app-db` as the read-only role,
 * `app-db-rw` as the writer role; `app-db-badpw` has a wrong password.
 */
export async function writeGatewayConfig(
  dir: string,
  opts: {
    pg: PgInfo;
    policy: string | Record<string, unknown>;
    clockToleranceSec?: number;
    /** Merged into `identity:` (e.g. an external issuer beside the dev issuer). */
    identity?: Record<string, unknown>;
    /** Merged into each named target (e.g. `{ 'app-db': { trusted: [...] } }`). */
    targets?: Record<string, Record<string, unknown>>;
    /** More targets, as written (e.g. of a kind a test adds). */
    extraTargets?: Record<string, Record<string, unknown>>;
  },
): Promise<string> {
  // Secrets reach the gateway the way they would in production: by reference.
  process.env.GH_TEST_READER_PASSWORD = opts.pg.reader.password;
  process.env.GH_TEST_WRITER_PASSWORD = opts.pg.writer.password;
  process.env.GH_TEST_BAD_PASSWORD = 'not-the-password';
  await writeFile(
    path.join(dir, 'policy.yaml'),
    typeof opts.policy === 'string' ? opts.policy : stringify(opts.policy),
  );
  const configFile = path.join(dir, 'gatehouse.yaml');
  const target = (user: string, env: string) => ({
    kind: 'postgres',
    host: opts.pg.host,
    port: opts.pg.port,
    database: opts.pg.database,
    user,
    password: { env },
  });
  await writeFile(
    configFile,
    stringify({
      identity: {
        audience: 'gatehouse',
        devIssuer: { keyFile: 'dev-issuer.json' },
        clockToleranceSec: opts.clockToleranceSec ?? 30,
        ...opts.identity,
      },
      targets: {
        'app-db': {
          ...target(opts.pg.reader.user, 'GH_TEST_READER_PASSWORD'),
          ...opts.targets?.['app-db'],
        },
        'app-db-rw': {
          ...target(opts.pg.writer.user, 'GH_TEST_WRITER_PASSWORD'),
          ...opts.targets?.['app-db-rw'],
        },
        'app-db-badpw': target(opts.pg.reader.user, 'GH_TEST_BAD_PASSWORD'),
        ...opts.extraTargets,
      },
      policies: ['./policy.yaml'],
      audit: { file: 'audit.jsonl' },
      recordings: { dir: 'recordings' },
      state: { file: 'state.json' },
    }),
  );
  return configFile;
}

/**
 * A real gateway (config file, policies, dev issuer, audit log, recordings, pools) in a temp
 * dir, in front of the harness's PostgreSQL, driven through the SDK Client over an in-memory
 * transport pair. Targets: `app-db` as the read-only role, `app-db-rw` as the writer role.
 */
export async function startGateway(opts: {
  pg: PgInfo;
  policy: string | Record<string, unknown>;
  clockToleranceSec?: number;
  identity?: Record<string, unknown>;
  targets?: Record<string, Record<string, unknown>>;
  extraTargets?: Record<string, Record<string, unknown>>;
  /** Runtime options (e.g. the target kinds, with one a test adds). */
  runtime?: RuntimeOptions;
}): Promise<TestGateway> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-gw-'));
  const configFile = await writeGatewayConfig(dir, opts);
  const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
    create: true,
  });
  const rt = await createRuntime(configFile, opts.runtime);
  const clients: TestClient[] = [];
  return {
    dir,
    configFile,
    rt,
    issuer,
    mint: (sub, groups, ttlSec = 600) =>
      issuer.mint({ sub, groups, ttlSec, audience: 'gatehouse' }),
    async connect(token, connectOpts = {}) {
      const session = newSession('memory', typeof token === 'string' ? () => token : token);
      const server = createMcpServer(rt, session);
      const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
      const client = new Client(
        { name: 'gatehouse-test', version: '1.0.0' },
        connectOpts.elicit ? { capabilities: { elicitation: { form: {} } } } : {},
      );
      const elicit = connectOpts.elicit;
      if (elicit) {
        client.setRequestHandler(ElicitRequestSchema, (req, extra) =>
          elicit(req.params, { signal: extra.signal }),
        );
      }
      await server.connect(serverSide);
      await client.connect(clientSide);
      const tc: TestClient = {
        client,
        call: async (tool, args, o = {}) =>
          (await client.callTool(
            { name: tool, arguments: args, ...(o.meta ? { _meta: o.meta } : {}) },
            undefined,
            {
              ...(o.signal ? { signal: o.signal } : {}),
              ...(o.onprogress ? { onprogress: o.onprogress } : {}),
              timeout: 120_000,
            },
          )) as CallToolResult,
        async close() {
          await client.close();
          await server.close();
          await session.recorder?.close();
        },
      };
      clients.push(tc);
      return tc;
    },
    async close() {
      await Promise.allSettled(clients.map((c) => c.close()));
      await rt.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The text of a tool result (first content item). */
export function textOf(r: CallToolResult): string {
  const first = r.content[0];
  return first && first.type === 'text' ? first.text : '';
}
