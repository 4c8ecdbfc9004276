import { stat } from 'node:fs/promises';
import {
  listAuditChains,
  mergeByTime,
  readAuditEntries,
  sleep,
  verifyAuditFile,
  type AuditLine,
  type AuditVerdict,
} from './audit.js';
import { head } from '../server/kernel/text.js';
import { nearest } from '../server/kernel/yaml.js';
import {
  listRecordings,
  readRecording,
  RecordingLookupError,
  type RecordedCall,
  type RecordingHeader,
} from './session.js';

/**
 * `gatehouse audit ...` and `gatehouse recordings ...`. Each returns the exit code
 * (0 ok, 1 check failed, 2 usage: unknown id, missing file) and writes only to the streams it
 * is given, so tests can capture them and stdio mode never sees a stray byte on stdout.
 */

export interface Io {
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
}

/** Longest pause between two replayed events, whatever the recorded gap. */
const MAX_REPLAY_GAP_MS = 2000;

export async function auditVerify(file: string, io: Io): Promise<number> {
  // A log that is not there fails the check (it may have been deleted), like a broken one.
  if (!(await isFile(file, io, 'audit log'))) return 1;
  const result = await verifyAuditFile(file);
  await emit(io.out, verdictText(result, file));
  return result.ok ? 0 : 1;
}

/**
 * Every chain a config's `audit.file` covers (the base and each writer's chain beside it,
 * CONTRACT section 2): one line per chain naming its file, then a count. Exit 1 when any
 * chain is broken or ends in a torn line, or when there is no chain at all; every chain is
 * checked either way, so one broken chain does not hide the state of the others.
 */
export async function auditVerifyChains(base: string, io: Io): Promise<number> {
  const chains = await listAuditChains(base);
  if (chains.length === 0) {
    await emit(io.err, `gatehouse: no audit log at ${base}\n`);
    return 1;
  }
  let bad = 0;
  for (const file of chains) {
    let result: AuditVerdict;
    try {
      result = await verifyAuditFile(file);
    } catch (err) {
      result = { ok: false, line: 0, reason: `cannot be read (${errorCode(err)})` };
    }
    if (!result.ok) bad++;
    await emit(io.out, verdictText(result, file, { named: true }));
  }
  if (chains.length > 1) {
    await emit(
      io.out,
      `${chains.length} chains: ${bad === 0 ? 'all intact' : `${bad} not intact`}\n`,
    );
  }
  return bad === 0 ? 0 : 1;
}

/**
 * One chain's verdict. A torn last line is what a crash mid-write leaves, not an edit: it is
 * said so, with how to keep the lines that verify, and it still fails the check (the chain
 * is incomplete, and lines cut from its end are indistinguishable from a log that stopped).
 */
function verdictText(r: AuditVerdict, file: string, opts: { named?: boolean } = {}): string {
  const of = opts.named ? ` of ${file}` : '';
  if (r.ok) return `ok: ${plural(r.lines, 'line')}, chain intact${opts.named ? `: ${file}` : ''}\n`;
  if (r.torn) {
    const kept = r.line > 1 ? `lines 1-${r.line - 1} verify` : 'no line before it';
    return (
      `audit chain broken at line ${r.line}${of}: torn last line (a truncated tail): no trailing ` +
      `newline, as a crash mid-write leaves it; ${kept} (to keep only those: ` +
      `truncate -s ${r.torn.intactBytes} ${file})\n`
    );
  }
  if (r.line === 0) return `audit chain${of} ${r.reason}\n`;
  return `audit chain broken at line ${r.line}${of}: ${r.reason}\n`;
}

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/**
 * What `audit tail --decision` selects. `refused` is a call refused before policy could look
 * at it (input that did not parse, an unknown target, a token refused: decision rule `input`
 * or `identity`); `deny` is a policy's denial. Both are written with effect `deny`.
 */
export const TAIL_DECISIONS = ['allow', 'deny', 'approve', 'refused'] as const;
export type TailDecision = (typeof TAIL_DECISIONS)[number];

/** Decision rules that are not a policy's: the call was refused before policy decided. */
const REFUSAL_RULES = new Set(['input', 'identity']);

function decisionOf(line: AuditLine): string | undefined {
  const d = line.decision as AuditLine['decision'] | undefined;
  if (!d) return undefined;
  return d.effect === 'deny' && REFUSAL_RULES.has(d.rule) ? 'refused' : d.effect;
}

