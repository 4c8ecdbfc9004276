import { readFile } from 'node:fs/promises';
import {
  LineCounter,
  isMap,
  isNode,
  isPair,
  isScalar,
  isSeq,
  parseDocument,
  type Document,
  type Node,
} from 'yaml';
import type { z } from 'zod';
import { ConfigError } from './errors.js';

/**
 * Parse a YAML file against a zod schema. Every problem becomes one `file:line:col: message`
 * line naming the key path, so `gatehouse policy check` output can be clicked in an editor.
 */
export async function loadYamlFile<S extends z.ZodType>(
  file: string,
  schema: S,
): Promise<{ value: z.output<S>; locate: (path: readonly PropertyKey[]) => string }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  return parseYamlText(file, text, schema);
}

export function parseYamlText<S extends z.ZodType>(
  file: string,
  text: string,
  schema: S,
): { value: z.output<S>; locate: (path: readonly PropertyKey[]) => string } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const where = (offset: number | undefined): string => {
    if (offset === undefined) return `${file}:1:1`;
    const { line, col } = lineCounter.linePos(offset);
    return `${file}:${line}:${col}`;
  };
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((e) => `${where(e.pos[0])}: ${e.message.split('\n')[0]}`);
    throw new ConfigError(issues[0] ?? `${file}: invalid YAML`, issues);
  }
  const locate = (path: readonly PropertyKey[]): string => {
    // Walk up the path until a node exists: a missing key is reported at its parent.
    for (let n = path.length; n >= 0; n--) {
      const found = nodeAt(doc, path.slice(0, n));
      if (found) return where(found.offset);
    }
    return where(undefined);
  };
  const data: unknown = doc.toJS() ?? {};
  const result = schema.safeParse(data);
  if (!result.success) {
    const issues = result.error.issues.flatMap((issue) => {
      const path = issue.path.map(String).join('.');
      const prefix = path ? `${path}: ` : '';
      if (issue.code !== 'unrecognized_keys')
        return [`${locate(issue.path)}: ${prefix}${issue.message}`];
      // One line per unknown key, at the key itself, with the nearest valid key of that
      // mapping: `poolsize` on line 14 is reported on line 14, not where its target starts.
      const valid = validKeys(schema, issue.path, data);
      const present = keysOf(valueAt(data, issue.path));
      return issue.keys.map((key) => {
        const at = keyOffset(doc, issue.path, key);
        const near = nearest(
          key,
          valid.filter((k) => !present.includes(k)),
        );
        const hint = near === undefined ? '' : ` (did you mean "${near}"?)`;
        const loc = at === undefined ? locate(issue.path) : where(at);
        return `${loc}: ${prefix}unknown key ${JSON.stringify(key)}${hint}`;
      });
    });
    throw new ConfigError(issues[0] ?? `${file}: invalid`, issues);
  }
  return { value: result.data, locate };
}

// --- Positions in the YAML tree ---------------------------------------------------------

