/**
 * Canonical JSON: object keys sorted (by UTF-16 code units) at every depth, no whitespace,
 * numbers and strings serialized as ECMAScript does. For the values the audit log holds
 * (strings, finite numbers, booleans, null, arrays, plain objects) this is RFC 8785 (JCS).
 *
 * The hash chain depends on it: `canonicalJson(JSON.parse(canonicalJson(x)))` must equal
 * `canonicalJson(x)`, so a verifier re-parsing a line computes the very bytes the writer hashed.
 * Anything that would not survive that round trip (NaN, Infinity, bigint, functions, Maps,
 * cycles) throws instead of being silently dropped or coerced: evidence must not change shape.
 *
 * Deviations from RFC 8785, for the record: a lone surrogate in a string is escaped
 * (`\udXXX`, as JSON.stringify does) rather than rejected; `undefined` object members are
 * dropped and `undefined` array items become `null`, as JSON.stringify does.
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
      return JSON.stringify(value);
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
      members.push(`${JSON.stringify(key)}:${serialize(v, ancestors, `${path}.${key}`)}`);
    }
    return `{${members.join(',')}}`;
  } finally {
    ancestors.delete(obj);
  }
}
