import { formatDuration } from './kernel/units.js';
import { AWAIT_APPROVAL } from '../tools/await_approval/definition.js';
import { z } from 'zod';
import { compileGlobs } from '../policies/glob.js';
import type { PolicySet } from '../policies/load.js';
import type { TargetKind } from '../tools/kind.js';
import { TARGET_KINDS } from '../tools/kinds.js';
import type { ToolRegistry } from '../tools/registry.js';
import type { GatehouseConfig } from './config.js';
import { openGateway, SECRET_MIN_LENGTH, targetSecretRefs } from './gateway.js';
import { ConfigError } from './kernel/errors.js';
import { describeSecretRef, resolveSecret } from './kernel/secrets.js';
import { loadYamlFile, nearest } from './kernel/yaml.js';

/**
 * Policy mistakes that the schema cannot see, because they are about the gateway's own names:
 * a rule on `tags: [unbound]`, `tools: [postgres-query]` or `operations: [reads]` is valid YAML
 * that never matches, so a deny written that way lets through what it was written to stop.
 * Those are errors; a `targets` glob that matches no configured target is a warning (the
 * target may be added later, and an allow that matches nothing grants nothing). Subjects and
 * groups come from tokens, so there is nothing to check them against.
 *
 * The policy engine stays pure: this module reads the loaded rules, the tool registry and the
 * config, and returns findings, each at the list item it is about (`file:line:col`).
 */

export interface Finding {
  readonly level: 'error' | 'warning';
  /** `file:line:col: key.path` */
  readonly where: string;
  readonly message: string;
}

/** One line per finding, as `gatehouse policy check` prints it. */
export function formatFinding(f: Finding): string {
  return `${f.level === 'warning' ? 'warning: ' : ''}${f.where}: ${f.message}`;
}

/** What a policy may name of a tool. `any`: the contract leaves the names open. */
interface ToolNames {
  readonly operations: readonly string[] | 'any';
  readonly tags: readonly string[] | 'any';
}

/**
 * Tools the contract names (CONTRACT sections 3-4) that this release does not serve: their
 * rules are accepted now, checked against what the contract says they will classify.
 * `ssh_exec`'s operations are the program names of the command line (and `shell`), so any
 * name goes; the contract names no tags for either.
 */
const LATER_TOOLS: Readonly<Record<string, ToolNames>> = {
  kubectl: { operations: ['read', 'write', 'delete', 'exec', 'secret-read'], tags: [] },
  ssh_exec: { operations: 'any', tags: [] },
};
const OPEN_LATER: ToolNames = { operations: 'any', tags: 'any' };

/** Rule ids a test may expect that no policy file defines. */
const BUILTIN_RULES = new Set(['default-deny', 'builtin']);

/** The tools a policy can name: the registry's, then the ones a later release serves. */
export function knownTools(
  tools: ToolRegistry,
  laterTools: ReadonlySet<string>,
): ReadonlyMap<string, ToolNames> {
  const known = new Map<string, ToolNames>();
  for (const t of tools.values()) {
    // await_approval is decided as the held call it stands for: a rule naming it matches nothing.
    if (t.name !== AWAIT_APPROVAL) known.set(t.name, { operations: t.operations, tags: t.tags });
  }
  for (const name of laterTools) {
    if (!known.has(name)) known.set(name, LATER_TOOLS[name] ?? OPEN_LATER);
  }
  return known;
}

/** How long an MCP client is known to wait for one tool call (with a margin). */
const CLIENT_PATIENCE_MS = 55_000;

