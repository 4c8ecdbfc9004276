import type pg from 'pg';
import {
  classifyParsed,
  stricter,
  type SqlClassification,
  type SqlOperation,
  type StatementClass,
  type StatementRefs,
} from './classify.js';
import { GovernanceError } from '../../server/kernel/errors.js';
import { formatDuration } from '../../server/kernel/units.js';
import { connectError } from './check.js';
import type { PostgresPools, ResolvedPostgresTarget } from './pool.js';
import { clientStream } from './wire-guard.js';

/**
 * What the parse tree alone cannot tell: which names in a statement resolve, on this target,
 * to code someone put in the database. The classifier's allowlist proves built-ins safe by
 * name; PostgreSQL resolves names against the catalog, so on a real database:
 *
 * - `SELECT lower(5)` calls `public.lower(int)` if someone created it (no built-in fits);
 * - `SELECT (x).crosstab2` calls crosstab2(x) from the tablefunc extension (it runs SQL text);
 * - `SELECT 1 === 2`, `WHERE a = b` for a user operator, `'x'::checked_domain` (its CHECK
 *   runs), a cast bound to a user function, a view or a row-security policy that calls one:
 *   each runs a function body the read-only session does not stop (`COPY ... TO PROGRAM`
 *   inside a function declared IMMUTABLE still runs; volatility is not safety).
 *
 * So a statement is `read` only when everything it reaches is proven safe: a built-in (an
 * object created by initdb, oid below 16384), or an object the target's `trusted` list names.
 * Anything else it reaches makes it `unknown`. Names are matched conservatively: any schema
 * (search_path is the role's, and can change), any argument types, case-insensitively.
 *
 * The catalog is read once and cached per target; each call first checks a fingerprint of
 * the catalogs involved (one short query) and reloads on change, so an object created a
 * moment ago is seen by the next call.
 */

/** Objects with an oid below this were created by initdb: the built-ins. */
const FIRST_NORMAL_OID = 16384;

export interface CatalogObject {
  schema: string;
  name: string;
}

interface RelationRisk extends CatalogObject {
  kind: 'view' | 'foreign' | 'row-security' | 'typed';
  /** A view's SQL, or the USING expressions of its row-security policies. */
  bodies: string[];
  why: string;
}

export interface ViewDefinition extends CatalogObject {
  definition: string;
  columns: string[];
}

export interface TargetCatalog {
  fingerprint: string;
  functions: ReadonlyMap<string, CatalogObject[]>;
  /** Functions the target's `trusted` list names (kept apart: a trusted one may be called). */
  trustedFunctions: ReadonlyMap<string, CatalogObject[]>;
  /** User operators that can bind to built-in operand types (so to any plain value). */
  operators: ReadonlyMap<string, CatalogObject[]>;
  /** User types (and any type a user cast involves) that run user code when cast or compared. */
  types: ReadonlyMap<string, Array<CatalogObject & { why: string }>>;
  relations: ReadonlyMap<string, RelationRisk[]>;
  /**
   * Every user view and materialized view, trusted or not, by lower-case name: its definition
   * and column names, for masking to follow a condition on a view column (views.ts).
   */
  views: ReadonlyMap<string, ViewDefinition[]>;
  /** Views and policies already classified, per body text. */
  readonly bodies: Map<string, { operation: SqlOperation; reason: string }>;
}

/**
 * `trusted` entries from the target config: `extension:NAME` (every object of an extension,
 * e.g. `extension:citext`) or `schema.name` (a function, operator, type or relation).
 */
export interface TrustList {
  extensions: ReadonlySet<string>;
  objects: ReadonlySet<string>;
}

export function trustList(entries: readonly string[]): TrustList {
  const extensions = new Set<string>();
  const objects = new Set<string>();
  for (const e of entries) {
    if (e.startsWith('extension:')) extensions.add(e.slice('extension:'.length).toLowerCase());
    else objects.add(e.toLowerCase());
  }
  return { extensions, objects };
}

