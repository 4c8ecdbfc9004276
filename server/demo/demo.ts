import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { startDemoDatabase } from './demo-db.js';
import { defaultDemoDir } from './state-dir.js';
import { loadDevIssuer } from '../identity/dev-issuer.js';
import { log } from '../kernel/log.js';
import { packageRoot } from '../kernel/paths.js';
import { createRuntime } from '../runtime.js';
import { serveStdioWith } from '../serve.js';
import { AuditIntegrityError } from '../../recordings/audit.js';

export const DEMO_IDENTITY = { sub: 'demo-user', groups: ['analysts'] } as const;

/**
 * Zero-setup demo: an embedded PostgreSQL (PGlite) served over the wire protocol so the real
 * `pg` path runs, the bundled demo policy, and a local dev issuer. Over stdio it identifies
 * its own session with a token it mints, so `mcp.json` works with nothing to paste.
 */
export async function runDemo(
  opts: { dir?: string; http?: { listen?: string } } = {},
): Promise<number> {
  const dir = path.resolve(opts.dir ?? defaultDemoDir());
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new Error(
      `cannot create the demo state directory ${dir} (${code}): pick another with --dir D`,
    );
  }
  await refuseIfInUse(dir);
  const db = await startDemoDatabase({ port: 0 });
  try {
    // PGlite ignores passwords, but the gateway still resolves one the way it would for a real
    // server: from a reference, never from the config text. It is random per run (demo-db.ts).
    process.env.GATEHOUSE_DEMO_DB_PASSWORD = db.password;
    const configFile = path.join(dir, 'gatehouse.yaml');
    // Written beside the real name and renamed once this demo holds the audit log, so a
    // second demo on the same directory cannot point the running one's config elsewhere.
    const draft = `${configFile}.${process.pid}.tmp`;
    const policyFile = path.join(packageRoot(), 'policies', 'examples', 'demo.yaml');
    await writeFile(
      draft,
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
    // The demo is one process per state directory, writing the directory's audit.jsonl
    // itself: a replica id meant for a real deployment must not send it to a chain of its own.
    delete process.env.GATEHOUSE_REPLICA_ID;
    const rt = await createRuntime(draft, opts.http ? { transport: 'http' } : {}).catch(
      async (err: unknown) => {
        await rm(draft, { force: true });
        throw err;
      },
    );
    const base = path.join(dir, 'audit.jsonl');
    if (rt.audit.file !== base) {
      // A gateway that finds the audit log held writes a chain of its own beside it; a demo
      // that did would be a second demo on this directory (one started in the same instant).
      await rt.close().catch(() => undefined);
      await rm(draft, { force: true });
      // Its own chain holds nothing yet: no trace of the refused start is left behind.
      if ((await stat(rt.audit.file).catch(() => undefined))?.size === 0)
        await rm(rt.audit.file, { force: true });
      await refuseIfInUse(dir);
      throw new AuditIntegrityError(
        `the demo's audit log ${base} ends in a torn line: check it with ` +
          `"gatehouse audit verify --file ${base}", then move it aside (or use --dir D)`,
      );
    }
    await rename(draft, configFile);
    const about = [
      `  state     ${dir} (config, keys, audit log, recordings; --dir D for another)`,
      `  database  PGlite on ${db.host}:${db.port} (sample customers and orders with fake PII)`,
      `  policy    ${shown(policyFile)}: reads allowed and masked, writes need approval, DDL denied`,
      `  identity  ${DEMO_IDENTITY.sub} (groups: ${DEMO_IDENTITY.groups.join(', ')}), token valid 8h`,
      `  audit     gatehouse audit tail --config ${shellWord(configFile)}`,
      `  config    ${configFile}`,
    ];
    if (opts.http) {
      const { serveHttpWith } = await import('../http.js');
      return await serveHttpWith(rt, {
        ...(opts.http.listen !== undefined ? { listen: opts.http.listen } : {}),
        banner: (gw) =>
          [
            `gatehouse demo: serving MCP over HTTP at ${gw.url.href}`,
            `  sse       ${gw.sseUrl.href} (the older HTTP+SSE transport)`,
            ...about,
            'Send this token as "Authorization: Bearer <token>", e.g.',
            `  claude mcp add --transport http gatehouse-demo ${gw.url.href} --header "Authorization: Bearer $TOKEN"`,
            'Token:',
            token,
            '',
          ].join('\n'),
      });
    }
    process.stderr.write(
      [
        'gatehouse demo: serving MCP on stdio',
        ...about,
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

/**
 * One demo per state directory: the running demo holds the lock of its audit.jsonl. A
 * second demo (a client and a terminal both started one) reads it here and says so at once,
 * and how to run beside it, before starting a database; runDemo checks again once its
 * gateway has opened the log, since a gateway that finds the log held writes a chain of
 * its own instead of stopping.
 */
async function refuseIfInUse(dir: string): Promise<void> {
  const text = await readFile(path.join(dir, 'audit.jsonl.lock'), 'utf8').catch(() => null);
  if (text === null) return;
  let holder: { pid?: unknown; host?: unknown };
  try {
    holder = JSON.parse(text) as typeof holder;
  } catch {
    return;
  }
  if (typeof holder.pid !== 'number' || holder.host !== hostname() || holder.pid === process.pid)
    return;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return; // gone: the lock is stale
  }
  throw new AuditIntegrityError(
    `another gatehouse demo (process ${holder.pid}) is using the state directory ${dir}: ` +
      'stop it, or give this one a directory of its own with --dir D',
  );
}

/** A path relative to the working directory when it is inside it, else absolute. */
function shown(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel && rel.split(path.sep)[0] !== '..' && !path.isAbsolute(rel) ? rel : p;
}

/** A path as one shell word, for a command line the user may paste. */
function shellWord(p: string): string {
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replaceAll("'", `'\\''`)}'`;
}
