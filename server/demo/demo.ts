import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { startDemoDatabase } from './demo-db.js';
import { loadDevIssuer } from '../identity/dev-issuer.js';
import { log } from '../kernel/log.js';
import { packageRoot } from '../kernel/paths.js';
import { createRuntime } from '../runtime.js';
import { serveStdioWith } from '../serve.js';

export const DEMO_IDENTITY = { sub: 'demo-user', groups: ['analysts'] } as const;

/**
 * Zero-setup demo: an embedded PostgreSQL (PGlite) served over the wire protocol so the real
 * `pg` path runs, the bundled demo policy, and a local dev issuer. Over stdio it identifies
 * its own session with a token it mints, so `mcp.json` works with nothing to paste.
 */
export async function runDemo(opts: { dir?: string } = {}): Promise<number> {
  const dir = path.resolve(opts.dir ?? path.join('.gatehouse', 'demo'));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const db = await startDemoDatabase({ port: 0 });
  try {
    // PGlite ignores passwords, but the gateway still resolves one the way it would for a real
    // server: from a reference, never from the config text. It is random per run (demo-db.ts).
    process.env.GATEHOUSE_DEMO_DB_PASSWORD = db.password;
    const configFile = path.join(dir, 'gatehouse.yaml');
    const policyFile = path.join(packageRoot(), 'policies', 'examples', 'demo.yaml');
    await writeFile(
      configFile,
      '# Written by `gatehouse demo` on each start.\n' +
        stringify({
          identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
          targets: {
            'demo-db': {
              kind: 'postgres',
              description: 'Embedded demo database (PGlite) with sample customers and orders',
              host: db.host,
              port: db.port,
              database: db.database,
              user: db.user,
              password: { env: 'GATEHOUSE_DEMO_DB_PASSWORD' },
              poolSize: 1,
            },
          },
          policies: [policyFile],
          audit: { file: 'audit.jsonl' },
          recordings: { dir: 'recordings' },
          state: { file: 'state.json' },
        }),
    );
    const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    const token = await issuer.mint({
      ...DEMO_IDENTITY,
      groups: [...DEMO_IDENTITY.groups],
      ttlSec: 8 * 3600,
      audience: 'gatehouse',
    });
    const rt = await createRuntime(configFile);
    const rel = path.relative(process.cwd(), dir) || '.';
    process.stderr.write(
      [
        'gatehouse demo: serving MCP on stdio',
        `  database  PGlite on ${db.host}:${db.port} (sample customers and orders with fake PII)`,
        `  policy    ${path.relative(process.cwd(), policyFile)}: reads allowed and masked, writes need approval, DDL denied`,
        `  identity  ${DEMO_IDENTITY.sub} (groups: ${DEMO_IDENTITY.groups.join(', ')}), token valid 8h`,
        `  audit     gatehouse audit tail --config ${rel}/gatehouse.yaml`,
        `  config    ${rel}/gatehouse.yaml`,
        'Token for clients that connect another way (GATEHOUSE_TOKEN):',
        token,
        '',
      ].join('\n'),
    );
    return await serveStdioWith(rt, () => token);
  } finally {
    await db
      .stop()
      .catch((err: unknown) =>
        log.warn({ err: String(err) }, 'demo database did not stop cleanly'),
      );
  }
}