/** Cheap enough to run before every call: user objects are a range scan on each oid index. */
const FINGERPRINT_SQL = `
SELECT concat_ws('/',
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_proc WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_operator WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_type WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_cast WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_class WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_rewrite WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_policy WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) || ':' || coalesce(sum(oid::int8), 0) FROM pg_catalog.pg_constraint WHERE oid >= ${FIRST_NORMAL_OID}),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) FROM pg_catalog.pg_inherits),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) FROM pg_catalog.pg_range),
  (SELECT count(*) || ':' || coalesce(max(xmin::text::int8), 0) FROM pg_catalog.pg_extension),
  (SELECT count(*) || ':' || coalesce(max(a.xmin::text::int8), 0) FROM pg_catalog.pg_attribute a
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE c.relkind IN ('v', 'm') AND c.oid >= ${FIRST_NORMAL_OID})
) AS fingerprint`;

/**
 * Everything non-built-in that can run code on a read, with the extension each object
 * belongs to (for `trusted: [extension:NAME]`). One round trip.
 */
const SNAPSHOT_SQL = `
WITH RECURSIVE ext AS (
  SELECT d.classid, d.objid, e.extname::text AS extname
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_extension e ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
   WHERE d.deptype = 'e'
),
builtin_like AS (
  -- Operand types a plain value can have: built-ins, domains (they coerce from their base
  -- type) and pseudo-types (anyelement matches everything).
  SELECT t.oid FROM pg_catalog.pg_type t WHERE t.oid < ${FIRST_NORMAL_OID} OR t.typtype IN ('d', 'p')
),
user_ops AS (
  SELECT o.oid, n.nspname::text AS schema, o.oprname::text AS name, o.oprleft, o.oprright,
         (o.oprleft = 0 OR o.oprleft IN (SELECT oid FROM builtin_like))
           AND (o.oprright = 0 OR o.oprright IN (SELECT oid FROM builtin_like)) AS on_builtin
    FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
   WHERE o.oid >= ${FIRST_NORMAL_OID}
),
user_casts AS (
  SELECT c.oid, c.castsource, c.casttarget FROM pg_catalog.pg_cast c
   WHERE c.oid >= ${FIRST_NORMAL_OID} AND c.castfunc <> 0 AND c.castfunc >= ${FIRST_NORMAL_OID}
),
risky_types AS (
  SELECT t.oid, n.nspname::text AS schema, t.typname::text AS name,
         CASE
           -- A CHECK runs on casts and on literals coerced to the domain (COALESCE(col, '5')),
           -- so it matters when it calls a function or operator someone defined.
           WHEN t.typtype = 'd' AND EXISTS (
                  SELECT 1 FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_depend d
                    ON d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid = k.oid
                   WHERE k.contypid = t.oid AND k.contype = 'c' AND d.refobjid >= ${FIRST_NORMAL_OID}
                     AND d.refclassid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_operator'::regclass))
             THEN 'a domain whose CHECK constraint runs on every cast to it'
           WHEN t.typtype = 'c' AND EXISTS (
                  SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type f ON f.oid = a.atttypid
                   WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped AND f.oid >= ${FIRST_NORMAL_OID}
                     AND ((f.typtype = 'd' AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.contypid = f.oid AND k.contype = 'c' AND k.conbin IS NOT NULL))
                          OR (f.typtype = 'b' AND f.typcategory <> 'A')))
             THEN 'a row type with a field that runs code when cast to it'
           WHEN t.typtype = 'd' AND t.typbasetype >= ${FIRST_NORMAL_OID} THEN 'a domain over a user-defined type'
           WHEN t.typtype = 'b' AND t.typcategory <> 'A' AND t.oid >= ${FIRST_NORMAL_OID} THEN 'a base type with its own input and output functions'
           WHEN t.typtype IN ('r', 'm') AND EXISTS (SELECT 1 FROM pg_catalog.pg_range r WHERE (r.rngtypid = t.oid OR r.rngmultitypid = t.oid)
                AND (r.rngcanonical >= ${FIRST_NORMAL_OID} OR r.rngsubdiff >= ${FIRST_NORMAL_OID} OR r.rngsubtype >= ${FIRST_NORMAL_OID}))
             THEN 'a range type with user-defined support functions'
           WHEN t.oid >= ${FIRST_NORMAL_OID} AND EXISTS (SELECT 1 FROM user_ops o WHERE o.oprleft = t.oid OR o.oprright = t.oid)
             THEN 'a type with user-defined operators'
           WHEN t.oid >= ${FIRST_NORMAL_OID} AND EXISTS (SELECT 1 FROM user_casts c WHERE c.castsource = t.oid OR c.casttarget = t.oid)
             THEN 'a type with a cast through a user-defined function'
           WHEN t.oid < ${FIRST_NORMAL_OID}
             THEN 'a built-in type with a cast through a user-defined function (made by a superuser)'
         END AS why,
         x.extname
    FROM pg_catalog.pg_type t
    JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
    LEFT JOIN ext x ON x.classid = 'pg_catalog.pg_type'::regclass AND x.objid = t.oid
   WHERE t.oid >= ${FIRST_NORMAL_OID}
      -- A user cast reaches plain values only between two built-in types (a superuser's
      -- doing); otherwise one side is a user type, and values of it are what carry the risk.
      OR t.oid IN (SELECT castsource FROM user_casts WHERE castsource < ${FIRST_NORMAL_OID} AND casttarget < ${FIRST_NORMAL_OID}
                   UNION SELECT casttarget FROM user_casts WHERE castsource < ${FIRST_NORMAL_OID} AND casttarget < ${FIRST_NORMAL_OID})
),
risky AS (SELECT * FROM risky_types WHERE why IS NOT NULL),
-- Types whose code runs on values read from a column without any cast written: output
-- functions, operators, implicit casts, a domain's CHECK on literals coerced to it. (A row
-- type's fields run only on a cast to it, which the statement must name.)
implicit AS (
  SELECT * FROM risky
   WHERE why <> 'a row type with a field that runs code when cast to it'
),
descendants AS (
  SELECT i.inhparent AS root, i.inhrelid AS rel FROM pg_catalog.pg_inherits i
  UNION
  SELECT d.root, i.inhrelid FROM descendants d JOIN pg_catalog.pg_inherits i ON i.inhparent = d.rel
),
typed_columns AS (
  SELECT a.attrelid, min(a.attname::text || ' (' || r.schema || '.' || r.name || ', ' || r.why || ')') AS what
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    JOIN implicit r ON r.oid = a.atttypid OR (t.typcategory = 'A' AND r.oid = t.typelem)
   WHERE a.attrelid >= ${FIRST_NORMAL_OID} AND a.attnum > 0 AND NOT a.attisdropped
   GROUP BY a.attrelid
)
SELECT json_build_object(
  'functions', (SELECT coalesce(json_agg(json_build_array(n.nspname, p.proname, x.extname)), '[]')
                  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  LEFT JOIN ext x ON x.classid = 'pg_catalog.pg_proc'::regclass AND x.objid = p.oid
                 WHERE p.oid >= ${FIRST_NORMAL_OID}),
  'operators', (SELECT coalesce(json_agg(json_build_array(o.schema, o.name, x.extname)), '[]')
                  FROM user_ops o LEFT JOIN ext x ON x.classid = 'pg_catalog.pg_operator'::regclass AND x.objid = o.oid
                 WHERE o.on_builtin),
  'types', (SELECT coalesce(json_agg(json_build_array(r.schema, r.name, r.extname, r.why)), '[]') FROM risky r),
  'relations', (SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, x.extname, kind, bodies, why)), '[]')
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN ext x ON x.classid = 'pg_catalog.pg_class'::regclass AND x.objid = c.oid
    CROSS JOIN LATERAL (
      SELECT 'view' AS kind, json_build_array(pg_catalog.pg_get_viewdef(c.oid)) AS bodies, 'a view' AS why
       WHERE c.relkind = 'v'
      UNION ALL
      SELECT 'foreign', '[]'::json, 'a foreign table: reading it runs its foreign-data wrapper'
       WHERE c.relkind = 'f'
      UNION ALL
      SELECT 'foreign', '[]'::json, 'a partitioned or inherited table with a foreign table among its children'
       WHERE EXISTS (SELECT 1 FROM descendants d JOIN pg_catalog.pg_class k ON k.oid = d.rel WHERE d.root = c.oid AND k.relkind = 'f')
      UNION ALL
      SELECT 'row-security', coalesce((SELECT json_agg(pg_catalog.pg_get_expr(p.polqual, p.polrelid))
                                         FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND p.polqual IS NOT NULL), '[]'),
             'a table with row-security policies'
       WHERE c.relrowsecurity
      UNION ALL
      SELECT 'typed', '[]'::json, 'has column ' || tc.what
        FROM typed_columns tc WHERE tc.attrelid = c.oid
    ) k
   WHERE c.oid >= ${FIRST_NORMAL_OID}),
  'views', (SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, pg_catalog.pg_get_viewdef(c.oid),
                   (SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))), '[]')
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('v', 'm') AND c.oid >= ${FIRST_NORMAL_OID})
) AS snapshot`;

