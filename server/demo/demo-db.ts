import { createHash, randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { log } from '../kernel/log.js';

/**
 * The `gatehouse demo` database: PGlite (PostgreSQL 18 compiled to WASM) served over the
 * PostgreSQL wire protocol on 127.0.0.1, so the gateway reaches it through the same `pg`
 * client path as a real server. Demo only: PGlite runs one backend for every connection.
 *
 * What a client sees that a real server would not (measured with pglite 0.5.14 and
 * pglite-socket 0.2.17):
 * - Every connection shares one session. Startup parameters (`options=-c ...`,
 *   `statement_timeout`) are ignored, so the gateway's read pools are NOT read-only at the
 *   server here; `SET` by one client is seen by all.
 * - Connections are multiplexed message by message through one queue. While a client holds
 *   an explicit transaction, the others wait (no timeout) until it ends or disconnects.
 *   Outside one, another client's messages may run between the Execute and the Sync of an
 *   extended-protocol exchange (a cursor); harmless for demo reads, not for real work.
 * - Above `maxConnections` a new connection is closed at once ("Connection terminated
 *   unexpectedly" in `pg`); it is not queued. The gateway keeps a pool per (target, mode,
 *   timeout), each holding idle sessions, so the limit must stay above 1.
 * - Users and passwords are not checked; any name works. The shared session runs as the
 *   unprivileged role `demo` (not the superuser), a second line behind the policy: DDL,
 *   TRUNCATE and file functions fail with "permission denied". Not a barrier: any client
 *   can `SET SESSION AUTHORIZATION postgres` back.
 * - Start: ~2.5-3.5 s and ~700 MB more RSS (mostly WASM code) in memory; a persistent
 *   `dataDir` that already holds a database restarts in ~0.3 s.
 */
export interface DemoDb {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
  stop(): Promise<void>;
}

export interface DemoDbOptions {
  /** 0 (the default) lets the OS choose a free port. */
  port?: number;
  /** Directory for a persistent database; undefined keeps it in memory. */
  dataDir?: string;
  /** Concurrent client connections before new ones are refused (default 8). */
  maxConnections?: number;
}

const HOST = '127.0.0.1'; // never 0.0.0.0: the demo data and its superuser stay on this machine
const ROLE = 'demo';

export async function startDemoDatabase(opts: DemoDbOptions = {}): Promise<DemoDb> {
  const started = performance.now();
  if (opts.dataDir !== undefined) await mkdir(opts.dataDir, { recursive: true, mode: 0o700 });
  const db = await PGlite.create({
    ...(opts.dataDir !== undefined ? { dataDir: opts.dataDir } : {}),
    // Demo data is reproducible from the seed; skipping fsync makes a persistent start faster.
    relaxedDurability: true,
  });
  let server: PGLiteSocketServer | undefined;
  try {
    await seedIfEmpty(db);
    await dropToDemoRole(db);
    server = new PGLiteSocketServer({
      db,
      host: HOST,
      port: opts.port ?? 0,
      maxConnections: opts.maxConnections ?? 8,
      // Both print to stdout, which is the MCP channel in stdio mode.
      inspect: false,
      debug: false,
    });
    server.addEventListener('error', (ev) => {
      log.debug({ err: String((ev as CustomEvent<unknown>).detail) }, 'demo database socket error');
    });
    await server.start();
  } catch (err) {
    await server?.stop().catch(() => undefined);
    await db.close().catch(() => undefined);
    throw err;
  }
  // getServerConn() is "host:port" with the port the OS assigned.
  const port = Number(server.getServerConn().split(':').pop());
  log.debug(
    { host: HOST, port, ms: Math.round(performance.now() - started), persistent: !!opts.dataDir },
    'demo database started',
  );

  // PGlite checks no password, but the gateway resolves and scrubs this one as it would a real
  // server's. A common word here ("demo") was scrubbed out of every result that named the
  // target: `demo-db` read as `[secret]-db`. 24 random URL-safe characters occur nowhere else.
  const password = randomBytes(18).toString('base64url');
  let stopping: Promise<void> | undefined;
  const running = server;
  return {
    host: HOST,
    port,
    // PGlite has the one database 'postgres' and ignores the name a client asks for.
    database: 'postgres',
    user: ROLE,
    password,
    stop() {
      stopping ??= (async () => {
        try {
          await running.stop();
        } finally {
          await db.close();
        }
      })();
      return stopping;
    },
  };
}

async function seedIfEmpty(db: PGlite): Promise<void> {
  const res = await db.query<{ present: boolean }>(
    "SELECT to_regclass('public.customers') IS NOT NULL AS present",
  );
  if (res.rows[0]?.present) return;
  await db.exec(`BEGIN;\n${DEMO_SEED_SQL}\nCOMMIT;`);
}

/**
 * The shared session becomes the role `demo`, which may read and write rows but not change
 * the schema, read files or start programs. This is a second line only: PGlite's
 * authenticated user is the superuser, so any client may `SET SESSION AUTHORIZATION postgres`
 * back (for every connection at once); the policy refuses SET/RESET (admin) before a
 * statement gets here.
 */
async function dropToDemoRole(db: PGlite): Promise<void> {
  await db.exec(`
    DO $$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${ROLE}') THEN
        CREATE ROLE ${ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
      END IF;
    END $$;
    GRANT USAGE ON SCHEMA public TO ${ROLE};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${ROLE};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${ROLE};
    SET SESSION AUTHORIZATION ${ROLE};
  `);
}

// ---------------------------------------------------------------------------------------------
// Seed data: small, deterministic (same rows on every start) and entirely fictional.

// prettier-ignore
const FIRST = [
  'Alice', 'Bruno', 'Chloé', 'Dmitri', 'Emma', 'Farid', 'Grace', 'Hugo', 'Ines', 'Jonas',
  'Keiko', 'Liam', 'Maya', 'Noah', 'Olivia', 'Pablo', 'Quinn', 'Rosa', 'Samir', 'Tara',
  'Ugo', 'Vera', 'Wen', 'Ximena', 'Yusuf',
];
// prettier-ignore
const LAST = [
  'Martin', 'Keller', 'Dubois', 'Ivanov', 'Walker', 'Haddad', 'Okafor', 'Laurent', 'Costa',
  'Berg', 'Tanaka', 'Murphy', 'Patel', 'Schmidt', 'Rossi', 'Garcia', 'Nguyen', 'Silva',
  'Kaya', 'Novak', 'Bianchi', 'Horvat', 'Chen', 'Lopez', 'Demir',
];
const COUNTRIES = ['US', 'GB', 'FR', 'US', 'DE'] as const;

/**
 * Published test card numbers (Visa, Mastercard, Amex, Discover, JCB, Diners test ranges):
 * Luhn-valid, so masking detectors find them, and never issued to anyone. Mixed formats on
 * purpose, as real data is.
 */
const TEST_CARDS = [
  '4111 1111 1111 1111',
  '5555-5555-5555-4444',
  '378282246310005',
  '6011111111111117',
  '4012888888881881',
  '5105 1051 0510 5100',
  '3530111333300000',
  '4242424242424242',
  '371449635398431',
  '2223003122003222',
  '6011000990139424',
  '30569309025904',
];

/** Numbers reserved for fiction: US 555-01xx, UK Ofcom drama range, French 01 99 00 xx xx. */
function phoneFor(country: string, i: number): string | null {
  const n = String(i).padStart(2, '0');
  switch (country) {
    case 'US':
      return `+1 202-555-01${n}`;
    case 'GB':
      return `+44 20 7946 0${n.padStart(3, '0')}`;
    case 'FR':
      return `+33 1 99 00 ${n} ${n}`;
    default:
      return null; // some customers gave no phone number
  }
}

const q = (s: string | null): string => (s === null ? 'NULL' : `'${s.replace(/'/g, "''")}'`);

/** A bcrypt-shaped string derived from the name: looks real, opens nothing. */
function fakeBcrypt(seed: string): string {
  const b64 = createHash('sha512').update(`gatehouse-demo:${seed}`).digest('base64');
  return '$2b$12$' + b64.replace(/[+=]/g, '.').slice(0, 53);
}

function buildSeedSql(): string {
  const customers = FIRST.map((first, k) => {
    const i = k + 1;
    const last = LAST[k] ?? 'Doe';
    const country = COUNTRIES[k % COUNTRIES.length] ?? 'US';
    const email = `${first
      .normalize('NFD')
      .replace(/[^A-Za-z]/g, '')
      .toLowerCase()}.${last.toLowerCase()}@${i % 3 === 0 ? 'example.org' : 'example.com'}`;
    // SSNs only for US customers; fictional values in the valid format, so detectors fire.
    const ssn =
      country === 'US'
        ? `${String(101 + ((i * 37) % 600)).padStart(3, '0')}-${String(10 + ((i * 13) % 89)).padStart(2, '0')}-${String(1000 + ((i * 739) % 8999)).padStart(4, '0')}`
        : null;
    const card = TEST_CARDS[k % TEST_CARDS.length] ?? null;
    const created = `'2023-01-01T09:00:00Z'::timestamptz + interval '${i * 11} days ${i * 3} hours'`;
    return `(${i}, ${q(`${first} ${last}`)}, ${q(email)}, ${q(phoneFor(country, i))}, ${q(country)}, ${q(card)}, ${q(ssn)}, ${created})`;
  });

  const statuses = ['paid', 'shipped', 'delivered', 'pending', 'refunded', 'delivered'];
  const orders = Array.from({ length: 60 }, (_, k) => {
    const i = k + 1;
    const customer = ((i * 7) % FIRST.length) + 1;
    const amount = 499 + ((i * 1379) % 24000);
    return `(${i}, ${customer}, ${amount}, '${statuses[i % statuses.length] ?? 'paid'}', '2024-03-01T08:00:00Z'::timestamptz + interval '${i * 29} hours')`;
  });

  const users = [
    ['admin@example.com', 'admin'],
    ['dana.ops@example.com', 'admin'],
    ['ravi.analyst@example.org', 'analyst'],
    ['lena.analyst@example.com', 'analyst'],
    ['support@example.com', 'support'],
    ['sam.support@example.org', 'support'],
  ].map(
    ([email = '', role = ''], k) => `(${k + 1}, ${q(email)}, ${q(fakeBcrypt(email))}, ${q(role)})`,
  );

  return `
CREATE TABLE customers (
  id         integer PRIMARY KEY,
  name       text NOT NULL,
  email      text NOT NULL UNIQUE,
  phone      text,
  country    char(2) NOT NULL,
  card       text,
  ssn        text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
  id           integer PRIMARY KEY,
  customer_id  integer NOT NULL REFERENCES customers(id),
  amount_cents integer NOT NULL CHECK (amount_cents >= 0),
  status       text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders(customer_id);
CREATE TABLE users (
  id       integer PRIMARY KEY,
  email    text NOT NULL UNIQUE,
  password text NOT NULL,
  role     text NOT NULL
);
-- Written to by tests and demos of the approval flow; nothing depends on its content.
CREATE TABLE canary (
  id integer PRIMARY KEY,
  v  text NOT NULL
);
CREATE SEQUENCE canary_seq;
INSERT INTO customers (id, name, email, phone, country, card, ssn, created_at) VALUES
${customers.join(',\n')};
INSERT INTO orders (id, customer_id, amount_cents, status, created_at) VALUES
${orders.join(',\n')};
INSERT INTO users (id, email, password, role) VALUES
${users.join(',\n')};
INSERT INTO canary (id, v) VALUES (1, 'one'), (2, 'two'), (3, 'three');
`.trim();
}

/**
 * Schema and rows of the demo database, as plain SQL that also runs on a real PostgreSQL
 * (integration tests can seed a server with the same data). No transaction control inside.
 */
export const DEMO_SEED_SQL: string = buildSeedSql();
