import { GovernanceError } from '../../server/kernel/errors.js';
import { z } from 'zod';
import { CallReason, type ToolDefinition } from '../types.js';
import { deepFreeze } from '../../server/kernel/freeze.js';
import { assertWellFormed, classifySql, SQL_TAGS, type SqlClassification } from './classify.js';
import { refineClassification, type CatalogSource, type TargetCatalog } from './catalog.js';
import { viewColumnsFor } from './views.js';
import { log } from '../../server/kernel/log.js';
import type { PostgresExecutor } from './executor.js';
import type { ResolvedPostgresTarget } from './pool.js';

const Param = z.union([z.string(), z.number(), z.boolean(), z.null()]);

export const PostgresQueryInput = z.strictObject({
  target: z.string().min(1).max(256).describe('Target name, from list_targets'),
  sql: z
    .string()
    .min(1)
    .max(100_000)
    .describe('Exactly one SQL statement; use $1, $2... for parameters'),
  params: z.array(Param).max(1_000).optional().describe('Values for $1, $2...'),
  maxRows: z
    .number()
    .int()
    .min(1)
    .max(100_000)
    .optional()
    .describe('At most this many rows (policy may lower it)'),
  reason: CallReason.optional(),
});
export type PostgresQueryInput = z.infer<typeof PostgresQueryInput>;

export const PostgresQueryOutput = z.object({
  columns: z.array(z.object({ name: z.string(), type: z.string() })),
  rows: z.array(z.array(z.unknown())),
  rowCount: z.number().int(),
  truncated: z.boolean(),
  operation: z.enum(['read', 'write', 'ddl', 'admin', 'unknown']),
});

export const POSTGRES_OPERATIONS = ['read', 'write', 'ddl', 'admin', 'unknown'] as const;

/**
 * `catalogs` lets describe() check what a statement reaches against the target's catalog
 * (catalog.ts); without it (the offline `policy explain` and `policy test`) the parse tree
 * alone decides, which can only be more lenient about objects defined in the database.
 */
/** What describe found that execute needs. */
export interface PostgresPlan {
  /** The statement to run, when the classifier rewrote it (e.g. COPY ... TO STDOUT). */
  runAs: string | undefined;
  /** Why the catalog check could not run: the statement is then not run either. */
  unchecked: unknown;
  /** The strictest operation of the statements (the session mode follows it). */
  operation: string;
  statementCount: number;
  /** The relations the statement names (the executor follows computed values into views). */
  reads: ReadonlyArray<{ schema?: string; name: string }>;
}

export function postgresQueryTool(
  executor: PostgresExecutor,
  catalogs?: CatalogSource,
): ToolDefinition<PostgresQueryInput, PostgresPlan, ResolvedPostgresTarget> {
  return {
    name: 'postgres_query',
    title: 'PostgreSQL query',
    description:
      'Run one SQL statement on a PostgreSQL target. The statement is parsed by the real PostgreSQL ' +
      'parser and classified (read, write, ddl, admin, unknown) before policy decides; reads run in a ' +
      'read-only session. Result values may be masked.',
    inputSchema: PostgresQueryInput,
    outputSchema: PostgresQueryOutput,
    annotations: {
      readOnlyHint: false,
      destructiveHint: true,
      idempotentHint: false,
      openWorldHint: false,
    },
    operations: POSTGRES_OPERATIONS,
    tags: SQL_TAGS,
    async describe(input) {
      // Parameters go to the server as UTF-8: text that cannot be encoded as it is written
      // is refused, never replaced (the classifier refuses such SQL the same way).
      input.params?.forEach((p, i) => {
        if (typeof p === 'string') assertWellFormed(p, `params[${i}]`);
      });
      const { c, unchecked } = await withCatalog(
        await classifyCached(input.sql),
        input.target,
        catalogs,
      );
      return {
        target: input.target,
        // One part per statement: a call with several statements gets the strictest one's decision.
        parts: c.statements.map((s) => ({
          operation: s.operation,
          tags: s.tags,
          reason: s.reason,
        })),
        auditInput: { sql: input.sql, ...(input.params ? { params: input.params } : {}) },
        lineage: c.lineage,
        plan: {
          runAs: c.runAs,
          unchecked,
          operation: mostStrict(c.statements.map((st) => st.operation)),
          statementCount: c.statements.length,
          reads: c.lineage.reads ?? [],
        },
        ...(c.statements.length > 1
          ? { refusal: `one statement per call (got ${c.statements.length})` }
          : c.unsupported
            ? { refusal: c.unsupported }
            : {}),
      };
    },
    async execute(input, ctx) {
      const { plan } = ctx;
      if (plan.unchecked !== undefined) throw uncheckedError(input.target, plan.unchecked);
      return executor.run(
        ctx.target,
        {
          sql: plan.runAs ?? input.sql,
          params: input.params ?? [],
          maxRows: Math.min(input.maxRows ?? ctx.limits.maxRows, ctx.limits.maxRows),
          operation: plan.operation,
          statementCount: plan.statementCount,
          ...(ctx.masked ? { reads: plan.reads } : {}),
        },
        ctx.limits,
        ctx.signal,
        ctx.rule,
      );
    },
  };
}

