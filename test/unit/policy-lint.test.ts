import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadPolicies } from '../../policies/load.js';
import { loadConfig } from '../../server/config.js';
import { ConfigError } from '../../server/kernel/errors.js';
import {
  checkSecrets,
  formatFinding,
  lintGateway,
  PolicyMistakes,
} from '../../server/policy-lint.js';
import { loadGateway } from '../../server/runtime.js';
import { classifySql, SQL_TAGS } from '../../tools/postgres/classify.js';

/**
 * Issue #8 items 1-3: a policy mistake must not fail open. A rule on a tool, operation or tag
 * that does not exist is valid YAML that never matches, so a deny written that way allowed
 * what it was meant to stop; such rules are refused at `file:line:col` with the name meant.
 */

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-lint-'));
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

const pgTarget = (password: Record<string, string> = { env: 'GH_LINT_NEVER_SET' }) => ({
  kind: 'postgres',
  host: '127.0.0.1',
  database: 'shop',
  user: 'reader',
  password,
});

async function writeConfig(extra: Record<string, unknown> = {}): Promise<string> {
  return write(
    'gatehouse.yaml',
    stringify({
      identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
      targets: { 'shop-db': pgTarget(), 'app-db': pgTarget() },
      policies: ['./policy.yaml'],
      ...extra,
    }),
  );
}

/** The findings for one policy file (text as written, so lines and columns are known). */
async function lint(policy: string): Promise<{ file: string; lines: string[] }> {
  const file = await write('policy.yaml', policy);
  const config = await loadConfig(await writeConfig());
  const policies = await loadPolicies(config.policies, config.file);
  return { file, lines: lintGateway(config, policies).map(formatFinding) };
}

describe('the four mistakes of issue #8', () => {
  it('tags: [unbound], tools: [postgres-query], operations: [reads], targets: [shopdb]', async () => {
    const { file, lines } = await lint(
      `rules:
  - id: no-unbounded
    match: { tools: [postgres_query], tags: [unbound] }
    effect: deny
  - id: shop-read
    match:
      tools: [postgres-query]
      operations: [reads]
      targets: [shopdb]
    effect: allow
`,
    );
    expect(lines).toEqual([
      `${file}:3:46: rules.0.match.tags.0: postgres_query has no tag "unbound" (did you mean "unbounded"?)`,
      `${file}:7:15: rules.1.match.tools.0: tool "postgres-query" matches no tool (did you mean "postgres_query"?)`,
      `${file}:8:20: rules.1.match.operations.0: no tool has operation "reads" (did you mean "read"?)`,
      `warning: ${file}:9:17: rules.1.match.targets.0: target "shopdb" matches no target in the config (did you mean "shop-db"?)`,
    ]);
  });

  it('loadGateway (policy check, policy test, policy explain, serve) refuses them', async () => {
    await write(
      'policy.yaml',
      `rules:
  - id: no-unbounded
    match: { tools: [postgres_query], tags: [unbound] }
    effect: deny
  - id: read
    match: { tools: [postgres_query], targets: [shopdb], operations: [read] }
    effect: allow
`,
    );
    const err: unknown = await loadGateway(await writeConfig()).catch((e: unknown) => e);
    // A config error (exit 2 from serve, policy test and explain; 1 from policy check) whose
    // issues are the errors, carrying the warnings for policy check to print beside them.
    expect(err).toBeInstanceOf(ConfigError);
    expect(err).toBeInstanceOf(PolicyMistakes);
    expect((err as ConfigError).issues).toEqual([
      expect.stringMatching(/policy\.yaml:3:46: rules\.0\.match\.tags\.0: .*"unbound"/),
    ]);
    expect((err as PolicyMistakes).warnings.map(formatFinding)).toEqual([
      expect.stringMatching(/^warning: .*policy\.yaml:6:49: rules\.1\.match\.targets\.0: /),
    ]);
  });

  it('warnings alone do not stop a config from loading; they come back to the caller', async () => {
    await write(
      'policy.yaml',
      `rules:
  - id: read
    match: { tools: [postgres_query], targets: [shopdb], operations: [read] }
    effect: allow
`,
    );
    const { warnings } = await loadGateway(await writeConfig());
    expect(warnings.map(formatFinding)).toEqual([
      expect.stringMatching(
        /^warning: .*policy\.yaml:3:49: rules\.0\.match\.targets\.0: target "shopdb" matches no target in the config \(did you mean "shop-db"\?\)$/,
      ),
    ]);
  });
});