export interface TailOptions {
  follow: boolean;
  json: boolean;
  /** Only the last N matching lines of what is there now (then, following, every new one). */
  lines?: number;
  /** Only lines at or after this time (ms since the epoch). */
  since?: number;
  sub?: string;
  tool?: string;
  decision?: TailDecision;
  signal?: AbortSignal;
  /** How often to look for a log that does not exist yet, and for new lines. */
  pollMs?: number;
  /**
   * The file is a config's `audit.file`: read it and every writer's chain beside it, merged
   * in time order, and with `follow`, chains that appear later too (CONTRACT section 2).
   */
  chains?: boolean;
}

export async function auditTail(file: string, opts: TailOptions, io: Io): Promise<number> {
  let files: string[];
  if (opts.chains) {
    const found = await findChains(file, opts, io);
    if (typeof found === 'number') return found;
    files = found;
  } else {
    if (opts.follow) {
      const waited = await waitForFile(file, opts, io);
      if (waited !== undefined) return waited;
    } else if (!(await isFile(file, io, 'audit log'))) return 2;
    files = [file];
  }
  const matches = (line: AuditLine) =>
    (opts.sub === undefined || line.sub === opts.sub) &&
    (opts.tool === undefined || line.tool === opts.tool) &&
    (opts.decision === undefined || decisionOf(line) === opts.decision) &&
    (opts.since === undefined || Date.parse(line.time) >= opts.since);
  const show = (e: { raw: string; line: AuditLine }) =>
    (opts.json ? jsonForTerminal(e.raw) : auditText(e.line)) + '\n';
  const signal = opts.signal ? { signal: opts.signal } : {};
  // Lines already read, per chain: following starts after them.
  const seen = new Map<string, number>(files.map((f) => [f, 0]));
  try {
    // What is there now, every chain merged in time order: the last `lines` matches (all of
    // them without -n).
    let matched = 0;
    const last: string[] = [];
    const names = { sub: new Set<string>(), tool: new Set<string>() };
    const counted = async function* (f: string) {
      for await (const entry of readAuditEntries(f, signal)) {
        seen.set(f, (seen.get(f) ?? 0) + 1);
        yield entry;
      }
    };
    for await (const entry of mergeByTime(files.map(counted), (e) => Date.parse(e.line.time))) {
      names.sub.add(entry.line.sub);
      names.tool.add(entry.line.tool);
      if (!matches(entry.line)) continue;
      matched++;
      if (opts.lines === undefined) await emit(io.out, show(entry));
      else {
        last.push(show(entry));
        if (last.length > opts.lines) last.shift();
      }
    }
    for (const text of last) await emit(io.out, text);
    const total = [...seen.values()].reduce((a, b) => a + b, 0);
    if (matched === 0 && total > 0) await emit(io.err, nothingMatched(opts, names));
    if (!opts.follow || opts.signal?.aborted) return 0;
    await followChains(file, seen, opts, (entry) =>
      matches(entry.line) ? emit(io.out, show(entry)) : Promise.resolve(),
    );
  } catch (err) {
    await emit(io.err, `gatehouse audit tail: ${(err as Error).message}\n`);
    return 1;
  }
  return 0;
}

/**
 * Follows every chain in `seen` after the lines already read (chains are append-only), and
 * with `chains`, each new chain that appears beside the base from its first line: a gateway
 * started after the tail writes one. Lines are shown as they are written. The first chain
 * that cannot be read stops the whole tail (the error is thrown).
 */
async function followChains(
  base: string,
  seen: Map<string, number>,
  opts: TailOptions,
  show: (entry: { raw: string; line: AuditLine }) => Promise<void>,
): Promise<void> {
  const stop = new AbortController();
  const abort = () => stop.abort();
  opts.signal?.addEventListener('abort', abort, { once: true });
  let failure: Error | undefined;
  let out = Promise.resolve();
  // One writer to the output at a time, in the order lines arrive from the chains.
  const put = (entry: { raw: string; line: AuditLine }) => (out = out.then(() => show(entry)));
  const poll = opts.pollMs !== undefined ? { pollMs: opts.pollMs } : {};
  const follow = async (f: string, skip: number) => {
    try {
      let n = 0;
      for await (const entry of readAuditEntries(f, {
        follow: true,
        signal: stop.signal,
        ...poll,
      })) {
        if (++n > skip) await put(entry);
      }
    } catch (err) {
      failure ??= err instanceof Error ? err : new Error(String(err));
      stop.abort();
    }
  };
  const running = [...seen].map(([f, skip]) => follow(f, skip));
  try {
    while (opts.chains && !stop.signal.aborted) {
      await sleep(opts.pollMs ?? 200, stop.signal);
      if (stop.signal.aborted) break;
      for (const f of await listAuditChains(base)) {
        if (seen.has(f)) continue;
        seen.set(f, 0);
        running.push(follow(f, 0));
      }
    }
    await Promise.all(running);
    await out;
  } finally {
    opts.signal?.removeEventListener('abort', abort);
    stop.abort();
  }
  if (failure !== undefined) throw failure;
}

