import { z } from 'zod';
import type { DecidedCall, GatewayView, ToolDefinition } from '../types.js';

export const ExplainInput = z.strictObject({
  tool: z.string().min(1).describe('The tool to ask about, e.g. postgres_query'),
  input: z.record(z.string(), z.unknown()).describe('The input you would call it with'),
});

export const ExplainOutput = z.object({
  tool: z.string(),
  target: z.string().nullable(),
  effect: z.enum(['allow', 'deny', 'approve']),
  rule: z.string(),
  reason: z.string(),
  operation: z.string(),
  parts: z.array(
    z.object({ operation: z.string(), tags: z.array(z.string()), reason: z.string() }),
  ),
  limits: z.object({ maxRows: z.number(), timeoutMs: z.number(), maxOutputBytes: z.number() }),
  mask: z.array(z.string()),
  /** Set when the tool itself would refuse the call after policy (e.g. several statements). */
  refusal: z.string().optional(),
  /** effect approve: who would be asked, and how long the request and one call would wait. */
  approval: z
    .object({
      approvers: z.union([
        z.literal('client'),
        z.object({
          groups: z.array(z.string()).optional(),
          subjects: z.array(z.string()).optional(),
        }),
      ]),
      quorum: z.number(),
      timeoutMs: z.number(),
      holdMs: z.number(),
      grantMs: z.number().optional(),
      requireReason: z.boolean(),
      who: z.string(),
    })
    .optional(),
});
export type ExplainOutput = z.infer<typeof ExplainOutput>;

const explainMeta = {
  name: 'explain',
  title: 'Explain a decision',
  description:
    'Show the decision you would get for a call (effect, rule, reason, limits, masking) without executing it.',
  annotations: {
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
} as const;

function approvalOf(a: NonNullable<DecidedCall['decision']['approval']>) {
  const approvers =
    a.approvers === 'client'
      ? ('client' as const)
      : {
          ...(a.approvers.groups ? { groups: [...a.approvers.groups] } : {}),
          ...(a.approvers.subjects ? { subjects: [...a.approvers.subjects] } : {}),
        };
  const who =
    a.approvers === 'client'
      ? 'the person at your MCP client, by an approval form (elicitation)'
      : `${a.quorum > 1 ? `${a.quorum} distinct people` : 'someone'} other than you among ` +
        [
          ...(a.approvers.groups ?? []).map((g) => `group ${g}`),
          ...(a.approvers.subjects ?? []).map((s) => `subject ${s}`),
        ].join(', ');
  return {
    approvers,
    quorum: a.quorum,
    timeoutMs: a.timeout,
    holdMs: a.hold,
    ...(a.grant !== undefined ? { grantMs: a.grant } : {}),
    requireReason: a.requireReason,
    who,
  };
}

/** The explain output of a decided call: what the real call would get, before it runs. */
export function explainOutput(d: DecidedCall): ExplainOutput {
  const { description } = d.described;
  return {
    tool: d.tool.name,
    target: description.target,
    effect: d.decision.effect,
    rule: d.decision.rule,
    reason: d.decision.reason,
    operation: d.decision.operation,
    parts: description.parts.map((p) => ({
      operation: p.operation,
      tags: [...p.tags],
      reason: p.reason,
    })),
    limits: d.decision.limits,
    mask: d.decision.mask,
    ...(description.refusal
      ? { refusal: `${description.refusal}: refused with INVALID_INPUT` }
      : {}),
    ...(d.decision.effect === 'approve' && d.decision.approval
      ? { approval: approvalOf(d.decision.approval) }
      : {}),
  };
}

/**
 * `explain`: the decision a call would get, through the same function the real call goes
 * through (so explain can never say allow where the call is denied), without executing it.
 */
export const explainTool: ToolDefinition<z.output<typeof ExplainInput>, null, GatewayView> = {
  ...explainMeta,
  inputSchema: ExplainInput,
  outputSchema: ExplainOutput,
  operations: ['read'],
  tags: [],
  async describe(input) {
    return {
      target: null,
      parts: [{ operation: 'read', tags: [], reason: 'explain reveals a decision only' }],
      auditInput: input,
      plan: null,
    };
  },
  async execute(input, ctx) {
    const decided = await ctx.target.decide(ctx.principal, input.tool, input.input, 'input');
    return { kind: 'gateway', structured: explainOutput(decided) };
  },
};
