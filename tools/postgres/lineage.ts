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
/**
 * `distinctClause` holds DISTINCT ON's expressions, which sort rows (plain DISTINCT leaves
 * only empty nodes there): a condition. GROUP BY a bare column reveals only which values are
 * equal, as pseudonyms do by design; GROUP BY an expression (`CASE WHEN password > 'm'`) is a
 * question about the value, so a condition.
 */
CONDITION_KEYS.add('distinctClause');

/**
 * Set-returning functions: in a select list, how many rows come back depends on their
 * arguments (`generate_series(1, ascii(substr(password, 8, 1)))` answers with the character
 * code as a row count), so their arguments are conditions. Functions in FROM are treated the
 * same way, whatever their name.
 */
const SET_RETURNING = new Set([
  'generate_series',
  'generate_subscripts',
  'unnest',
  'regexp_matches',
  'regexp_split_to_table',
  'string_to_table',
  'json_array_elements',
  'json_array_elements_text',
  'jsonb_array_elements',
  'jsonb_array_elements_text',
  'json_each',
  'json_each_text',
  'jsonb_each',
  'jsonb_each_text',
  'json_object_keys',
  'jsonb_object_keys',
  'json_to_recordset',
  'jsonb_to_recordset',
  'json_populate_recordset',
  'jsonb_populate_recordset',
  'jsonb_path_query',
  'ts_stat',
  'ts_debug',
]);

/** Catalog views that hold sample values of every analysed column (histograms, common values). */
const STATISTICS = new Set([
  'pg_stats',
  'pg_stats_ext',
  'pg_stats_ext_exprs',
  'pg_statistic',
  'pg_statistic_ext_data',
]);

/** Functions whose argument is how long the statement takes: a clock is a result too. */
const SLEEP = new Set(['pg_sleep', 'pg_sleep_for', 'pg_sleep_until']);

/**
 * Operators that compare. A comparison in a select list is a yes/no question about its
 * operands; routed through CASE, COALESCE or AND/OR it decides what else runs (a division by
 * zero, a sleep), which the call's outcome shows however the value itself is masked.
 */
const COMPARISON_OPS = new Set(
  '= <> != < > <= >= ~ ~* !~ !~* ~~ ~~* !~~ !~~* ^@ @@ @> <@ && ? ?| ?&'.split(' '),
);
const COMPARISON_KINDS = new Set([
  'AEXPR_OP_ANY',
  'AEXPR_OP_ALL',
  'AEXPR_DISTINCT',
  'AEXPR_NOT_DISTINCT',
  'AEXPR_NULLIF',
  'AEXPR_IN',
  'AEXPR_LIKE',
  'AEXPR_ILIKE',
  'AEXPR_SIMILAR',
  'AEXPR_BETWEEN',
  'AEXPR_NOT_BETWEEN',
  'AEXPR_BETWEEN_SYM',
  'AEXPR_NOT_BETWEEN_SYM',
]);

function isComparison(e: Obj): boolean {
  if (typeof e.kind === 'string' && COMPARISON_KINDS.has(e.kind)) return true;
  const parts: unknown[] = Array.isArray(e.name) ? e.name : [];
  const last = parts.at(-1);
  const op = isObj(last) && isObj(last.String) ? String(last.String.sval) : '';
  return e.kind === 'AEXPR_OP' && COMPARISON_OPS.has(op);
}

const COMPARING_SUBLINKS = new Set(['ANY_SUBLINK', 'ALL_SUBLINK', 'ROWCOMPARE_SUBLINK']);

/** Plain `SELECT DISTINCT` (not DISTINCT ON): the parser's list of one empty node. */
function isPlainDistinct(clause: unknown): boolean {
  return (
    Array.isArray(clause) &&
    clause.length > 0 &&
    clause.every((x) => isObj(x) && Object.keys(x).length === 0)
  );
}

/** Functions that turn whole tables into a value by name (`table_to_xml('users', …)`). */
const TABLE_DUMP = /(^|_)to_xml(_and_xmlschema)?$/;

/** A select-list position written as an integer constant (`ORDER BY 2`), if `item` is one. */
function positionOf(item: unknown): number | undefined {
  const c = isObj(item) && isObj(item.A_Const) ? item.A_Const : undefined;
  const ival = c && isObj(c.ival) ? c.ival.ival : undefined;
  return typeof ival === 'number' ? ival : undefined;
}

