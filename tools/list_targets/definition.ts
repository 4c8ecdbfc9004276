import { z } from 'zod';
import type { Principal } from '../../policies/engine.js';
import type { GatewayView, ToolDefinition } from '../types.js';

export const ListTargetsInput = z.strictObject({});

export const ListTargetsOutput = z.object({
  targets: z.array(
    z.object({
      name: z.string(),
      kind: z.string(),
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

const listTargetsMeta = {
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

/** The targets this identity may use, and how: the policy engine's own allowed operations. */
export function listTargets(view: GatewayView, principal: Principal): ListTargetsOutput {
  const targets: ListTargetsOutput['targets'] = [];
  const tools = view.tools();
  for (const target of view.targets) {
    const usable = tools
      .filter((t) => t.targetKind === target.kind)
      .map((t) => ({
        tool: t.name,
        operations: view.allowedOperations(principal, t.name, target.name, t.operations),
      }))
      .filter((t) => t.operations.length > 0);
    if (usable.length > 0) {
      targets.push({
        name: target.name,
        kind: target.kind,
        ...(target.description ? { description: target.description } : {}),
        tools: usable,
      });
    }
  }
  return { targets };
}

export const listTargetsTool: ToolDefinition<
  z.output<typeof ListTargetsInput>,
  null,
  GatewayView
> = {
  ...listTargetsMeta,
  inputSchema: ListTargetsInput,
  outputSchema: ListTargetsOutput,
  operations: ['read'],
  tags: [],
  async describe(input) {
    return {
      target: null,
      parts: [
        { operation: 'read', tags: [], reason: 'list_targets reveals what this identity may use' },
      ],
      auditInput: input,
      plan: null,
    };
  },
  async execute(_input, ctx) {
    return { kind: 'gateway', structured: listTargets(ctx.target, ctx.principal) };
  },
};
