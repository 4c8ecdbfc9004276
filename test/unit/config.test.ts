import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../server/config.js';
import { resolveSecret } from '../../server/kernel/secrets.js';
import { ConfigError, GovernanceError } from '../../server/kernel/errors.js';
import { loadPolicies } from '../../policies/load.js';
import { loadGateway } from '../../server/runtime.js';
import { parseDuration, parseSize } from '../../server/kernel/units.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-config-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const write = async (name: string, text: string) => {
  const file = path.join(dir, name);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, text);
  return file;
};

const issues = async (p: Promise<unknown>): Promise<string[]> => {
  try {
    await p;
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  throw new Error('expected a ConfigError');
};

const base = `identity:
  audience: gatehouse
  devIssuer: { keyFile: keys/dev.json }
`;

describe('config', () => {
  it('loads a minimal config with defaults, resolving paths against the config folder', async () => {
    const file = await write('gatehouse.yaml', base);
    const c = await loadConfig(file);
    expect(c.identity.devIssuer?.keyFile).toBe(path.join(dir, 'keys/dev.json'));
    expect(c.identity.algorithms).toEqual(['RS256', 'ES256', 'EdDSA']);
    expect(c.audit.file).toBe(path.join(dir, '.gatehouse/audit.jsonl'));
    expect(c.policies).toEqual([path.join(dir, 'policies/*.yaml')]);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('refuses a literal password, naming file, line, column and key path', async () => {
    const file = await write(
      'gatehouse.yaml',
      `${base}targets:
  app-db:
    kind: postgres
    host: 127.0.0.1
    database: app
    user: reader
    password: hunter2
`,
    );
    const [first] = await issues(loadConfig(file));
    expect(first).toBe(
      `${file}:10:15: targets.app-db.password: a secret must be a reference ({ env: NAME } or { file: PATH }), never a literal value`,
    );
    expect(first).not.toContain('hunter2');
  });

  it.each([
    [
      'an unknown key',
      `${base}  groupClaim: x\n`,
      /gatehouse.yaml:4:3: identity: unknown key "groupClaim" \(did you mean "groupsClaim"\?\)/,
    ],
    [
      'no issuer at all',
      `identity:\n  audience: x\n`,
      /identity.issuer: required unless only devIssuer/,
    ],
    [
      'an issuer without jwks',
      `identity:\n  issuer: https://idp.example.com/\n`,
      /identity.jwks: required/,
    ],
    ['alg none', `${base}  algorithms: [none]\n`, /algorithm 'none' is never accepted/],
    [
      'HS256 without a secret',
      `${base}  algorithms: [HS256]\n`,
      /HS256 listed without identity.hmacSecret/,
    ],
    [
      'an ssh target without a pinned host key',
      `${base}targets:\n  web:\n    kind: ssh\n    host: h\n    user: u\n    privateKey: { file: k }\n`,
      /hostKey/,
    ],
    [
      'a bad duration',
      `${base}targets:\n  db:\n    kind: postgres\n    host: h\n    database: d\n    user: u\n    connectTimeout: soon\n`,
      /not a duration/,
    ],
    [
      'an empty groupsSeparator',
      `${base}  groupsSeparator: ''\n`,
      /identity.groupsSeparator: must not be empty/,
    ],
    [
      'a groupsSeparator of letters',
      `${base}  groupsSeparator: or\n`,
      /identity.groupsSeparator: must not be made of letters or digits only/,
    ],
    [
      'a groupsSeparator that is not a string',
      `${base}  groupsSeparator: [',']\n`,
      /identity.groupsSeparator: expected a string/,
    ],
    ['broken YAML', `identity: [\n`, /gatehouse.yaml:\d+:\d+: /],
    ['a duplicate key', `${base}identity: {}\n`, /gatehouse.yaml:4:1: Map keys must be unique/],
  ])('refuses %s', async (_name, text, message) => {
    const file = await write('gatehouse.yaml', text);
    const all = await issues(loadConfig(file));
    expect(all.join('\n')).toMatch(message);
    for (const line of all) expect(line).toMatch(/^.+:\d+:\d+: /);
  });

  it('accepts identity.groupsSeparator, also on the policy check path (absent: undefined)', async () => {
    expect((await loadConfig(await write('gatehouse.yaml', base))).identity.groupsSeparator).toBe(
      undefined,
    );
    await write('policy.yaml', 'rules: []\n');
    const file = await write(
      'gatehouse.yaml',
      `${base}  groupsSeparator: ","\npolicies: [./policy.yaml]\n`,
    );
    expect((await loadConfig(file)).identity.groupsSeparator).toBe(',');
    // `gatehouse policy check` validates through loadGateway.
    const { config } = await loadGateway(file);
    expect(config.identity.groupsSeparator).toBe(',');
  });

  it('resolves secrets from env and file, and names the reference, never a value, when missing', async () => {
    process.env.GH_UNIT_SECRET = 's3cret';
    expect(await resolveSecret({ env: 'GH_UNIT_SECRET' }, dir, 'target x')).toBe('s3cret');
    await write('pw.txt', 'from-file\n');
    expect(await resolveSecret({ file: 'pw.txt' }, dir, 'target x')).toBe('from-file');
    const missing = resolveSecret({ env: 'GH_UNIT_NOT_SET' }, dir, 'target x');
    await expect(missing).rejects.toBeInstanceOf(GovernanceError);
    await expect(missing).rejects.toMatchObject({
      code: 'TARGET_ERROR',
      message:
        'credentials for target x are not available: environment variable GH_UNIT_NOT_SET is not set',
    });
  });
});

describe('policy files', () => {
  it('collects every problem across files as file:line:col lines', async () => {
    const a = await write(
      'policies/a.yaml',
      `rules:
  - id: one
    effect: allow
    mask: [nope]
`,
    );
    const c = await write('policies/c.yaml', `rules:\n  - id: two\n    effect: maybe\n`);
    const b = await write('policies/b.yaml', `rules:\n  - id: one\n    effect: deny\n`);
    const all = await issues(
      loadPolicies([path.join(dir, 'policies/*.yaml')], path.join(dir, 'gatehouse.yaml')),
    );
    expect(all).toContainEqual(expect.stringMatching(new RegExp(`^${c}:3:13: rules.0.effect: `)));
    expect(all).toContainEqual(
      `${b}:2:9: rules.0.id: duplicate rule id "one" (first defined at ${a}:2:9)`,
    );
    expect(all).toContainEqual(`${a}:4:12: rules.0.mask.0: unknown masking profile "nope"`);
  });

  it('says when a pattern matches no file', async () => {
    const all = await issues(loadPolicies([path.join(dir, 'none/*.yaml')], 'gatehouse.yaml'));
    expect(all[0]).toMatch(/matches no file/);
  });
});

describe('units', () => {
  it.each([
    ['500ms', 500],
    ['10s', 10_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['0s', undefined],
    ['10', undefined],
    ['-1s', undefined],
  ])('duration %s', (text, ms) => expect(parseDuration(text)).toBe(ms));
  it.each([
    ['64KiB', 65536],
    ['1MiB', 1048576],
    ['100', 100],
    ['1XB', undefined],
  ])('size %s', (text, bytes) => expect(parseSize(text)).toBe(bytes));
});
