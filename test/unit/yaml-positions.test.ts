import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { loadPolicies } from '../../policies/load.js';
import { loadConfig } from '../../server/config.js';
import { ConfigError } from '../../server/kernel/errors.js';
import { nearest, parseYamlText } from '../../server/kernel/yaml.js';

/**
 * Issue #8 item 5: a config error points at the line to fix. An unknown key is reported at
 * the key itself (not where its mapping starts) with the nearest valid key; any other problem
 * at the value it is about.
 */

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-yaml-pos-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const write = async (name: string, text: string): Promise<string> => {
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

// Line numbers matter below: targets.shop-db starts on line 6, its keys on 7 to 14.
const config = (targetExtra: string, topExtra = ''): string =>
  `identity:
  audience: gatehouse
  devIssuer: { keyFile: keys/dev.json }
policies: []
targets:
  shop-db:
    kind: postgres
    description: the shop
    host: 127.0.0.1
    port: 5432
    database: shop
    user: reader
    password: { env: SHOP_DB_PASSWORD }
${targetExtra}${topExtra}`;

describe('config error positions', () => {
  it('a typo nested under a target: at the key, with the key it meant', async () => {
    const file = await write('gatehouse.yaml', config('    poolsize: 4\n'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:14:5: targets.shop-db: unknown key "poolsize" (did you mean "poolSize"?)`,
    ]);
  });

  it('a top-level typo: at the key, not at 1:1', async () => {
    const file = await write('gatehouse.yaml', config('', 'audt:\n  file: audit.jsonl\n'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:14:1: unknown key "audt" (did you mean "audit"?)`,
    ]);
  });

  it('several unknown keys in one mapping: one line each, at each key', async () => {
    const file = await write('gatehouse.yaml', config('    pool_size: 4\n    Ssl: require\n'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:14:5: targets.shop-db: unknown key "pool_size" (did you mean "poolSize"?)`,
      `${file}:15:5: targets.shop-db: unknown key "Ssl" (did you mean "ssl"?)`,
    ]);
  });

  it('the suggestion comes from the target kind the document names', async () => {
    // hostKey exists for ssh targets only: the walk follows `kind: ssh`.
    const file = await write(
      'gatehouse.yaml',
      config(
        '',
        `  web-1:
    kind: ssh
    host: 127.0.0.1
    user: deploy
    privateKey: { file: key }
    hostkey: "ssh-ed25519 AAAA"
`,
      ),
    );
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:15:5: targets.web-1.hostKey: Invalid input: expected string, received undefined`,
      `${file}:19:5: targets.web-1: unknown key "hostkey" (did you mean "hostKey"?)`,
    ]);
  });

  it('a key with no close match: no suggestion', async () => {
    const file = await write('gatehouse.yaml', config('    frobnicate: true\n'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:14:5: targets.shop-db: unknown key "frobnicate"`,
    ]);
  });

  it('a wrong type at a nested path: at the value', async () => {
    const file = await write('gatehouse.yaml', config('').replace('port: 5432', 'port: "5432"'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:10:11: targets.shop-db.port: Invalid input: expected number, received string`,
    ]);
  });

  it('an empty value: at its key', async () => {
    const file = await write('gatehouse.yaml', config('', 'audit:\n'));
    expect(await issues(loadConfig(file))).toEqual([
      `${file}:14:1: audit: Invalid input: expected object, received null`,
    ]);
  });
});

describe('policy file error positions', () => {
  it('a typo in a rule: operation for operations', async () => {
    const file = await write(
      'policies/p.yaml',
      `rules:
  - id: reads
    effect: allow
    match:
      groups: [analysts]
      operation: [read]
`,
    );
    expect(await issues(loadPolicies([file], path.join(dir, 'gatehouse.yaml')))).toEqual([
      `${file}:6:7: rules.0.match: unknown key "operation" (did you mean "operations"?)`,
    ]);
  });

  it('a typo inside a union (approvers as a mapping)', async () => {
    const file = await write(
      'policies/p.yaml',
      `rules:
  - id: writes
    effect: approve
    approval:
      approvers: { group: [dba] }
`,
    );
    expect(await issues(loadPolicies([file], path.join(dir, 'gatehouse.yaml')))).toEqual([
      `${file}:5:20: rules.0.approval.approvers: unknown key "group" (did you mean "groups"?)`,
    ]);
  });
});

describe('parseYamlText with any schema', () => {
  it('walks records, arrays, defaults and pipes to the mapping', () => {
    const schema = z.strictObject({
      items: z
        .record(
          z.string(),
          z.array(z.strictObject({ name: z.string(), maxCount: z.number() })).default([]),
        )
        .pipe(z.any()),
    });
    const text = `items:\n  a:\n    - name: x\n      maxcount: 1\n      maxCount: 1\n`;
    expect(() => parseYamlText('f.yaml', text, schema)).toThrow(
      expect.objectContaining({
        issues: ['f.yaml:4:7: items.a.0: unknown key "maxcount"'],
      }) as Error,
    );
    const misspelt = `items:\n  a:\n    - name: x\n      maxcount: 1\n`;
    expect(() => parseYamlText('f.yaml', misspelt, schema)).toThrow(
      expect.objectContaining({
        issues: [
          'f.yaml:3:7: items.a.0.maxCount: Invalid input: expected number, received undefined',
          'f.yaml:4:7: items.a.0: unknown key "maxcount" (did you mean "maxCount"?)',
        ],
      }) as Error,
    );
  });

  it.each<[string, string[], string | undefined]>([
    ['poolsize', ['poolSize', 'port'], 'poolSize'],
    ['pool-size', ['poolSize'], 'poolSize'],
    ['audt', ['audit', 'state'], 'audit'],
    ['polices', ['policies'], 'policies'],
    ['hsot', ['host'], 'host'],
    ['host', ['port'], undefined],
    ['id', ['ssl'], undefined],
    ['frobnicate', ['poolSize', 'port'], undefined],
  ])('nearest(%j)', (key, valid, expected) => {
    expect(nearest(key, valid)).toBe(expected);
  });
});
