import { z } from 'zod';
import type {
  ElicitRequestFormParams,
  ElicitResult,
  ToolAnnotations,
} from '@modelcontextprotocol/sdk/types.js';
import type { CallPart, Decision, Principal, ResolvedLimits } from '../policies/engine.js';
import type { ColumnOrigin, Lineage } from '../policies/masking.js';
import { GovernanceError } from '../server/kernel/errors.js';
import { head } from '../server/kernel/text.js';

/**
 * The optional `reason` every governed tool takes (CONTRACT section 3): the agent's stated
 * purpose, shown to approvers and written to the audit line. Bounded: it reaches forms,
 * webhooks and every audit line of the call.
 */
export const CallReason = z
  .string()
  .min(1)
  .max(1_000)
  .describe(
    'Why you are making this call, in one sentence: shown to a human approver and kept in the audit log',
  );

/**
 * A governed tool is data plus two functions: `describe` says what a call really does (for
 * policy), `execute` does it. Executors never see config or policy: they get the target with
 * credentials already resolved (by the tool's target kind, tools/kinds.ts), the limits, the
 * caller and an AbortSignal.
 *
 * `I` is the parsed input, `P` the tool's own plan (what describe found that execute needs,
 * e.g. the SQL in another form), `T` the resolved target.
 */
export interface ToolDefinition<I, P, T> {
  readonly name: string;
  readonly title: string;
  readonly description: string;
  readonly inputSchema: z.ZodType<I>;
  readonly outputSchema: z.ZodType;
  readonly annotations: ToolAnnotations;
  /** Operations a policy can grant on this tool (shown by list_targets). */
  readonly operations: readonly string[];
  /**
   * Every tag describe() can put on a part (`unbounded`, `sleep`): policy files are checked
   * against it, so a rule on a misspelt tag is refused instead of never matching.
   */
  readonly tags: readonly string[];
  /** Parse and classify: what the call does. Throws GovernanceError('INVALID_INPUT') on bad input. */
  describe(input: I): Promise<CallDescription<P>>;
  execute(input: I, ctx: ExecContext<T, P>): Promise<ToolOutput>;
}

export interface CallDescription<P = unknown> {
  /** The target the call names; null for a tool that answers from the gateway itself. */
  target: string | null;
  parts: CallPart[];
  /** What the audit log records as `input`: the call's own text, never a secret. */
  auditInput: unknown;
  /**
   * Why the tool cannot run this call whatever policy says (e.g. several statements):
   * policy still decides first, and an allowed call is then refused with INVALID_INPUT.
   */
  refusal?: string;
  /** The tool's own notes from describe for execute. */
  plan: P;
  /**
   * Where the call's result values come from, when the tool can tell (SQL): masking then
   * follows them through expressions, and refuses conditions on masked columns.
   */
  lineage?: Lineage;
}

export interface ExecContext<T, P> extends RunContext {
  target: T;
  plan: P;
}

/** What an executor hands back, before masking and rendering. */
export type ToolOutput =
  | {
      kind: 'rows';
      columns: Array<ColumnOrigin & { type: string }>;
      rows: unknown[][];
      rowCount: number;
      truncated: boolean;
      operation: string;
    }
  | {
      kind: 'text';
      structured: Record<string, unknown>;
      /** Fields of `structured` that carry target output and must pass through masking. */
      maskedFields: string[];
      bytes: number;
      exitCode?: number | null;
    }
  | {
      /** The gateway's own answer (list_targets, explain): no target data, nothing to mask. */
      kind: 'gateway';
      structured: Record<string, unknown>;
    };

/**
 * How a tool's target name becomes the resolved target for one call, with the secrets used
 * (the pipeline scrubs them from whatever comes back).
 */
export type TargetResolver<T> = (
  name: string | null,
) => Promise<{ target: T; secrets: readonly string[] }>;

/**
 * A tool as the registry holds it: its types closed over, so the pipeline moves a call from
 * stage to stage without casts. parse -> describe -> open -> run.
 */
