/**
 * A real PostgreSQL for the tests and the benchmark: `initdb` into a fresh temp dir, then the
 * `postgres` server as a direct child (so the PID we stop is the postmaster's), listening on
 * a random 127.0.0.1 port with password (SCRAM) authentication everywhere. As root, both run
 * as the `postgres` account (initdb refuses root). Durability is off: the data is thrown away.
 *
 * Used by test/helpers/global-setup.ts (one server for the whole integration run, handed to
 * tests with vitest's provide/inject) and, outside vitest, by test/bench.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, openSync, readdirSync, realpathSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type {} from 'vitest';
import { DEMO_SEED_SQL } from '../../server/demo/demo-db.js';

export interface PgRole {
  user: string;
  password: string;
}

export interface PgInfo {
  available: boolean;
  /** Why the server is not available (integration tests are skipped, or fail under CI). */
  reason?: string;
  host: string;
  port: number;
  database: string;
  superuser: PgRole;
  /** SELECT on every table and sequence: a read-only role. */
  reader: PgRole;
  /** SELECT/INSERT/UPDATE/DELETE on every table, USAGE/SELECT on sequences; no DDL. */
  writer: PgRole;
  /** The postmaster's PID. */
  pid: number;
}

// The type-only import makes `vitest` part of the program under tsconfig.build.json too (the
// bench build), where nothing else imports it and the augmentation would not resolve.
declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgInfo;
  }
}

/** PostgreSQL cannot run here at all (no server binaries, no account to run them as). */
export class PgUnavailableError extends Error {
  override name = 'PgUnavailableError';
}

export interface StartOptions {
  /**
   * Directory holding `initdb` and `postgres`. Default: $GATEHOUSE_PG_BINDIR, else the first
   * of `pg_config --bindir`, /usr/lib/postgresql/<newest>/bin and PATH that has both.
   */
  binDir?: string;
  /** The database `seedFixtures` creates and `info.database` names (default `app`). */
  database?: string;
}

export interface RunningPostgres {
  info: PgInfo;
  binDir: string;
  /** Fast shutdown of exactly the postmaster we started, then removal of its temp dir. */
  stop(): Promise<void>;
}

const HOST = '127.0.0.1';
const run = promisify(execFile);

/** Distinctive per run: tests scan every output the gateway produces for these strings. */
const newPassword = (): string => `pw-${randomBytes(12).toString('hex')}`;

// Passwords are checked on every path, including the superuser's, so a test that connects
// without the right one fails the way production would.
const PG_HBA = `# Written by the Gatehouse test harness.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
`;

const SERVER_SETTINGS = [
  ['listen_addresses', HOST],
  ['fsync', 'off'],
  ['synchronous_commit', 'off'],
  ['full_page_writes', 'off'],
];

/** A PgInfo for when there is no server; tests `describe.skipIf(!info.available)`. */
export function pgUnavailable(reason: string): PgInfo {
  const none = { user: '', password: '' };
  return {
    available: false,
    reason,
    host: HOST,
    port: 0,
    database: '',
    superuser: none,
    reader: none,
    writer: none,
    pid: 0,
  };
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const hasServer = (dir: string): boolean =>
  isExecutable(path.join(dir, 'initdb')) && isExecutable(path.join(dir, 'postgres'));

async function findBinDir(explicit: string | undefined): Promise<string> {
  const chosen = explicit ?? process.env.GATEHOUSE_PG_BINDIR;
  if (chosen) {
    if (hasServer(chosen)) return chosen;
    throw new PgUnavailableError(`no initdb and postgres in ${chosen}`);
  }
  const candidates: string[] = [];
  try {
    candidates.push((await run('pg_config', ['--bindir'])).stdout.trim());
  } catch {
    // pg_config comes with libpq-dev, not with the server: often absent.
  }
  try {
    const versions = readdirSync('/usr/lib/postgresql').sort(
      (a, b) => Number(b) - Number(a) || b.localeCompare(a),
    );
    candidates.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  } catch {
    // not Debian's layout
  }
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const initdb = path.join(dir, 'initdb');
    if (dir && isExecutable(initdb)) candidates.push(path.dirname(realpathSync(initdb)));
  }
  const found = candidates.find(hasServer);
  if (found) return found;
  throw new PgUnavailableError(
    'PostgreSQL server binaries (initdb, postgres) not found via pg_config --bindir, /usr/lib/postgresql/*/bin or PATH: ' +
      'install them (apt-get install postgresql) or set GATEHOUSE_PG_BINDIR',
  );
}

