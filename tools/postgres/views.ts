import type { Lineage } from '../../policies/masking.js';
import type { TargetCatalog, ViewDefinition } from './catalog.js';
import { viewLineage, type ViewColumnLineage } from './lineage.js';

/**
 * What each column of the views a statement reads is computed from, so that masking can see
 * a condition on a view column as a condition on what it is made of: with a view `v` that says
 * `lower(password) AS p`, `WHERE v.p LIKE 'a%'` asks about the password one bit at a time.
 *
 * From the target's catalog snapshot (every user view, trusted or not, with its definition
 * and column names; refreshed when a view or its columns change), so this costs no query of
 * its own. Views over views are followed four deep, and coarsely: every column of a view is
 * taken as computed from everything the views it reads put out (as the executor does for the
 * result); deeper, or a definition that does not parse here, counts as a whole row.
 */

const DEPTH = 4;
const ANYTHING: ViewColumnLineage = { output: [], wholeRow: true };

type Columns = Record<string, ViewColumnLineage>;

const memo = new WeakMap<TargetCatalog, Map<ViewDefinition, Columns>>();

export function viewColumnsFor(
  lineage: Lineage,
  catalog: TargetCatalog,
): Lineage['viewColumns'] | undefined {
  const reads = lineage.reads ?? [];
  if (reads.length === 0 || catalog.views.size === 0) return undefined;
  const out: NonNullable<Lineage['viewColumns']> = {};
  for (const read of reads) {
    const relation = read.name.toLowerCase();
    for (const view of lookup(catalog, read.schema, read.name)) {
      const columns = columnsOf(view, catalog);
      // The statement calls it by its name and by every alias given to a relation of that name.
      const names = [relation];
      for (const [alias, rels] of Object.entries(lineage.relationAliases ?? {})) {
        if (rels.includes(relation)) names.push(alias);
      }
      for (const name of names) {
        const into = (out[name] ??= {});
        for (const [column, l] of Object.entries(columns)) {
          const had = into[column];
          into[column] = had
            ? { output: [...had.output, ...l.output], wholeRow: had.wholeRow || l.wholeRow }
            : l;
        }
      }
    }
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The views a reference can resolve to: any schema when unqualified (search_path can change). */
function lookup(catalog: TargetCatalog, schema: string | undefined, name: string) {
  const all = catalog.views.get(name.toLowerCase()) ?? [];
  return schema === undefined
    ? all
    : all.filter((v) => v.schema.toLowerCase() === schema.toLowerCase());
}

function columnsOf(view: ViewDefinition, catalog: TargetCatalog): Columns {
  let cache = memo.get(catalog);
  if (!cache) {
    cache = new Map();
    memo.set(catalog, cache);
  }
  const hit = cache.get(view);
  if (hit) return hit;
  const columns: Columns = {};
  let own: ReturnType<typeof viewLineage> | undefined;
  try {
    own = viewLineage(view.definition);
  } catch {
    own = undefined;
  }
  const extra = own ? nestedOutput(own, catalog) : ANYTHING;
  view.columns.forEach((name, i) => {
    const col = own ? (own.columns?.[i] ?? own.whole) : ANYTHING;
    columns[name.toLowerCase()] = {
      output: [...col.output, ...extra.output],
      wholeRow: col.wholeRow || extra.wholeRow,
    };
  });
  cache.set(view, columns);
  return columns;
}

/** What the view's derived relations and the views it reads (recursively) put out. */
function nestedOutput(
  own: ReturnType<typeof viewLineage>,
  catalog: TargetCatalog,
): ViewColumnLineage {
  const extra: ViewColumnLineage = { output: [...own.inner.output], wholeRow: own.inner.wholeRow };
  let relations = own.relations;
  const seen = new Set<ViewDefinition>();
  for (let depth = 0; relations.length > 0; depth++) {
    const views = relations.flatMap((r) => lookup(catalog, r.schema, r.name));
    if (views.length > 0 && depth === DEPTH) return ANYTHING;
    relations = [];
    for (const v of views) {
      if (seen.has(v)) continue;
      seen.add(v);
      try {
        const l = viewLineage(v.definition);
        extra.output.push(...l.whole.output);
        extra.wholeRow ||= l.whole.wholeRow;
        relations.push(...l.relations);
      } catch {
        return ANYTHING;
      }
    }
  }
  return extra;
}
