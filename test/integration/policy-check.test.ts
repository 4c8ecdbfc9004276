import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { runCli } from '../helpers/cli.js';

/**
 * Issue #8 items 1-4, as a new user met them: `gatehouse policy check` said `ok` for
 * `tags: [unbound]`, `tools: [postgres-query]`, `operations: [reads]` and `targets: [shopdb]`,
 * and `policy explain` then allowed the DELETE the deny was written for. Now the mistakes are
 * named at their line, and no command runs on such a policy. The real CLI, in a child process,
 * against files in a temp dir; no database.
 */

/** The CLI with no token in its environment. */
const gatehouse = (args: string[], env: Record<string, string> = {}) =>
  runCli(args, { GATEHOUSE_TOKEN: '', ...env });

/** The user's policy: an allow for staff writes, and a deny on unbounded ones, misspelt. */
const typos = `rules:
  - id: staff-write
    match: { groups: [staff], tools: [postgres_query], targets: [shop-db], operations: [read, write] }
    effect: allow
  - id: no-unbounded-deletes
    match:
      tools: [postgres-query]
      targets: [shopdb]
      tags: [unbound]
    effect: deny
  - id: everyone-reads
    match: { tools: [postgres_query], operations: [reads] }
    effect: allow
`;

const fixed = typos
  .replace('[postgres-query]', '[postgres_query]')
  .replace('[shopdb]', '[shop-db]')
  .replace('[unbound]', '[unbounded]')
  .replace('[reads]', '[read]');

const PASSWORD_ENV = 'GH_POLICY_CHECK_PASSWORD';

/** gatehouse.yaml with one postgres target per name, and the given policy files. */
const configText = (targets: string[], policies: string[]) =>
  stringify({
    identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
    targets: Object.fromEntries(
      targets.map((name) => [
        name,
        {
          kind: 'postgres',
          host: '127.0.0.1',
          database: 'app',
          user: 'reader',
          password: { env: PASSWORD_ENV },
        },
      ]),
    ),
    policies,
  });

const deleteAll = JSON.stringify({ target: 'shop-db', sql: 'DELETE FROM orders' });

