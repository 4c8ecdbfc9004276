import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify } from 'yaml';
import { CLI, cliEnv } from '../helpers/cli.js';
import { connectAs } from '../helpers/postgres.js';

/**
 * Issue #6, item 3: the read-only session is not a wall on its own (a function can still run
 * COPY TO PROGRAM, signal backends, take advisory locks, NOTIFY), so the database role is the
 * second wall, and `gatehouse targets check` says when a target's role is not one.
 */

const pgInfo = inject('pg');
const POWERFUL = 'gh_powerful_login';

describe.skipIf(!pgInfo.available)('#6.3 gatehouse targets check', () => {
  let dir: string;
  let configFile: string;
  const password = `pw-${Date.now()}-check`;

  beforeAll(async () => {
    const admin = await connectAs(pgInfo, 'superuser');
    try {
      await admin.query(`CREATE ROLE ${POWERFUL} LOGIN CREATEROLE PASSWORD ${pg.escapeLiteral(password)};
        GRANT pg_signal_backend, pg_execute_server_program TO ${POWERFUL};
        CREATE TABLE gh_owned_by_login (id int);
        ALTER TABLE gh_owned_by_login OWNER TO ${POWERFUL};`);
    } finally {
      await admin.end();
    }
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-targets-'));
    configFile = path.join(dir, 'gatehouse.yaml');
    const target = (user: string, env: string, extra: Record<string, unknown> = {}) => ({
      kind: 'postgres',
      host: pgInfo.host,
      port: pgInfo.port,
      database: pgInfo.database,
      user,
      password: { env },
      ...extra,
    });
    await writeFile(path.join(dir, 'policy.yaml'), 'rules: []\n');
    await writeFile(
      configFile,
      stringify({
        identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
        targets: {
          reader: target(pgInfo.reader.user, 'GH_CHECK_READER'),
          root: target(pgInfo.superuser.user, 'GH_CHECK_ROOT'),
          powerful: target(POWERFUL, 'GH_CHECK_POWERFUL'),
          badpw: target(pgInfo.reader.user, 'GH_CHECK_BAD'),
          unset: target(pgInfo.reader.user, 'GH_CHECK_NOT_SET_ANYWHERE'),
          refused: target(pgInfo.reader.user, 'GH_CHECK_READER', { port: 1 }),
        },
        policies: ['./policy.yaml'],
        audit: { file: 'audit.jsonl' },
        recordings: { dir: 'recordings' },
        state: { file: 'state.json' },
      }),
    );
  });

  afterAll(async () => {
    const admin = await connectAs(pgInfo, 'superuser');
    try {
      await admin.query(`DROP TABLE IF EXISTS gh_owned_by_login; DROP ROLE IF EXISTS ${POWERFUL}`);
    } finally {
      await admin.end();
    }
    await rm(dir, { recursive: true, force: true });
  });

  const check = (...args: string[]) =>
    spawnSync(process.execPath, [...CLI, 'targets', 'check', '--config', configFile, ...args], {
      encoding: 'utf8',
      env: cliEnv({
        GH_CHECK_READER: pgInfo.reader.password,
        GH_CHECK_ROOT: pgInfo.superuser.password,
        GH_CHECK_POWERFUL: password,
        GH_CHECK_BAD: 'not-the-password',
      }),
      timeout: 60_000,
    });

  it('#6.3 a least-privilege role connects with no warning (exit 0)', () => {
    const r = check('reader');
    expect(r.stdout).toMatch(/ok +connected in \d+ ms to PostgreSQL 1\d/);
    expect(r.stdout).toMatch(/holds no powers beyond its grants/);
    expect(r.stdout).toMatch(/1 target checked: 0 errors, 0 warnings/);
    expect(r.status).toBe(0);
  });

  it('#6.3 warns about a superuser login role', () => {
    const r = check('root');
    expect(r.stdout).toMatch(/warning +login role \S+ is a superuser/);
    expect(r.status).toBe(0);
    expect(check('root', '--strict').status).toBe(1);
  });

  it('#6.3 warns about predefined powerful roles, CREATEROLE and owned tables', () => {
    const r = check('powerful');
    expect(r.stdout).toMatch(/is a member of pg_execute_server_program: it can run programs/);
    expect(r.stdout).toMatch(/is a member of pg_signal_backend/);
    expect(r.stdout).toMatch(/has CREATEROLE/);
    expect(r.stdout).toMatch(/owns 1 table or view \(public\.gh_owned_by_login\)/);
    expect(r.stdout).not.toContain(password);
  });

  it('#6.3 says why a target cannot be used, never the secret (exit 1)', () => {
    const r = check('badpw', 'unset', 'refused');
    expect(r.stdout).toMatch(/badpw[\s\S]*error +cannot connect: authentication failed for user/);
    expect(r.stdout).toMatch(
      /unset[\s\S]*error +.*environment variable GH_CHECK_NOT_SET_ANYWHERE is not set/,
    );
    expect(r.stdout).toMatch(
      /refused[\s\S]*error +cannot connect: connection refused by 127\.0\.0\.1:1/,
    );
    expect(r.stdout).not.toContain('not-the-password');
    expect(r.status).toBe(1);
  });

  it('#6.3 an unknown target name is a usage error (exit 2)', () => {
    const r = check('nope');
    expect(r.stdout).toMatch(/no target named nope/);
    expect(r.status).toBe(2);
  });
});
