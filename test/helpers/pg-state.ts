/**
 * Ground truth for "the target was not touched": everything a statement could change in the
 * database, read from the catalogs over a separate superuser connection. Tests compare
 * `snapshotState` before and after a refused call with `toEqual`.
 *
 * Two round trips: the catalogs (which also list the tables and sequences), then their
 * contents. Row data is a count and an md5 per table, except `canary`, whose rows are kept
 * as they are so a failing comparison shows what changed. Temp tables of other sessions are
 * listed but cannot be read. Needs a superuser (pg_authid, pg_file_settings).
 */
import { createHash } from 'node:crypto';
import pg from 'pg';

export interface PgState {
  /** Rows of public.canary by id, null if the table is gone. */
  canary: unknown[] | null;
  /** public.canary_seq, null if the sequence is gone. */
  canarySeq: { lastValue: string; isCalled: boolean } | null;
  /** Databases, schemas, relations, columns, indexes, constraints, triggers, functions, views, ... */
  schema: Record<string, unknown>;
  /** Roles with their attributes (and a digest of the password verifier), memberships, settings. */
  roles: Record<string, unknown>;
  /** Every privilege on every table, view and sequence, owners' implicit ones included. */
  privileges: unknown[];
  /** `schema.table` -> row count and md5 of the sorted rows; `schema.sequence` -> state. */
  data: Record<string, unknown>;
  /** Catalog -> OIDs of user objects in it: any CREATE or DROP the lists above miss. */
  objects: Record<string, string | null>;
}

// System schemas are fixed; pg_temp_N stays in: a temp table left in a pooled session is a change.
const NS = `SELECT oid, nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_toast%'`;
const acl = (expr: string) => `(SELECT array_agg(a::text ORDER BY a::text) FROM unnest(${expr}) a)`;
const agg = (obj: string, order: string, from: string) =>
  `(SELECT coalesce(json_agg(${obj} ORDER BY ${order}), '[]') ${from})`;