function isStar(v: unknown): boolean {
  return (
    isObj(v) &&
    isObj(v.ColumnRef) &&
    Array.isArray(v.ColumnRef.fields) &&
    v.ColumnRef.fields.some((f) => isObj(f) && f.A_Star !== undefined)
  );
}

const funcName = (node: Obj): string => {
  const parts: unknown[] = Array.isArray(node.funcname) ? node.funcname : [];
  const last = parts.at(-1);
  return isObj(last) && isObj(last.String) ? String(last.String.sval).toLowerCase() : '';
};

export function statementLineage(stmts: readonly unknown[]): Lineage {
  const relations = new Set<string>();
  const reads: Array<{ schema?: string; name: string }> = [];
  const relationAliases: Record<string, string[]> = {};
  collectRelations(stmts, relations, reads, relationAliases);
  const whole = {
    ...collect(stmts, relations),
    reads,
    relationAliases,
    aliases: collectAliases(stmts, relations),
    statistics: reads.some((r) => STATISTICS.has(r.name.toLowerCase())),
  };
  const columns = perColumn(stmts, relations);
  return columns ? { ...whole, ...columns } : whole;
}

/**
 * Names a statement gives to values, and what each stands for, so a mention of the name is
 * a mention of its sources: `password AS p` in a subquery (then `WHERE p > 'm'` outside it),
 * and column lists that rename a relation's columns (`users AS u(a, b, x)`, `WITH w(a, b, x)
 * AS …`), where the gateway cannot tell which name is which column without the catalog: those
 * stand for any column, a whole row.
 */
