import { postgresQueryTool } from './postgres/definition.js';
import { PostgresExecutor } from './postgres/executor.js';
import type { PostgresPools } from './postgres/pool.js';
import type { GovernedTool } from './types.js';

export type ToolRegistry = ReadonlyMap<string, GovernedTool<unknown, unknown>>;

/** Every governed tool. `pools` is only touched when a tool executes, never by describe(). */
export function createTools(pools: PostgresPools): ToolRegistry {
  const list = [postgresQueryTool(new PostgresExecutor(pools))];
  return new Map(list.map((t) => [t.name, t as unknown as GovernedTool<unknown, unknown>]));
}