type Row4 = [string, string, string | null, ...unknown[]];

/** Build the lookup maps from one snapshot, leaving out what the target trusts. */
function buildCatalog(
  fingerprint: string,
  snap: {
    functions: Row4[];
    operators: Row4[];
    types: Row4[];
    relations: Row4[];
    views?: Array<[string, string, string | null, string[] | null]>;
  },
  trust: TrustList,
): TargetCatalog {
  const trusted = (schema: string, name: string, ext: string | null) =>
    (ext !== null && trust.extensions.has(ext.toLowerCase())) ||
    trust.objects.has(`${schema}.${name}`.toLowerCase());
  const index = <T extends CatalogObject>(rows: Row4[], make: (r: Row4) => T, want = false) => {
    const map = new Map<string, T[]>();
    for (const r of rows) {
      if (trusted(r[0], r[1], r[2]) !== want) continue;
      const key = r[1].toLowerCase();
      const list = map.get(key) ?? [];
      list.push(make(r));
      map.set(key, list);
    }
    return map;
  };
  return {
    fingerprint,
    functions: index(snap.functions, (r) => ({ schema: r[0], name: r[1] })),
    trustedFunctions: index(snap.functions, (r) => ({ schema: r[0], name: r[1] }), true),
    operators: index(snap.operators, (r) => ({ schema: r[0], name: r[1] })),
    types: index(snap.types, (r) => ({ schema: r[0], name: r[1], why: String(r[3]) })),
    relations: index(snap.relations, (r) => ({
      schema: r[0],
      name: r[1],
      kind: r[3] as RelationRisk['kind'],
      bodies: (r[4] as string[] | null) ?? [],
      why: String(r[5]),
    })),
    views: (snap.views ?? []).reduce((map, [schema, name, definition, columns]) => {
      const key = name.toLowerCase();
      map.set(key, [
        ...(map.get(key) ?? []),
        { schema, name, definition: definition ?? '', columns: columns ?? [] },
      ]);
      return map;
    }, new Map<string, ViewDefinition[]>()),
    bodies: new Map(),
  };
}

