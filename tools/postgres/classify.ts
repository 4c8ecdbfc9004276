import type { Lineage } from '../../policies/masking.js';
import { statementLineage } from './lineage.js';
import { loadModule, parseSync } from 'libpg-query';
import { copyToStdoutAsQuery } from './copy.js';
import { GovernanceError } from '../../server/kernel/errors.js';
import {
  adminFunctionReason,
  READ_FUNCTIONS,
  UNKNOWN_FUNCTIONS,
  WRITE_FUNCTIONS,
} from './functions.js';

/**
 * SQL statement classifier: the real PostgreSQL parser (libpg-query, WASM), then a walk over
 * EVERY node of the parse tree. A statement is as strict as the strictest thing anywhere in
 * it: DML hidden in a CTE, a file-reading function in FROM or in a subquery, a row lock.
 * Whatever cannot be proven harmless is `unknown` (allowlist, never a denylist alone).
 *
 * Known limits (name-based; the classifier has no catalog access):
 * - an unqualified name is assumed to resolve to the pg_catalog built-in; a user-defined
 *   overload or a schema placed before pg_catalog in search_path could shadow it (creating
 *   one needs DDL, which policy governs);
 * - attribute notation (`x.f` calls f(x) for any one-argument f, with no FuncCall node) is
 *   checked against the admin, write and unknown lists by name; an integration test checks
 *   that every one-argument pg_catalog function is on those lists or the read allowlist.
 *   Other names there are taken as columns, so a user-defined function called that way, or
 *   through an unqualified operator, a cast or a view, is treated as read;
 * - a schema-qualified operator outside pg_catalog is `unknown`;
 * - the parse assumes standard_conforming_strings=on; read and write pools force it at
 *   connection start, so the server reads the text the same way;
 * - the read-only session of read pools is the second line of defence for all of these.
 */

export type SqlOperation = 'read' | 'write' | 'ddl' | 'admin' | 'unknown';

/**
 * Every tag the classifier can put on a statement: `sleep` (calls pg_sleep*), `unbounded`
 * (TRUNCATE, UPDATE/DELETE/MERGE without a real condition). Policy files are checked against
 * this list, so a rule on `unbound` is refused rather than never matching.
 */
export const SQL_TAGS = ['sleep', 'unbounded'] as const;
export type SqlTag = (typeof SQL_TAGS)[number];

export interface StatementClass {
  /** The statement's node type, e.g. 'SelectStmt', 'DropStmt'. */
  kind: string;
  operation: SqlOperation;
  tags: string[];
  /** One line: why this operation, e.g. "statement is ddl (DropStmt)". */
  reason: string;
  /** The names it reaches, for a check against the target's catalog (catalog.ts). */
  refs: StatementRefs;
  /**
   * The finding without its unproven calls (functions on no list, which the catalog may show
   * to be trusted objects of the target): where catalog.ts starts from.
   */
  base: { operation: SqlOperation; reason: string };
}

/**
 * Every name in a statement that PostgreSQL resolves against the catalog, and that can run
 * code the parse tree does not show: a user function shadowing a built-in, `x.f` calling
 * f(x), an operator or a cast bound to a user function, a view, a row-security policy.
 * Names are as written (the parser lower-cases unquoted ones); schema '' when unqualified.
 */
export interface StatementRefs {
  functions: Array<readonly [schema: string, name: string]>;
  /** Names in attribute position (`x.name`, `(expr).name`): columns, or calls of name(x). */
  attributes: string[];
  /** Operator names, written or implied (`IN`, `CASE x WHEN`, `JOIN USING` compare with =). */
  operators: Array<readonly [schema: string, name: string]>;
  types: Array<readonly [schema: string, name: string]>;
  relations: Array<readonly [schema: string, name: string]>;
  /** Calls `unknown` only for being on no list: `read` if the target trusts the function. */
  unproven: Array<readonly [schema: string, name: string, reason: string]>;
}

export interface SqlClassification {
  /** The strictest over all statements: admin > unknown > ddl > write > read. */
  operation: SqlOperation;
  /** Union of the statements' tags. */
  tags: string[];
  statements: StatementClass[];
  /** The reason of the strictest statement. */
  reason: string;
  /**
   * For a single statement that the executor must run in another form: the SQL to run
   * (`COPY ... TO STDOUT` runs as its query, see copy.ts). Policy decides on the original.
   */
  runAs?: string;
  /** For a single statement postgres_query cannot run at all (COPY FROM STDIN): why. */
  unsupported?: string;
  /** The columns the statements mention, and where (for masking, lineage.ts). */
  lineage: Lineage;
}

const RANK: Record<SqlOperation, number> = { read: 0, write: 1, ddl: 2, unknown: 3, admin: 4 };

/** Strictest of two operations (admin > unknown > ddl > write > read). */
export function stricter(a: SqlOperation, b: SqlOperation): SqlOperation {
  return RANK[b] > RANK[a] ? b : a;
}

