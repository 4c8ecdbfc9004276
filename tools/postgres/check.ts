import pg from 'pg';
import { GovernanceError } from '../../server/kernel/errors.js';
import { head } from '../../server/kernel/text.js';
import { formatDuration } from '../../server/kernel/units.js';
import { connectionConfig, type ResolvedPostgresTarget } from './pool.js';

/**
 * `gatehouse targets check` for PostgreSQL: connect the way the gateway does, say what works,
 * and warn about a login role that makes the read-only session a paper wall.
 *
 * The read-only session stops writes to tables, not everything: `COPY ... TO PROGRAM` inside
 * a function, backend signals, advisory locks and NOTIFY all work in a read-only transaction.
 * The classifier and policy are the first wall; the database role must be the second, so a
 * role that could do those things, or owns the tables it reads (an owner can change them and
 * bypasses row security), is reported.
 */

export interface CheckLine {
  level: 'ok' | 'warning' | 'error';
  text: string;
}

/** Predefined roles that reach outside the database or into other sessions. */
const POWERFUL_ROLES: Record<string, string> = {
  pg_execute_server_program: 'can run programs on the database server (COPY ... PROGRAM)',
  pg_write_server_files: 'can write files on the database server',
  pg_read_server_files: 'can read files on the database server',
  pg_signal_backend: 'can cancel and terminate other sessions',
  pg_write_all_data: 'can write every table',
};

const ROLE_SQL = `
SELECT r.rolname AS role, r.rolsuper AS superuser, r.rolcreaterole AS createrole,
       r.rolbypassrls AS bypassrls, r.rolreplication AS replication,
       coalesce(array(
         SELECT b.rolname::text FROM pg_catalog.pg_roles b
          WHERE b.rolname = ANY ($1::text[]) AND pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
          ORDER BY 1), '{}') AS powers,
       (SELECT count(*)::int FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')) AS owned,
       (SELECT string_agg(n.nspname || '.' || c.relname, ', ' ORDER BY n.nspname, c.relname)
          FROM (SELECT * FROM pg_catalog.pg_class c
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')) c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) AS owned_names,
       current_setting('server_version') AS version
  FROM pg_catalog.pg_roles r WHERE r.rolname = $2`;

interface RoleRow {
  role: string;
  superuser: boolean;
  createrole: boolean;
  bypassrls: boolean;
  replication: boolean;
  powers: string[];
  owned: number;
  owned_names: string | null;
  version: string;
}

/** Warnings for one role, as the gateway would use it. */
export function roleWarnings(r: RoleRow, as: string): string[] {
  const out: string[] = [];
  if (r.superuser) {
    out.push(
      `${as} ${r.role} is a superuser: the read-only session is then the only wall, and a ` +
        'function can still run programs, read and write files and stop other sessions',
    );
  }
  // A superuser is a member of every role and owns everything: the rest would be noise.
  if (r.superuser) return out;
  for (const p of r.powers)
    out.push(`${as} ${r.role} is a member of ${p}: it ${POWERFUL_ROLES[p] ?? 'is powerful'}`);
  if (r.createrole) out.push(`${as} ${r.role} has CREATEROLE: it can create and grant roles`);
  if (r.bypassrls)
    out.push(`${as} ${r.role} has BYPASSRLS: row-security policies do not apply to it`);
  if (r.replication) out.push(`${as} ${r.role} has REPLICATION: it can stream every change`);
  if (r.owned > 0) {
    const names = (r.owned_names ?? '').split(', ');
    const shown =
      names.slice(0, 5).join(', ') + (names.length > 5 ? `, and ${names.length - 5} more` : '');
    out.push(
      `${as} ${r.role} owns ${r.owned} table${r.owned === 1 ? '' : 's'} or view${r.owned === 1 ? '' : 's'} ` +
        `(${shown}): an owner can alter them and bypasses their row security; use a role that only has SELECT`,
    );
  }
  return out;
}

/**
 * Why a connection failed, in words an operator (and an agent) can act on: the one place for
 * these words, used by `gatehouse targets check` and by every connection a call makes. Never
 * a secret: known failures are described from the target's config, not the driver's text;
 * anything else shows the driver's code and first line with the password blanked out.
 */