/**
 * The chains a config's audit covers; with -f, waits for the first one (a gateway creates
 * it when it starts). Else the exit code: 2 none there (without -f), 0 stopped while waiting.
 */
async function findChains(base: string, opts: TailOptions, io: Io): Promise<string[] | number> {
  let said = false;
  for (;;) {
    const chains = await listAuditChains(base);
    if (chains.length > 0) return chains;
    if (!opts.follow) {
      await emit(io.err, `gatehouse: no audit log at ${base}\n`);
      return 2;
    }
    if (opts.signal?.aborted) return 0;
    if (!said) await emit(io.err, `gatehouse audit tail: waiting for ${base} to be created\n`);
    said = true;
    await sleep(opts.pollMs ?? 200, opts.signal);
  }
}

/**
 * A log that has no line for the filter: said on stderr, with the nearest name the log holds
 * when a --sub or --tool looks misspelt (any name is accepted: the log records whatever an
 * agent sent, and it is read without a config that would know the tools).
 */
function nothingMatched(opts: TailOptions, names: { sub: Set<string>; tool: Set<string> }): string {
  const filters: string[] = [];
  for (const key of ['sub', 'tool'] as const) {
    const value = opts[key];
    if (value === undefined) continue;
    const near = names[key].has(value) ? undefined : nearest(value, [...names[key]]);
    filters.push(
      `--${key} ${safe(value)}${near === undefined ? '' : ` (did you mean "${safe(near)}"?)`}`,
    );
  }
  if (opts.decision !== undefined) filters.push(`--decision ${opts.decision}`);
  if (opts.since !== undefined) filters.push(`--since ${new Date(opts.since).toISOString()}`);
  const what = filters.length > 0 ? ` matches ${filters.join(' ')}` : '';
  return `gatehouse audit tail: no line${what}${opts.follow ? '; waiting for new lines' : ''}\n`;
}

/**
 * With -f, a log that is not there yet is waited for (a gateway creates it when it starts).
 * Resolves to nothing once it is there, else to the exit code: 0 stopped while waiting, 1 the
 * path is something else than a file or cannot be looked at.
 */
async function waitForFile(file: string, opts: TailOptions, io: Io): Promise<number | undefined> {
  let said = false;
  for (;;) {
    if (opts.signal?.aborted) return 0;
    try {
      if ((await stat(file)).isFile()) return undefined;
      await emit(io.err, `gatehouse audit tail: ${file} is not a file\n`);
      return 1;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') {
        await emit(io.err, `gatehouse audit tail: cannot read ${file} (${code})\n`);
        return 1;
      }
    }
    if (!said) await emit(io.err, `gatehouse audit tail: waiting for ${file} to be created\n`);
    said = true;
    await sleep(opts.pollMs ?? 200, opts.signal);
  }
}