describe('a correct policy gives no findings', () => {
  it('rules on every kind of name, globs included', async () => {
    const { lines } = await lint(
      `rules:
  - id: analysts-read
    match: { groups: [analysts], subjects: ["svc-*"], tools: [postgres_query], targets: [app-*], operations: [read] }
    effect: allow
  - id: no-unbounded
    match: { tools: ["postgres_*"], tags: [unbounded, sleep] }
    effect: deny
  - id: no-ddl
    match: { operations: [ddl, admin, unknown] }
    effect: deny
  - id: own-tools
    match: { tools: [list_targets, explain], operations: [read] }
    effect: allow
  - id: later-tools
    match: { tools: [kubectl, ssh_exec], operations: [delete, rm, shell] }
    effect: deny
  - id: everything
    match: { tools: ["*"], targets: ["*"] }
    effect: deny
tests:
  - name: t
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "SELECT 1" } }
    expect: { effect: deny, rule: everything }
  - name: builtin names
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "SELECT 1" } }
    expect: { effect: deny, rule: default-deny }
`,
    );
    expect(lines).toEqual([]);
  });
});

describe('tools', () => {
  it.each([
    ['postgres-query', 'tool "postgres-query" matches no tool (did you mean "postgres_query"?)'],
    ['Postgres_Query', 'tool "Postgres_Query" matches no tool (did you mean "postgres_query"?)'],
    ['postgres_qeury', 'tool "postgres_qeury" matches no tool (did you mean "postgres_query"?)'],
    ['list-targets', 'tool "list-targets" matches no tool (did you mean "list_targets"?)'],
    ['kubctl', 'tool "kubctl" matches no tool (did you mean "kubectl"?)'],
    ['postgres-*', 'tool glob "postgres-*" matches no tool (did you mean "postgres_query"?)'],
    ['*-query', 'tool glob "*-query" matches no tool (did you mean "postgres_query"?)'],
    [
      'mysql_*',
      'tool glob "mysql_*" matches no tool; tools are list_targets, explain, postgres_query, ssh_exec, kubectl',
    ],
  ])('%s', async (tool, message) => {
    const { file, lines } = await lint(
      `rules:\n  - id: r\n    match: { tools: ["${tool}"] }\n    effect: deny\n`,
    );
    expect(lines).toEqual([`${file}:3:22: rules.0.match.tools.0: ${message}`]);
  });

  it('points at the one item of a list that matches nothing', async () => {
    const { file, lines } = await lint(
      `rules:
  - id: r
    match:
      tools:
        - postgres_query
        - "ssh_*"
        - kubect1
    effect: deny
`,
    );
    expect(lines).toEqual([
      `${file}:7:11: rules.0.match.tools.2: tool "kubect1" matches no tool (did you mean "kubectl"?)`,
    ]);
  });
});