describe('issue #8: policy mistakes do not fail open', { timeout: 90_000 }, () => {
  let dir: string;
  const at = (name: string) => path.join(dir, name);

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-policy-check-'));
    await writeFile(at('typos.yaml'), typos);
    await writeFile(at('fixed.yaml'), fixed);
    await writeFile(at('typos-gatehouse.yaml'), configText(['shop-db'], ['./typos.yaml']));
    await writeFile(at('fixed-gatehouse.yaml'), configText(['shop-db'], ['./fixed.yaml']));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('policy check names each of the four typos at its line and fails (exit 1, CONTRACT 1)', async () => {
    const r = await gatehouse(['policy', 'check', '--config', at('typos-gatehouse.yaml')], {
      [PASSWORD_ENV]: 'long-enough-password',
    });
    const file = at('typos.yaml');
    expect(r.stdout.trimEnd().split('\n')).toEqual([
      `${file}:7:15: rules.1.match.tools.0: tool "postgres-query" matches no tool (did you mean "postgres_query"?)`,
      `${file}:9:14: rules.1.match.tags.0: no tool has tag "unbound" (did you mean "unbounded"?)`,
      `${file}:12:52: rules.2.match.operations.0: postgres_query has no operation "reads" (did you mean "read"?)`,
    ]);
    // A target that matches nothing is a warning: printed, on stderr, beside the errors.
    expect(r.stderr).toBe(
      `gatehouse: warning: ${file}:8:17: rules.1.match.targets.0: target "shopdb" matches no target in the config (did you mean "shop-db"?)\n`,
    );
    expect(r.status).toBe(1);
  });

  it('policy explain no longer allows the DELETE: the config does not load (exit 2)', async () => {
    const explain = (config: string) =>
      gatehouse([
        ...['policy', 'explain', '--config', at(config), '--sub', 'sam', '--group', 'staff'],
        ...['--tool', 'postgres_query', '--input', deleteAll],
      ]);
    const [typo, ok] = await Promise.all([
      explain('typos-gatehouse.yaml'),
      explain('fixed-gatehouse.yaml'),
    ]);
    expect(typo.stdout).toBe('');
    expect(typo.stderr).toMatch(/^gatehouse: .*typos\.yaml:9:14: .*"unbound"/m);
    expect(typo.stderr).toMatch(/typos\.yaml:7:15: .*"postgres-query"/);
    expect(typo.stderr).toMatch(/typos\.yaml:12:52: .*"reads"/);
    expect(typo.status).toBe(2);
    // Spelt right, the deny does what it was written for.
    expect(JSON.parse(ok.stdout)).toMatchObject({ effect: 'deny', rule: 'no-unbounded-deletes' });
    expect(ok.status).toBe(1);
  });

  it('policy test refuses to run on them too (exit 2)', async () => {
    const r = await gatehouse(['policy', 'test', '--config', at('typos-gatehouse.yaml')]);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/typos\.yaml:9:14: rules\.1\.match\.tags\.0: /);
    expect(r.status).toBe(2);
  });

  it('secrets: an unset one warns (exit 0), a short one fails; neither value is printed', async () => {
    const config = at('fixed-gatehouse.yaml');
    const [unset, short] = await Promise.all([
      gatehouse(['policy', 'check', '--config', config]),
      gatehouse(['policy', 'check', '--config', config], { [PASSWORD_ENV]: 'hunter2' }),
    ]);
    expect(unset.stdout).toBe('ok: 3 rules in 1 file, 1 target, 0 tests\n');
    expect(unset.stderr).toBe(
      `gatehouse: warning: ${config}:12:7: targets.shop-db.password: environment variable ${PASSWORD_ENV} is not set\n`,
    );
    expect(unset.status).toBe(0);
    expect(short.stdout).toBe(
      `${config}:12:7: targets.shop-db.password: environment variable ${PASSWORD_ENV} is shorter than 8 characters (the gateway refuses it)\n`,
    );
    expect(short.stdout + short.stderr).not.toContain('hunter2');
    expect(short.status).toBe(1);
  });
});

/**
 * Issue #8 item 4: the sample policy in README.md's Policies section passes its own tests,
 * through the loader, the checks above and `gatehouse policy test`.
 */
describe("README's sample policy", { timeout: 90_000 }, () => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Policies\n'));
  const policiesSection = section.slice(0, section.indexOf('\n## ', 1));
  const samples = [...policiesSection.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1]!)
    .filter((text) => {
      const doc = parse(text) as Record<string, unknown> | null;
      return doc !== null && typeof doc === 'object' && ('rules' in doc || 'tests' in doc);
    });
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-readme-policy-'));
    const files = await Promise.all(
      samples.map(async (text, i) => {
        await writeFile(path.join(dir, `sample-${i}.yaml`), text);
        return `./sample-${i}.yaml`;
      }),
    );
    // The sample's rules name `app-*` and its tests `app-db`.
    await writeFile(path.join(dir, 'gatehouse.yaml'), configText(['app-db'], files));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('is found, with tests', () => {
    expect(samples.length).toBeGreaterThan(0);
    const tests = samples.flatMap((t) => (parse(t) as { tests?: unknown[] }).tests ?? []);
    expect(tests.length).toBeGreaterThanOrEqual(4);
  });

  it('passes policy check without a finding, and policy test with every test', async () => {
    const config = path.join(dir, 'gatehouse.yaml');
    const env = { [PASSWORD_ENV]: 'long-enough-password' };
    const [check, test] = await Promise.all([
      gatehouse(['policy', 'check', '--config', config], env),
      gatehouse(['policy', 'test', '--config', config], env),
    ]);
    expect(check.stderr).toBe('');
    expect(check.stdout).toMatch(/^ok: /);
    expect(check.status).toBe(0);
    const count = samples.flatMap((t) => (parse(t) as { tests?: unknown[] }).tests ?? []).length;
    expect(test.stdout).not.toMatch(/not ok/);
    expect(test.stdout).toMatch(new RegExp(`^${count} passed, 0 failed$`, 'm'));
    expect(test.stderr).toBe('');
    expect(test.status).toBe(0);
  });
});