interface Account {
  uid: number;
  gid: number;
}

/** initdb and postgres refuse to run as root: use the `postgres` account then. */
async function serverAccount(): Promise<Account | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
    if (Number.isInteger(uid) && Number.isInteger(gid) && uid > 0) return { uid, gid };
  } catch {
    // fall through
  }
  throw new PgUnavailableError(
    'running as root and there is no `postgres` account to run initdb and postgres as',
  );
}

/** A port nothing listens on right now; the server may still lose a race for it (retried). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A clean environment: stray PGDATA/PGPORT must not steer initdb or postgres; C messages. */
const childEnv = (): NodeJS.ProcessEnv => ({
  PATH: process.env.PATH ?? '/usr/bin:/bin',
  LC_ALL: 'C',
  LANG: 'C',
});

async function tail(file: string, lines = 15): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

const alive = (child: ChildProcess): boolean =>
  child.pid !== undefined && child.exitCode === null && child.signalCode === null;

/** Resolves when the child has exited (or could not be spawned). */
function exitOf(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (!alive(child) || child.pid === undefined) return resolve();
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });
}

async function waitExit(exited: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  const done = await Promise.race([exited.then(() => true), timeout]);
  clearTimeout(timer);
  return done;
}

/** SIGINT is PostgreSQL's fast shutdown (sessions ended, no waiting for clients). */
async function terminate(child: ChildProcess, exited: Promise<void>): Promise<void> {
  for (const [signal, ms] of [
    ['SIGINT', 15_000],
    ['SIGQUIT', 5_000],
    ['SIGKILL', 5_000],
  ] as const) {
    if (!alive(child)) return;
    child.kill(signal);
    if (await waitExit(exited, ms)) return;
  }
}

/**
 * Polls until the server accepts a password login. Returns false if the process exited
 * first (e.g. it lost the race for the port).
 */
async function waitReady(
  child: ChildProcess,
  port: number,
  su: PgRole,
  logFile: string,
): Promise<boolean> {
  const deadline = Date.now() + 30_000;
  while (alive(child)) {
    const client = new pg.Client({
      host: HOST,
      port,
      database: 'postgres',
      ...su,
      connectionTimeoutMillis: 2_000,
    });
    try {
      await client.connect();
      await client.end();
      return true;
    } catch (err) {
      const code = (err as { code?: string }).code;
      // Refused: not listening yet. 57P03: starting up. Anything else is a real failure.
      if (code !== 'ECONNREFUSED' && code !== '57P03' && code !== 'ECONNRESET') {
        throw new Error(
          `PostgreSQL started but refused the harness login (${String(err)}):\n${await tail(logFile)}`,
        );
      }
    }
    if (Date.now() > deadline)
      throw new Error(`PostgreSQL did not accept connections within 30 s:\n${await tail(logFile)}`);
    await sleep(25);
  }
  return false;
}

/**
 * Starts an empty server (only the superuser exists). `info.reader`/`info.writer` hold the
 * names and fresh passwords that `seedFixtures` gives those roles.
 */
