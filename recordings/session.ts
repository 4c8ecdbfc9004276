import { mkdir, open, readdir, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { scanLines } from './audit.js';

/**
 * Session recordings (CONTRACT section 7): one JSON-lines file per MCP session,
 * `<dir>/<sessionId>.jsonl`. The first line is the header; then one line per call with the
 * request, the decision, the approval and the result exactly as the agent saw it (masked).
 *
 * The audit log is the record of truth (hash-chained, fsynced per line); a recording is the
 * readable account of a session, so its lines are written in order but not fsynced one by
 * one: they survive a gateway crash, and are synced to disk when the session closes.
 */

/** Ids become file names: anything else could walk out of the directory (`../../etc/x`). */
const ID = /^[A-Za-z0-9_-]+$/;

const Decision = z.object({ effect: z.string(), rule: z.string(), reason: z.string() });
const Approval = z.object({
  id: z.string(),
  approver: z.string(),
  answer: z.string(),
  /** In band: the form the person at the client was shown, and what it answered. */
  form: z.string().optional(),
  response: z.string().optional(),
  reason: z.string().optional(),
});

const HeaderLine = z.object({
  type: z.literal('header'),
  session: z.string(),
  identity: z.object({ sub: z.string(), groups: z.array(z.string()) }),
  client: z.object({ name: z.string(), version: z.string() }).nullable(),
  start: z.string(),
  transport: z.string(),
});

const CallLine = z.object({
  type: z.literal('call'),
  /** When the call started (ISO). */
  time: z.string(),
  callId: z.string(),
  tool: z.string(),
  request: z.unknown(),
  decision: Decision.nullable(),
  approval: Approval.optional(),
  result: z.unknown(),
  durationMs: z.number(),
});

export type RecordingHeader = Omit<z.infer<typeof HeaderLine>, 'type'>;
export type RecordedCall = Omit<z.infer<typeof CallLine>, 'type'>;
export type RecordingSummary = {
  session: string;
  sub: string;
  start: string;
  calls: number;
  file: string;
};

/** A recording id that is malformed, unknown or ambiguous (a usage error: exit 2). */
export class RecordingLookupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecordingLookupError';
  }
}

export class SessionRecorder {
  private queue: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;

  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(dir: string, header: RecordingHeader): Promise<SessionRecorder> {
    if (!ID.test(header.session)) {
      throw new Error(`session id ${JSON.stringify(header.session)} cannot name a recording file`);
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const file = path.join(path.resolve(dir), `${header.session}.jsonl`);
    // 'wx': a recording is never appended to another session's file, nor overwritten.
    const handle = await open(file, 'wx', 0o600);
    const recorder = new SessionRecorder(file, handle);
    try {
      await recorder.writeLine({ type: 'header', ...header });
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
    return recorder;
  }

  /**
   * Appends one call. `time` is when the call started; it defaults to now minus the
   * duration, since calls are recorded when they end and replay orders them by start.
   */
  record(ev: Omit<RecordedCall, 'time'> & { time?: string }): Promise<void> {
    if (this.closing) return Promise.reject(new Error(`recording ${this.file} is closed`));
    const { time, ...rest } = ev;
    const line = {
      type: 'call',
      time: time ?? new Date(Date.now() - ev.durationMs).toISOString(),
      ...rest,
    };
    const run = this.queue.then(() => this.writeLine(line));
    this.queue = run.catch(() => undefined);
    return run;
  }

  close(): Promise<void> {
    this.closing ??= this.queue.then(async () => {
      try {
        await this.handle.sync();
      } finally {
        await this.handle.close();
      }
    });
    return this.closing;
  }

  private async writeLine(value: unknown): Promise<void> {
    // JSON.stringify escapes every newline inside strings: one value, one line.
    const bytes = Buffer.from(JSON.stringify(value) + '\n', 'utf8');
    let off = 0;
    while (off < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, off, bytes.length - off, null);
      off += bytesWritten;
    }
  }
}

/** Every readable recording under `dir`, oldest first. A missing directory has none. */
export async function listRecordings(dir: string): Promise<RecordingSummary[]> {
  const out: RecordingSummary[] = [];
  for (const id of await recordingIds(dir)) {
    const file = path.join(dir, `${id}.jsonl`);
    try {
      const { header, events } = await parseRecording(file);
      out.push({
        session: header.session,
        sub: header.identity.sub,
        start: header.start,
        calls: events.length,
        file,
      });
    } catch {
      // Not a recording (or unreadable): `recordings show` on its id reports why.
    }
  }
  return out.sort((a, b) => a.start.localeCompare(b.start) || a.session.localeCompare(b.session));
}

/** One recording by id or unique id prefix. */
export async function readRecording(
  dir: string,
  id: string,
): Promise<{ header: RecordingHeader; events: RecordedCall[]; file: string }> {
  if (!ID.test(id)) {
    throw new RecordingLookupError(
      `invalid recording id ${JSON.stringify(id)}: use letters, digits, "_" and "-" only`,
    );
  }
  const ids = await recordingIds(dir);
  const matches = ids.includes(id) ? [id] : ids.filter((s) => s.startsWith(id));
  if (matches.length === 0) throw new RecordingLookupError(`no recording ${id} in ${dir}`);
  if (matches.length > 1) {
    const shown = matches.slice(0, 5).join(', ') + (matches.length > 5 ? ', ...' : '');
    throw new RecordingLookupError(`recording id ${id} is ambiguous: ${shown}`);
  }
  const file = path.join(dir, `${matches[0]!}.jsonl`);
  return { ...(await parseRecording(file)), file };
}

async function recordingIds(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names
    .filter((n) => n.endsWith('.jsonl'))
    .map((n) => n.slice(0, -'.jsonl'.length))
    .filter((s) => ID.test(s))
    .sort();
}

async function parseRecording(
  file: string,
): Promise<{ header: RecordingHeader; events: RecordedCall[] }> {
  let header: RecordingHeader | undefined;
  const events: RecordedCall[] = [];
  let n = 0;
  for await (const { bytes, complete } of scanLines(file)) {
    n++;
    // A crash mid-write leaves a partial last line; the calls before it still stand.
    if (!complete) break;
    let value: unknown;
    try {
      value = JSON.parse(bytes.toString('utf8'));
    } catch {
      throw new Error(`${file}:${n}: not a JSON line`);
    }
    if (n === 1) {
      const parsed = HeaderLine.safeParse(value);
      if (!parsed.success) throw new Error(`${file}:1: not a recording header`);
      const { type: _type, ...rest } = parsed.data;
      header = rest;
      continue;
    }
    // Other line types are skipped, so a newer writer's additions do not break old readers.
    if ((value as { type?: unknown } | null)?.type !== 'call') continue;
    const parsed = CallLine.safeParse(value);
    if (!parsed.success) throw new Error(`${file}:${n}: malformed call line`);
    const { type: _type, ...rest } = parsed.data;
    events.push(rest);
  }
  if (!header) throw new Error(`${file}: empty recording (no header)`);
  return { header, events };
}
