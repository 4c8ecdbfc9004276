import { createHash } from 'node:crypto';
import { head, wellFormed } from './kernel/text.js';

/**
 * Bounds on what a caller can make the gateway write. Every tool call leaves an audit
 * decision line, an outcome line and a recording line; each holds the tool name, the target
 * and the arguments. Without bounds one call with a 9 MiB tool name wrote 54 MiB of audit
 * and 27 MiB of recording. A call over a bound is refused (INVALID_INPUT) and its evidence
 * keeps a digest of the oversize value instead of the value.
 *
 * Raw strings that reach the evidence are made well-formed first (each lone UTF-16
 * surrogate becomes U+FFFD): the audit chain's canonical JSON (RFC 8785) rejects them.
 */

/** MCP tool names: letters, digits, `_`, `.`, `-`; Gatehouse's own are far shorter. */
export const TOOL_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** A target name as any tool schema takes it. */
export const TARGET_MAX = 256;
/** Any one string in the arguments, in UTF-16 units: the longest SQL text a call may send. */
export const STRING_MAX = 100_000;
/** The arguments as a whole, serialized as JSON, in UTF-8 bytes. */
export const ARGS_MAX_BYTES = 256 * 1024;
/** How deep the arguments may nest (no tool input comes close). */
const DEPTH_MAX = 32;
const PREVIEW = 200;
const NAME_PREVIEW = 40;

/** What the evidence keeps of an oversize value: its digest, size and first characters. */
export interface Digest {
  /** sha256 of the value's UTF-8 bytes (of its JSON text, for the arguments as a whole). */
  digest: string;
  bytes: number;
  preview: string;
}

export function digestOf(s: string): Digest {
  const buf = Buffer.from(s, 'utf8');
  return {
    digest: `sha256:${createHash('sha256').update(buf).digest('hex')}`,
    bytes: buf.length,
    preview: head(s, PREVIEW),
  };
}

/** A name as the evidence shows it: itself when in bounds, else a short digest form. */
function boundedName(s: string, max: number): string {
  if (s.length <= max) return wellFormed(s);
  const d = digestOf(s);
  return `${head(s, NAME_PREVIEW)}… (${d.bytes} bytes, ${d.digest})`;
}

export interface BoundedCall {
  /** The tool name to audit and record. */
  tool: string;
  /** The target name as sent (bounded), for lines written before the input parsed. */
  target: string | null;
  /** The arguments to audit and record when the parsed input is not available. */
  args: unknown;
  /** Why the call is refused, when a bound is exceeded. */
  problem?: string;
}

export function boundCall(tool: string, args: unknown): BoundedCall {
  const problems: string[] = [];
  let auditedTool = tool;
  if (!TOOL_NAME.test(tool)) {
    auditedTool = boundedName(tool, 64);
    problems.push(
      `tool names are 1 to 64 characters of A-Z, a-z, 0-9, "_", "." and "-" (got ${tool.length} characters)`,
    );
  }
  const rawTarget = (args as { target?: unknown } | null | undefined)?.target;
  let target: string | null = null;
  if (typeof rawTarget === 'string') {
    target = boundedName(rawTarget, TARGET_MAX);
    if (rawTarget.length > TARGET_MAX) {
      problems.push(`target: ${rawTarget.length} characters; the limit is ${TARGET_MAX}`);
    }
  }
  const a = boundArgs(args);
  if (a.problem) problems.push(a.problem);
  return {
    tool: auditedTool,
    target,
    args: a.audited,
    ...(problems.length ? { problem: problems.join('; ') } : {}),
  };
}

function boundArgs(args: unknown): { audited: unknown; problem?: string } {
  if (args === undefined) return { audited: null };
  let json: string;
  try {
    json = JSON.stringify(args) ?? 'null';
  } catch {
    // Only a structure too deep for the serializer gets here (arguments arrive as JSON).
    return { audited: { unserializable: true }, problem: 'the arguments nest too deeply' };
  }
  const bytes = Buffer.byteLength(json);
  if (bytes > ARGS_MAX_BYTES) {
    return {
      audited: digestOf(json),
      problem: `the arguments are ${bytes} bytes as JSON; the limit is ${ARGS_MAX_BYTES}`,
    };
  }
  let problem: string | undefined;
  const walk = (v: unknown, at: string, depth: number): unknown => {
    if (typeof v === 'string') {
      if (v.length <= STRING_MAX) return wellFormed(v);
      problem ??= `${label(at)}: ${v.length} characters; the limit is ${STRING_MAX}`;
      return digestOf(v);
    }
    if (v === null || typeof v !== 'object') return v;
    if (depth >= DEPTH_MAX) {
      problem ??= `${label(at)}: nested more than ${DEPTH_MAX} levels deep`;
      return digestOf(JSON.stringify(v));
    }
    if (Array.isArray(v)) return v.map((x, i) => walk(x, join(at, String(i)), depth + 1));
    return Object.fromEntries(
      Object.entries(v).map(([k, x]) => [wellFormed(k), walk(x, join(at, k), depth + 1)]),
    );
  };
  const audited = walk(args, '', 0);
  return problem ? { audited, problem } : { audited };
}

const join = (at: string, key: string) => (at ? `${at}.${key}` : key);
/** A path for an error message: short, and with its characters shown escaped. */
const label = (at: string) => (at ? JSON.stringify(head(at, 80)) : 'the arguments');

/**
 * Every string in a value (keys too) made well-formed, for the audit log: a token's claims,
 * a parsed input or an error text can hold a lone surrogate that canonical JSON refuses.
 */
export function wellFormedDeep<T>(v: T): T {
  if (typeof v === 'string') return wellFormed(v) as T;
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((x: unknown) => wellFormedDeep(x)) as T;
  if (Object.getPrototypeOf(v) !== Object.prototype) return v;
  return Object.fromEntries(
    Object.entries(v).map(([k, x]) => [wellFormed(k), wellFormedDeep(x)]),
  ) as T;
}
