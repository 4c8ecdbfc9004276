import type { PolicyEngine, Principal } from '../policies/engine.js';
import { ExplainInput, ExplainOutput, explainMeta } from '../tools/explain/definition.js';
import {
  ListTargetsInput,
  ListTargetsOutput,
  listTargetsMeta,
} from '../tools/list_targets/definition.js';
import { GovernanceError } from './kernel/errors.js';
import type { Runtime } from './runtime.js';

/** Tools that answer from policy alone: they never reach a target. */
export const META_TOOLS = {
  list_targets: {
    ...listTargetsMeta,
    inputSchema: ListTargetsInput,
    outputSchema: ListTargetsOutput,
  },
  explain: { ...explainMeta, inputSchema: ExplainInput, outputSchema: ExplainOutput },
} as const;

export function listTargets(rt: Runtime, principal: Principal): ListTargetsOutput {
  const targets: ListTargetsOutput['targets'] = [];
  for (const target of Object.values(rt.config.targets)) {
    const tools = [...rt.tools.values()]
      .filter((t) => t.targetKind === target.kind)
      .map((t) => ({
        tool: t.name,
        operations: t.operations.flatMap((operation) => {
          const d = rt.policies.engine.decide({
            principal,
            tool: t.name,
            target: target.name,
            parts: [{ operation, tags: [], reason: operation }],
          });
          return d.effect === 'deny' ? [] : [{ operation, effect: d.effect }];
        }),
      }))
      .filter((t) => t.operations.length > 0);
    if (tools.length > 0) {
      targets.push({
        name: target.name,
        kind: target.kind,
        ...(target.description ? { description: target.description } : {}),
        tools,
      });
    }
  }
  return { targets };
}

export async function explainCall(
  tools: Runtime['tools'],
  engine: PolicyEngine,
  principal: Principal,
  req: { tool: string; input: Record<string, unknown> },
): Promise<ExplainOutput> {
  const tool = tools.get(req.tool);
  if (!tool) throw new GovernanceError('INVALID_INPUT', `unknown tool ${JSON.stringify(req.tool)}`);
  const parsed = tool.inputSchema.safeParse(req.input);
  if (!parsed.success) {
    throw new GovernanceError(
      'INVALID_INPUT',
      parsed.error.issues
        .map((i) => `${['input', ...i.path.map(String)].join('.')}: ${i.message}`)
        .join('; '),
    );
  }
  const description = await tool.describe(parsed.data);
  const d = engine.decide({
    principal,
    tool: tool.name,
    target: description.target,
    parts: description.parts,
  });
  return {
    tool: tool.name,
    target: description.target,
    effect: d.effect,
    rule: d.rule,
    reason: d.reason,
    operation: d.operation,
    parts: description.parts.map((p) => ({
      operation: p.operation,
      tags: [...p.tags],
      reason: p.reason,
    })),
    limits: d.limits,
    mask: d.mask,
    ...(description.refusal
      ? { refusal: `${description.refusal}: refused with INVALID_INPUT` }
      : {}),
  };
}