/**
 * Per-target catalog cache. `get` checks the fingerprint on every call (one short query on a
 * pooled read session) and reloads the snapshot when it changed.
 */
export class CatalogCache {
  private readonly byTarget = new Map<string, TargetCatalog>();

  async get(
    key: string,
    client: Pick<pg.ClientBase, 'query'>,
    trust: TrustList,
  ): Promise<TargetCatalog> {
    const fp = await client.query<{ fingerprint: string }>(FINGERPRINT_SQL);
    const fingerprint = fp.rows[0]?.fingerprint ?? '';
    const cached = this.byTarget.get(key);
    if (cached && cached.fingerprint === fingerprint) return cached;
    const res = await client.query<{ snapshot: Parameters<typeof buildCatalog>[1] }>(SNAPSHOT_SQL);
    const snap = res.rows[0]?.snapshot;
    if (!snap) throw new Error('catalog snapshot query returned no row');
    const catalog = buildCatalog(fingerprint, snap, trust);
    this.byTarget.set(key, catalog);
    return catalog;
  }
}

const qualified = (o: CatalogObject) => `${o.schema}.${o.name}`;

/** The objects named `name` (in `schema` when the reference is qualified). */
function lookup<T extends CatalogObject>(
  map: ReadonlyMap<string, T[]>,
  schema: string,
  name: string,
): T[] {
  const all = map.get(name.toLowerCase()) ?? [];
  return schema === '' ? all : all.filter((o) => o.schema.toLowerCase() === schema.toLowerCase());
}