describe('operations and tags, per tool', () => {
  const one = async (match: string) => {
    const { file, lines } = await lint(
      `rules:\n  - id: r\n    match: ${match}\n    effect: deny\n`,
    );
    return lines.map((l) => l.replace(`${file}:3:`, ''));
  };

  it('an operation no tool named by the rule has', async () => {
    expect(await one('{ tools: [list_targets], operations: [write] }')).toEqual([
      '50: rules.0.match.operations.0: list_targets has no operation "write"; operations are read',
    ]);
    expect(await one('{ tools: [kubectl], operations: [remove] }')).toEqual([
      '45: rules.0.match.operations.0: kubectl has no operation "remove"; operations are read, write, delete, exec, secret-read',
    ]);
    expect(await one('{ tools: [postgres_query], operations: [delete] }')).toEqual([
      '52: rules.0.match.operations.0: postgres_query has no operation "delete"; operations are read, write, ddl, admin, unknown',
    ]);
    expect(await one('{ tools: [postgres_query, kubectl], operations: [Write, delete] }')).toEqual([
      '61: rules.0.match.operations.0: postgres_query, kubectl have no operation "Write" (did you mean "write"?)',
    ]);
  });

  it('a rule without tools: an operation no tool has', async () => {
    expect(await one('{ operations: [reads] }')).toEqual([
      '27: rules.0.match.operations.0: no tool has operation "reads" (did you mean "read"?)',
    ]);
    expect(await one('{ operations: [secret-read, ddl] }')).toEqual([]);
  });

  it("ssh_exec's program names: any name in a rule that names ssh_exec, none without", async () => {
    expect(await one('{ tools: [ssh_exec], operations: [ls, systemctl, shell] }')).toEqual([]);
    expect(await one('{ tools: ["ssh_*"], operations: [rm] }')).toEqual([]);
    expect(await one('{ operations: [rm] }')).toEqual([
      '27: rules.0.match.operations.0: no tool has operation "rm"; operations are read, write, ddl, admin, unknown, delete, exec, secret-read (a program name of ssh_exec needs that tool in the rule\'s tools)',
    ]);
  });

  it('a tag no tool named by the rule has', async () => {
    expect(await one('{ tags: [unbound] }')).toEqual([
      '21: rules.0.match.tags.0: no tool has tag "unbound" (did you mean "unbounded"?)',
    ]);
    expect(await one('{ tools: [postgres_query], tags: [Sleep] }')).toEqual([
      '46: rules.0.match.tags.0: postgres_query has no tag "Sleep" (did you mean "sleep"?)',
    ]);
    expect(await one('{ tools: [kubectl], tags: [unbounded] }')).toEqual([
      '39: rules.0.match.tags.0: kubectl has no tag "unbounded"; they have no tags',
    ]);
    expect(await one('{ tags: [unbounded] }')).toEqual([]);
  });

  it('a misspelt tool does not hide a misspelt operation: both are named', async () => {
    expect(await one('{ tools: [postgres], operations: [reads] }')).toEqual([
      '22: rules.0.match.tools.0: tool "postgres" matches no tool; tools are list_targets, explain, postgres_query, ssh_exec, kubectl',
      '46: rules.0.match.operations.0: no tool has operation "reads" (did you mean "read"?)',
    ]);
  });
});

describe('targets: a warning, not an error', () => {
  it.each([
    ['shopdb', 'target "shopdb" matches no target in the config (did you mean "shop-db"?)'],
    ['prod-*', 'target glob "prod-*" matches no target in the config'],
    ['shop_*', 'target glob "shop_*" matches no target in the config (did you mean "shop-db"?)'],
  ])('%s', async (target, message) => {
    const { file, lines } = await lint(
      `rules:\n  - id: r\n    match: { targets: ["${target}"] }\n    effect: deny\n`,
    );
    expect(lines).toEqual([`warning: ${file}:3:24: rules.0.match.targets.0: ${message}`]);
  });

  it('a glob that matches a configured target is fine', async () => {
    const { lines } = await lint(
      `rules:\n  - id: r\n    match: { targets: ["*-db", "shop-?b", "[sa]*"] }\n    effect: deny\n`,
    );
    expect(lines).toEqual([]);
  });

  it('subjects and groups are not checked: tokens name them, not the config', async () => {
    const { lines } = await lint(
      `rules:\n  - id: r\n    match: { subjects: [nobody-at-all], groups: [nothing] }\n    effect: deny\n`,
    );
    expect(lines).toEqual([]);
  });
});

describe('approval blocks', () => {
  const rule = (approval: string) =>
    `rules:\n  - id: r\n    match: { tools: [postgres_query] }\n    effect: approve\n    approval: ${approval}\n`;

  it('approvers that name nobody are an error', async () => {
    const { file, lines } = await lint(rule('{ approvers: {} }'));
    expect(lines).toEqual([
      `${file}:5:28: rules.0.approval.approvers: approvers needs at least one group or subject (or approvers: client)`,
    ]);
  });

  it('a wait longer than clients wait for a tool call is a warning: hold, or the in-band timeout', async () => {
    const held = await lint(rule('{ approvers: { groups: [dba] }, hold: 90s }'));
    expect(held.lines).toEqual([
      expect.stringMatching(
        /^warning: .*:5:53: rules\.0\.approval\.hold: one tool call waits up to 90s .* keep hold under 55s/,
      ),
    ]);
    const inBand = await lint(rule('{ approvers: client, timeout: 5m }'));
    expect(inBand.lines).toEqual([
      expect.stringMatching(
        /rules\.0\.approval\.timeout: one tool call waits up to 5m .*whole timeout/,
      ),
    ]);
    // A long timeout with a short hold is what out-of-band approvals are for.
    expect(
      (await lint(rule('{ approvers: { groups: [dba] }, timeout: 2h, hold: 30s }'))).lines,
    ).toEqual([]);
  });
});