export interface RegisteredTool {
  readonly name: string;
  readonly title: string;
  readonly description: string;
  readonly inputSchema: z.ZodType;
  readonly outputSchema: z.ZodType;
  readonly annotations: ToolAnnotations;
  readonly operations: readonly string[];
  readonly tags: readonly string[];
  /** The target kind this tool runs against; null for the gateway's own tools. */
  readonly targetKind: string | null;
  /**
   * `policy`: the policy engine decides every call. `builtin`: always allowed, because the
   * tool only reveals what this identity may do (list_targets, explain).
   */
  readonly decidedBy: 'policy' | 'builtin';
  /** `at`: where the arguments sit in the caller's request, for error texts (`input`). */
  parse(args: unknown, at?: string): ParsedCall;
}

export interface ParsedCall {
  readonly input: unknown;
  describe(): Promise<DescribedCall>;
}

export interface DescribedCall {
  readonly description: CallDescription<unknown>;
  /** Resolve the target (credentials) for this call. */
  open(): Promise<OpenCall>;
}

export interface OpenCall {
  readonly secrets: readonly string[];
  run(ctx: RunContext): Promise<ToolOutput>;
}

export interface RunContext {
  limits: ResolvedLimits;
  signal: AbortSignal;
  principal: Principal;
  /** Whether the result will pass through masking (a tool may skip work masking alone needs). */
  masked: boolean;
  /**
   * Ask the calling client's human with an elicitation form; absent when the client did not
   * declare the capability (a tool must then not ask, and say so).
   */
  elicit?: (
    params: ElicitRequestFormParams,
    options: { signal: AbortSignal; timeoutMs: number },
  ) => Promise<ElicitResult>;
  /**
   * The deciding rule's id, so a limit's error text can name the rule
   * (`TIMEOUT: ... time limit of 5s (rule analysts-read)`).
   */
  rule: string;
}

/**
 * A tool definition bound to how its targets resolve: the one place a tool's generic types
 * meet the registry.
 */
export function bindTool<I, P, T>(
  def: ToolDefinition<I, P, T>,
  binding: {
    targetKind: string | null;
    resolve: TargetResolver<T>;
    decidedBy?: 'policy' | 'builtin';
  },
): RegisteredTool {
  return {
    name: def.name,
    title: def.title,
    description: def.description,
    inputSchema: def.inputSchema,
    outputSchema: def.outputSchema,
    annotations: def.annotations,
    operations: def.operations,
    tags: def.tags,
    targetKind: binding.targetKind,
    decidedBy: binding.decidedBy ?? 'policy',
    parse(args, at) {
      const input = parseInput(def.inputSchema, args, at);
      return {
        input,
        async describe() {
          const description = await def.describe(input);
          return {
            description,
            async open() {
              const { target, secrets } = await binding.resolve(description.target);
              return {
                secrets,
                run: (ctx) => def.execute(input, { ...ctx, target, plan: description.plan }),
              };
            },
          };
        },
      };
    },
  };
}

/**
 * A tool's input against its schema: INVALID_INPUT naming the first few problems, each at its
 * path (under `at` when the arguments are nested in a request, as explain's `input` is).
 */
export function parseInput<I>(schema: z.ZodType<I>, args: unknown, at?: string): I {
  const r = schema.safeParse(args ?? {});
  if (!r.success) {
    const detail = r.error.issues
      .slice(0, 5)
      .map((i) => {
        const where = [...(at ? [at] : []), ...i.path.map(String)].join('.');
        return `${where ? where + ': ' : ''}${i.message}`;
      })
      .join('; ');
    // zod quotes unknown keys: the text stays short whatever the caller sent.
    throw new GovernanceError('INVALID_INPUT', head(detail, 1000));
  }
  return r.data;
}

/**
 * What the gateway's own tools (list_targets, explain) see of it: the one decision path and
 * the engine's allowed operations, never config secrets or connections.
 */
export interface GatewayView {
  readonly targets: ReadonlyArray<{ name: string; kind: string; description?: string }>;
  readonly tools: () => readonly RegisteredTool[];
  /**
   * The decision a call would get: the same function the real call goes through. `at` names
   * where the arguments sit in the asker's request, for error texts.
   */
  decide(principal: Principal, tool: string, args: unknown, at?: string): Promise<DecidedCall>;
  allowedOperations(
    principal: Principal,
    tool: string,
    target: string,
    candidates: readonly string[],
  ): Array<{ operation: string; effect: 'allow' | 'approve' }>;
}

export interface DecidedCall {
  readonly tool: RegisteredTool;
  readonly parsed: ParsedCall;
  readonly described: DescribedCall;
  readonly decision: Decision;
}