export async function startPostgres(opts: StartOptions = {}): Promise<RunningPostgres> {
  const binDir = await findBinDir(opts.binDir);
  const account = await serverAccount();
  const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-pg-'));
  const spawnAs = account ? { uid: account.uid, gid: account.gid } : {};
  const dataDir = path.join(dir, 'data');
  const sockDir = path.join(dir, 'sock');
  const logFile = path.join(dir, 'postgres.log');
  const superuser: PgRole = { user: 'postgres', password: newPassword() };
  let child: ChildProcess | undefined;
  try {
    await mkdir(sockDir, { mode: 0o700 });
    const pwFile = path.join(dir, 'superuser-password');
    await writeFile(pwFile, `${superuser.password}\n`, { mode: 0o600 });
    if (account) for (const p of [dir, sockDir, pwFile]) await chown(p, account.uid, account.gid);

    // Fails with initdb's stderr in the message. --no-sync: the cluster is thrown away.
    const initdbArgs = ['-D', dataDir, '-U', superuser.user, `--pwfile=${pwFile}`, '--no-sync'];
    const settings = ['--auth=scram-sha-256', '--encoding=UTF8', '--locale=C'];
    await run(path.join(binDir, 'initdb'), [...initdbArgs, ...settings], {
      cwd: dir,
      env: childEnv(),
      ...spawnAs,
    });
    await rm(pwFile);
    // Overwriting keeps the file's owner (postgres) and mode.
    await writeFile(path.join(dataDir, 'pg_hba.conf'), PG_HBA);

    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const args = [
        '-D',
        dataDir,
        '-p',
        String(port),
        '-k',
        sockDir,
        ...SERVER_SETTINGS.flatMap(([k, v]) => ['-c', `${k}=${v}`]),
      ];
      const log = openSync(logFile, 'a');
      try {
        // Not detached: a Ctrl-C to the test run reaches the server too (fast shutdown).
        child = spawn(path.join(binDir, 'postgres'), args, {
          cwd: dir,
          env: childEnv(),
          stdio: ['ignore', log, log],
          ...spawnAs,
        });
      } finally {
        closeSync(log);
      }
      let spawnError = '';
      child.once('error', (err) => (spawnError = `${err.message}\n`));
      const exited = exitOf(child);
      if (await waitReady(child, port, superuser, logFile)) {
        return running(child, exited, dir, binDir, {
          available: true,
          host: HOST,
          port,
          database: opts.database ?? 'app',
          superuser,
          reader: { user: 'gatehouse_reader', password: newPassword() },
          writer: { user: 'gatehouse_writer', password: newPassword() },
          pid: child.pid!,
        });
      }
      const why = spawnError + (await tail(logFile));
      if (!/could not bind|already in use/i.test(why) || attempt >= 5) {
        throw new Error(`postgres exited during start-up (${binDir}):\n${why}`);
      }
    }
  } catch (err) {
    if (child && alive(child)) await terminate(child, exitOf(child));
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function running(
  child: ChildProcess,
  exited: Promise<void>,
  dir: string,
  binDir: string,
  info: PgInfo,
): RunningPostgres {
  // Last resort if the owner never calls stop(): immediate shutdown as the process exits.
  const onExit = () => {
    if (alive(child)) child.kill('SIGQUIT');
  };
  process.on('exit', onExit);
  let stopping: Promise<void> | undefined;
  return {
    info,
    binDir,
    stop: () =>
      (stopping ??= (async () => {
        try {
          await terminate(child, exited);
        } finally {
          process.off('exit', onExit);
          await rm(dir, { recursive: true, force: true });
        }
      })()),
  };
}

/** A connected client for one of the three roles (the caller ends it). */
export async function connectAs(
  info: PgInfo,
  role: 'superuser' | 'reader' | 'writer',
  overrides: Partial<pg.ClientConfig> = {},
): Promise<pg.Client> {
  if (!info.available)
    throw new Error(`PostgreSQL is not available: ${info.reason ?? 'unknown reason'}`);
  const client = new pg.Client({
    host: info.host,
    port: info.port,
    database: info.database,
    ...info[role],
    ...overrides,
  });
  await client.connect();
  return client;
}

/**
 * Creates `info.database` with the corpus fixtures (the demo's data set: `customers` with
 * emails, Luhn-valid test card numbers and SSN-shaped values, `orders`, `users` with password
 * hashes, `canary` and the sequence `canary_seq`), and the reader and writer roles.
 */
export async function seedFixtures(info: PgInfo): Promise<void> {
  const { escapeIdentifier: id, escapeLiteral: lit } = pg;
  const [reader, writer, db] = [id(info.reader.user), id(info.writer.user), id(info.database)];
  const admin = await connectAs(info, 'superuser', { database: 'postgres' });
  try {
    // CREATE DATABASE refuses to run inside a (multi-statement, hence implicit) transaction.
    await admin.query(`CREATE DATABASE ${db}`);
    await admin.query(`CREATE ROLE ${reader} LOGIN PASSWORD ${lit(info.reader.password)};
      CREATE ROLE ${writer} LOGIN PASSWORD ${lit(info.writer.password)}`);
  } finally {
    await admin.end();
  }
  const app = await connectAs(info, 'superuser');
  try {
    // One simple-protocol query: one implicit transaction, all or nothing. Least privilege, the
    // same on every PostgreSQL version: no CREATE in public (PUBLIC had it before 15), no temp
    // tables, and no USAGE on sequences for the reader (it would allow nextval()).
    await app.query(`${DEMO_SEED_SQL};
      REVOKE CREATE ON SCHEMA public FROM PUBLIC;
      REVOKE TEMPORARY ON DATABASE ${db} FROM PUBLIC;
      GRANT CONNECT ON DATABASE ${db} TO ${reader}, ${writer};
      GRANT USAGE ON SCHEMA public TO ${reader}, ${writer};
      GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${reader};
      GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO ${reader};
      GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${writer};
      GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${writer};`);
  } finally {
    await app.end();
  }
}