describe('tests: the rule a test expects', () => {
  it('must be a rule of the loaded policies, default-deny or builtin', async () => {
    const { file, lines } = await lint(
      `rules:
  - id: no-ddl
    match: { operations: [ddl] }
    effect: deny
tests:
  - name: drop
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "DROP TABLE t" } }
    expect: { effect: deny, rule: no_ddl }
  - name: other
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "DROP TABLE t" } }
    expect: { effect: deny, rule: defaultdeny }
  - name: none
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "DROP TABLE t" } }
    expect: { effect: deny, rule: somewhere-else }
`,
    );
    expect(lines).toEqual([
      `${file}:9:35: tests.0.expect.rule: no rule "no_ddl" in the loaded policies (did you mean "no-ddl"?)`,
      `${file}:13:35: tests.1.expect.rule: no rule "defaultdeny" in the loaded policies (did you mean "default-deny"?)`,
      `${file}:17:35: tests.2.expect.rule: no rule "somewhere-else" in the loaded policies`,
    ]);
  });

  it('a rule of another loaded file counts', async () => {
    await write('rules.yaml', `rules:\n  - id: elsewhere\n    effect: deny\n`);
    await write(
      'policy.yaml',
      `tests:
  - name: t
    identity: { sub: alice }
    call: { tool: postgres_query, input: { target: app-db, sql: "SELECT 1" } }
    expect: { effect: deny, rule: elsewhere }
`,
    );
    const config = await loadConfig(
      await writeConfig({ policies: ['./policy.yaml', './rules.yaml'] }),
    );
    const policies = await loadPolicies(config.policies, config.file);
    expect(lintGateway(config, policies)).toEqual([]);
  });
});

describe('masking names (refused by the loader itself)', () => {
  const loadIssues = async (policy: string) => {
    const file = await write('policy.yaml', policy);
    const err: unknown = await loadPolicies([file], path.join(dir, 'gatehouse.yaml')).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    return { file, issues: (err as ConfigError).issues };
  };

  it('an unknown detector, with the one meant', async () => {
    const { file, issues } = await loadIssues(
      `masking:\n  pii:\n    detectors: [email, creditcard, phnoe, ssh]\n`,
    );
    expect(issues).toEqual([
      `${file}:3:24: masking.pii.detectors.1: unknown detector "creditcard" (did you mean "credit_card"?)`,
      `${file}:3:36: masking.pii.detectors.2: unknown detector "phnoe" (did you mean "phone"?)`,
      `${file}:3:43: masking.pii.detectors.3: unknown detector "ssh" (did you mean "ssn"?)`,
    ]);
  });

  it('an unknown masking profile, with the one meant', async () => {
    const { file, issues } = await loadIssues(
      `rules:\n  - id: r\n    effect: allow\n    mask: [PII]\nmasking:\n  pii: { detectors: [email] }\n`,
    );
    expect(issues).toEqual([
      `${file}:4:12: rules.0.mask.0: unknown masking profile "PII" (did you mean "pii"?)`,
    ]);
  });
});

