import { postgresQueryTool } from './postgres/definition.js';
import { PostgresExecutor } from './postgres/executor.js';
import type { PostgresPools } from './postgres/pool.js';
import { CatalogSource, type ResolvePostgresTarget } from './postgres/catalog.js';
import type { GovernedTool } from './types.js';

export type ToolRegistry = ReadonlyMap<string, GovernedTool<unknown, unknown>>;

/**
 * Every governed tool. With `resolvePostgres` (a running gateway), postgres_query checks each
 * statement against the target's catalog before policy decides; without it (offline policy
 * commands) no target is ever touched.
 */
export function createTools(
  pools: PostgresPools,
  resolvePostgres?: ResolvePostgresTarget,
): ToolRegistry {
  const catalogs = resolvePostgres ? new CatalogSource(pools, resolvePostgres) : undefined;
  const list = [postgresQueryTool(new PostgresExecutor(pools), catalogs)];
  return new Map(list.map((t) => [t.name, t as unknown as GovernedTool<unknown, unknown>]));
}
