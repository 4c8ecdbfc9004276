import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { writeGatewayConfig } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/**
 * `gatehouse masking discover --target T` on the real PostgreSQL seeded with PII: it names
 * the columns that hold emails, cards, SSNs and phones, leaves the others alone, and prints
 * counts, never a sampled value.
 */
describe.skipIf(!pgInfo.available)('gatehouse masking discover', () => {
  let dir: string;
  let config: string;
  let su: pg.Client;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-discover-'));
    config = await writeGatewayConfig(dir, { pg: pgInfo, policy: { rules: [] } });
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
    await rm(dir, { recursive: true, force: true });
  });

  it('names the PII columns, only those, with counts and the column rules to review', async () => {
    const r = await runCli(['masking', 'discover', '--target', 'app-db', '--config', config]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const found = r.stdout
      .split('\n')
      .filter((l) => /^ {2}public\./.test(l))
      .map((l) => l.trim().split(/\s+/).slice(0, 2).join(' '));
    expect(found).toEqual([
      'public.customers.email email',
      'public.customers.phone phone',
      'public.customers.card credit_card',
      'public.customers.ssn ssn',
      'public.users.email email',
    ]);
    expect(r.stdout).toMatch(
      /columns: \["customers\.email", "customers\.phone", "customers\.card", "customers\.ssn", "users\.email"\]/,
    );
    // Counts only: no sampled value is printed.
    const emails = (await su.query<{ email: string }>('SELECT email FROM customers')).rows;
    for (const { email } of emails) expect(r.stdout).not.toContain(email);
  });

  it('--json, and the exit codes: unknown target 2, unreachable target 1', async () => {
    const json = await runCli([
      'masking',
      'discover',
      '--target',
      'app-db',
      '--config',
      config,
      '--json',
      '--sample',
      '5',
    ]);
    expect(json.status).toBe(0);
    const parsed = JSON.parse(json.stdout) as { found: Array<{ column: string; sampled: number }> };
    expect(parsed.found.map((f) => f.column)).toContain('ssn');
    for (const f of parsed.found) expect(f.sampled).toBeLessThanOrEqual(5);
    const unknown = await runCli(['masking', 'discover', '--target', 'nope', '--config', config]);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/no target named nope/);
    const bad = await runCli([
      'masking',
      'discover',
      '--target',
      'app-db-badpw',
      '--config',
      config,
    ]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/cannot connect to app-db-badpw: authentication failed/);
    expect(bad.stderr).not.toContain('not-the-password');
  });
});
