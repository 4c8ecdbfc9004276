import { parseSync } from 'libpg-query';
import type { Lineage, SourceRef } from '../../policies/masking.js';

/**
 * Where a statement's values come from, for masking (policies/masking.ts), read off the same
 * parse tree the classifier proved.
 *
 * PostgreSQL names the source of a result column only when the column *is* a table column
 * (RowDescription's table and column ids); a value computed from one (`'x' || password`,
 * `row_to_json(u)`, `string_agg(password, ',')`, a UNION arm) comes back with no origin. So
 * the statement is read for every column it mentions, and where:
 *
 * - `output`: in what flows into the result: select lists at every level (subqueries in FROM,
 *   CTEs, set-operation arms, scalar subqueries in a select list), VALUES, RETURNING, SET;
 * - `conditions`: in what only decides which rows, in which order, or how many: WHERE, JOIN
 *   ON/USING, HAVING, ORDER BY, window definitions, aggregate FILTER, LIMIT/OFFSET. A masked
 *   value used there comes out bit by bit (`WHERE password LIKE 'a%'`), masked columns or not;
 * - `wholeRow`: a relation used as a value (`row_to_json(u)`, `u::text`, `json_agg(u)`,
 *   `f(u.*)`), which carries every column of the row, masked ones included.
 *
 * GROUP BY and DISTINCT only reveal which values are equal, as pseudonyms do by design; they
 * count as neither. The result is a superset (a name is taken as a column wherever it could
 * be one, and mentions are per statement, not per result column): masking with it can only
 * hide more, never less.
 */

type Ctx = 'output' | 'conditions';
type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Keys of a node whose subtree only decides which rows, in what order, how many. */
const CONDITION_KEYS = new Set([
  'whereClause',
  'havingClause',
  'sortClause',
  'windowClause',
  'limitOffset',
  'limitCount',
  'quals',
  'agg_filter',
  'over',
  'onConflictClause',
  'mergeJoinCondition',
]);
/** Keys whose subtree neither reaches the result nor selects rows: equality only. */
const NEUTRAL_KEYS = new Set(['groupClause', 'distinctClause']);

export function statementLineage(stmts: readonly unknown[]): Lineage {
  const relations = new Set<string>();
  const reads: Array<{ schema?: string; name: string }> = [];
  collectRelations(stmts, relations, reads);
  const whole = { ...collect(stmts, relations), reads };
  const columns = perColumn(stmts, relations);
  return columns ? { ...whole, ...columns } : whole;
}

/**
 * For a plain SELECT whose select list has no `*` (so result column i is select-list item i),
 * what each result column is computed from, and what the derived relations it reads from
 * (subqueries and functions in FROM, CTEs) put out. Undefined for anything else (set
 * operations, VALUES, `*`, writes): masking then goes by the statement as a whole.
 */
function perColumn(
  stmts: readonly unknown[],
  relations: ReadonlySet<string>,
): Pick<Lineage, 'columns' | 'inner'> | undefined {
  if (stmts.length !== 1) return undefined;
  const only = stmts[0];
  const select = isObj(only) && isObj(only.SelectStmt) ? only.SelectStmt : undefined;
  if (!select || select.larg !== undefined || !Array.isArray(select.targetList)) return undefined;
  const items = select.targetList.map((t) =>
    isObj(t) && isObj(t.ResTarget) ? t.ResTarget : undefined,
  );
  const star = (v: unknown) =>
    isObj(v) &&
    isObj(v.ColumnRef) &&
    Array.isArray(v.ColumnRef.fields) &&
    v.ColumnRef.fields.some((f) => isObj(f) && f.A_Star !== undefined);
  if (items.length === 0 || items.some((t) => t === undefined || star(t.val))) return undefined;
  const inner = collect([select.fromClause ?? [], select.withClause ?? []], relations);
  return {
    columns: items.map((t) => {
      const l = collect([t!.val], relations);
      return { output: l.output, wholeRow: l.wholeRow };
    }),
    inner: { output: inner.output, wholeRow: inner.wholeRow },
  };
}

