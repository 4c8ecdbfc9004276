import { stat } from 'node:fs/promises';
import { readAuditEntries, sleep, verifyAuditFile, type AuditLine } from './audit.js';
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
  if (result.ok) {
    await emit(io.out, `ok: ${result.lines} lines, chain intact\n`);
    return 0;
  }
  await emit(io.out, `audit chain broken at line ${result.line}: ${result.reason}\n`);
  return 1;
}

export async function auditTail(
  file: string,
  opts: {
    follow: boolean;
    sub?: string;
    tool?: string;
    decision?: string;
    json: boolean;
    signal?: AbortSignal;
  },
  io: Io,
): Promise<number> {
  if (!(await isFile(file, io, 'audit log'))) return 2;
  try {
    const read = readAuditEntries(file, {
      follow: opts.follow,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    for await (const { raw, line } of read) {
      if (opts.sub !== undefined && line.sub !== opts.sub) continue;
      if (opts.tool !== undefined && line.tool !== opts.tool) continue;
      if (opts.decision !== undefined && line.decision?.effect !== opts.decision) continue;
      await emit(io.out, (opts.json ? jsonForTerminal(raw) : auditText(line)) + '\n');
    }
  } catch (err) {
    await emit(io.err, `gatehouse audit tail: ${(err as Error).message}\n`);
    return 1;
  }
  return 0;
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
  const parts = [
    line.time,
    line.sub,
    line.tool,
    line.target ?? '-',
    line.operation ?? '-',
    line.decision?.effect ?? '-',
    line.decision?.rule ?? '-',
  ];
  if (line.approval) parts.push(`approval:${line.approval.answer}:${line.approval.approver}`);
  const o = line.outcome;
  if (o) {
    parts.push(o.status);
    if (o.code) parts.push(o.code);
    if (o.rows !== undefined) parts.push(`${o.rows} rows`);
    if (o.bytes !== undefined) parts.push(`${o.bytes} bytes`);
    if (o.exitCode !== undefined) parts.push(`exit ${o.exitCode ?? '-'}`);
    parts.push(`${o.durationMs}ms`);
  }
  return parts.map((p) => safe(String(p))).join(' ');
}

function headerText(h: RecordingHeader, calls: number): string {
  const client = h.client ? `${safe(h.client.name)} ${safe(h.client.version)}` : 'unknown client';
  const groups = h.identity.groups.length ? ` (${h.identity.groups.map(safe).join(', ')})` : '';
  return (
    `session ${safe(h.session)}  started ${safe(h.start)}  via ${safe(h.transport)}\n` +
    `  identity ${safe(h.identity.sub)}${groups}  client ${client}  ${calls} call(s)\n`
  );
}

function callText(ev: RecordedCall): string {
  const d = ev.decision;
  const decided = d ? `${safe(d.effect)} by ${safe(d.rule)}` : 'no decision';
  const lines = [
    `\n[${safe(ev.time)}] ${safe(ev.tool)}  ${decided}  ${ev.durationMs}ms  (call ${safe(ev.callId)})`,
  ];
  if (d?.reason) lines.push(`  reason   ${safe(d.reason)}`);
  lines.push(`  request  ${safe(JSON.stringify(ev.request ?? null))}`);
  if (ev.approval) {
    const a = ev.approval;
    lines.push(`  approval ${safe(a.answer)} by ${safe(a.approver)} (${safe(a.id)})`);
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