function collectAliases(
  stmts: readonly unknown[],
  relations: ReadonlySet<string>,
): Record<string, { output: SourceRef[]; wholeRow: boolean }> {
  const out: Record<string, { output: SourceRef[]; wholeRow: boolean }> = {};
  const bind = (name: unknown, src: { output: SourceRef[]; wholeRow: boolean }) => {
    if (typeof name !== 'string') return;
    const cur = Object.hasOwn(out, name) ? out[name]! : { output: [], wholeRow: false };
    out[name] = { output: [...cur.output, ...src.output], wholeRow: cur.wholeRow || src.wholeRow };
  };
  const any = { output: [], wholeRow: true };
  const names = (list: unknown): unknown[] =>
    Array.isArray(list)
      ? list.map((n) => (isObj(n) && isObj(n.String) ? n.String.sval : undefined))
      : [];
  const everything = (v: unknown) => {
    const l = collect([v], relations);
    return {
      output: [...l.output, ...l.conditions],
      wholeRow: l.wholeRow || l.wholeRowInConditions,
    };
  };
  eachNode(stmts, (v) => {
    if (
      isObj(v.ResTarget) &&
      typeof v.ResTarget.name === 'string' &&
      v.ResTarget.val !== undefined
    ) {
      bind(v.ResTarget.name, everything(v.ResTarget.val));
    }
    if (isObj(v.RangeFunction) && isObj(v.RangeFunction.alias)) {
      const src = everything(v.RangeFunction.functions);
      for (const n of names(v.RangeFunction.alias.colnames)) bind(n, src);
    } else {
      for (const node of [v.RangeVar, v.RangeSubselect, v.JoinExpr]) {
        if (isObj(node) && isObj(node.alias))
          for (const n of names(node.alias.colnames)) bind(n, any);
      }
    }
    if (isObj(v.CommonTableExpr))
      for (const n of names(v.CommonTableExpr.aliascolnames)) bind(n, any);
  });
  return out;
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
  if (items.length === 0 || items.some((t) => t === undefined || isStar(t.val))) return undefined;
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
  const out: Lineage = {
    output: [],
    conditions: [],
    wholeRow: false,
    wholeRowInConditions: false,
    computed: [],
    wholeRowComputed: false,
    grouped: [],
  };
  const seen = { output: new Set<string>(), conditions: new Set<string>() };
  const computed = new Set<string>();
  // `direct`: the column is a select-list item as it is; anything else in the output is an
  // argument of a computation (a function, an operator, a cast, a CASE).
  const add = (ctx: Ctx, ref: SourceRef, direct = true) => {
    const key = `${ref.qualifier ?? ''}.${ref.column}`;
    if (ctx === 'output' && !direct && !computed.has(key)) {
      computed.add(key);
      out.computed!.push(ref);
    }
    if (seen[ctx].has(key)) return;
    seen[ctx].add(key);
    out[ctx].push(ref);
  };
  const whole = (ctx: Ctx, direct = true) => {
    if (ctx === 'output') {
      out.wholeRow = true;
      if (!direct) out.wholeRowComputed = true;
    } else out.wholeRowInConditions = true;
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
    if (isObj(v.FuncCall) && ctx !== 'neutral') {
      const name = funcName(v.FuncCall);
      // A table dumped by name carries every column of it, masked ones included.
      if (TABLE_DUMP.test(name)) whole(ctx, false);
      if (SET_RETURNING.has(name) || SLEEP.has(name)) {
        for (const [key, child] of Object.entries(v.FuncCall)) {
          stack.push({ v: child, ctx: key === 'args' ? 'conditions' : ctx });
        }
        continue;
      }
    }
    if (ctx === 'output') {
      // Questions asked inside a select list: what they compare is a condition too (and the
      // node is still walked as output below, for what its value is computed from).
      if (isObj(v.A_Expr) && isComparison(v.A_Expr)) {
        stack.push(
          { v: v.A_Expr.lexpr, ctx: 'conditions' },
          { v: v.A_Expr.rexpr, ctx: 'conditions' },
        );
      }
      if (isObj(v.CaseExpr)) {
        stack.push({ v: v.CaseExpr.arg, ctx: 'conditions' });
        for (const w of Array.isArray(v.CaseExpr.args) ? v.CaseExpr.args : []) {
          if (isObj(w) && isObj(w.CaseWhen)) stack.push({ v: w.CaseWhen.expr, ctx: 'conditions' });
        }
      }
      if (isObj(v.SubLink) && COMPARING_SUBLINKS.has(String(v.SubLink.subLinkType))) {
        // `x IN (SELECT …)`, `x = ANY (SELECT …)`, `ROW(…) < (SELECT …)`: rows are compared.
        stack.push({ v: v.SubLink.testexpr, ctx: 'conditions' });
        stack.push({ v: v.SubLink.subselect, ctx: 'conditions' });
      }
    }
    if (isObj(v.RangeFunction) && ctx !== 'neutral') {
      // A function in FROM decides how many rows there are.
      for (const [key, child] of Object.entries(v.RangeFunction)) {
        stack.push({ v: child, ctx: key === 'functions' ? 'conditions' : ctx });
      }
      continue;
    }
    if (isObj(v.SelectStmt) && ctx !== 'neutral') {
      // ORDER BY, GROUP BY and DISTINCT ON may name a select-list item by position
      // (`ORDER BY 2`): that item's expression is what rows are sorted or grouped by.
      const select = v.SelectStmt;
      const targets = Array.isArray(select.targetList) ? select.targetList : [];
      const byPosition = (item: unknown): unknown => {
        const k = positionOf(item);
        if (k === undefined) return item;
        const target: unknown = targets[k - 1];
        const val = isObj(target) && isObj(target.ResTarget) ? target.ResTarget.val : undefined;
        // `SELECT *` (or a position past the list): which column it is cannot be told here.
        if (val === undefined || isStar(val)) whole('conditions');
        return val;
      };
      if (typeof select.op === 'string' && select.op !== 'SETOP_NONE') {
        // UNION, INTERSECT and EXCEPT compare the rows of their arms (UNION ALL feeds a
        // DISTINCT or GROUP BY outside it with values of the caller's choosing): every column
        // the arms put out is compared, so it is a condition too.
        stack.push({ v: select.larg, ctx: 'conditions' }, { v: select.rarg, ctx: 'conditions' });
        // A `*` in an arm compares every column of the row.
        for (const arm of [select.larg, select.rarg]) {
          const list = isObj(arm) && Array.isArray(arm.targetList) ? arm.targetList : [];
          if (list.some((t) => isObj(t) && isObj(t.ResTarget) && isStar(t.ResTarget.val))) {
            whole('conditions');
          }
        }
      }
      if (isPlainDistinct(select.distinctClause)) {
        // DISTINCT compares the select list: a bare column only for equality among stored
        // values (as GROUP BY a column does); anything computed asks a question.
        for (const t of targets) {
          const val = isObj(t) && isObj(t.ResTarget) ? t.ResTarget.val : undefined;
          const bare = isObj(val) && isObj(val.ColumnRef) ? refOf(val.ColumnRef) : undefined;
          if (bare) out.grouped!.push(bare);
          else if (!(isObj(val) && isStar(val))) stack.push({ v: val, ctx: 'conditions' });
        }
      }
      for (const [key, child] of Object.entries(select)) {
        if (key === 'groupClause' && Array.isArray(child)) {
          // Grouping by a bare column reveals only equality; by an expression, a question.
          for (const item of child as unknown[]) {
            const val = byPosition(item);
            const bare = isObj(val) && isObj(val.ColumnRef) ? refOf(val.ColumnRef) : undefined;
            if (bare) out.grouped!.push(bare);
            stack.push({ v: val, ctx: bare ? 'neutral' : 'conditions' });
          }
        } else if ((key === 'sortClause' || key === 'distinctClause') && Array.isArray(child)) {
          for (const item of child as unknown[]) {
            const node = isObj(item) && isObj(item.SortBy) ? item.SortBy.node : item;
            stack.push({ v: byPosition(node), ctx: 'conditions' });
          }
        } else {
          stack.push({ v: child, ctx: CONDITION_KEYS.has(key) ? 'conditions' : ctx });
        }
      }
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
        : ctx;
      stack.push({ v: child, ctx: next });
    }
  }
  return out;
}