function collect(stmts: readonly unknown[], relations: ReadonlySet<string>): Lineage {
  const out: Lineage = { output: [], conditions: [], wholeRow: false, wholeRowInConditions: false };
  const seen = { output: new Set<string>(), conditions: new Set<string>() };
  const add = (ctx: Ctx, ref: SourceRef) => {
    const key = `${ref.qualifier ?? ''}.${ref.column}`;
    if (seen[ctx].has(key)) return;
    seen[ctx].add(key);
    out[ctx].push(ref);
  };
  const whole = (ctx: Ctx) => {
    if (ctx === 'output') out.wholeRow = true;
    else out.wholeRowInConditions = true;
  };

  // Iterative: a deep tree (the parser accepts thousands of nested expressions) must not
  // overflow the stack.
  const stack: Array<{ v: unknown; ctx: Ctx | 'neutral'; direct?: boolean }> = stmts.map((v) => ({
    v,
    ctx: 'output' as const,
  }));
  while (stack.length > 0) {
    const { v, ctx, direct } = stack.pop()!;
    if (Array.isArray(v)) {
      for (const x of v) stack.push({ v: x, ctx });
      continue;
    }
    if (!isObj(v)) continue;
    if (isObj(v.ColumnRef)) {
      if (ctx !== 'neutral') columnRef(v.ColumnRef, ctx, direct === true, relations, add, whole);
      continue;
    }
    if (isObj(v.ResTarget)) {
      // `SELECT t.*` at the top of a select list expands to columns with their own origins;
      // the same inside an expression is a whole row.
      const val = v.ResTarget.val;
      stack.push({ v: val, ctx, direct: true });
      if (v.ResTarget.indirection !== undefined) stack.push({ v: v.ResTarget.indirection, ctx });
      continue;
    }
    if (isObj(v.JoinExpr) && Array.isArray(v.JoinExpr.usingClause) && ctx !== 'neutral') {
      // JOIN ... USING (password) compares the named columns of both sides.
      for (const n of v.JoinExpr.usingClause) {
        const name = isObj(n) && isObj(n.String) ? n.String.sval : undefined;
        if (typeof name === 'string') add('conditions', { column: name });
      }
    }
    for (const [key, child] of Object.entries(v)) {
      if (key === 'usingClause') continue;
      const next: Ctx | 'neutral' = CONDITION_KEYS.has(key)
        ? ctx === 'neutral'
          ? 'neutral'
          : 'conditions'
        : NEUTRAL_KEYS.has(key)
          ? 'neutral'
          : ctx;
      stack.push({ v: child, ctx: next });
    }
  }
  return out;
}

function columnRef(
  node: Obj,
  ctx: Ctx,
  direct: boolean,
  relations: ReadonlySet<string>,
  add: (ctx: Ctx, ref: SourceRef) => void,
  whole: (ctx: Ctx) => void,
): void {
  const fields = Array.isArray(node.fields) ? node.fields : [];
  const names = fields.map((f) => (isObj(f) && isObj(f.String) ? String(f.String.sval) : null));
  const star = fields.some((f) => isObj(f) && f.A_Star !== undefined);
  if (star) {
    if (!direct) whole(ctx);
    return;
  }
  const parts = names.filter((n): n is string => n !== null);
  const column = parts.at(-1);
  if (column === undefined) return;
  // A bare name that is also a relation in the statement may be that relation's whole row
  // (`SELECT u FROM users u`); it may also be a column: both, to be safe.
  if (parts.length === 1 && relations.has(column.toLowerCase())) whole(ctx);
  add(ctx, parts.length > 1 ? { qualifier: parts.at(-2)!, column } : { column });
}

/** Every name a relation goes by in the statements: tables, aliases, CTEs, functions in FROM. */
function collectRelations(
  root: unknown,
  into: Set<string>,
  reads: Array<{ schema?: string; name: string }> = [],
): void {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      for (const x of v as unknown[]) stack.push(x);
      continue;
    }
    if (!isObj(v)) continue;
    if (isObj(v.RangeVar) && typeof v.RangeVar.relname === 'string') {
      into.add(v.RangeVar.relname.toLowerCase());
      reads.push({
        ...(typeof v.RangeVar.schemaname === 'string' ? { schema: v.RangeVar.schemaname } : {}),
        name: v.RangeVar.relname,
      });
    }
    if (isObj(v.Alias) && typeof v.Alias.aliasname === 'string') {
      into.add(v.Alias.aliasname.toLowerCase());
    }
    if (isObj(v.alias) && typeof v.alias.aliasname === 'string') {
      into.add(v.alias.aliasname.toLowerCase());
    }
    if (isObj(v.CommonTableExpr) && typeof v.CommonTableExpr.ctename === 'string') {
      into.add(v.CommonTableExpr.ctename.toLowerCase());
    }
    for (const child of Object.values(v)) if (typeof child === 'object') stack.push(child);
  }
}

/** What one column of a view is computed from, and what the rest of its definition puts out. */
export interface ViewColumnLineage {
  output: SourceRef[];
  wholeRow: boolean;
}

/**
 * A view's definition (`pg_get_viewdef`, which always spells out its select list), read as a
 * statement: per view column (attnum - 1) what it is computed from, what its derived relations
 * put out (`inner`), and the relations it reads (to follow views over views). Undefined when
 * the definition cannot be read column by column: the caller treats every column as derived
 * from the whole definition.
 */
export function viewLineage(definition: string): {
  columns: ViewColumnLineage[] | undefined;
  whole: ViewColumnLineage;
  inner: ViewColumnLineage;
  relations: Array<{ schema?: string; name: string }>;
} {
  const stmts = ((parseSync(definition) as { stmts?: Array<{ stmt?: unknown }> }).stmts ?? []).map(
    (s) => s.stmt,
  );
  const lineage = statementLineage(stmts);
  return {
    columns: lineage.columns,
    whole: { output: lineage.output, wholeRow: lineage.wholeRow },
    inner: lineage.inner ?? { output: lineage.output, wholeRow: lineage.wholeRow },
    relations: lineage.reads ?? [],
  };
}