/**
 * Statement node types and their operation. A statement type not listed here is `unknown`
 * (a newer parser may add types; failing closed is the point).
 */
const STATEMENTS: Record<string, SqlOperation> = {
  SelectStmt: 'read',
  VariableShowStmt: 'read',
  // The body of `CREATE FUNCTION ... RETURN expr`; its expression is walked like any other.
  ReturnStmt: 'read',
  ExplainStmt: 'read',

  InsertStmt: 'write',
  UpdateStmt: 'write',
  DeleteStmt: 'write',
  MergeStmt: 'write',

  CreateSchemaStmt: 'ddl',
  AlterTableStmt: 'ddl',
  ReplicaIdentityStmt: 'ddl',
  AlterCollationStmt: 'ddl',
  AlterDomainStmt: 'ddl',
  CreateStmt: 'ddl',
  AlterTableMoveAllStmt: 'ddl',
  CreateForeignTableStmt: 'ddl',
  ImportForeignSchemaStmt: 'ddl',
  CreatePolicyStmt: 'ddl',
  AlterPolicyStmt: 'ddl',
  CreateTrigStmt: 'ddl',
  CreateSeqStmt: 'ddl',
  AlterSeqStmt: 'ddl',
  DefineStmt: 'ddl',
  CreateDomainStmt: 'ddl',
  CreateOpClassStmt: 'ddl',
  CreateOpFamilyStmt: 'ddl',
  AlterOpFamilyStmt: 'ddl',
  DropStmt: 'ddl',
  TruncateStmt: 'ddl',
  CommentStmt: 'ddl',
  SecLabelStmt: 'ddl',
  IndexStmt: 'ddl',
  CreateStatsStmt: 'ddl',
  AlterStatsStmt: 'ddl',
  CreateFunctionStmt: 'ddl',
  AlterFunctionStmt: 'ddl',
  RenameStmt: 'ddl',
  AlterObjectDependsStmt: 'ddl',
  AlterObjectSchemaStmt: 'ddl',
  AlterOperatorStmt: 'ddl',
  AlterTypeStmt: 'ddl',
  RuleStmt: 'ddl',
  CompositeTypeStmt: 'ddl',
  CreateEnumStmt: 'ddl',
  CreateRangeStmt: 'ddl',
  AlterEnumStmt: 'ddl',
  ViewStmt: 'ddl',
  CreateTableAsStmt: 'ddl',
  RefreshMatViewStmt: 'ddl',
  CreateConversionStmt: 'ddl',
  CreateCastStmt: 'ddl',
  CreateTransformStmt: 'ddl',
  AlterTSDictionaryStmt: 'ddl',
  AlterTSConfigurationStmt: 'ddl',

  // Transaction control: COMMIT inside a read-only wrapper was the reference server's bypass.
  TransactionStmt: 'admin',
  // SET/RESET, SET TRANSACTION, SET ROLE, SET SESSION AUTHORIZATION: session state outlives
  // the call on a pooled connection.
  VariableSetStmt: 'admin',
  ConstraintsSetStmt: 'admin',
  GrantStmt: 'admin',
  GrantRoleStmt: 'admin',
  AlterDefaultPrivilegesStmt: 'admin',
  AlterOwnerStmt: 'admin',
  CreateRoleStmt: 'admin',
  AlterRoleStmt: 'admin',
  AlterRoleSetStmt: 'admin',
  DropRoleStmt: 'admin',
  DropOwnedStmt: 'admin',
  ReassignOwnedStmt: 'admin',
  AlterSystemStmt: 'admin',
  AlterDatabaseStmt: 'admin',
  AlterDatabaseSetStmt: 'admin',
  AlterDatabaseRefreshCollStmt: 'admin',
  CreatedbStmt: 'admin',
  DropdbStmt: 'admin',
  CreateTableSpaceStmt: 'admin',
  DropTableSpaceStmt: 'admin',
  AlterTableSpaceOptionsStmt: 'admin',
  CreateExtensionStmt: 'admin',
  AlterExtensionStmt: 'admin',
  AlterExtensionContentsStmt: 'admin',
  CreateFdwStmt: 'admin',
  AlterFdwStmt: 'admin',
  CreateForeignServerStmt: 'admin',
  AlterForeignServerStmt: 'admin',
  CreateUserMappingStmt: 'admin',
  AlterUserMappingStmt: 'admin',
  DropUserMappingStmt: 'admin',
  CreateAmStmt: 'admin',
  CreateEventTrigStmt: 'admin',
  AlterEventTrigStmt: 'admin',
  CreatePLangStmt: 'admin',
  CreatePublicationStmt: 'admin',
  AlterPublicationStmt: 'admin',
  CreateSubscriptionStmt: 'admin',
  AlterSubscriptionStmt: 'admin',
  DropSubscriptionStmt: 'admin',
  LockStmt: 'admin',
  VacuumStmt: 'admin',
  ClusterStmt: 'admin',
  ReindexStmt: 'admin',
  CheckPointStmt: 'admin',
  LoadStmt: 'admin',
  DiscardStmt: 'admin',
  ListenStmt: 'admin',
  UnlistenStmt: 'admin',
  NotifyStmt: 'admin',
  // Prepared statements and cursors are session state on a pooled connection: a DELETE
  // prepared in one call would run in a later call classified only as "EXECUTE".
  PrepareStmt: 'admin',
  ExecuteStmt: 'admin',
  DeallocateStmt: 'admin',
  DeclareCursorStmt: 'admin',
  FetchStmt: 'admin',
  ClosePortalStmt: 'admin',
  CopyStmt: 'admin',

  // Code the classifier cannot see: a DO body is a string, a procedure's body is elsewhere.
  DoStmt: 'unknown',
  CallStmt: 'unknown',
};

