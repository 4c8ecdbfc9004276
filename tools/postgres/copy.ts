import { scanSync } from 'libpg-query';

/**
 * `COPY ... TO STDOUT` is a plain read, but it answers through the copy sub-protocol, which a
 * `pg` client running an ordinary query cannot take (node-postgres throws from its socket
 * handler). postgres_query runs the same read as the query it stands for, so the agent gets
 * rows like any other read, bounded by the same cursor and row cap:
 *
 * - `COPY (query) TO STDOUT` runs `query`, cut from the caller's own text;
 * - `COPY [schema.]table [(a, b)] TO STDOUT` runs `SELECT a, b FROM schema.table`.
 *
 * COPY's options (FORMAT, HEADER, DELIMITER...) shape the text stream only and are ignored.
 */
export function copyToStdoutAsQuery(
  sql: string,
  node: Record<string, unknown>,
  stmtStart: number,
  stmtEnd: number,
): string | undefined {
  if (node.query !== undefined) return parenthesisedQuery(sql, stmtStart, stmtEnd);
  const rel = node.relation as
    { catalogname?: string; schemaname?: string; relname?: string } | undefined;
  // A database-qualified name (db.schema.table) is left to the caller to write as a SELECT.
  if (!rel?.relname || rel.catalogname) return undefined;
  const table = rel.schemaname
    ? `${ident(rel.schemaname)}.${ident(rel.relname)}`
    : ident(rel.relname);
  const attlist = Array.isArray(node.attlist)
    ? (node.attlist as Array<{ String?: { sval?: string } }>)
    : [];
  const columns = attlist
    .map((a) => a.String?.sval)
    .filter((c): c is string => typeof c === 'string');
  return `SELECT ${columns.length ? columns.map(ident).join(', ') : '*'} FROM ${table}`;
}

const ident = (name: string) => `"${name.replaceAll('"', '""')}"`;

/**
 * The text between the first '(' after COPY and its matching ')', found with PostgreSQL's own
 * scanner so parentheses inside strings, quoted identifiers and comments do not count.
 * Token offsets are in UTF-8 bytes, so the slice is taken from the bytes.
 */
function parenthesisedQuery(sql: string, stmtStart: number, stmtEnd: number): string | undefined {
  const bytes = Buffer.from(sql, 'utf8');
  const text = bytes.subarray(stmtStart, stmtEnd).toString('utf8');
  const tokens = scanSync(text).tokens;
  let depth = 0;
  let open = -1;
  for (const t of tokens) {
    if (t.text === '(') {
      if (depth++ === 0) open = t.end;
    } else if (t.text === ')' && --depth === 0 && open >= 0) {
      return Buffer.from(text, 'utf8').subarray(open, t.start).toString('utf8').trim();
    }
  }
  return undefined;
}