/**
 * Agents repeat their statements; the parse of a given text never changes, so short texts
 * keep their classification (a small LRU, bounded in entries and key size). Errors are not
 * kept: a syntax error is parsed again, and reported again, every time.
 */
const CLASSIFY_CACHE_MAX = 512;
const CLASSIFY_CACHE_MAX_SQL = 4096;
const classified = new Map<string, Readonly<SqlClassification>>();

async function classifyCached(sql: string): Promise<Readonly<SqlClassification>> {
  const hit = classified.get(sql);
  if (hit !== undefined) {
    classified.delete(sql);
    classified.set(sql, hit);
    return hit;
  }
  const c = deepFreeze(await classifySql(sql));
  if (sql.length <= CLASSIFY_CACHE_MAX_SQL) {
    if (classified.size >= CLASSIFY_CACHE_MAX) classified.delete(classified.keys().next().value!);
    classified.set(sql, c);
  }
  return c;
}

const ORDER = ['read', 'write', 'ddl', 'unknown', 'admin'];
function mostStrict(ops: string[]): string {
  return ops.reduce((a, b) => (ORDER.indexOf(b) > ORDER.indexOf(a) ? b : a), 'read');
}

/**
 * The classification checked against the target's catalog, when anything in it could still
 * be `read`, `write` or `ddl` (a statement already `unknown` or `admin` cannot get stricter
 * where it matters). A catalog that cannot be read proves nothing: policy decides on the
 * parse tree alone, and `unchecked` makes execute() refuse to run the statement, so nothing
 * unproven reaches the target and a caller policy refuses learns nothing about the target.
 */
async function withCatalog(
  c: Readonly<SqlClassification>,
  target: string,
  catalogs: CatalogSource | undefined,
): Promise<{ c: Readonly<SqlClassification>; unchecked?: unknown }> {
  // The base finding leaves out unproven calls, which the target's trust list may allow.
  const settled = (s: (typeof c.statements)[number]) =>
    s.base.operation === 'unknown' || s.base.operation === 'admin';
  // Views read are looked up whatever the operation: masking needs their columns (views.ts).
  const readsRelations = (c.lineage.reads?.length ?? 0) > 0;
  if (!catalogs || (c.statements.every(settled) && !readsRelations)) return { c };
  let catalog: TargetCatalog | undefined;
  try {
    catalog = await catalogs.get(target);
  } catch (err) {
    log.warn({ target, err: (err as Error).message }, 'cannot read the target catalog');
    return { c, unchecked: err };
  }
  if (!catalog) return { c };
  const refined = refineClassification(c, catalog);
  const viewColumns = viewColumnsFor(refined.lineage, catalog);
  return {
    c: viewColumns ? { ...refined, lineage: { ...refined.lineage, viewColumns } } : refined,
  };
}

/**
 * Why a statement whose catalog check failed is not run. A failure already worded for the
 * agent passes as it is: a connection that could not be made says why (connectError, from
 * the catalog's own connection: usually the first a call makes), a credential that is not
 * available names its reference. Anything else is the check failing, or the connection
 * breaking under it.
 */
function uncheckedError(target: string, err: unknown): GovernanceError {
  if (err instanceof GovernanceError) return err;
  const code = (err as { code?: string }).code ?? '';
  // A statement_timeout (57014) is the check being slow, not the connection failing.
  const connection =
    code !== '57014' &&
    (/^(08|28|3D|53|57P)/.test(code) ||
      /^E[A-Z]+$/.test(code) ||
      /connect|terminated|timeout/i.test((err as Error).message ?? ''));
  return new GovernanceError(
    'TARGET_ERROR',
    connection
      ? `the connection to ${target} failed while checking what the statement reaches, so it was not run`
      : `cannot check what the statement reaches in the catalog of ${target}, so it was not run`,
    { cause: err },
  );
}
