import {
  DEFAULT_LIMITS,
  type Decision,
  type PolicyEngine,
  type Principal,
} from '../policies/engine.js';
import {
  maskingComputationLeak,
  maskingConditionLeak,
  type MaskProfile,
} from '../policies/masking.js';
import type { ToolRegistry } from '../tools/registry.js';
import type {
  CallDescription,
  DecidedCall,
  DescribedCall,
  ParsedCall,
  RegisteredTool,
} from '../tools/types.js';
import type { DiscoveredColumns } from './discovery.js';
import { GovernanceError } from './kernel/errors.js';
import { head } from './kernel/text.js';

/**
 * The one decision path: (identity, tool, input) -> decision. The real call (server/pipeline.ts),
 * the `explain` tool, `gatehouse policy explain` and `gatehouse policy test` all go through
 * these functions, so what explain says is what the call gets.
 */
export class DecisionPoint {
  constructor(
    readonly tools: ToolRegistry,
    readonly engine: PolicyEngine,
    /** Tools the contract names that a later release serves (`ssh_exec`, `kubectl`). */
    private readonly laterTools: ReadonlySet<string>,
    /** The kind of a configured target, by name (undefined: no such target). */
    private readonly kindOf: (target: string) => string | undefined,
    /** The policies' masking profiles, by name: a rule that masks refuses conditions on them. */
    private readonly profiles: Readonly<Record<string, MaskProfile>> = {},
    /** The PII columns found per target, for profiles with `discover: true` (live gateways). */
    private readonly discovery?: DiscoveredColumns,
  ) {}

  /** The profiles a decision names, with the columns discovery found on the target added. */
  profilesFor(names: readonly string[], target: string | null): MaskProfile[] {
    return names.flatMap((n) => {
      const p = Object.hasOwn(this.profiles, n) ? this.profiles[n] : undefined;
      if (!p) return [];
      if (!p.discover || !this.discovery || target === null) return [p];
      return [{ ...p, columns: [...p.columns, ...this.discovery.columns(target)] }];
    });
  }

  /** The tool by name; INVALID_INPUT for an unknown one, or one this release does not serve. */
  find(name: string): RegisteredTool {
    const tool = this.tools.get(name);
    if (tool) return tool;
    throw new GovernanceError(
      'INVALID_INPUT',
      this.laterTools.has(name)
        ? `tool ${name} is not available in this release of Gatehouse`
        : `unknown tool ${JSON.stringify(name)}`,
    );
  }

  /** Parse the arguments against the tool's schema (INVALID_INPUT when they do not fit). */
  parse(tool: RegisteredTool, args: unknown, at?: string): ParsedCall {
    return tool.parse(args, at);
  }

  /**
   * What the call really does (the tool's classifier), on a target that exists and is of the
   * tool's kind: a name that is not configured is `unknown target`, for the call, explain and
   * the CLI alike, rather than a policy denial that hides the typo.
   */
  async describe(tool: RegisteredTool, parsed: ParsedCall): Promise<DescribedCall> {
    const described = await parsed.describe();
    const target = described.description.target;
    if (this.discovery && tool.targetKind !== null && target !== null && this.kindOf(target)) {
      await this.discovery.warm(target);
    }
    if (tool.targetKind !== null && target !== null) {
      const kind = this.kindOf(target);
      // The name as the caller sent it, made well-formed (the text reaches the audit chain).
      const name = JSON.stringify(head(target, 256));
      if (kind === undefined) {
        throw new GovernanceError('INVALID_INPUT', `unknown target ${name}`);
      }
      if (kind !== tool.targetKind) {
        throw new GovernanceError(
          'INVALID_INPUT',
          `target ${name} is of kind ${kind}; ${tool.name} works on ${tool.targetKind} targets`,
        );
      }
    }
    return described;
  }

  /**
   * Policy's answer for a described call. A call the rules let through under masking that
   * filters, joins or orders on a masked column is denied by that rule: masking hides values
   * in the result, and a condition on one reveals it anyway, one question at a time
   * (`WHERE password LIKE 'a%'`).
   */
  decide(principal: Principal, tool: RegisteredTool, description: CallDescription): Decision {
    if (tool.decidedBy === 'builtin') return builtinDecision(tool.name);
    const decision = this.engine.decide({
      principal,
      tool: tool.name,
      target: description.target,
      parts: description.parts,
    });
    if (decision.effect === 'deny' || decision.mask.length === 0 || !description.lineage) {
      return decision;
    }
    const profiles = this.profilesFor(decision.mask, description.target);
    const leak = maskingConditionLeak(profiles, description.lineage);
    if (leak) {
      return {
        ...decision,
        effect: 'deny',
        reason:
          `the statement filters, joins, orders, groups or counts rows by ${leak}, which reveals it bit by bit ` +
          'whatever the result shows (the rule masks it)',
      };
    }
    const computes = maskingComputationLeak(profiles, description.lineage);
    if (computes) {
      return {
        ...decision,
        effect: 'deny',
        reason:
          `the statement computes on ${computes}: whether a computation fails, how long it runs and how ` +
          'large its result is can each answer a question about the value (the rule masks it, with computed: deny)',
      };
    }
    return decision;
  }

  /** All of it at once: what explain, `policy explain` and `policy test` ask. */
  async call(principal: Principal, name: string, args: unknown, at?: string): Promise<DecidedCall> {
    const tool = this.find(name);
    const parsed = this.parse(tool, args, at);
    const described = await this.describe(tool, parsed);
    return {
      tool,
      parsed,
      described,
      decision: this.decide(principal, tool, described.description),
    };
  }
}

function builtinDecision(tool: string): Decision {
  return {
    effect: 'allow',
    rule: 'builtin',
    reason: `${tool} only reveals what this identity may do`,
    mask: [],
    limits: DEFAULT_LIMITS,
    operation: 'read',
  };
}