/** Why a statement type is what it is, where "statement is X (Kind)" says too little. */
const STATEMENT_WHY: Record<string, string> = {
  TransactionStmt: 'transaction control',
  VariableSetStmt: 'changes session or transaction settings',
  ConstraintsSetStmt: 'changes transaction settings',
  GrantStmt: 'changes privileges',
  GrantRoleStmt: 'changes role membership',
  AlterOwnerStmt: 'changes ownership, a privilege change',
  LockStmt: 'locks tables',
  ListenStmt: 'registers for notifications on the session',
  NotifyStmt: 'sends a message to other sessions',
  PrepareStmt: 'creates a prepared statement that outlives the call',
  ExecuteStmt: 'runs a prepared statement the classifier cannot see',
  DeclareCursorStmt: 'opens a cursor that can outlive the call',
  DoStmt: 'runs an anonymous code block the classifier cannot see',
  CallStmt: 'calls a procedure whose body the classifier cannot see',
  TruncateStmt: 'removes every row',
};

/** Object types that are cluster-level or load code: dropping or renaming them is admin. */
const ADMIN_OBJECTS = new Set([
  'OBJECT_ROLE',
  'OBJECT_DATABASE',
  'OBJECT_TABLESPACE',
  'OBJECT_EXTENSION',
  'OBJECT_EVENT_TRIGGER',
  'OBJECT_FDW',
  'OBJECT_FOREIGN_SERVER',
  'OBJECT_USER_MAPPING',
  'OBJECT_PUBLICATION',
  'OBJECT_SUBSCRIPTION',
  'OBJECT_LANGUAGE',
  'OBJECT_ACCESS_METHOD',
]);

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

/** Accumulates the strictest finding for one statement; the first reason wins a tie. */
class Finding {
  operation: SqlOperation = 'read';
  reason = '';
  readonly base = { operation: 'read' as SqlOperation, reason: '' };
  readonly tags = new Set<SqlTag>();
  private readonly seen = new Set<string>();
  readonly refs: StatementRefs = {
    functions: [],
    attributes: [],
    operators: [],
    types: [],
    relations: [],
    unproven: [],
  };

  /** A call that is `unknown` only for being on no list (see StatementRefs.unproven). */
  unprovenCall(parts: string[], reason: string): void {
    const name = parts[parts.length - 1] ?? '';
    const schema = parts.length >= 2 ? (parts[parts.length - 2] ?? '') : '';
    this.refs.unproven.push([schema, name, reason] as const);
    this.raise('unknown', reason, true);
  }