/** The pair whose key reads as `key` (toJS turns every map key into a string). */
function pairIn(map: Node, key: PropertyKey) {
  if (!isMap(map)) return undefined;
  return map.items.find(
    (p) => isPair(p) && (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(key),
  );
}

/**
 * Where the value at `path` starts. An empty value (`audit:` with nothing after it) has no
 * text of its own, so it is reported at its key.
 */
function nodeAt(doc: Document, path: readonly PropertyKey[]): { offset: number } | undefined {
  let node: unknown = doc.contents;
  let keyNode: unknown;
  for (const seg of path) {
    if (isSeq(node)) {
      node = node.items[Number(seg)];
      keyNode = undefined;
    } else if (isMap(node)) {
      const pair = pairIn(node, seg);
      if (!pair) return undefined;
      node = pair.value;
      keyNode = pair.key;
    } else {
      return undefined;
    }
  }
  const empty =
    isScalar(node) && node.value === null && node.range && node.range[0] === node.range[1];
  if ((node === null || empty) && isNode(keyNode) && keyNode.range)
    return { offset: keyNode.range[0] };
  if (isNode(node) && node.range) return { offset: node.range[0] };
  return undefined;
}

function keyOffset(doc: Document, path: readonly PropertyKey[], key: string): number | undefined {
  let node: unknown = doc.contents;
  for (const seg of path) {
    if (isSeq(node)) node = node.items[Number(seg)];
    else if (isMap(node)) node = pairIn(node, seg)?.value;
    else return undefined;
  }
  if (!isNode(node)) return undefined;
  const pair = pairIn(node, key);
  return pair && isNode(pair.key) && pair.key.range ? pair.key.range[0] : undefined;
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let v = data;
  for (const seg of path) {
    if (typeof v !== 'object' || v === null || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

function keysOf(v: unknown): string[] {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? Object.keys(v) : [];
}

// --- The keys a schema allows at a path --------------------------------------------------

/** The few zod 4 definition fields the walk reads (`schema._zod.def`). */
interface Def {
  type: string;
  innerType?: Schema;
  in?: Schema;
  getter?: () => Schema;
  shape?: Record<string, Schema>;
  catchall?: Schema;
  valueType?: Schema;
  element?: Schema;
  items?: Schema[];
  rest?: Schema | null;
  options?: Schema[];
  discriminator?: string;
  left?: Schema;
  right?: Schema;
}
type Schema = z.ZodType;
const def = (s: Schema): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

const WRAPPERS = new Set([
  'default',
  'prefault',
  'optional',
  'nullable',
  'nonoptional',
  'readonly',
  'catch',
  'success',
]);

/**
 * The schemas a value may have to match: wrappers (defaults, optionals, the input side of a
 * pipe) peeled off, unions and intersections spread out. A discriminated union keeps only
 * the option the document's own discriminator value (`kind: postgres`) picks.
 */
function expand(s: Schema, value: unknown, out: Schema[] = [], depth = 0): Schema[] {
  if (depth > 32) return out;
  const d = def(s);
  if (WRAPPERS.has(d.type) && d.innerType) return expand(d.innerType, value, out, depth + 1);
  if (d.type === 'pipe' && d.in) return expand(d.in, value, out, depth + 1);
  if (d.type === 'lazy' && d.getter) return expand(d.getter(), value, out, depth + 1);
  if (d.type === 'intersection' && d.left && d.right) {
    expand(d.left, value, out, depth + 1);
    return expand(d.right, value, out, depth + 1);
  }
  if (d.type === 'union' && d.options) {
    let options = d.options;
    const disc = d.discriminator;
    if (disc !== undefined && typeof value === 'object' && value !== null) {
      const tag = (value as Record<string, unknown>)[disc];
      const picked = options.filter((o) => {
        const field = expand(o, undefined)
          .map((e) => def(e).shape?.[disc])
          .find((f) => f !== undefined);
        return field?.safeParse(tag).success ?? false;
      });
      if (picked.length > 0) options = picked;
    }
    for (const o of options) expand(o, value, out, depth + 1);
    return out;
  }
  out.push(s);
  return out;
}

function step(s: Schema, seg: PropertyKey): Schema | undefined {
  const d = def(s);
  switch (d.type) {
    case 'object':
      return d.shape && Object.hasOwn(d.shape, seg)
        ? d.shape[String(seg)]
        : (d.catchall ?? undefined);
    case 'record':
      return d.valueType;
    case 'array':
      return d.element;
    case 'tuple':
      return d.items?.[Number(seg)] ?? d.rest ?? undefined;
    default:
      return undefined;
  }
}

/** The keys the object schema at `path` allows, read from the schema along the document. */
function validKeys(schema: Schema, path: readonly PropertyKey[], data: unknown): string[] {
  let current = [schema];
  for (let i = 0; i < path.length; i++) {
    const here = valueAt(data, path.slice(0, i));
    current = current
      .flatMap((s) => expand(s, here))
      .map((s) => step(s, path[i]!))
      .filter((s): s is Schema => s !== undefined);
  }
  const value = valueAt(data, path);
  const objects = current
    .flatMap((s) => expand(s, value))
    .map((s) => def(s))
    .filter((d) => d.type === 'object' && d.shape !== undefined)
    .map((d) => Object.keys(d.shape!));
  // Of several object shapes (a plain union), prefer those that fit the keys already there.
  const present = keysOf(value);
  const fitting = objects.filter((keys) => present.some((k) => keys.includes(k)));
  return [...new Set((fitting.length > 0 ? fitting : objects).flat())];
}

// --- "Did you mean" ----------------------------------------------------------------------

const loose = (k: string): string => k.toLowerCase().replace(/[-_]/g, '');

/**
 * The valid key a typo most likely meant: the same key up to case, `_` and `-`
 * (`pool_size`, `poolsize` for `poolSize`), else one within two edits (insertion, deletion,
 * substitution, swap) that is not mostly rewritten (`host` is not a typo of `port`).
 */
export function nearest(key: string, valid: readonly string[]): string | undefined {
  const same = valid.find((k) => loose(k) === loose(key));
  if (same !== undefined) return same;
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of valid) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d <= 2 && d < Math.max(key.length, k.length) / 2 && d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/** Optimal string alignment distance (Levenshtein plus adjacent swaps). */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = rows[i]!;
      const prev = rows[i - 1]!;
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j]!, rows[i - 2]![j - 2]! + 1);
      }
    }
  }
  return rows[a.length]![b.length]!;
}
