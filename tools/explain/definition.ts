import { z } from 'zod';

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
});
export type ExplainOutput = z.infer<typeof ExplainOutput>;

export const explainMeta = {
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
