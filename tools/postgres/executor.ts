import type pg from 'pg';
import { GovernanceError } from '../../server/kernel/errors.js';
import { log } from '../../server/kernel/log.js';
import { formatDuration, formatBytes } from '../../server/kernel/units.js';
import type { ColumnOrigin } from '../../policies/masking.js';
import { viewLineage, type ViewColumnLineage } from './lineage.js';
import type { ResolvedLimits } from '../../policies/engine.js';
import type { ToolOutput } from '../types.js';
import { BoundedQuery } from './bounded-query.js';
import { connectError } from './check.js';
import type { PostgresPools, ResolvedPostgresTarget, RetireReason } from './pool.js';
import { clientStream, guardClient, type Oversize, type WireGuard } from './wire-guard.js';

/**
 * No backend message may come near V8's string limit (~512 MiB, ERR_STRING_TOO_LONG thrown
 * inside pg's socket handler ends the process), whatever maxOutputBytes a policy sets.
 */
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

export interface QueryRequest {
  sql: string;
  params: Array<string | number | boolean | null>;
  maxRows: number;
  operation: string;
  statementCount: number;
  /**
   * When the result will be masked, the relations the statement names: view columns, and
   * values computed from them, are followed into the views' definitions. Absent: no masking,
   * so none of those catalog reads is made.
   */
  reads?: ReadonlyArray<{ schema?: string; name: string }>;
}

/** A cache of (table oid, column number) -> real names, so column masking follows aliases. */
type OriginCache = Map<string, { schema: string; table: string; column: string; view: boolean }>;

export class PostgresExecutor {
  private readonly origins = new Map<string, OriginCache>();

  constructor(private readonly pools: PostgresPools) {}

  async run(
    target: ResolvedPostgresTarget,
    req: QueryRequest,
    limits: ResolvedLimits,
    signal: AbortSignal,
    /** The rule whose limits these are, named in TIMEOUT and LIMIT_EXCEEDED texts. */
    rule?: string,
  ): Promise<ToolOutput> {
    if (req.statementCount !== 1) {
      // The extended protocol refuses several statements anyway; say it plainly first.
      throw new GovernanceError(
        'INVALID_INPUT',
        `one statement per call (got ${req.statementCount})`,
      );
    }
    // A call cancelled before its statement went out (by the client, or by shutdown) never
    // sends it.
    if (signal.aborted) throw cancelled(target.name, signal.reason);
    const readOnly = req.operation === 'read';
    const pool = this.pools.get(target, readOnly ? 'read' : 'write', limits.timeoutMs);
    const client = await connectUnlessAborted(pool, target, signal);
    // Room for what the byte cap lets through after masking, with slack; past that the
    // rows would be cut anyway.
    const byteBudget = 2 * limits.maxOutputBytes + 64 * 1024;
    // Any call that could change session state gets a fresh session next time: the
    // connection is destroyed instead of returned (`release(true)`). A read's session is
    // reset (see releaseAfterReset) before the pool hands it out again.
    let destroy = !readOnly;
    // Set when the statement is abandoned, or the connection broke under it: its backend may
    // still be running, so the connection is retired (see PostgresPools.retire), not released.
    let stopped: RetireReason | undefined;
    // A connection that dies while checked out (the server terminated the backend, the
    // socket was cut below) makes node-postgres emit 'error' on the client as well as fail
    // the query. pg-pool listens only while a client is idle: without this, that event would
    // be unhandled and take the whole gateway down. The query's own error answers the call.
    const onClientError = (err: Error) => {
      destroy = true;
      stopped ??= 'connection-lost';
      log.warn(
        { target: target.name, err: err.message },
        'postgres connection failed during a call',
      );
    };
    client.on('error', onClientError);
    const stop = (why: RetireReason) => {
      if (stopped) return;
      stopped = why;
      destroy = true;
      // Dropping the socket answers the agent now; the backend is dealt with by retire().
      clientStream(client)?.destroy();
    };
    let guard: WireGuard;
    try {
      guard = guardClient(client, Math.min(byteBudget, MAX_MESSAGE_BYTES));
    } catch (err) {
      client.release(true);
      throw new GovernanceError('INTERNAL', 'internal error', { cause: err });
    }
    guard.onTrip = () => stop('oversize');
    // A client-side backstop a little after the server's statement_timeout, for statements
    // that never check for interrupts.
    const timer = setTimeout(() => stop('timeout'), limits.timeoutMs + 2_000);
    const onAbort = () => stop('cancelled');
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    try {
      const query = new BoundedQuery(req.sql, req.params, req.maxRows + 1, byteBudget);
      // pg returns the submittable itself (no promise): the outcome is `query.promise`.
      void client.query(query);
      const result = await query.promise;
      const rows = result.rows;
      const truncated = rows.length > req.maxRows || result.overBudget;
      if (truncated) rows.length = req.maxRows;
      const columns = await this.columnOrigins(target.name, client, result.fields, req.reads);
      const values = rows.map((row) => row.map(toJsonValue));
      const rowCount = result.fields.length ? values.length : (result.rowCount ?? 0);
      return { kind: 'rows', columns, rows: values, rowCount, truncated, operation: req.operation };
    } catch (err) {
      destroy = true;
      throw mapPgError(err, target.name, limits, rule, stopped, guard.tripped);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      guard.onTrip = undefined;
      if (stopped) {
        // The slot stays taken until the backend is gone; the listener stays too.
        this.pools.retire(target, client, stopped);
      } else if (destroy) {
        // The listener stays: a client being closed can still report its socket's end.
        client.release(true);
      } else {
        releaseAfterReset(client, onClientError);
      }
    }
  }