  /** Record a catalog name once (catalog.ts checks them against the target's catalog). */
  ref(kind: 'functions' | 'operators' | 'types' | 'relations', parts: string[]): void {
    const name = parts[parts.length - 1] ?? '';
    if (name === '') return;
    const schema = parts.length >= 2 ? (parts[parts.length - 2] ?? '') : '';
    const key = `${kind}\0${schema}\0${name}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.refs[kind].push([schema, name] as const);
  }

  attribute(name: string): void {
    if (this.seen.has(`a\0${name}`)) return;
    this.seen.add(`a\0${name}`);
    this.refs.attributes.push(name);
  }

  raise(op: SqlOperation, reason: string, unproven = false): void {
    if (this.reason === '' || RANK[op] > RANK[this.operation]) {
      this.operation = op;
      this.reason = reason;
    }
    if (!unproven && (this.base.reason === '' || RANK[op] > RANK[this.base.operation])) {
      this.base.operation = op;
      this.base.reason = reason;
    }
  }
}

/** One node to visit: `executes` is false under a plain EXPLAIN (planned, not run). */
interface Work {
  value: unknown;
  executes: boolean;
  /** Prefix for reasons, e.g. "EXPLAIN ANALYZE runs it: ". */
  via: string;
}

const FALSE_WORDS = /^(f|fa|fal|fals|false|n|no|of|off|0)$/i;

/**
 * EXPLAIN runs the statement when ANALYZE is on. Any analyze option that is not an explicit
 * false counts (`EXPLAIN (ANALYZE false, ANALYZE) DELETE` must not slip through).
 */
function explainAnalyzes(options: unknown): boolean {
  if (!Array.isArray(options)) return false;
  return options.some((o) => {
    const d = isObj(o) ? o.DefElem : undefined;
    if (!isObj(d) || str(d.defname).toLowerCase() !== 'analyze') return false;
    const arg = d.arg;
    if (!isObj(arg)) return true;
    if (isObj(arg.String)) return !FALSE_WORDS.test(str(arg.String.sval));
    if (isObj(arg.Integer)) return Number(arg.Integer.ival ?? 0) !== 0;
    if (isObj(arg.Boolean)) return arg.Boolean.boolval === true;
    return true;
  });
}

/** Deep equality ignoring `location`, for "WHERE 1 = 1"-style conditions. */
function sameTree(a: unknown, b: unknown): boolean {
  const strip = (v: unknown): string =>
    JSON.stringify(v, (k, val: unknown) => (k === 'location' ? undefined : val));
  return strip(a) === strip(b);
}

/**
 * A WHERE that matches every row: `WHERE true`, `WHERE 1 = 1`, `WHERE id = id`, or an OR
 * with such an arm. Dodging the "no WHERE" check this way still gets the unbounded tag.
 */
function triviallyTrue(where: unknown): boolean {
  if (!isObj(where)) return false;
  const c = where.A_Const;
  if (isObj(c) && isObj(c.boolval)) return c.boolval.boolval === true;
  const e = where.A_Expr;
  if (isObj(e) && e.kind === 'AEXPR_OP' && Array.isArray(e.name) && e.name.length === 1) {
    const op = isObj(e.name[0]) && isObj(e.name[0].String) ? e.name[0].String.sval : undefined;
    if ((op === '=' || op === '>=' || op === '<=') && sameTree(e.lexpr, e.rexpr)) return true;
  }
  const b = where.BoolExpr;
  if (isObj(b) && b.boolop === 'OR_EXPR' && Array.isArray(b.args))
    return b.args.some(triviallyTrue);
  return false;
}

const SLEEP_FUNCTIONS = new Set(['pg_sleep', 'pg_sleep_for', 'pg_sleep_until']);

function fileView(rel: Obj, finding: Finding, via: string): void {
  const schema = str(rel.schemaname);
  if (schema !== '' && schema !== 'pg_catalog') return;
  const name = str(rel.relname).toLowerCase();
  const what = FILE_VIEWS.has(name)
    ? 'a view over server configuration files'
    : SESSION_VIEWS.get(name);
  if (what) finding.raise('admin', `${via}reads ${str(rel.relname)}, ${what}`);
}

/**
 * `table_to_xml('pg_stat_activity', ...)` and `schema_to_xml('pg_catalog', ...)` read
 * relations named by a value, invisible to the tree: the views above must not be reachable
 * through them. A name given as a constant is checked like a FROM item; a name computed at
 * run time (a column, an oid, an expression) could be anything, so the call is `unknown`.
 */
function relationByName(node: Obj, finding: Finding, via: string): void {
  const fn = funcName(node.funcname).at(-1)?.toLowerCase() ?? '';
  const byTable = TABLE_BY_NAME.has(fn);
  if (!byTable && !SCHEMA_BY_NAME.has(fn)) return;
  const arg = asArray(node.args)[0];
  const text = constantText(arg);
  if (text === undefined) {
    finding.raise('unknown', `${via}calls ${fn}() on a relation named at run time`);
    return;
  }
  if (/^\s*\d+\s*$/.test(text)) {
    // `'16385'::regclass` is an oid: a relation named by number is named at run time too.
    finding.raise('unknown', `${via}calls ${fn}() on a relation given by its oid`);
    return;
  }
  const parts = text.split('.').map((p) => p.replace(/"/g, '').trim().toLowerCase());
  if (byTable) {
    const name = parts.at(-1) ?? '';
    const schema = parts.length > 1 ? (parts.at(-2) ?? '') : '';
    fileView({ relname: name, schemaname: schema }, finding, `${via}calls ${fn}(), which `);
    return;
  }
  const schema = parts.at(-1) ?? '';
  if (schema === 'pg_catalog' || schema === 'information_schema' || schema.startsWith('pg_')) {
    finding.raise('admin', `${via}calls ${fn}() on the system schema ${schema}`);
  }
}

const TABLE_BY_NAME = new Set(['table_to_xml', 'table_to_xmlschema', 'table_to_xml_and_xmlschema']);
const SCHEMA_BY_NAME = new Set([
  'schema_to_xml',
  'schema_to_xmlschema',
  'schema_to_xml_and_xmlschema',
]);

/** A string constant, or a cast of one (`'t'::regclass`); undefined for anything else. */
function constantText(v: unknown): string | undefined {
  if (!isObj(v)) return undefined;
  if (isObj(v.TypeCast)) return constantText(v.TypeCast.arg);
  if (isObj(v.A_Const) && isObj(v.A_Const.sval)) {
    const s = v.A_Const.sval.sval;
    return typeof s === 'string' ? s : '';
  }
  return undefined;
}

const FILE_VIEWS = new Set(['pg_file_settings', 'pg_hba_file_rules', 'pg_ident_file_mappings']);

/**
 * Views that show other sessions: every gateway session on a target logs in as the same
 * role, and PostgreSQL shows a role the statements of all its backends, so an agent could
 * read what other agents run, literal values included (found by a blind red-team pass).
 */
const SESSION_VIEWS: ReadonlyMap<string, string> = new Map([
  ['pg_stat_activity', "a view of other sessions' statements"],
  ['pg_stat_ssl', "a view of other sessions' client certificates"],
  ['pg_stat_gssapi', "a view of other sessions' authenticated principals"],
]);

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function funcName(funcname: unknown): string[] {
  if (!Array.isArray(funcname)) return [];
  return funcname.map((p) => (isObj(p) && isObj(p.String) ? str(p.String.sval) : ''));
}

/**
 * A name used in attribute position (`x.name`), if it names a function known to act: the
 * admin, write and unknown lists, matched like calls (any case, prefixes included). Names
 * that are not on them are taken as columns or fields: the allowlist that guards FuncCall
 * cannot apply here, since `t.name` or `t.length` are ordinary columns far more often than
 * calls. Table-driven from pg_proc (PostgreSQL 15): every pg_catalog function callable with
 * one argument is either on the read allowlist or on these lists, except a few with
 * arguments of type internal, which SQL cannot pass.
 */
function attributeCall(name: string): { operation: SqlOperation; reason: string } | undefined {
  return listedFunction(name, `${name}(), called as an attribute (x.${name})`);
}

/**
 * The admin, write and unknown lists. They match case-insensitively and in any schema:
 * `"PG_READ_FILE"` or `ext.dblink_exec` must not get past by spelling or by schema.
 */
function listedFunction(
  name: string,
  shown: string,
): { operation: SqlOperation; reason: string } | undefined {
  const lower = name.toLowerCase();
  const admin = adminFunctionReason(lower);
  if (admin !== undefined) return { operation: 'admin', reason: `calls ${shown}, which ${admin}` };
  const write = WRITE_FUNCTIONS.get(lower);
  if (write !== undefined) return { operation: 'write', reason: `calls ${shown}, which ${write}` };
  const unknown = UNKNOWN_FUNCTIONS.get(lower);
  if (unknown !== undefined)
    return { operation: 'unknown', reason: `calls ${shown}, which ${unknown}` };
  return undefined;
}

/**
 * A function call's operation; `read` only for allowlisted pg_catalog built-ins. `unproven`
 * marks an `unknown` that is only for being on no list (the target may trust it).
 */
export function classifyFunction(parts: string[]): {
  operation: SqlOperation;
  reason: string;
  unproven?: true;
} {
  const name = parts[parts.length - 1] ?? '';
  const shown = `${parts.join('.')}()`;
  const listed = listedFunction(name, shown);
  if (listed) return listed;
  // Any schema other than pg_catalog may hold a user function named like a built-in.
  const schemaOk = parts.length === 1 || (parts.length === 2 && parts[0] === 'pg_catalog');
  if (schemaOk && READ_FUNCTIONS.has(name)) return { operation: 'read', reason: '' };
  return {
    operation: 'unknown',
    unproven: true,
    reason: schemaOk
      ? `calls ${shown}, which is not a known read-only built-in`
      : `calls ${shown}, a function outside pg_catalog`,
  };
}

/** Classify one top-level statement node ({ SelectStmt: {...} }) by walking all of it. */
function classifyStatement(stmt: Obj): StatementClass {
  const kind = Object.keys(stmt)[0] ?? 'unknown';
  const finding = new Finding();
  // Iterative walk: a deeply nested statement must not overflow the JS stack.
  const stack: Work[] = [{ value: stmt, executes: true, via: '' }];
  let top = true;
  while (stack.length > 0) {
    const { value, executes, via } = stack.pop() as Work;
    if (Array.isArray(value)) {
      for (const v of value) stack.push({ value: v, executes, via });
      continue;
    }
    if (!isObj(value)) continue;

    // Keys seen on any object, wrapped or not: a set operation's left SELECT carries its
    // INTO unwrapped (`SELECT * INTO t FROM a UNION SELECT * FROM b`).
    if (executes && isObj(value.intoClause))
      finding.raise('ddl', `${via}SELECT INTO creates a table`);
    if (executes && Array.isArray(value.lockingClause) && value.lockingClause.length > 0)
      finding.raise('write', `${via}FOR UPDATE/SHARE locks rows`);
    // A statement's own relation is a bare RangeVar (no wrapper key): `COPY pg_hba_file_rules
    // TO STDOUT` names a file view there.
    if (typeof value.relname === 'string') {
      fileView(value, finding, via);
      finding.ref('relations', [str(value.schemaname), str(value.relname)]);
    }
    // Type names sit unwrapped under `typeName` (casts, column definition lists): a cast to a
    // domain runs its CHECK, a cast from or to a user type may run a user function.
    if (isObj(value.typeName)) finding.ref('types', funcName(value.typeName.names));

    for (const [key, child] of Object.entries(value)) {
      // Node wrappers are the only PascalCase keys ({ FuncCall: {...} }); fields are camel/snake.
      if (!/^[A-Z]/.test(key) || !isObj(child)) {
        stack.push({ value: child, executes, via });
        continue;
      }
      const isTop = top && value === stmt;
      visitNode(key, child, { executes, via }, isTop, finding, stack);
    }
    top = false;
  }
  if (finding.reason === '') finding.raise('read', `statement is read (${kind})`);
  if (finding.base.reason === '') finding.base.reason = `statement is read (${kind})`;
  return {
    kind,
    operation: finding.operation,
    tags: [...finding.tags].sort(),
    reason: finding.reason,
    refs: finding.refs,
    base: { ...finding.base },
  };
}