/** How deep views over views (and policies over views) are followed before giving up. */
const MAX_DEPTH = 8;

/**
 * The statement as strict as the strictest thing it reaches in this catalog. Only raises:
 * a statement the tree alone already found `unknown` or `admin` stays so.
 */
export function refineStatement(
  s: StatementClass,
  catalog: TargetCatalog,
  depth = 0,
): StatementClass {
  // From the finding without its unproven calls: each is `read` only if the target trusts it.
  const finding = { ...s.base };
  const raise = (why: string) => {
    if (stricter(finding.operation, 'unknown') !== finding.operation) {
      finding.operation = 'unknown';
      finding.reason = why;
    }
  };
  for (const [schema, name, reason] of s.refs.unproven) {
    const trusted = lookup(catalog.trustedFunctions, schema, name).length > 0;
    if (!trusted || lookup(catalog.functions, schema, name).length > 0) raise(reason);
  }
  const found = reaches(s.refs, catalog, depth);
  if (found) raise(found);
  return finding.operation === s.operation && finding.reason === s.reason
    ? s
    : { ...s, ...finding };
}

/**
 * Built-ins that read tables named at run time (by a string or an oid, invisible to the
 * tree): through them a read reaches every view, policy and foreign table in the database.
 */
const READS_RELATIONS_BY_NAME = new Set(
  ['table', 'schema', 'database'].flatMap((what) =>
    ['xml', 'xmlschema', 'xml_and_xmlschema'].map((form) => `${what}_to_${form}`),
  ),
);

/** The first thing in `refs` that is not proven safe on this catalog, as a reason. */
function reaches(refs: StatementRefs, catalog: TargetCatalog, depth: number): string | undefined {
  for (const [, name] of refs.functions) {
    const risky = catalog.relations.values().next().value?.[0];
    if (READS_RELATIONS_BY_NAME.has(name.toLowerCase()) && risky) {
      return `calls ${name}(), which reads tables named at run time, and ${qualified(risky)} is ${risky.why}`;
    }
  }
  for (const [schema, name] of refs.functions) {
    const hit = lookup(catalog.functions, schema, name)[0];
    if (hit)
      return `calls ${name}(), and ${qualified(hit)}() is a function defined in the database`;
  }
  for (const name of refs.attributes) {
    const hit = lookup(catalog.functions, '', name)[0];
    if (hit) {
      return `uses x.${name}, which calls ${qualified(hit)}(x), a function defined in the database`;
    }
  }
  for (const [schema, name] of refs.operators) {
    const hit = lookup(catalog.operators, schema, name)[0];
    if (hit)
      return `uses operator ${name}, and ${qualified(hit)} is an operator defined in the database`;
  }
  for (const [schema, name] of refs.types) {
    const hit = lookup(catalog.types, schema, name)[0];
    if (hit) return `uses type ${qualified(hit)}, ${hit.why}`;
  }
  for (const [schema, name] of refs.relations) {
    for (const rel of lookup(catalog.relations, schema, name)) {
      const why = relationRisk(rel, catalog, depth);
      if (why) return `reads ${qualified(rel)}, ${why}`;
    }
  }
  return undefined;
}

function relationRisk(
  rel: RelationRisk,
  catalog: TargetCatalog,
  depth: number,
): string | undefined {
  if (rel.kind === 'foreign' || rel.kind === 'typed') return rel.why;
  if (depth >= MAX_DEPTH) return `${rel.why} nested too deeply to check`;
  for (const body of rel.bodies) {
    // A policy's USING is an expression; a view's body a query.
    const sql = rel.kind === 'view' ? body : `SELECT (${body})`;
    const c = classifyBody(sql, catalog, depth + 1);
    if (c.operation !== 'read') {
      return rel.kind === 'view'
        ? `a view whose query ${c.reason}`
        : `whose row-security policy ${c.reason}`;
    }
  }
  return undefined;
}