/** A column reference as written (undefined for `*`). */
function refOf(node: Obj): SourceRef | undefined {
  const fields = Array.isArray(node.fields) ? node.fields : [];
  if (fields.some((f) => isObj(f) && f.A_Star !== undefined)) return undefined;
  const parts = fields
    .map((f) => (isObj(f) && isObj(f.String) ? String(f.String.sval) : null))
    .filter((n): n is string => n !== null);
  const column = parts.at(-1);
  if (column === undefined) return undefined;
  return parts.length > 1 ? { qualifier: parts.at(-2)!, column } : { column };
}

function columnRef(
  node: Obj,
  ctx: Ctx,
  direct: boolean,
  relations: ReadonlySet<string>,
  add: (ctx: Ctx, ref: SourceRef, direct?: boolean) => void,
  whole: (ctx: Ctx, direct?: boolean) => void,
): void {
  const fields = Array.isArray(node.fields) ? node.fields : [];
  const names = fields.map((f) => (isObj(f) && isObj(f.String) ? String(f.String.sval) : null));
  const star = fields.some((f) => isObj(f) && f.A_Star !== undefined);
  if (star) {
    if (!direct) whole(ctx, false);
    return;
  }
  const parts = names.filter((n): n is string => n !== null);
  const column = parts.at(-1);
  if (column === undefined) return;
  // A bare name that is also a relation in the statement may be that relation's whole row
  // (`SELECT u FROM users u`); it may also be a column: both, to be safe.
  if (parts.length === 1 && relations.has(column.toLowerCase())) whole(ctx, direct);
  add(ctx, parts.length > 1 ? { qualifier: parts.at(-2)!, column } : { column }, direct);
}

/** Every name a relation goes by in the statements: tables, aliases, CTEs, functions in FROM. */
function collectRelations(
  root: unknown,
  into: Set<string>,
  reads: Array<{ schema?: string; name: string }> = [],
  relationAliases: Record<string, string[]> = {},
): void {
  eachNode(root, (v) => {
    if (isObj(v.RangeVar) && typeof v.RangeVar.relname === 'string') {
      into.add(v.RangeVar.relname.toLowerCase());
      const alias = isObj(v.RangeVar.alias) ? v.RangeVar.alias.aliasname : undefined;
      if (typeof alias === 'string') {
        const key = alias.toLowerCase();
        if (!Object.hasOwn(relationAliases, key)) relationAliases[key] = [];
        relationAliases[key]!.push(v.RangeVar.relname.toLowerCase());
      }
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
  });
}

/**
 * Calls `visit` on every object node of a parse tree, iteratively (the parser accepts trees
 * thousands of levels deep, which recursion would not survive).
 */
function eachNode(root: unknown, visit: (node: Obj) => void): void {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      for (const x of v as unknown[]) stack.push(x);
      continue;
    }
    if (!isObj(v)) continue;
    visit(v);
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