/** Check every rule and test of the loaded policies against the tools and the config. */
export function lintPolicies(
  policies: PolicySet,
  tools: ReadonlyMap<string, ToolNames>,
  config: Pick<GatehouseConfig, 'targets'>,
): Finding[] {
  const findings: Finding[] = [];
  const toolNames = [...tools.keys()];
  const targetNames = Object.keys(config.targets);

  for (const { rule, index, source } of policies.rules) {
    const at = (key: string, j: number) => ({
      where: `${source.locate(['rules', index, 'match', key, j])}: rules.${index}.match.${key}.${j}`,
    });
    const m = rule.match;

    // A tool call that waits longer than its client does is answered to nobody: clients drop
    // a call after about a minute (Claude Desktop; the SDK's default request timeout).
    const approval = rule.approval;
    if (approval) {
      const waits =
        approval.approvers === 'client'
          ? { ms: approval.timeout, key: 'timeout' }
          : { ms: Math.min(approval.hold, approval.timeout), key: 'hold' };
      if (waits.ms > CLIENT_PATIENCE_MS) {
        findings.push({
          level: 'warning',
          where: `${source.locate(['rules', index, 'approval', waits.key])}: rules.${index}.approval.${waits.key}`,
          message:
            `one tool call waits up to ${formatDuration(waits.ms)} for the approval, and most MCP clients drop a call after about 60 s` +
            (approval.approvers === 'client'
              ? ' (with approvers: client the form is open for the whole timeout)'
              : '; keep hold under 55s, the agent continues with await_approval'),
        });
      }
    }

    // Approvers by name must name someone: an empty list could never be answered.
    const approvers = rule.approval?.approvers;
    if (
      approvers !== undefined &&
      approvers !== 'client' &&
      (approvers.groups?.length ?? 0) + (approvers.subjects?.length ?? 0) === 0
    ) {
      findings.push({
        level: 'error',
        where: `${source.locate(['rules', index, 'approval', 'approvers'])}: rules.${index}.approval.approvers`,
        message: 'approvers needs at least one group or subject (or approvers: client)',
      });
    }

    // Tools: each name or glob must match a tool.
    const named = new Set<string>();
    (m.tools ?? []).forEach((pattern, j) => {
      const matched = toolNames.filter(compileGlobs([pattern]));
      matched.forEach((t) => named.add(t));
      if (matched.length > 0) return;
      const what = isGlob(pattern) ? 'tool glob' : 'tool';
      const near = suggest(pattern, toolNames);
      findings.push({
        level: 'error',
        ...at('tools', j),
        message:
          `${what} ${JSON.stringify(pattern)} matches no tool` +
          (near ? didYouMean(near) : `; tools are ${toolNames.join(', ')}`),
      });
    });

    // Operations and tags: per tool. A rule that names tools may use what one of them has; a
    // rule that names none (or only misspelt ones), what some tool with a closed list has.
    const explicit = named.size > 0;
    const scope = explicit ? [...named] : toolNames;
    for (const key of ['operations', 'tags'] as const) {
      const lists = scope.map((t) => tools.get(t)![key]);
      const open = explicit && lists.includes('any');
      const have = [...new Set(lists.flatMap((l) => (l === 'any' ? [] : l)))];
      const noun = key === 'operations' ? 'operation' : 'tag';
      (m[key] ?? []).forEach((name, j) => {
        if (open || have.includes(name)) return;
        const near = nearest(name, have);
        const whose = explicit
          ? `${[...named].join(', ')} ${named.size === 1 ? 'has' : 'have'} no ${noun}`
          : `no tool has ${noun}`;
        const known =
          have.length === 0
            ? `; ${explicit ? 'they have' : 'there are'} no ${key}`
            : `; ${key} are ${have.join(', ')}`;
        // ssh_exec's program names are operations too, but only in a rule that names it:
        // otherwise `operations: [reads]` with no tools would pass for a program name.
        const anyOps = toolNames.filter((t) => tools.get(t)!.operations === 'any');
        const openHint =
          !explicit && key === 'operations' && anyOps.length > 0
            ? ` (a program name of ${anyOps.join(', ')} needs that tool in the rule's tools)`
            : '';
        findings.push({
          level: 'error',
          ...at(key, j),
          message: `${whose} ${JSON.stringify(name)}${near ? didYouMean(near) : known + openHint}`,
        });
      });
    }

    // Targets: a glob that matches no configured target.
    (m.targets ?? []).forEach((pattern, j) => {
      if (targetNames.some(compileGlobs([pattern]))) return;
      const near = suggest(pattern, targetNames);
      findings.push({
        level: 'warning',
        ...at('targets', j),
        message:
          `${isGlob(pattern) ? 'target glob' : 'target'} ${JSON.stringify(pattern)} matches no target in the config` +
          (near ? didYouMean(near) : ''),
      });
    });
  }

  // Tests: an expected rule that no loaded file defines.
  const ruleIds = policies.rules.map((r) => r.rule.id);
  for (const { test, index, source } of policies.tests) {
    const expected = test.expect.rule;
    if (expected === undefined || BUILTIN_RULES.has(expected) || ruleIds.includes(expected))
      continue;
    const near = nearest(expected, [...ruleIds, ...BUILTIN_RULES]);
    findings.push({
      level: 'error',
      where: `${source.locate(['tests', index, 'expect', 'rule'])}: tests.${index}.expect.rule`,
      message:
        `no rule ${JSON.stringify(expected)} in the loaded policies` +
        (near ? didYouMean(near) : ''),
    });
  }
  return findings;
}