export function connectFailure(err: unknown, target: ResolvedPostgresTarget): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : '';
  const where = `${target.host}:${target.port}`;
  switch (code) {
    case '28P01':
    case '28000':
      return `authentication failed for user ${target.user} (wrong password, no such role, or pg_hba.conf refuses it)`;
    case '3D000':
      return `database ${target.database} does not exist on ${where}`;
    case '42501':
      return `user ${target.user} may not connect to database ${target.database} (no CONNECT privilege)`;
    case '53300':
      return `${where} has no connection slots left (too many clients)`;
    case '57P03':
      return `${where} is starting up, shutting down or in recovery; try again later`;
    case 'ECONNREFUSED':
      return `connection refused by ${where} (is PostgreSQL listening there?)`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `host ${target.host} not found (DNS)`;
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `${where} is unreachable`;
    case 'ETIMEDOUT':
      return `no answer from ${where} (the network gave up on the connection)`;
    case 'ECONNRESET':
      return `${where} closed the connection before it was ready (is it PostgreSQL?)`;
  }
  // The pool's and the client's own connect timers (`connectTimeout` of the target).
  if (/timeout/i.test(message)) {
    return `no answer from ${where} within ${formatDuration(target.connectTimeoutMs)} (the target's connectTimeout)`;
  }
  if (/^Connection terminated/.test(message)) {
    return `${where} closed the connection before it was ready (is it PostgreSQL?)`;
  }
  if (/client password must be a string/.test(message)) {
    return `${where} asks user ${target.user} for a password, and target ${target.name} has none configured`;
  }
  if (/does not support SSL/i.test(message)) {
    return `${where} does not accept TLS connections (the target has ssl: ${target.ssl})`;
  }
  if (code !== undefined && /^(ERR_TLS_|CERT_|DEPTH_|SELF_SIGNED|UNABLE_TO_)/.test(code)) {
    return `the TLS certificate of ${where} was not accepted (${code})`;
  }
  const firstLine = head(message.split('\n')[0] ?? '', 300) || 'connection failed';
  const text = `${code ? `${code} ` : ''}${firstLine}`;
  return target.password ? text.replaceAll(target.password, '[secret]') : text;
}

/**
 * A connection a call could not get, as the agent sees it: `cannot connect to NAME: <why>`
 * in connectFailure's words, the driver error kept as the private cause (stderr log). A pool with no free slot is not a dead server: node-postgres fails a wait for one
 * with "timeout exceeded when trying to connect", which is LIMIT_EXCEEDED (busy).
 */
export function connectError(err: unknown, target: ResolvedPostgresTarget): GovernanceError {
  if (err instanceof GovernanceError) return err;
  const message = (err as { message?: unknown }).message;
  if (typeof message === 'string' && message.includes('timeout exceeded when trying to connect'))
    return new GovernanceError(
      'LIMIT_EXCEEDED',
      `all ${target.poolSize} connections to ${target.name} are busy; try again later`,
      { cause: err },
    );
  return new GovernanceError(
    'TARGET_ERROR',
    `cannot connect to ${target.name}: ${connectFailure(err, target)}`,
    { cause: err },
  );
}

/** Connect as the gateway would, then report on the role. */
export async function checkPostgresTarget(target: ResolvedPostgresTarget): Promise<CheckLine[]> {
  const client = new pg.Client({
    ...connectionConfig(target),
    connectionTimeoutMillis: target.connectTimeoutMs,
    application_name: 'gatehouse-check',
    options: '-c default_transaction_read_only=on',
  });
  // A failure after connect (server restart) must not throw from an event.
  client.on('error', () => {});
  const started = Date.now();
  try {
    await client.connect();
  } catch (err) {
    return [{ level: 'error', text: `cannot connect: ${connectFailure(err, target)}` }];
  }
  try {
    const ms = Date.now() - started;
    const res = await client.query<RoleRow>(ROLE_SQL, [Object.keys(POWERFUL_ROLES), target.user]);
    const row = res.rows[0];
    const lines: CheckLine[] = [
      {
        level: 'ok',
        text: `connected in ${ms} ms to PostgreSQL ${row?.version ?? '?'} as ${target.user}, database ${target.database}`,
      },
    ];
    if (!row) return lines;
    const warnings = roleWarnings(row, 'login role');
    if (warnings.length === 0) {
      lines.push({ level: 'ok', text: `login role ${row.role} holds no powers beyond its grants` });
    }
    for (const w of warnings) lines.push({ level: 'warning', text: w });
    return lines;
  } catch (err) {
    return [
      { level: 'error', text: `connected, but the role check failed: ${(err as Error).message}` },
    ];
  } finally {
    await client.end().catch(() => {});
  }
}
