import pg from 'pg';
import { detectIn, type Detector } from '../../policies/masking.js';
import type { DiscoveredColumn, Discovery } from '../kind.js';
import { connectFailure } from './check.js';
import { connectionConfig, type ResolvedPostgresTarget } from './pool.js';

/**
 * PII discovery (`gatehouse masking discover`): samples every column the target's role may
 * read and reports those whose values the detectors recognise, for review into column rules.
 *
 * Read-only and bounded: one session with `default_transaction_read_only` and a statement
 * timeout, at most `sample` rows per table, values cast to text. Nothing is written, and no
 * sampled value leaves this function: only counts.
 */

const COLUMNS_SQL = `
SELECT n.nspname AS schema, c.relname AS "table", a.attname AS "column",
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND a.attnum > 0 AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND n.nspname NOT LIKE 'pg\\_temp%'
   AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT')
 ORDER BY 1, 2, a.attnum`;

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;

/** A column is reported when at least half of its sampled non-null values hold a detector's find. */
const SHARE = 0.5;

export async function discoverPostgres(
  target: ResolvedPostgresTarget,
  opts: { sample: number; timeoutMs?: number },
): Promise<Discovery> {
  const client = new pg.Client({
    ...connectionConfig(target),
    connectionTimeoutMillis: target.connectTimeoutMs,
    application_name: 'gatehouse-discover',
    options: `-c default_transaction_read_only=on -c statement_timeout=${opts.timeoutMs ?? 10_000}`,
  });
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    throw new Error(`cannot connect to ${target.name}: ${connectFailure(err, target)}`, {
      cause: err,
    });
  }
  try {
    const cols = (
      await client.query<{ schema: string; table: string; column: string; type: string }>(
        COLUMNS_SQL,
      )
    ).rows;
    const byTable = new Map<string, typeof cols>();
    for (const c of cols) {
      const key = `${c.schema}.${c.table}`;
      byTable.set(key, [...(byTable.get(key) ?? []), c]);
    }
    const found: DiscoveredColumn[] = [];
    for (const list of byTable.values()) {
      const first = list[0]!;
      const select = list.map((c, i) => `${ident(c.column)}::text AS c${i}`).join(', ');
      let rows: Array<Record<string, string | null>>;
      try {
        rows = (
          await client.query<Record<string, string | null>>(
            `SELECT ${select} FROM ${ident(first.schema)}.${ident(first.table)} LIMIT $1`,
            [opts.sample],
          )
        ).rows;
      } catch {
        // A table the role cannot read after all (row security, a broken view): skipped.
        continue;
      }
      list.forEach((c, i) => {
        const values = rows.map((r) => r[`c${i}`]).filter((v): v is string => v != null);
        if (values.length === 0) return;
        const counts = new Map<Detector, number>();
        for (const v of values)
          for (const d of detectIn(v)) counts.set(d, (counts.get(d) ?? 0) + 1);
        const best = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
        if (best && best[1] >= Math.max(1, Math.ceil(values.length * SHARE))) {
          found.push({
            schema: c.schema,
            table: c.table,
            column: c.column,
            type: c.type,
            detector: best[0],
            hits: best[1],
            sampled: values.length,
          });
        }
      });
    }
    return { tables: byTable.size, columns: cols.length, found };
  } finally {
    await client.end().catch(() => {});
  }
}
