import { createServer } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMasker } from '../../policies/masking.js';
import { startDemoDatabase, type DemoDb } from '../../server/demo/demo-db.js';

// One embedded database for the file: PGlite takes 2-4 s and ~800 MB RSS to start.
let db: DemoDb;
beforeAll(async () => {
  db = await startDemoDatabase({ port: 0 });
});
afterAll(async () => {
  await db?.stop();
});

function client(d: DemoDb = db): pg.Client {
  return new pg.Client({
    host: d.host,
    port: d.port,
    database: d.database,
    user: d.user,
    password: d.password,
  });
}

async function withClient<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = client();
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Resolves once something can listen on the port again. */
function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

describe('startDemoDatabase', () => {
  it('listens on loopback only, on the port the OS chose', () => {
    expect(db.host).toBe('127.0.0.1');
    expect(db.port).toBeGreaterThan(0);
    expect(db).toMatchObject({ database: 'postgres', user: 'demo' });
    // Random per start: a common word as the password was scrubbed out of every result that
    // named the target (`demo-db` read as `[secret]-db`).
    expect(db.password).toMatch(/^[A-Za-z0-9_-]{24}$/);
  });

  it('serves the seeded schema over the wire protocol', async () => {
    const counts = await withClient(async (c) => {
      const r = await c.query<{ customers: number; orders: number; users: number; canary: number }>(
        `SELECT (SELECT count(*) FROM customers)::int AS customers,
                (SELECT count(*) FROM orders)::int AS orders,
                (SELECT count(*) FROM users)::int AS users,
                (SELECT count(*) FROM canary)::int AS canary`,
      );
      return r.rows[0];
    });
    expect(counts).toEqual({ customers: 25, orders: 60, users: 6, canary: 3 });
  });

  it('holds PII that the masking detectors recognise', async () => {
    const rows = await withClient(
      async (c) =>
        (
          await c.query<{ email: string; card: string; ssn: string | null; phone: string | null }>(
            'SELECT email, card, ssn, phone FROM customers ORDER BY id',
          )
        ).rows,
    );
    const m = createMasker(
      [{ detectors: ['email', 'credit_card', 'ssn', 'phone'], columns: [], style: 'redact' }],
      { pseudonymKey: new Uint8Array(32) },
    );
    for (const r of rows) {
      expect(r.email).toMatch(/@example\.(com|org)$/);
      expect(m.maskText(r.email).value).toBe('[redacted:email]');
      expect(m.maskText(r.card).value).toBe('[redacted:credit_card]');
      if (r.ssn !== null) expect(m.maskText(r.ssn).value).toBe('[redacted:ssn]');
      if (r.phone !== null) expect(m.maskText(r.phone).value).toBe('[redacted:phone]');
    }
    expect(rows.filter((r) => r.ssn === null).length).toBeGreaterThan(0);
  });

  it('reports real column origins (tableID/columnID) for aliases', async () => {
    const r = await withClient((c) => c.query('SELECT password AS p, 1 AS one FROM users LIMIT 1'));
    const [p, one] = r.fields;
    expect(p!.tableID).not.toBe(0);
    expect(p!.columnID).toBe(3);
    expect(one!.tableID).toBe(0);
  });

  it('serves clients one after another', async () => {
    for (let i = 0; i < 3; i++) {
      const n = await withClient(
        async (c) => (await c.query<{ n: number }>('SELECT $1::int AS n', [i])).rows[0]?.n,
      );
      expect(n).toBe(i);
    }
  });

  it('multiplexes concurrent clients (the gateway keeps a pool per mode)', async () => {
    const a = client();
    const b = client();
    await Promise.all([a.connect(), b.connect()]);
    try {
      // Each client runs its queries in order; the two clients run at the same time.
      const results = await Promise.all(
        [a, b].map(async (c, k) => {
          const ok: boolean[] = [];
          for (let i = 0; i < 20; i++) {
            const r = await c.query<{ v: number }>('SELECT $1::int * 1 AS v', [k * 100 + i]);
            ok.push(r.rows[0]?.v === k * 100 + i);
          }
          return ok;
        }),
      );
      expect(results.flat()).toHaveLength(40);
      expect(results.flat().every(Boolean)).toBe(true);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it('runs the shared session as the unprivileged role demo', async () => {
    await withClient(async (c) => {
      const who = await c.query<{ u: string; su: boolean }>(
        "SELECT current_user AS u, current_setting('is_superuser')::bool AS su",
      );
      expect(who.rows[0]).toEqual({ u: 'demo', su: false });
      await expect(c.query('CREATE TABLE pwned (a int)')).rejects.toThrow(/permission denied/);
      await expect(c.query("SELECT pg_read_file('/etc/hostname')")).rejects.toThrow(
        /permission denied/,
      );
      await expect(c.query('TRUNCATE canary')).rejects.toThrow(/permission denied/);
      // Rows may change (the approval flow writes); put it back for the other tests.
      await c.query("UPDATE canary SET v = 'changed' WHERE id = 1");
      await c.query("UPDATE canary SET v = 'one' WHERE id = 1");
    });
  });
});

describe('startDemoDatabase lifecycle', () => {
  it('stop() frees the port, and a second stop() is harmless', async () => {
    const d = await startDemoDatabase({ port: 0, maxConnections: 1 });
    expect(d.password).not.toBe(db.password);
    try {
      // Above maxConnections a client is refused at once, not queued.
      const a = client(d);
      await a.connect();
      const b = client(d);
      await expect(b.connect()).rejects.toThrow();
      await a.end();
      // A client left connected must not keep stop() from finishing.
      const c = client(d);
      await c.connect();
      c.on('error', () => undefined);
      expect(await canListen(d.port)).toBe(false);
    } finally {
      await d.stop();
    }
    expect(await canListen(d.port)).toBe(true);
    await d.stop();
  });
});