  private async columnOrigins(
    targetName: string,
    client: pg.PoolClient,
    fields: pg.FieldDef[],
    reads: ReadonlyArray<{ schema?: string; name: string }> | undefined,
  ): Promise<Array<ColumnOrigin & { type: string }>> {
    let cache = this.origins.get(targetName);
    if (!cache) {
      cache = new Map() as OriginCache;
      this.origins.set(targetName, cache);
    }
    const missing = fields.filter(
      (f) => f.tableID !== 0 && !cache.has(`${f.tableID}:${f.columnID}`),
    );
    if (missing.length > 0) {
      // Fields carry oids only; the names come from the catalog (readable by any role).
      const res = await client.query<{
        t: number;
        n: number;
        schema: string;
        table: string;
        column: string;
        view: boolean;
      }>({
        text: `SELECT a.attrelid::int8 AS t, a.attnum::int AS n, ns.nspname AS schema, c.relname AS table, a.attname AS column,
                      c.relkind IN ('v', 'm') AS view
                 FROM pg_catalog.pg_attribute a
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                 JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
                WHERE (a.attrelid, a.attnum) IN (SELECT * FROM unnest($1::oid[], $2::int2[]))`,
        values: [missing.map((f) => f.tableID), missing.map((f) => f.columnID)],
      });
      for (const r of res.rows)
        cache.set(`${r.t}:${r.n}`, {
          schema: r.schema,
          table: r.table,
          column: r.column,
          view: r.view,
        });
    }
    const origins = fields.map((f) =>
      f.tableID !== 0 ? cache.get(`${f.tableID}:${f.columnID}`) : undefined,
    );
    // A view's column is its own origin, but its value may be computed from a masked column
    // of what the view reads: what each one derives from is read from the view's definition
    // each time (a view can be redefined under the same oid, so it is never cached).
    const viewOids = reads
      ? [...new Set(fields.filter((f, i) => origins[i]?.view).map((f) => f.tableID))]
      : [];
    const views =
      viewOids.length > 0
        ? await viewDerivations(client, viewOids)
        : new Map<number, ViewDerivation>();
    // A value computed from a view's column (`SELECT p || '' FROM v`) has no origin and names
    // only `p`: it derives from whatever the views the statement reads put out.
    let computed: ViewColumnLineage | undefined;
    if (reads && reads.length > 0 && fields.some((f) => f.tableID === 0)) {
      const read = await viewsNamed(client, reads);
      if (read.length > 0) {
        const all = await viewDerivations(client, read);
        computed = { output: [], wholeRow: false };
        for (const v of all.values()) {
          computed.output.push(...v.whole.output, ...v.extra.output);
          computed.wholeRow ||= v.whole.wholeRow || v.extra.wholeRow;
        }
      }
    }
    return fields.map((f, i) => {
      const origin = origins[i];
      const view = origin?.view ? views.get(f.tableID) : undefined;
      const derived = view ? viewColumn(view, f.columnID) : f.tableID === 0 ? computed : undefined;
      return {
        name: f.name,
        type: typeName(f.dataTypeID),
        ...(origin ? { schema: origin.schema, table: origin.table, column: origin.column } : {}),
        ...(derived ? { derived } : {}),
      };
    });
  }
}

