/**
 * Canonical JSON is RFC 8785, the JSON Canonicalization Scheme (JCS): object keys sorted by
 * UTF-16 code units at every depth, no whitespace, numbers as ECMAScript writes them (`1e-7`,
 * `1e+21`, `0.1`, `-0` as `0`), strings as JSON.stringify writes them (only `"`, `\\` and
 * C0 controls escaped; everything else, U+2028 and astral characters included, as UTF-8).
 * README's Python verifier implements the same scheme, and a test runs it on a real log.
 *
 * The hash chain depends on it: `canonicalJson(JSON.parse(canonicalJson(x)))` must equal
 * `canonicalJson(x)`, so a verifier re-parsing a line computes the very bytes the writer hashed.
 * Anything that would not survive that round trip (NaN, Infinity, bigint, functions, Maps,
 * cycles) throws instead of being silently dropped or coerced: evidence must not change shape.
 *
 * A string or key holding a lone UTF-16 surrogate is ill-formed and rejected, as RFC 8785
 * requires (JSON.stringify would escape it as `\udXXX`, which other verifiers read
 * differently); writers clean raw input with `wellFormed()` first. Beyond JSON's own values,
 * `undefined` object members are dropped and `undefined` array items become `null`, as
 * JSON.stringify does, so a record with optional fields serializes as its parsed form would.
 */
export function canonicalJson(value: unknown): string {
  return serialize(value, new Set(), '$');
}

function serialize(value: unknown, ancestors: Set<object>, path: string): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`canonical JSON: ${path} is ${value}`);
      // ECMAScript Number-to-string is the RFC 8785 number form (and -0 becomes 0).
      return JSON.stringify(value);
    case 'string':
      return str(value, path);
    case 'object':
      break;
    default:
      throw new TypeError(`canonical JSON: ${path} has unsupported type ${typeof value}`);
  }

  const obj = value;
  if (ancestors.has(obj)) throw new TypeError(`canonical JSON: ${path} is a cycle`);
  ancestors.add(obj);
  try {
    if (Array.isArray(obj)) {
      const items = (obj as unknown[]).map((v, i) =>
        v === undefined ? 'null' : serialize(v, ancestors, `${path}[${i}]`),
      );
      return `[${items.join(',')}]`;
    }
    const proto = Object.getPrototypeOf(obj) as unknown;
    if (proto !== Object.prototype && proto !== null) {
      // Dates and the like say how they serialize; a Map or class instance would lose data.
      const toJSON = (obj as { toJSON?: unknown }).toJSON;
      if (typeof toJSON === 'function') {
        return serialize((toJSON as () => unknown).call(obj), ancestors, path);
      }
      const name = (obj as { constructor?: { name?: string } }).constructor?.name ?? 'object';
      throw new TypeError(`canonical JSON: ${path} is a ${name}, not a plain object`);
    }
    const record = obj as Record<string, unknown>;
    const members: string[] = [];
    // Default sort compares UTF-16 code units, which is exactly the RFC 8785 key order.
    for (const key of Object.keys(record).sort()) {
      const v = record[key];
      if (v === undefined) continue;
      members.push(`${str(key, `${path} key`)}:${serialize(v, ancestors, `${path}.${key}`)}`);
    }
    return `{${members.join(',')}}`;
  } finally {
    ancestors.delete(obj);
  }
}

function str(s: string, path: string): string {
  if (!isWellFormed(s)) {
    throw new TypeError(
      `canonical JSON: ${path} holds a lone UTF-16 surrogate (ill-formed string)`,
    );
  }
  return JSON.stringify(s);
}

type WellFormedString = { isWellFormed(): boolean; toWellFormed(): string };

/** True when the string has no lone UTF-16 surrogate (String.prototype.isWellFormed, Node 20). */
export function isWellFormed(s: string): boolean {
  return (s as unknown as WellFormedString).isWellFormed();
}

/** The string with each lone UTF-16 surrogate replaced by U+FFFD: safe to write as evidence. */
export function wellFormed(s: string): string {
  return (s as unknown as WellFormedString).toWellFormed();
}
