import type { PolicyEngine, Principal } from '../policies/engine.js';
import { explainOutput, type ExplainOutput } from '../tools/explain/definition.js';
import type { ToolRegistry } from '../tools/registry.js';
import { DecisionPoint } from './decide.js';

/**
 * @deprecated Kept while the CLI moves to the one decision path (server/decide.ts,
 * `openGateway(...).decisions.call`); it is that path.
 */
export async function explainCall(
  tools: ToolRegistry,
  engine: PolicyEngine,
  principal: Principal,
  req: { tool: string; input: Record<string, unknown> },
): Promise<ExplainOutput> {
  const point = new DecisionPoint(
    tools,
    engine,
    new Set(['ssh_exec', 'kubectl']),
    () => 'postgres',
  );
  return explainOutput(await point.call(principal, req.tool, req.input, 'input'));
}