export async function recordingsList(dir: string, io: Io): Promise<number> {
  const all = await listRecordings(dir);
  if (all.length === 0) {
    await emit(io.out, `no recordings in ${dir}\n`);
    return 0;
  }
  const rows = all.map((r) => [safe(r.session), safe(r.start), String(r.calls), safe(r.sub)]);
  const table = [['SESSION', 'START', 'CALLS', 'SUB'], ...rows];
  const widths = [0, 1, 2].map((i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) {
    const cells = row.map((c, i) => (i < widths.length ? c.padEnd(widths[i]!) : c));
    await emit(io.out, cells.join('  ') + '\n');
  }
  return 0;
}

export async function recordingsShow(dir: string, id: string, io: Io): Promise<number> {
  const rec = await lookup(dir, id, io);
  if (!rec) return 2;
  await emit(io.out, headerText(rec.header, rec.events.length));
  for (const ev of rec.events) await emit(io.out, callText(ev));
  return 0;
}

/** Prints the calls in the order they started, pausing for the recorded gaps (scaled). */
export async function recordingsReplay(
  dir: string,
  id: string,
  opts: { speed: number; signal?: AbortSignal },
  io: Io,
): Promise<number> {
  if (!Number.isFinite(opts.speed) || opts.speed < 0) {
    await emit(io.err, 'gatehouse recordings replay: --speed takes a number >= 0 (0: no pauses)\n');
    return 2;
  }
  const rec = await lookup(dir, id, io);
  if (!rec) return 2;
  const events = [...rec.events].sort((a, b) => timeOf(a) - timeOf(b)); // stable: ties keep file order
  await emit(io.out, headerText(rec.header, events.length));
  let last: number | undefined;
  for (const ev of events) {
    if (opts.signal?.aborted) break;
    const t = timeOf(ev);
    if (last !== undefined && opts.speed > 0) {
      await sleep(Math.min(Math.max(0, (t - last) / opts.speed), MAX_REPLAY_GAP_MS), opts.signal);
      if (opts.signal?.aborted) break;
    }
    last = t;
    await emit(io.out, callText(ev));
  }
  return 0;
}

function auditText(line: AuditLine): string {
  // Lines are read, not verified: a field may be missing whatever the type says.
  const d = line.decision as AuditLine['decision'] | undefined;
  // A call refused before policy looked at it is not a policy's denial: `refused (input)`.
  const decided =
    d && decisionOf(line) === 'refused'
      ? ['refused', `(${d.rule})`]
      : [d?.effect ?? '-', d?.rule ?? '-'];
  const parts = [
    line.time,
    line.sub,
    line.tool,
    line.target ?? '-',
    line.operation ?? '-',
    ...decided,
  ];
  const a = line.approval;
  if (a) {
    // `approval:requested:apr_…`, `approval:denied:apr_…:by=bob`
    const by = a.approver && a.approver !== '-' ? `:by=${a.approver}` : '';
    parts.push(`approval:${a.event ?? a.answer}:${a.id}${by}`);
    if (a.reason) parts.push(`(${head(a.reason, 200)})`);
  }
  const o = line.outcome;
  if (o) {
    parts.push(o.status);
    if (o.code) parts.push(o.code);
    if (o.rows !== undefined) parts.push(plural(o.rows, 'row'));
    if (o.bytes !== undefined) parts.push(plural(o.bytes, 'byte'));
    if (o.exitCode !== undefined) parts.push(`exit ${o.exitCode ?? '-'}`);
    parts.push(`${o.durationMs}ms`);
  }
  const text = parts.map((p) => safe(String(p))).join(' ');
  const statement = statementOf(line.input);
  return statement === undefined ? text : `${text}  ${statement}`;
}

/** How much of a statement the one-line view shows. */
const STATEMENT_SHOWN = 160;

/**
 * What the call asked for, on one line: `sql: ...` for a statement (also the one an
 * `explain` call asks about), else `input: {...}` as compact JSON; nothing for an empty input.
 * Newlines and every other unsafe character are escaped like any field (`\n`), never folded
 * into spaces: `SELECT 1 --\nDROP ...` must not read as a comment. Cut at STATEMENT_SHOWN
 * characters; an input kept as a digest (over its bound) shows its preview, size and digest.
 */
function statementOf(input: unknown): string | undefined {
  const sql = sqlOf(input);
  if (sql !== undefined) return `sql: ${sql}`;
  if (input === null || input === undefined) return undefined;
  if (isDigest(input)) return `input: ${digestText(input)}`;
  const json = JSON.stringify(input);
  if (json === undefined || json === '{}') return undefined;
  return `input: ${shortened(json)}`;
}

function sqlOf(input: unknown): string | undefined {
  if (!isRecord(input)) return undefined;
  if (typeof input.sql === 'string') return shortened(input.sql);
  if (isDigest(input.sql)) return digestText(input.sql);
  return sqlOf(input.input);
}

function shortened(text: string): string {
  if (text.length <= STATEMENT_SHOWN) return safe(text);
  return `${safe(head(text, STATEMENT_SHOWN))}… (${plural(text.length, 'character')})`;
}

interface Digest {
  digest: string;
  bytes: number;
  preview: string;
}

function isDigest(v: unknown): v is Digest {
  return (
    isRecord(v) &&
    typeof v.digest === 'string' &&
    typeof v.bytes === 'number' &&
    typeof v.preview === 'string'
  );
}

function digestText(d: Digest): string {
  return `${safe(head(d.preview, STATEMENT_SHOWN))}… (${plural(d.bytes, 'byte')}, ${safe(d.digest)})`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** "1 line", "2 lines". */
function plural(n: number, one: string): string {
  return `${n} ${n === 1 ? one : `${one}s`}`;
}

function headerText(h: RecordingHeader, calls: number): string {
  const client = h.client ? `${safe(h.client.name)} ${safe(h.client.version)}` : 'unknown client';
  const groups = h.identity.groups.length ? ` (${h.identity.groups.map(safe).join(', ')})` : '';
  return (
    `session ${safe(h.session)}  started ${safe(h.start)}  via ${safe(h.transport)}\n` +
    `  identity ${safe(h.identity.sub)}${groups}  client ${client}  ${plural(calls, 'call')}\n`
  );
}

function callText(ev: RecordedCall): string {
  const d = ev.decision;
  const decided = !d
    ? 'no decision'
    : d.effect === 'deny' && REFUSAL_RULES.has(d.rule)
      ? `refused (${safe(d.rule)})`
      : `${safe(d.effect)} by ${safe(d.rule)}`;
  const lines = [
    `\n[${safe(ev.time)}] ${safe(ev.tool)}  ${decided}  ${ev.durationMs}ms  (call ${safe(ev.callId)})`,
  ];
  if (d?.reason) lines.push(`  reason   ${safe(d.reason)}`);
  lines.push(`  request  ${safe(JSON.stringify(ev.request ?? null))}`);
  if (ev.approval) {
    const a = ev.approval;
    lines.push(`  approval ${safe(a.answer)} by ${safe(a.approver)} (${safe(a.id)})`);
    if (a.form !== undefined) {
      lines.push('  form');
      for (const l of a.form.split('\n')) lines.push(`    ${safe(l)}`);
    }
    if (a.response !== undefined) {
      lines.push(`  answer   ${safe(a.response)}${a.reason ? ` (${safe(a.reason)})` : ''}`);
    }
  }
  const result = ev.result as { isError?: unknown; content?: unknown } | null | undefined;
  lines.push(`  result${result?.isError === true ? ' (error)' : ''}`);
  if (result && Array.isArray(result.content)) {
    for (const item of result.content as Array<{ type?: unknown; text?: unknown }>) {
      const text =
        item?.type === 'text' && typeof item.text === 'string'
          ? item.text
          : `[${String(item?.type)}]`;
      // The result's own lines stay lines, indented under the call; nothing else can break one.
      for (const l of text.split('\n')) lines.push(`    ${safe(l)}`);
    }
  } else {
    lines.push(`    ${safe(JSON.stringify(ev.result ?? null))}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Recorded values come from agents, targets and tokens (a target name, a row value, SSH
 * output, a `sub` claim). Shown raw, a newline forges a whole extra line (a fake "alice ...
 * allow" entry), a terminal escape can rewrite the screen or set the window title, and a bidi
 * override or an invisible character makes text read differently from what it holds. Every
 * field is printed with those characters as visible escapes: `\n`, `\r`, `\t`, `\xNN` for
 * other C0, DEL and C1 controls, `\uXXXX` for bidi and invisible formatting characters.
 */
const UNSAFE =
  // eslint-disable-next-line no-control-regex
  /[\u0000-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

export function safe(text: string): string {
  return text.replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    if (SHORT[c]) return SHORT[c];
    if (code <= 0x9f) return `\\x${code.toString(16).padStart(2, '0')}`;
    return `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * A raw JSON line for a terminal: still valid JSON with the same values, but C1 controls,
 * DEL and bidi/invisible characters (which JSON.stringify leaves raw) written as `\uXXXX`.
 * Raw C0 controls cannot occur: JSON escapes them inside strings.
 */
const UNSAFE_IN_JSON = /[\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;

export function jsonForTerminal(raw: string): string {
  return raw.replace(UNSAFE_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function timeOf(ev: RecordedCall): number {
  const t = Date.parse(ev.time);
  return Number.isNaN(t) ? 0 : t;
}

async function lookup(dir: string, id: string, io: Io) {
  try {
    return await readRecording(dir, id);
  } catch (err) {
    if (err instanceof RecordingLookupError) {
      await emit(io.err, `gatehouse recordings: ${err.message}\n`);
      return undefined;
    }
    throw err;
  }
}

async function isFile(file: string, io: Io, what: string): Promise<boolean> {
  try {
    if ((await stat(file)).isFile()) return true;
    await emit(io.err, `gatehouse: ${what} ${file} is not a file\n`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    await emit(
      io.err,
      `gatehouse: no ${what} at ${file}${code === 'ENOENT' ? '' : ` (${code})`}\n`,
    );
  }
  return false;
}

/** Writes and honours backpressure, so a long tail into a slow pipe does not buffer unbounded. */
function emit(stream: NodeJS.WritableStream, text: string): Promise<void> {
  if (stream.write(text)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const done = () => {
      cleanup();
      resolve();
    };
    const fail = (err: unknown) => {
      cleanup();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    const cleanup = () => {
      stream.off('drain', done);
      stream.off('close', done);
      stream.off('error', fail);
    };
    stream.once('drain', done);
    stream.once('close', done);
    stream.once('error', fail);
  });
}