/**
 * A read session cannot change state the classifier lets through, and runs read-only; still,
 * pools outlive calls (and, later, identities), so a reused session is reset with DISCARD ALL
 * (prepared statements, cursors, temp objects, advisory locks, LISTEN, settings back to the
 * connection's own: read-only and statement_timeout stay) before it goes back to the pool.
 * Off the caller's path: the result does not wait for it, the next borrower of this
 * connection does. A failed reset closes the connection.
 */
function releaseAfterReset(client: pg.PoolClient, onError: (err: Error) => void): void {
  const done = (err?: unknown) => {
    client.release(err === undefined ? undefined : err instanceof Error ? err : true);
    // Back in the pool, the pool's own idle listener takes over (a closed one keeps ours).
    if (err === undefined) client.off('error', onError);
  };
  client.query('DISCARD ALL').then(() => done(), done);
}

/** Result values as JSON: dates as ISO text, bytes as hex, big numbers as strings (pg's default). */
function toJsonValue(v: unknown): unknown {
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? String(v) : v.toISOString();
  if (Buffer.isBuffer(v)) return `\\x${v.toString('hex')}`;
  if (typeof v === 'bigint') return v.toString();
  if (Array.isArray(v)) return v.map(toJsonValue);
  return v;
}

const TYPE_NAMES: Record<number, string> = {
  16: 'bool',
  17: 'bytea',
  18: 'char',
  19: 'name',
  20: 'int8',
  21: 'int2',
  23: 'int4',
  25: 'text',
  26: 'oid',
  114: 'json',
  700: 'float4',
  701: 'float8',
  1042: 'bpchar',
  1043: 'varchar',
  1082: 'date',
  1083: 'time',
  1114: 'timestamp',
  1184: 'timestamptz',
  1186: 'interval',
  1700: 'numeric',
  2950: 'uuid',
  3802: 'jsonb',
  1009: 'text[]',
  1007: 'int4[]',
  1016: 'int8[]',
  869: 'inet',
};

function typeName(oid: number): string {
  return TYPE_NAMES[oid] ?? `oid:${oid}`;
}

function cancelled(target: string, cause: unknown): GovernanceError {
  return new GovernanceError('TIMEOUT', `query on ${target} was cancelled`, { cause });
}

/**
 * A connection from the pool, unless the call is cancelled while it waits for one (a busy
 * pool queues for up to connectTimeout): the wait ends at once, and a connection the pool
 * hands over later goes straight back to it.
 */