describe('secrets (policy check)', () => {
  const envs = ['GH_LINT_SHORT', 'GH_LINT_LONG', 'GH_LINT_HMAC'];
  afterEach(() => {
    for (const e of envs) delete process.env[e];
  });

  it('says which are missing (warning) or too short (error), never their value', async () => {
    process.env.GH_LINT_HMAC = '';
    process.env.GH_LINT_SHORT = 'hunter2';
    process.env.GH_LINT_LONG = 'a-long-enough-secret';
    await write('policy.yaml', 'rules: []\n');
    await write('short.key', 'tiny\n');
    const file = await write(
      'gatehouse.yaml',
      `identity:
  audience: gatehouse
  issuer: https://idp.example.com/
  algorithms: [HS256]
  hmacSecret: { env: GH_LINT_HMAC }
targets:
  shop-db:
    kind: postgres
    host: 127.0.0.1
    database: shop
    user: reader
    password: { env: SHOP_DB_PASSWORD_NOT_SET }
  short-db:
    kind: postgres
    host: 127.0.0.1
    database: shop
    user: reader
    password: { env: GH_LINT_SHORT }
  ok-db:
    kind: postgres
    host: 127.0.0.1
    database: shop
    user: reader
    password: { env: GH_LINT_LONG }
  web-1:
    kind: ssh
    host: 127.0.0.1
    user: deploy
    privateKey: { file: ./no-such-key }
    hostKey: "ssh-ed25519 AAAA"
  prod:
    kind: kubernetes
    kubeconfig: { file: short.key }
policies: [./policy.yaml]
`,
    );
    const findings = (await checkSecrets(await loadConfig(file))).map(formatFinding);
    expect(findings).toEqual([
      `warning: ${file}:12:15: targets.shop-db.password: environment variable SHOP_DB_PASSWORD_NOT_SET is not set`,
      `${file}:18:15: targets.short-db.password: environment variable GH_LINT_SHORT is shorter than 8 characters (the gateway refuses it)`,
      `warning: ${file}:29:17: targets.web-1.privateKey: file ./no-such-key cannot be read (ENOENT)`,
      `${file}:33:17: targets.prod.kubeconfig: file short.key is shorter than 8 characters (the gateway refuses it)`,
      `warning: ${file}:5:15: identity.hmacSecret: environment variable GH_LINT_HMAC is empty`,
    ]);
    const text = findings.join('\n');
    expect(text).not.toContain('hunter2');
    expect(text).not.toContain('tiny');
    expect(text).not.toContain('a-long-enough-secret');
  });
});

describe('the tags postgres_query declares', () => {
  const corpus = ['sql.jsonl', 'sql-extra.jsonl'].flatMap((name) =>
    readFileSync(new URL(`../corpus/${name}`, import.meta.url), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as { sql: string; expect: string; tags?: string[] }),
  );

  it('the classifier never emits a tag outside SQL_TAGS over the corpus', async () => {
    const seen = new Set<string>();
    for (const c of corpus) {
      if (c.expect === 'invalid') continue;
      const r = await classifySql(c.sql);
      for (const t of [...r.tags, ...r.statements.flatMap((s) => s.tags)]) seen.add(t);
    }
    expect([...seen].filter((t) => !(SQL_TAGS as readonly string[]).includes(t))).toEqual([]);
    // The corpus does exercise the tags, so the check above is not vacuous.
    expect([...seen].sort()).toEqual([...SQL_TAGS].sort());
  });

  it('every tag the corpus expects is declared', () => {
    const expected = corpus.flatMap((c) => c.tags ?? []);
    expect(expected.length).toBeGreaterThan(0);
    for (const t of expected) expect(SQL_TAGS).toContain(t);
  });
});

describe('custom masking patterns', () => {
  it('a pattern that is not supported fails the load at its line, saying why', async () => {
    const file = await write(
      'policy.yaml',
      `masking:
  ids:
    patterns:
      employee_id: '\\bEMP-\\d{6}\\b'
      badge: '(?<=B)\\d+'
`,
    );
    const config = await loadConfig(await writeConfig());
    const err = await loadPolicies(config.policies, config.file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain(`${file}:5:14`);
    expect((err as Error).message).toMatch(/masking pattern badge .*lookaround/);
  });

  it('a well-formed one loads', async () => {
    await write('policy.yaml', `masking:\n  ids:\n    patterns: { employee_id: 'EMP-\\d{6}' }\n`);
    const config = await loadConfig(await writeConfig());
    const policies = await loadPolicies(config.policies, config.file);
    expect(policies.profiles.ids?.patterns).toEqual({ employee_id: 'EMP-\\d{6}' });
  });
});
