import path from 'node:path';
import { glob } from 'tinyglobby';
import { ConfigError } from '../server/kernel/errors.js';
import { loadYamlFile, nearest } from '../server/kernel/yaml.js';
import { PolicyEngine } from './engine.js';
import { PolicyFile, type PolicyTest, type Rule } from './schema.js';
import type { MaskProfile } from './masking.js';

/** A loaded policy file: its path, and where a key path of it sits (`file:line:col`). */
export interface PolicySource {
  readonly file: string;
  /** A path that is not in the file is reported at its nearest parent. */
  readonly locate: (path: readonly PropertyKey[]) => string;
}

export interface PolicySet {
  readonly engine: PolicyEngine;
  readonly profiles: Readonly<Record<string, MaskProfile>>;
  readonly tests: ReadonlyArray<{
    file: string;
    test: PolicyTest;
    where: string;
    /** Its index under `tests:` of its source, to point at its keys. */
    index: number;
    source: PolicySource;
  }>;
  readonly files: readonly string[];
  /**
   * Each rule with its file and index under `rules:`, so that checks against the gateway's
   * own names (server/policy-lint.ts) can point at the list item that is wrong.
   */
  readonly rules: ReadonlyArray<{ rule: Rule; index: number; source: PolicySource }>;
}

/**
 * Load every policy file the config names. All problems are collected (not just the first),
 * each as `file:line:col: message`, so `gatehouse policy check` shows them in one pass.
 */
export async function loadPolicies(
  patterns: readonly string[],
  configFile: string,
): Promise<PolicySet> {
  const issues: string[] = [];
  const files: string[] = [];
  for (const pattern of patterns) {
    const found = (await glob(toPosix(pattern), { absolute: true, onlyFiles: true })).sort();
    if (found.length === 0) issues.push(`${configFile}:1:1: policies: ${pattern} matches no file`);
    files.push(...found.filter((f) => !files.includes(f)));
  }
  const rules: Array<PolicySet['rules'][number]> = [];
  const ruleWhere = new Map<string, string>();
  const profiles: Record<string, MaskProfile> = {};
  const tests: Array<PolicySet['tests'][number]> = [];
  const maskRefs: Array<{ name: string; where: string }> = [];

  for (const file of files) {
    let parsed;
    try {
      parsed = await loadYamlFile(file, PolicyFile);
    } catch (err) {
      if (err instanceof ConfigError) {
        issues.push(...err.issues);
        continue;
      }
      throw err;
    }
    const { value, locate } = parsed;
    const source: PolicySource = { file, locate };
    value.rules.forEach((rule, i) => {
      const where = locate(['rules', i, 'id']);
      const seen = ruleWhere.get(rule.id);
      if (seen)
        issues.push(
          `${where}: rules.${i}.id: duplicate rule id "${rule.id}" (first defined at ${seen})`,
        );
      else ruleWhere.set(rule.id, where);
      rules.push({ rule, index: i, source });
      (rule.mask ?? []).forEach((name, j) =>
        maskRefs.push({ name, where: `${locate(['rules', i, 'mask', j])}: rules.${i}.mask.${j}` }),
      );
    });
    for (const [name, profile] of Object.entries(value.masking)) {
      if (profiles[name])
        issues.push(`${locate(['masking', name])}: masking.${name}: defined twice`);
      profiles[name] = profile;
    }
    value.tests.forEach((test, i) =>
      tests.push({ file, test, where: locate(['tests', i]), index: i, source }),
    );
  }
  for (const ref of maskRefs) {
    if (profiles[ref.name]) continue;
    const near = nearest(ref.name, Object.keys(profiles));
    const hint = near === undefined ? '' : ` (did you mean "${near}"?)`;
    issues.push(`${ref.where}: unknown masking profile "${ref.name}"${hint}`);
  }
  if (issues.length > 0) throw new ConfigError(issues[0]!, issues);
  return Object.freeze({
    engine: new PolicyEngine(rules.map((r) => r.rule)),
    profiles,
    tests,
    files,
    rules,
  });
}

function toPosix(p: string): string {
  return p.split(path.sep).join('/');
}