async function connectUnlessAborted(
  pool: pg.Pool,
  target: ResolvedPostgresTarget,
  signal: AbortSignal,
): Promise<pg.PoolClient> {
  const connecting = pool.connect();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(cancelled(target.name, signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([connecting, aborted]);
  } catch (err) {
    if (err instanceof GovernanceError) {
      connecting.then(
        (late) => late.release(),
        () => undefined,
      );
      throw err;
    }
    throw connectError(err, target);
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

const MESSAGE_KINDS: Record<string, string> = {
  D: 'a single row of the result',
  E: 'an error message',
  N: 'a notice',
  T: "the result's column list",
};

/**
 * The server's own error text is useful to the agent (a missing column, a permission error)
 * and passes through masking before it is shown. A connection that broke is said to have
 * broken, without the driver's text: it can carry host names and user names the agent has no
 * business seeing. Limits name the rule that set them, so the agent (and its human) know
 * what to change.
 */
function mapPgError(
  err: unknown,
  target: string,
  limits: ResolvedLimits,
  rule: string | undefined,
  stopped: RetireReason | undefined,
  oversize: Oversize | undefined,
): GovernanceError {
  if (err instanceof GovernanceError) return err;
  const e = err as { code?: string; message?: string; position?: string };
  const byRule = rule ? ` (rule ${rule})` : '';
  if (oversize) {
    const what = MESSAGE_KINDS[oversize.type] ?? `a message (type ${oversize.type})`;
    return new GovernanceError(
      'LIMIT_EXCEEDED',
      `${what} from ${target} is larger than the output limit of ${formatBytes(limits.maxOutputBytes)}${byRule}`,
      { cause: err },
    );
  }
  if (stopped === 'cancelled') return cancelled(target, err);
  // `timeout`: the gateway's own backstop, for a statement that ignored statement_timeout.
  if (stopped === 'timeout' || e.code === '57014')
    return new GovernanceError(
      'TIMEOUT',
      `query on ${target} exceeded its time limit of ${formatDuration(limits.timeoutMs)}${byRule}`,
      { cause: err },
    );
  const params = e.code === '08P01' ? paramCountMismatch(e.message) : undefined;
  if (params) return new GovernanceError('INVALID_INPUT', params, { cause: err });
  if (
    typeof e.code === 'string' &&
    /^[0-9A-Z]{5}$/.test(e.code) &&
    // The server's answer to this statement; other connection and authentication classes
    // are the connection failing, not the statement.
    (e.code === '08P01' || (!e.code.startsWith('08') && !e.code.startsWith('28')))
  ) {
    const pos = e.position ? ` (at position ${e.position})` : '';
    return new GovernanceError(
      'TARGET_ERROR',
      `${target}: ${e.code} ${e.message ?? 'error'}${pos}`,
      // The server's text can quote stored values: fenced and masked as untrusted data.
      { cause: err, ...(e.message ? { detail: e.message } : {}) },
    );
  }
  if (
    stopped === 'connection-lost' ||
    typeof e.code === 'string' ||
    /connection|terminated|socket/i.test(e.message ?? '')
  ) {
    return new GovernanceError(
      'TARGET_ERROR',
      `the connection to ${target} was lost during the statement (the server closed it, or the network failed)`,
      { cause: err },
    );
  }
  return new GovernanceError('INTERNAL', 'internal error; see the gateway log', { cause: err });
}

/**
 * PostgreSQL counts a statement's parameters when it parses it (up to the highest $n) and
 * refuses a Bind that supplies another number, as a protocol violation (08P01), before
 * anything runs. The server's count is the one that matters, so its answer is read rather
 * than the placeholders counted a second time here; it is the caller's input that is wrong.
 */
function paramCountMismatch(message: string | undefined): string | undefined {
  const m =
    /bind message supplies (\d+) parameters?, but prepared statement "[^"]*" requires (\d+)/.exec(
      message ?? '',
    );
  if (!m) return undefined;
  const given = Number(m[1]);
  const required = Number(m[2]);
  const has =
    required === 0
      ? 'no $n placeholders'
      : required === 1
        ? 'placeholder $1'
        : `placeholders $1..$${required}`;
  const gave =
    given === 0 ? 'no params were' : given === 1 ? '1 param was' : `${given} params were`;
  return `the statement has ${has} but ${gave} given (params needs exactly one value for each placeholder)`;
}

/** How deep views over views are followed; deeper is taken as deriving from anything. */
const VIEW_DEPTH = 4;

interface ViewDerivation {
  columns: ViewColumnLineage[] | undefined;
  whole: ViewColumnLineage;
  /** What the view's derived relations and the views it reads (recursively) put out. */
  extra: ViewColumnLineage;
}

async function viewDerivations(
  client: pg.PoolClient,
  oids: number[],
): Promise<Map<number, ViewDerivation>> {
  const out = new Map<number, ViewDerivation>();
  const defs = await client.query<{ oid: string; def: string }>(
    `SELECT c.oid::int8 AS oid, pg_catalog.pg_get_viewdef(c.oid) AS def
       FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::oid[]) AND c.relkind IN ('v', 'm')`,
    [oids],
  );
  const anything: ViewColumnLineage = { output: [], wholeRow: true };
  for (const { oid, def } of defs.rows) {
    let lin: ReturnType<typeof viewLineage>;
    try {
      lin = viewLineage(def);
    } catch {
      // A definition that does not parse here derives from anything (fail closed).
      out.set(Number(oid), { columns: undefined, whole: anything, extra: anything });
      continue;
    }
    const extra: ViewColumnLineage = {
      output: [...lin.inner.output],
      wholeRow: lin.inner.wholeRow,
    };
    let names = lin.relations;
    const seen = new Set<string>();
    for (let depth = 0; names.length > 0; depth++) {
      if (depth === VIEW_DEPTH) {
        extra.wholeRow = true;
        break;
      }
      const nested = await client.query<{ def: string }>(
        `SELECT pg_catalog.pg_get_viewdef(c.oid) AS def FROM pg_catalog.pg_class c
          WHERE c.relkind IN ('v', 'm')
            AND c.oid IN (SELECT pg_catalog.to_regclass(n)::oid FROM unnest($1::text[]) n)`,
        [names.map(qualifiedName)],
      );
      names = [];
      for (const r of nested.rows) {
        if (seen.has(r.def)) continue;
        seen.add(r.def);
        try {
          const l = viewLineage(r.def);
          extra.output.push(...l.whole.output);
          extra.wholeRow ||= l.whole.wholeRow;
          names.push(...l.relations);
        } catch {
          extra.wholeRow = true;
        }
      }
    }
    out.set(Number(oid), { columns: lin.columns, whole: lin.whole, extra });
  }
  return out;
}

/** The oids of the views (and materialized views) among the relations a statement names. */
async function viewsNamed(
  client: pg.PoolClient,
  reads: ReadonlyArray<{ schema?: string; name: string }>,
): Promise<number[]> {
  const res = await client.query<{ oid: string }>(
    `SELECT c.oid::int8 AS oid FROM pg_catalog.pg_class c
      WHERE c.relkind IN ('v', 'm')
        AND c.oid IN (SELECT pg_catalog.to_regclass(n)::oid FROM unnest($1::text[]) n)`,
    [reads.map(qualifiedName)],
  );
  return res.rows.map((r) => Number(r.oid));
}

function qualifiedName(r: { schema?: string; name: string }): string {
  return (r.schema ? `${quoteIdent(r.schema)}.` : '') + quoteIdent(r.name);
}

/** What view column `attnum` derives from: its own select-list item, plus the view's extra. */
function viewColumn(view: ViewDerivation, attnum: number): ViewColumnLineage {
  const own = view.columns?.[attnum - 1] ?? view.whole;
  return {
    output: [...own.output, ...view.extra.output],
    wholeRow: own.wholeRow || view.extra.wholeRow,
  };
}

function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}