function classifyBody(
  sql: string,
  catalog: TargetCatalog,
  depth: number,
): { operation: SqlOperation; reason: string } {
  const hit = catalog.bodies.get(sql);
  if (hit) return hit;
  // Seen while being classified (a policy whose expression reads its own table): not proven.
  catalog.bodies.set(sql, { operation: 'unknown', reason: 'refers back to itself' });
  let out: { operation: SqlOperation; reason: string };
  try {
    const c = refineClassification(classifyParsed(sql), catalog, depth);
    out = { operation: c.operation, reason: c.reason.replace(/^statement is \w+ \(\w+\): ?/, '') };
  } catch {
    out = { operation: 'unknown', reason: 'could not be parsed' };
  }
  catalog.bodies.set(sql, out);
  return out;
}

/** A whole classification refined statement by statement, then recombined. */
export function refineClassification(
  c: SqlClassification,
  catalog: TargetCatalog,
  depth = 0,
): SqlClassification {
  const statements = c.statements.map((s) => refineStatement(s, catalog, depth));
  if (statements.every((s, i) => s === c.statements[i])) return c;
  let strictest = statements[0] as StatementClass;
  for (const s of statements)
    if (stricter(strictest.operation, s.operation) !== strictest.operation) strictest = s;
  return { ...c, statements, operation: strictest.operation, reason: strictest.reason };
}

/** How a target's catalog is reached: its resolved connection facts and its trust list. */
export type ResolvePostgresTarget = (
  name: string,
) => Promise<{ target: ResolvedPostgresTarget; trusted: readonly string[] } | undefined>;

/** The catalog lookups of a running gateway: pooled read sessions, one cache. */
export class CatalogSource {
  private readonly cache = new CatalogCache();

  constructor(
    private readonly pools: PostgresPools,
    private readonly resolve: ResolvePostgresTarget,
  ) {}

  /** The target's catalog, or undefined for a name that is not a postgres target. */
  async get(name: string): Promise<TargetCatalog | undefined> {
    const found = await this.resolve(name);
    if (!found) return undefined;
    const pool = this.pools.get(found.target, 'read', CATALOG_TIMEOUT_MS);
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      // Usually the first connection a call makes: its failure says why, in check.ts's words.
      throw connectError(err, found.target);
    }
    // pg-pool listens for a client's 'error' only while it is idle: a connection that dies
    // under the check (a server restart, a terminated backend, a cut network) would be an
    // unhandled event, and take the gateway down. The check's own query fails with it.
    const onError = () => undefined;
    client.on('error', onError);
    // A server that took the connection and then stops answering (a stalled host, a pooler
    // waiting for a backend) would hold the call forever: statement_timeout is the server's
    // own promise, and describe has no signal to be cancelled by.
    let timer: NodeJS.Timeout | undefined;
    const noAnswer = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        clientStream(client)?.destroy();
        reject(
          new GovernanceError(
            'TARGET_ERROR',
            `${name} did not answer the catalog check within ${formatDuration(CATALOG_BACKSTOP_MS)}, so the statement was not run`,
          ),
        );
      }, CATALOG_BACKSTOP_MS);
    });
    try {
      const catalog = await Promise.race([
        this.cache.get(name, client, trustList(found.trusted)),
        noAnswer,
      ]);
      client.off('error', onError);
      client.release();
      return catalog;
    } catch (err) {
      // Not reused: the session may be broken, or still busy. The listener stays, for the
      // closing socket's last word.
      client.release(true);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The catalog queries' statement_timeout: they touch user objects only, and are quick. */
const CATALOG_TIMEOUT_MS = 10_000;
/** The gateway's own limit on the check, a little after the server's. */
const CATALOG_BACKSTOP_MS = CATALOG_TIMEOUT_MS + 2_000;
