import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { CLI, cliEnv } from '../helpers/cli.js';

/**
 * #7.7: a secret the gateway needs at start that cannot be resolved is a config error (exit 2,
 * naming the key), not a TARGET_ERROR with exit 1; a configured secret too short to scrub
 * safely is refused at start (scrubbing `demo` rewrote `demo-db` as `[secret]-db`).
 */
describe('secrets at start', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-secrets-'));
    await writeFile(path.join(dir, 'policy.yaml'), 'rules: []\n');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function serve(config: Record<string, unknown>, env: Record<string, string> = {}) {
    const file = path.join(dir, `gatehouse-${Math.random().toString(36).slice(2)}.yaml`);
    await writeFile(
      file,
      stringify({
        policies: ['./policy.yaml'],
        audit: { file: 'audit.jsonl' },
        recordings: { dir: 'recordings' },
        state: { file: 'state.json' },
        ...config,
      }),
    );
    return spawnSync(process.execPath, [...CLI, 'serve', '--config', file], {
      encoding: 'utf8',
      env: cliEnv({ GATEHOUSE_TOKEN: 'not-a-token', ...env }),
      input: '',
      timeout: 30_000,
    });
  }

  const hsIdentity = {
    issuer: 'https://idp.example.com/',
    audience: 'gatehouse',
    algorithms: ['HS256'],
    hmacSecret: { env: 'GH_TEST_HMAC_NOT_SET' },
  };

  it('an unset identity.hmacSecret is a config error naming the key (exit 2)', async () => {
    const r = await serve({ identity: hsIdentity });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(
      /identity\.hmacSecret: environment variable GH_TEST_HMAC_NOT_SET is not set or cannot be read/,
    );
    expect(r.stderr).not.toMatch(/TARGET_ERROR/);
    expect(r.stdout).toBe('');
  });

  it('a target password shorter than 8 characters is refused at start, without its value', async () => {
    const r = await serve(
      {
        identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
        targets: {
          'demo-db': {
            kind: 'postgres',
            host: '127.0.0.1',
            database: 'demo',
            user: 'demo',
            password: { env: 'GH_TEST_SHORT_PW' },
          },
        },
      },
      { GH_TEST_SHORT_PW: 'demo' },
    );
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/targets\.demo-db\.password: the secret is shorter than 8 characters/);
    expect(r.stderr).not.toMatch(/GH_TEST_SHORT_PW=|"demo"/);
  });

  it('a target password that is not set yet only warns: the gateway starts', async () => {
    const r = await serve({
      identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
      targets: {
        later: {
          kind: 'postgres',
          host: '127.0.0.1',
          database: 'x',
          user: 'x',
          password: { env: 'GH_TEST_NOT_SET_YET' },
        },
      },
    });
    // It gets past the config to the token, which is refused (UNAUTHENTICATED).
    expect(r.stderr).toMatch(/UNAUTHENTICATED/);
    expect(r.stderr).not.toMatch(/shorter than/);
  });
});