function visitNode(
  type: string,
  node: Obj,
  ctx: { executes: boolean; via: string },
  isTop: boolean,
  finding: Finding,
  stack: Work[],
): void {
  const { executes, via } = ctx;

  if (type === 'FuncCall') {
    finding.ref('functions', funcName(node.funcname));
    const f = classifyFunction(funcName(node.funcname));
    // Functions count even under plain EXPLAIN: the planner folds immutable and estimates
    // stable calls, so `EXPLAIN SELECT f()` can run f.
    if (f.unproven) finding.unprovenCall(funcName(node.funcname), via + f.reason);
    else if (f.operation !== 'read') finding.raise(f.operation, via + f.reason);
    // A read that only holds its connection; tagged so a policy can refuse it where the
    // server cannot bound it (the demo's embedded database ignores statement_timeout).
    if (SLEEP_FUNCTIONS.has(funcName(node.funcname).at(-1)?.toLowerCase() ?? '')) {
      finding.tags.add('sleep');
    }
    relationByName(node, finding, via);
    stack.push({ value: node, executes, via });
    return;
  }

  // Attribute notation is function call notation too: PostgreSQL reads `x.f` and `(expr).f`
  // as f(x) whenever f takes one argument, so `SELECT ('/etc/passwd'::text).pg_read_file` and
  // `SELECT u.pg_read_file FROM unnest(ARRAY['/etc/passwd']) u` call pg_read_file without a
  // FuncCall node. Every name in such a position (after the first of a dotted column
  // reference, or a field selected from an expression) is checked against the functions
  // known to act; anything else is a column or field name and reads.
  if (type === 'ColumnRef' || type === 'A_Indirection') {
    const names = (type === 'ColumnRef' ? asArray(node.fields).slice(1) : asArray(node.indirection))
      .map((p) => (isObj(p) && isObj(p.String) ? str(p.String.sval) : ''))
      .filter((n) => n !== '');
    for (const name of names) {
      finding.attribute(name);
      const f = attributeCall(name);
      if (f) finding.raise(f.operation, `${via}${f.reason}`);
    }
    stack.push({ value: node, executes, via });
    return;
  }

  // Views over the server's own files: the same data the admin-listed file functions give.
  if (type === 'RangeVar') fileView(node, finding, via);
  if (type === 'TypeName') finding.ref('types', funcName(node.names));
  // Comparisons with no operator in the tree still resolve `=` by name for their operand
  // types: `CASE x WHEN`, `JOIN ... USING` / `NATURAL JOIN`.
  if (
    (type === 'CaseExpr' && node.arg !== undefined) ||
    (type === 'JoinExpr' && (node.isNatural === true || node.usingClause !== undefined))
  ) {
    finding.ref('operators', ['=']);
  }

  // An operator named with a schema (`OPERATOR(public.===)`) outside pg_catalog is a user
  // function under another name.
  const opName =
    type === 'A_Expr'
      ? node.name
      : type === 'SubLink'
        ? node.operName
        : type === 'SortBy'
          ? node.useOp
          : undefined;
  if (opName !== undefined) {
    const parts = funcName(opName);
    finding.ref('operators', parts);
    // `schema.op` or `catalog.schema.op`: anything but pg_catalog is a user function.
    if (parts.length >= 2 && parts[parts.length - 2] !== 'pg_catalog') {
      finding.raise('unknown', `${via}uses operator ${parts.join('.')}, outside pg_catalog`);
    }
  }

  if (type === 'ExplainStmt') {
    const analyze = explainAnalyzes(node.options);
    if (isTop) finding.raise('read', 'statement is read (ExplainStmt): EXPLAIN without ANALYZE');
    stack.push({
      value: node.query,
      executes: executes && analyze,
      via: analyze ? `${via}EXPLAIN ANALYZE runs it: ` : via,
    });
    return;
  }

  if (type in STATEMENTS || type.endsWith('Stmt')) {
    if (executes) {
      const { operation, reason } = statementOperation(type, node, isTop);
      finding.raise(operation, via + reason);
      if ((type === 'UpdateStmt' || type === 'DeleteStmt') && unbounded(node))
        finding.tags.add('unbounded');
      if (type === 'MergeStmt' && mergeUnbounded(node)) finding.tags.add('unbounded');
      if (type === 'TruncateStmt') finding.tags.add('unbounded');
    }
    if (type === 'CallStmt' && isObj(node.funccall)) {
      // CALL's target is an unwrapped FuncCall; an admin-named procedure is still admin.
      const f = classifyFunction(funcName(node.funccall.funcname));
      if (f.operation === 'admin') finding.raise('admin', via + f.reason);
    }
    stack.push({ value: node, executes, via });
    return;
  }

  // ALTER TABLE ... OWNER TO hands over every privilege on the table, like GRANT.
  if (type === 'AlterTableCmd' && node.subtype === 'AT_ChangeOwner' && executes)
    finding.raise('admin', `${via}ALTER ... OWNER TO changes ownership, a privilege change`);

  stack.push({ value: node, executes, via });
}