const CATALOG_SQL = `
WITH ns AS (${NS}),
rel AS (
  SELECT c.oid, ns.nspname AS schema, c.relname AS name, c.relkind AS kind, c.relowner, c.relacl,
         c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.reloptions
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT json_build_object(
  'schema', json_build_object(
    'databases', ${agg(
      `json_build_object('name', datname, 'owner', pg_get_userbyid(datdba), 'acl', ${acl('datacl')},
        'allowConnections', datallowconn, 'connectionLimit', datconnlimit, 'isTemplate', datistemplate)`,
      'datname',
      'FROM pg_database',
    )},
    'tablespaces', ${agg(`json_build_object('name', spcname, 'owner', pg_get_userbyid(spcowner), 'acl', ${acl('spcacl')})`, 'spcname', 'FROM pg_tablespace')},
    'schemas', ${agg(
      `json_build_object('name', n.nspname, 'owner', pg_get_userbyid(n.nspowner), 'acl', ${acl('n.nspacl')})`,
      'n.nspname',
      'FROM pg_namespace n JOIN ns USING (oid)',
    )},
    'relations', ${agg(
      `json_build_object('schema', schema, 'name', name, 'kind', kind, 'owner', pg_get_userbyid(relowner),
        'persistence', relpersistence, 'rowSecurity', relrowsecurity, 'forceRowSecurity', relforcerowsecurity, 'options', reloptions)`,
      'schema, name',
      'FROM rel',
    )},
    'columns', ${agg(
      `json_build_object('relation', r.schema || '.' || r.name, 'position', a.attnum, 'name', a.attname,
        'type', format_type(a.atttypid, a.atttypmod), 'notNull', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
        'identity', a.attidentity, 'generated', a.attgenerated, 'acl', ${acl('a.attacl')})`,
      'r.schema, r.name, a.attnum',
      `FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum`,
    )},
    'indexes', ${agg('pg_get_indexdef(i.indexrelid)', 'pg_get_indexdef(i.indexrelid)', 'FROM pg_index i JOIN rel r ON r.oid = i.indrelid')},
    'constraints', ${agg(
      `json_build_object('schema', ns.nspname, 'relation', (SELECT relname FROM pg_class WHERE oid = con.conrelid),
        'name', con.conname, 'definition', pg_get_constraintdef(con.oid))`,
      'ns.nspname, con.conname, pg_get_constraintdef(con.oid)',
      'FROM pg_constraint con JOIN ns ON ns.oid = con.connamespace',
    )},
    'triggers', ${agg(
      `json_build_object('definition', pg_get_triggerdef(t.oid), 'enabled', t.tgenabled)`,
      'pg_get_triggerdef(t.oid)',
      'FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal',
    )},
    'rules', ${agg(
      `json_build_object('relation', r.schema || '.' || r.name, 'name', rw.rulename, 'definition', pg_get_ruledef(rw.oid))`,
      'r.schema, r.name, rw.rulename',
      `FROM pg_rewrite rw JOIN rel r ON r.oid = rw.ev_class WHERE rw.rulename <> '_RETURN'`,
    )},
    'policies', ${agg(
      `json_build_object('relation', r.schema || '.' || r.name, 'name', p.polname, 'command', p.polcmd,
        'permissive', p.polpermissive, 'using', pg_get_expr(p.polqual, p.polrelid), 'check', pg_get_expr(p.polwithcheck, p.polrelid),
        'roles', (SELECT array_agg(CASE WHEN x = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x) END ORDER BY 1) FROM unnest(p.polroles) x))`,
      'r.schema, r.name, p.polname',
      'FROM pg_policy p JOIN rel r ON r.oid = p.polrelid',
    )},
    'views', ${agg(
      `json_build_object('schema', schema, 'name', name, 'definition', pg_get_viewdef(oid))`,
      'schema, name',
      `FROM rel WHERE kind IN ('v', 'm')`,
    )},
    'sequences', ${agg(
      `json_build_object('schema', r.schema, 'name', r.name, 'type', format_type(s.seqtypid, NULL), 'start', s.seqstart::text,
        'increment', s.seqincrement::text, 'min', s.seqmin::text, 'max', s.seqmax::text, 'cache', s.seqcache::text, 'cycle', s.seqcycle)`,
      'r.schema, r.name',
      'FROM pg_sequence s JOIN rel r ON r.oid = s.seqrelid',
    )},
    'functions', ${agg(
      `json_build_object('schema', ns.nspname, 'name', p.proname, 'arguments', pg_get_function_identity_arguments(p.oid),
        'result', pg_get_function_result(p.oid), 'kind', p.prokind, 'language', (SELECT lanname FROM pg_language WHERE oid = p.prolang),
        'securityDefiner', p.prosecdef, 'volatility', p.provolatile, 'owner', pg_get_userbyid(p.proowner), 'acl', ${acl('p.proacl')},
        'config', p.proconfig, 'sourceMd5', md5(p.prosrc))`,
      'ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid)',
      'FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace',
    )},
    'types', ${agg(
      `json_build_object('schema', ns.nspname, 'name', t.typname, 'type', t.typtype,
        'labels', (SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid))`,
      'ns.nspname, t.typname',
      `FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
       WHERE (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
         AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)`,
    )},
    'extensions', ${agg(
      `json_build_object('name', e.extname, 'version', e.extversion, 'schema', (SELECT nspname FROM pg_namespace WHERE oid = e.extnamespace))`,
      'e.extname',
      'FROM pg_extension e',
    )},
    'eventTriggers', ${agg(
      `json_build_object('name', evtname, 'event', evtevent, 'enabled', evtenabled, 'function', evtfoid::regprocedure::text)`,
      'evtname',
      'FROM pg_event_trigger',
    )},
    'defaultAcls', ${agg(
      `json_build_object('role', pg_get_userbyid(defaclrole), 'schema', (SELECT nspname FROM pg_namespace WHERE oid = defaclnamespace),
        'type', defaclobjtype, 'acl', ${acl('defaclacl')})`,
      'pg_get_userbyid(defaclrole), defaclnamespace, defaclobjtype',
      'FROM pg_default_acl',
    )},
    'systemSettings', ${agg(
      `json_build_object('name', name, 'setting', setting)`,
      'seqno',
      `FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'`,
    )}
  ),
  'roles', json_build_object(
    'roles', ${agg(
      `json_build_object('name', rolname, 'superuser', rolsuper, 'inherit', rolinherit, 'createRole', rolcreaterole,
        'createDb', rolcreatedb, 'login', rolcanlogin, 'replication', rolreplication, 'bypassRls', rolbypassrls,
        'connectionLimit', rolconnlimit, 'validUntil', rolvaliduntil, 'passwordDigest', md5(coalesce(rolpassword, '')))`,
      'rolname',
      'FROM pg_authid',
    )},
    'memberships', ${agg(
      `json_build_object('role', pg_get_userbyid(roleid), 'member', pg_get_userbyid(member), 'admin', admin_option)`,
      'pg_get_userbyid(roleid), pg_get_userbyid(member)',
      'FROM pg_auth_members',
    )},
    'settings', ${agg(
      `json_build_object('database', d.datname, 'role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, 'config', s.setconfig)`,
      'd.datname NULLS FIRST, s.setrole',
      'FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase',
    )}
  ),
  'privileges', ${agg(
    `json_build_object('relation', r.schema || '.' || r.name, 'grantee', CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
      'privilege', x.privilege_type, 'grantable', x.is_grantable, 'grantor', pg_get_userbyid(x.grantor))`,
    'r.schema, r.name, x.grantee, x.privilege_type, x.grantor',
    `FROM rel r CROSS JOIN LATERAL aclexplode(coalesce(r.relacl, acldefault((CASE WHEN r.kind = 'S' THEN 's' ELSE 'r' END)::"char", r.relowner))) x
     WHERE r.kind IN ('r', 'p', 'v', 'm', 'f', 'S')`,
  )},
  'tables', ${agg(`json_build_array(schema, name)`, 'schema, name', `FROM rel WHERE kind IN ('r', 'p') AND relpersistence <> 't'`)},
  'sequenceList', ${agg(`json_build_array(schema, name)`, 'schema, name', `FROM rel WHERE kind = 'S' AND relpersistence <> 't'`)},
  'catalogs', ${agg(
    'c.relname',
    'c.relname',
    `FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'oid' AND a.attnum > 0
     WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'`,
  )}
) AS state`;

interface CatalogRow {
  schema: Record<string, unknown>;
  roles: Record<string, unknown>;
  privileges: unknown[];
  tables: Array<[string, string]>;
  sequenceList: Array<[string, string]>;
  catalogs: string[];
}

// FirstNormalObjectId: everything below was made by initdb.
const FIRST_USER_OID = 16384;

/** Ground truth of the database `client` is connected to (and of the cluster's roles). */
export async function snapshotState(client: pg.ClientBase): Promise<PgState> {
  const { escapeIdentifier: id, escapeLiteral: lit } = pg;
  const catalog = (
    await client.query<{ state: CatalogRow }>({
      name: 'gatehouse-snapshot-catalog',
      text: CATALOG_SQL,
    })
  ).rows[0]!.state;
  const name = ([s, n]: [string, string]) => `${s}.${n}`;
  const has = (list: Array<[string, string]>, qualified: string) =>
    list.some((x) => name(x) === qualified);
  const pairs: string[] = [];
  for (const t of catalog.tables) {
    const sql = `SELECT jsonb_build_object('rows', count(*), 'md5', md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), ''))) FROM ${id(t[0])}.${id(t[1])} x`;
    pairs.push(`${lit(name(t))}, (${sql})`);
  }
  for (const s of catalog.sequenceList) {
    pairs.push(
      `${lit(name(s))}, (SELECT jsonb_build_object('lastValue', last_value::text, 'isCalled', is_called) FROM ${id(s[0])}.${id(s[1])})`,
    );
  }
  const objects = catalog.catalogs.map(
    (c) =>
      `${lit(c)}, (SELECT array_agg(oid ORDER BY oid)::text FROM pg_catalog.${id(c)} WHERE oid >= ${FIRST_USER_OID})`,
  );
  const canary = has(catalog.tables, 'public.canary')
    ? `(SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY to_jsonb(c)->'id', c::text), '[]') FROM public.canary c)`
    : 'NULL';
  // jsonb_build_object takes at most 100 arguments: concatenate one object per entry.
  const object = (kv: string[]) =>
    kv.length ? kv.map((p) => `jsonb_build_object(${p})`).join(' || ') : `'{}'::jsonb`;
  const text = `SELECT ${canary} AS canary, ${object(pairs)} AS data, ${object(objects)} AS objects`;
  // Named, hence prepared once per connection and schema: snapshots run twice per test case.
  const data = await client.query<{
    canary: unknown[] | null;
    data: Record<string, unknown>;
    objects: Record<string, string | null>;
  }>({
    name: `gatehouse-snapshot-${createHash('sha1').update(text).digest('hex')}`,
    text,
  });
  const row = data.rows[0]!;
  return {
    canary: row.canary,
    canarySeq: has(catalog.sequenceList, 'public.canary_seq')
      ? (row.data['public.canary_seq'] as PgState['canarySeq'])
      : null,
    schema: catalog.schema,
    roles: catalog.roles,
    privileges: catalog.privileges,
    data: row.data,
    objects: row.objects,
  };
}
