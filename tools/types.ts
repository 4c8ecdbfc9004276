import type { z } from 'zod';
import type { ToolAnnotations } from '@modelcontextprotocol/sdk/types.js';
import type { CallPart, ResolvedLimits } from '../policies/engine.js';
import type { ColumnOrigin } from '../policies/masking.js';

/**
 * A governed tool is data plus two functions: `describe` says what a call really does (for
 * policy), `execute` does it. Executors never see config or policy: they get the target's
 * connection facts with credentials already resolved, the limits and an AbortSignal.
 */
export interface GovernedTool<I = unknown, Target = unknown> {
  readonly name: string;
  readonly title: string;
  readonly description: string;
  readonly inputSchema: z.ZodType<I>;
  readonly outputSchema: z.ZodType;
  readonly annotations: ToolAnnotations;
  /** The target kind this tool runs against. */
  readonly targetKind: 'postgres' | 'ssh' | 'kubernetes';
  /** Operations a policy can grant on this tool (shown by list_targets). */
  readonly operations: readonly string[];
  /** Parse and classify: what the call does. Throws GovernanceError('INVALID_INPUT') on bad input. */
  describe(input: I): Promise<CallDescription>;
  execute(input: I, ctx: ExecContext<Target>): Promise<ToolOutput>;
}

export interface CallDescription {
  target: string;
  parts: CallPart[];
  /** What the audit log records as `input`: the call's own text, never a secret. */
  auditInput: unknown;
  /**
   * Why the tool cannot run this call whatever policy says (e.g. several statements):
   * policy still decides first, and an allowed call is then refused with INVALID_INPUT.
   */
  refusal?: string;
  /** The tool's own notes from describe for execute (e.g. the SQL to run in another form). */
  plan?: Record<string, unknown>;
}

export interface ExecContext<Target> {
  target: Target;
  limits: ResolvedLimits;
  signal: AbortSignal;
  description: CallDescription;
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
    };