/**
 * Best effort: no WHERE, a WHERE that is trivially true (`true`, `x = x`, an OR with such an
 * arm), or one that never mentions a column (`1 < 2`, `NOT false`, `true AND true`), so its
 * value cannot depend on the row. A condition on columns that holds for every row (`id IS
 * NOT NULL`) is beyond a parse tree; deny writes outright, or require approval, where that
 * matters.
 */
function unbounded(node: Obj): boolean {
  const where = node.whereClause;
  return where === undefined || triviallyTrue(where) || !mentionsColumn(where);
}

/** MERGE touches rows by its join condition: the same test on ON. */
function mergeUnbounded(node: Obj): boolean {
  return (
    node.joinCondition === undefined ||
    triviallyTrue(node.joinCondition) ||
    !mentionsColumn(node.joinCondition)
  );
}

function mentionsColumn(tree: unknown): boolean {
  const stack = [tree];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) stack.push(...(v as unknown[]));
    else if (isObj(v)) {
      if ('ColumnRef' in v) return true;
      stack.push(...Object.values(v));
    }
  }
  return false;
}

function statementOperation(
  type: string,
  node: Obj,
  isTop: boolean,
): { operation: SqlOperation; reason: string } {
  let operation: SqlOperation = STATEMENTS[type] ?? 'unknown';
  let why = STATEMENT_WHY[type];

  if (type === 'CopyStmt') {
    if (node.is_program === true) why = 'COPY ... PROGRAM runs a shell command on the server';
    else if (typeof node.filename === 'string') why = 'COPY reads or writes a server file';
    else if (node.is_from === true) why = 'COPY FROM loads rows through the copy protocol';
    else {
      // COPY table|(query) TO STDOUT only reads; the query itself is walked like any other.
      operation = 'read';
      why = 'COPY TO STDOUT reads';
    }
  } else if (type === 'DropStmt' && ADMIN_OBJECTS.has(str(node.removeType))) {
    operation = 'admin';
    why = `drops a cluster-level or code-loading object (${str(node.removeType)})`;
  } else if (
    (type === 'RenameStmt' && ADMIN_OBJECTS.has(str(node.renameType))) ||
    (type === 'AlterObjectSchemaStmt' && ADMIN_OBJECTS.has(str(node.objectType)))
  ) {
    operation = 'admin';
    why = 'alters a cluster-level or code-loading object';
  } else if (type === 'VacuumStmt') {
    why = node.is_vacuumcmd === true ? 'VACUUM' : 'ANALYZE writes statistics';
  }

  const base = isTop ? `statement is ${operation} (${type})` : `contains ${type} (${operation})`;
  return { operation, reason: why === undefined ? base : `${base}: ${why}` };
}

