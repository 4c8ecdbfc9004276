import { compileGlobs } from './glob.js';
import type { Approval, Limits, Match, Rule } from './schema.js';
import { skeleton } from './skeleton.js';

/**
 * The decision engine (CONTRACT section 5). Pure: facts in, decision out, no I/O.
 *
 * Default deny. For each part of a call (a statement, a piped command) the matching rules are
 * combined deny > approve > allow; the call gets its strictest part's decision, so an allowed
 * `ls` cannot carry a denied `rm` through a pipe.
 *
 * Who is calling (subject, groups, claims) is matched in two ways. Allow rules match exactly:
 * a look-alike must not gain an allow meant for someone else. Deny and approve rules match
 * exactly OR on look-alike skeletons (policies/skeleton.ts), so `Mallory`, `mallоry` with a
 * Cyrillic о or `mal\u200Blory` cannot dodge a deny on `mallory`. An approve rule that
 * matches only through a skeleton can turn an allow into an approval, never a default deny
 * into one: a human approver shown a look-alike name is the very person it is made to fool.
 */

export type Effect = 'allow' | 'deny' | 'approve';

export interface Principal {
  sub: string;
  groups: readonly string[];
  claims: Readonly<Record<string, unknown>>;
}

/** One thing a call does, as the tool's classifier proved it. */
export interface CallPart {
  operation: string;
  tags: readonly string[];
  /** One line on what this part does, e.g. "statement is ddl (DropStmt)". */
  reason: string;
  resource?: string;
  namespace?: string;
  argv?: readonly string[];
}

export interface CallFacts {
  principal: Principal;
  tool: string;
  target: string | null;
  parts: readonly CallPart[];
}

export interface ResolvedLimits {
  maxRows: number;
  timeoutMs: number;
  maxOutputBytes: number;
}

/**
 * Limits when no rule sets them, chosen for a model's context: 200 rows and 256 KiB are more
 * than an agent reads usefully in one answer, and a rule can raise them (up to what a rule
 * says; the tightest rule that lets a call through wins).
 */
export const DEFAULT_LIMITS: ResolvedLimits = Object.freeze({
  maxRows: 200,
  timeoutMs: 30_000,
  maxOutputBytes: 256 * 1024,
});

export interface Decision {
  effect: Effect;
  /** The deciding rule's id, or `default-deny`. */
  rule: string;
  reason: string;
  /** Masking profiles to apply (union over the rules that let the call through). */
  mask: string[];
  limits: ResolvedLimits;
  approval?: Approval & { rule: string };
  /** The operations of all parts, for audit and display. */
  operation: string;
}

const STRICTNESS: Record<Effect, number> = { allow: 0, approve: 1, deny: 2 };

/** The caller's names as look-alike skeletons, worked out once per decision. */
interface Folded {
  sub: string;
  groups: ReadonlySet<string>;
}

type MatchTest = (facts: CallFacts, part: CallPart, folded?: Folded) => boolean;

export class PolicyEngine {
  private readonly compiled: Array<{ rule: Rule; test: MatchTest }>;

  constructor(readonly rules: readonly Rule[]) {
    this.compiled = rules.map((rule) => ({
      rule,
      test: compileMatch(rule.match, rule.effect !== 'allow'),
    }));
  }

  decide(facts: CallFacts): Decision {
    const operation = [...new Set(facts.parts.map((p) => p.operation))].join(',') || 'none';
    if (facts.parts.length === 0) {
      return {
        effect: 'deny',
        rule: 'default-deny',
        reason: 'the call does nothing the policy can judge',
        mask: [],
        limits: DEFAULT_LIMITS,
        operation,
      };
    }
    let worst:
      | { effect: Effect; rule: string; reason: string; approval?: Approval & { rule: string } }
      | undefined;
    const contributing: Rule[] = [];
    const folded: Folded = {
      sub: skeleton(facts.principal.sub),
      // A group name with spaces or commas in it (an IdP's string claim, unsplit without
      // identity.groupsSeparator) is also each of its pieces, for deny and approve only.
      groups: new Set(
        facts.principal.groups
          .flatMap((g) => [g, ...g.split(/[\s,;]+/)])
          .map(skeleton)
          .filter((g) => g !== ''),
      ),
    };
    for (const part of facts.parts) {
      const exact = this.compiled.filter((c) => c.test(facts, part)).map((c) => c.rule);
      const loose = this.compiled
        .filter((c) => c.rule.effect !== 'allow' && c.test(facts, part, folded))
        .map((c) => c.rule);
      const allow = exact.find((r) => r.effect === 'allow');
      const pick =
        loose.find((r) => r.effect === 'deny') ??
        exact.find((r) => r.effect === 'approve') ??
        (allow && loose.find((r) => r.effect === 'approve')) ??
        allow;
      // Rules that let the call through: exact allows and approvals, and look-alike approvals
      // (their masks and limits can only tighten).
      const matching = [...new Set([...exact, ...loose])];
      const partDecision = pick
        ? {
            effect: pick.effect,
            rule: pick.id,
            reason: part.reason,
            ...(pick.approval ? { approval: { ...pick.approval, rule: pick.id } } : {}),
          }
        : {
            effect: 'deny' as const,
            rule: 'default-deny',
            reason: `no rule allows ${facts.tool} ${part.operation}${facts.target ? ` on ${facts.target}` : ''} (${part.reason})`,
          };
      contributing.push(...matching.filter((r) => r.effect !== 'deny'));
      if (!worst || STRICTNESS[partDecision.effect] > STRICTNESS[worst.effect])
        worst = partDecision;
    }
    // worst is set: parts is non-empty.
    const final = worst!;
    return {
      ...final,
      mask: final.effect === 'deny' ? [] : [...new Set(contributing.flatMap((r) => r.mask ?? []))],
      limits: mergeLimits(contributing.map((r) => r.limits)),
      operation,
    };
  }