/**
 * The policies against the gateway a config would open: its tools come from the same kinds,
 * opened offline (nothing connects), so what is checked is what would serve.
 */
export function lintGateway(
  config: GatehouseConfig,
  policies: PolicySet,
  kinds: readonly TargetKind[] = TARGET_KINDS,
): Finding[] {
  const gateway = openGateway(config, policies.engine, { live: false, kinds });
  // Offline kinds hold nothing open; closed anyway, in case one ever does.
  void gateway.close();
  return lintPolicies(policies, knownTools(gateway.tools, gateway.laterTools), config);
}

/**
 * Policy mistakes that stop a config from loading: a ConfigError (each error one issue line,
 * exit 2, or 1 from `policy check`) that also carries the warnings, for `policy check` to show.
 */
export class PolicyMistakes extends ConfigError {
  constructor(
    readonly errors: readonly Finding[],
    readonly warnings: readonly Finding[],
  ) {
    const issues = errors.map(formatFinding);
    super(issues[0] ?? 'policy mistakes', issues);
    this.name = 'PolicyMistakes';
  }
}

/** Throw PolicyMistakes when there is an error among the findings; else the warnings. */
export function refuseErrors(findings: readonly Finding[]): Finding[] {
  const errors = findings.filter((f) => f.level === 'error');
  const warnings = findings.filter((f) => f.level === 'warning');
  if (errors.length > 0) throw new PolicyMistakes(errors, warnings);
  return warnings;
}

/**
 * Every secret the config refers to (each target's, by its kind, and identity.hmacSecret),
 * resolved as the gateway would: one that is not set is a warning (it may be set only where
 * the gateway runs), one shorter than SECRET_MIN_LENGTH an error (the gateway refuses to
 * start with it). Names the reference, never the value.
 */
export async function checkSecrets(
  config: GatehouseConfig,
  kinds: readonly TargetKind[] = TARGET_KINDS,
): Promise<Finding[]> {
  const { locate } = await loadYamlFile(config.file, z.unknown());
  const refs = targetSecretRefs(config, kinds);
  const hmac = config.identity.hmacSecret;
  if (hmac) refs.push({ path: ['identity', 'hmacSecret'], ref: hmac });

  const findings: Finding[] = [];
  for (const { path, ref } of refs) {
    const where = `${locate(path)}: ${path.join('.')}`;
    let value: string;
    try {
      value = await resolveSecret(ref, config.dir, path.join('.'));
    } catch (err) {
      findings.push({ level: 'warning', where, message: unreadable(ref, err) });
      continue;
    }
    if (value.length < SECRET_MIN_LENGTH) {
      findings.push({
        level: 'error',
        where,
        message: `${describeSecretRef(ref)} is shorter than ${SECRET_MIN_LENGTH} characters (the gateway refuses it)`,
      });
    }
  }
  return findings;
}

function unreadable(ref: Parameters<typeof describeSecretRef>[0], err: unknown): string {
  if ('env' in ref)
    return `${describeSecretRef(ref)} ${process.env[ref.env] === '' ? 'is empty' : 'is not set'}`;
  const code = (err as { cause?: { code?: unknown } }).cause?.code;
  return `${describeSecretRef(ref)} cannot be read${typeof code === 'string' ? ` (${code})` : ''}`;
}

// --- Names -------------------------------------------------------------------------------

const GLOB_CHARS = /[*?[]/;

function isGlob(pattern: string): boolean {
  return GLOB_CHARS.test(pattern);
}

const loose = (k: string): string => k.toLowerCase().replace(/[-_]/g, '');

/**
 * The known name a pattern most likely meant. A plain name: the nearest one (case, `_`/`-`,
 * two edits). A glob: a name holding each of its literal parts up to case, `_` and `-`
 * (`postgres-*` for postgres_query), else the nearest to its longest literal part.
 */
function suggest(pattern: string, names: readonly string[]): string | undefined {
  if (!isGlob(pattern)) return nearest(pattern, names);
  const parts = pattern
    .split(/\*|\?|\[[^\]]*\]/)
    .map(loose)
    .filter((p) => p !== '');
  if (parts.length === 0) return undefined;
  const holding = names.find((n) => parts.every((p) => loose(n).includes(p)));
  if (holding !== undefined) return holding;
  const longest = pattern.split(/\*|\?|\[[^\]]*\]/).sort((a, b) => b.length - a.length)[0]!;
  return nearest(longest, names);
}

function didYouMean(name: string): string {
  return ` (did you mean "${name}"?)`;
}