let loading: Promise<void> | undefined;

/** Load the WASM parser once, on first use; a failed load is retried on the next call. */
async function ensureParser(): Promise<void> {
  loading ??= loadModule().catch((err: unknown) => {
    loading = undefined;
    throw err;
  });
  await loading;
}

function invalid(position: number, message: string, cause?: unknown): GovernanceError {
  return new GovernanceError('INVALID_INPUT', `syntax error at position ${position}: ${message}`, {
    cause,
  });
}

/**
 * Parse and classify a SQL string (one or more statements). A syntax error or an input with
 * no statement throws GovernanceError('INVALID_INPUT', 'syntax error at position N: ...'),
 * N counted in characters from 1, as PostgreSQL reports positions.
 */
export async function classifySql(sql: string): Promise<SqlClassification> {
  await ensureParser();
  return classifyParsed(sql);
}

/** A lone UTF-16 surrogate: half of a pair, which no encoding can carry as text. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Refuses a string that the parser and the server would read differently: a lone surrogate
 * (the WASM parser's UTF-8 length count and its encoder disagree on it, so the parser saw a
 * shorter string than `pg` sent, with U+FFFD in place of each surrogate: `SELECT 1 /* \ud800
 * *\/; DELETE ...` classified as the SELECT alone) or a NUL (the parser reads a C string).
 * Exported for the tool's other text fields (params).
 */