  /**
   * Operations this principal may use on a target with a tool, and whether each needs an
   * approval (list_targets). Asked per operation with no tags: a rule that denies only some
   * statements of an operation (`tags: [unbounded]`) still leaves the operation listed.
   */
  allowedOperations(
    principal: Principal,
    tool: string,
    target: string,
    candidates: readonly string[],
  ): Array<{ operation: string; effect: 'allow' | 'approve' }> {
    return candidates.flatMap((operation) => {
      const d = this.decide({
        principal,
        tool,
        target,
        parts: [{ operation, tags: [], reason: operation }],
      });
      return d.effect === 'deny' ? [] : [{ operation, effect: d.effect }];
    });
  }
}

function mergeLimits(list: ReadonlyArray<Limits | undefined>): ResolvedLimits {
  // The tightest limit of any rule that let the call through wins.
  const pick = (values: Array<number | undefined>, fallback: number) => {
    const set = values.filter((v): v is number => v !== undefined);
    return set.length ? Math.min(...set) : fallback;
  };
  return {
    maxRows: pick(
      list.map((l) => l?.maxRows),
      DEFAULT_LIMITS.maxRows,
    ),
    timeoutMs: pick(
      list.map((l) => l?.timeout),
      DEFAULT_LIMITS.timeoutMs,
    ),
    maxOutputBytes: pick(
      list.map((l) => l?.maxOutputBytes),
      DEFAULT_LIMITS.maxOutputBytes,
    ),
  };
}

function globs(patterns: readonly string[] | undefined): ((s: string) => boolean) | undefined {
  return patterns ? compileGlobs(patterns) : undefined;
}

function getPath(obj: Readonly<Record<string, unknown>>, dotted: string): unknown {
  let cur: unknown = obj;
  for (const key of dotted.split('.')) {
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

type ClaimValue = string | number | boolean | string[];

/** Any-of on both sides; `fold` compares strings by look-alike skeleton as well. */
function claimMatches(actual: unknown, expected: ClaimValue, fold: boolean): boolean {
  const wanted = Array.isArray(expected) ? expected : [expected];
  const have = Array.isArray(actual) ? actual : [actual];
  return wanted.some((w) =>
    have.some(
      (h) =>
        h === w ||
        (fold && typeof h === 'string' && typeof w === 'string' && skeleton(h) === skeleton(w)),
    ),
  );
}

/**
 * One rule's match as a test. Called without `folded` it matches exactly; with it (only for
 * deny and approve rules, `loose`), subject, groups and claims also match on look-alike
 * skeletons of both the rule's names and the caller's. Tools, targets, operations and the
 * rest always match exactly: they are checked against the gateway's own names, and a
 * look-alike target or tool simply does not exist.
 */
function compileMatch(match: Match, loose: boolean): MatchTest {
  const subjects = globs(match.subjects);
  const foldedSubjects =
    loose && match.subjects ? compileGlobs(match.subjects.map(skeleton)) : undefined;
  const foldedGroups = loose && match.groups ? match.groups.map(skeleton) : undefined;
  const targets = globs(match.targets);
  const tools = globs(match.tools);
  const resources = globs(match.resources);
  const namespaces = globs(match.namespaces);
  const commands = globs(match.commands);
  return (facts, part, folded) => {
    const p = facts.principal;
    const fold = folded !== undefined && loose;
    // Exact OR folded: a glob's classes and `?` work on characters that folding can merge or
    // split, so the folded match alone could miss what the exact one catches.
    if (subjects && !subjects(p.sub) && !(fold && foldedSubjects!(folded.sub))) return false;
    if (
      match.groups &&
      !match.groups.some((g) => p.groups.includes(g)) &&
      !(fold && foldedGroups!.some((g) => folded.groups.has(g)))
    ) {
      return false;
    }
    if (
      match.claims &&
      !Object.entries(match.claims).every(([k, v]) => claimMatches(getPath(p.claims, k), v, fold))
    ) {
      return false;
    }
    if (tools && !tools(facts.tool)) return false;
    // A rule that names targets never matches a call without one.
    if (targets && (facts.target === null || !targets(facts.target))) return false;
    if (match.operations && !match.operations.includes(part.operation)) return false;
    if (match.tags && !match.tags.some((t) => part.tags.includes(t))) return false;
    if (resources && (part.resource === undefined || !resources(part.resource))) return false;
    if (namespaces && (part.namespace === undefined || !namespaces(part.namespace))) return false;
    if (commands && (part.argv === undefined || !commands(part.argv.join(' ')))) return false;
    return true;
  };
}
