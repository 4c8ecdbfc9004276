import { z } from 'zod';

export const ListTargetsInput = z.strictObject({});

export const ListTargetsOutput = z.object({
  targets: z.array(
    z.object({
      name: z.string(),
      kind: z.enum(['postgres', 'ssh', 'kubernetes']),
      description: z.string().optional(),
      tools: z.array(
        z.object({
          tool: z.string(),
          operations: z.array(
            z.object({ operation: z.string(), effect: z.enum(['allow', 'approve']) }),
          ),
        }),
      ),
    }),
  ),
});
export type ListTargetsOutput = z.infer<typeof ListTargetsOutput>;

export const listTargetsMeta = {
  name: 'list_targets',
  title: 'List targets',
  description:
    'List the targets this identity may use, with their kind and the operations policy allows ' +
    '(effect "approve" means a human must approve each call).',
  annotations: {
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
} as const;