export function assertWellFormed(text: string, what: string): void {
  const nul = text.indexOf('\0');
  if (nul >= 0) {
    throw new GovernanceError('INVALID_INPUT', `${what}: NUL character at position ${nul + 1}`);
  }
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    throw new GovernanceError(
      'INVALID_INPUT',
      `${what}: ill-formed Unicode (a lone UTF-16 surrogate) at position ${lone.index + 1}`,
    );
  }
}

/** The same as classifySql, once the parser is loaded (catalog.ts classifies view bodies). */
export function classifyParsed(sql: string): SqlClassification {
  // The WASM parser reads a C string: everything after a NUL would be invisible to it.
  const nul = sql.indexOf('\0');
  if (nul >= 0) throw invalid(nul + 1, 'NUL character in the statement');
  assertWellFormed(sql, 'sql');
  if (sql.trim() === '') throw invalid(1, 'no statement (empty or only comments)');

  const stmts = parseWhole(sql);
  const statements = stmts.map((s) => {
    if (!isObj(s.stmt)) throw invalid(1, 'statement could not be parsed');
    return classifyStatement(s.stmt);
  });
  if (statements.length === 0) throw invalid(1, 'no statement (empty or only comments)');

  let strictest = statements[0] as StatementClass;
  for (const s of statements) if (RANK[s.operation] > RANK[strictest.operation]) strictest = s;
  const tags = [...new Set(statements.flatMap((s) => s.tags))].sort();
  return {
    operation: strictest.operation,
    tags,
    statements,
    reason: strictest.reason,
    lineage: statementLineage(stmts.map((s) => s.stmt)),
    ...copyForm(sql, stmts),
  };
}

type ParsedStmt = { stmt?: unknown; stmt_location?: number; stmt_len?: number };

/** Parsed after the text, so that it shows where the parser's copy of the text ended. */
const MARKER = '\n;SELECT 1';

/**
 * Parse, and prove the parse covered every byte the server will read: the text is parsed
 * with a marker statement after it, which must come back as the last statement, starting
 * exactly where the UTF-8 text plus its newline and semicolon end. A copy into the parser
 * that lost or gained bytes anywhere (the lone-surrogate differential, or one nobody has
 * found yet) moves or hides the marker, and the statement is refused. The marker costs no
 * second parse; the text is parsed alone only to report a syntax error at its position.
 */
function parseWhole(sql: string): ParsedStmt[] {
  let stmts: ParsedStmt[];
  try {
    stmts = (parseSync(sql + MARKER) as { stmts?: ParsedStmt[] }).stmts ?? [];
  } catch (err) {
    try {
      parseSync(sql);
    } catch (own) {
      const details = (own as { sqlDetails?: { message?: string; cursorPosition?: number } })
        .sqlDetails;
      if (details && typeof details.cursorPosition === 'number') {
        throw invalid(details.cursorPosition + 1, details.message ?? 'syntax error', own);
      }
      // No parser position (e.g. a tree too deep to return): refuse rather than guess.
      throw invalid(1, 'statement could not be parsed', own);
    }
    throw invalid(1, 'statement could not be parsed', err);
  }
  const bytes = Buffer.byteLength(sql, 'utf8');
  const marker = stmts.pop();
  if (
    marker?.stmt_location !== bytes + MARKER.length - 'SELECT 1'.length ||
    !isMarker(marker.stmt)
  ) {
    throw new GovernanceError(
      'INVALID_INPUT',
      'the SQL parser did not read the whole statement; refusing to run what was not classified',
    );
  }
  // The last statement's length ran up to the marker's semicolon: end it with the text.
  const last = stmts.at(-1);
  if (last) last.stmt_len = bytes - (last.stmt_location ?? 0);
  return stmts;
}

let markerTree: unknown;
function isMarker(stmt: unknown): boolean {
  markerTree ??= parseSync('SELECT 1').stmts?.[0]?.stmt;
  return sameTree(stmt, markerTree);
}

/** COPY through STDIN/STDOUT needs the copy sub-protocol; see copy.ts. */
function copyForm(
  sql: string,
  stmts: Array<{ stmt?: unknown; stmt_location?: number; stmt_len?: number }>,
): { runAs?: string; unsupported?: string } {
  const only = stmts.length === 1 ? stmts[0] : undefined;
  const copy = isObj(only?.stmt) && isObj(only.stmt.CopyStmt) ? only.stmt.CopyStmt : undefined;
  if (!copy || copy.is_program === true || typeof copy.filename === 'string') return {};
  if (copy.is_from === true) {
    return { unsupported: 'COPY FROM STDIN is not supported by postgres_query: use INSERT' };
  }
  const start = only?.stmt_location ?? 0;
  const end = only?.stmt_len !== undefined ? start + only.stmt_len : Buffer.byteLength(sql);
  const runAs = copyToStdoutAsQuery(sql, copy, start, end);
  return runAs
    ? { runAs }
    : { unsupported: 'this COPY TO STDOUT form is not supported by postgres_query: use SELECT' };
}
