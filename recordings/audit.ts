import { createHash } from 'node:crypto';
import { constants, fstatSync, statSync } from 'node:fs';
import {
  mkdir,
  open,
  readdir,
  readFile,
  stat,
  unlink,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { canonicalJson } from './canonical.js';

/**
 * The audit log: JSON lines, one per decision and one per outcome, hash-chained
 * (CONTRACT section 6). `hash = sha256(prev + canonicalJson(line without hash))`, the first
 * `prev` is 64 zeros, `seq` counts from 1 without gaps. Each line is itself written in
 * canonical form, so the bytes on disk are exactly what was hashed (plus the `hash` key).
 *
 * One writer per chain file: the process that holds it open is the only one that appends to
 * it (readers such as `audit tail` and `audit verify` never write). `<file>.lock` keeps a
 * second gateway from opening the same file, and before every write the writer checks that
 * the path still names the file it opened, at the size it left it: an edit, a truncation, a
 * deleted file or a writer that ignored the lock makes appends fail (and the call with them)
 * instead of forking or silently losing the chain.
 *
 * Lines have pino's shape (`level`, `time` as pino's isoTime, `msg`), so pino-pretty and log
 * pipelines built for pino read them. Why not pino's writer, although the process log is pino: pino adds its own keys and serializes
 * in insertion order, and its sync destination (sonic-boom) reports a failed write as an
 * 'error' event and swallows fsync errors, so a lost line could not reject `append()`. The
 * audit log must fail closed, so it writes with a plain file handle and `fdatasync`.
 *
 * Durability per line: by default `append` resolves once the line is on disk. A caller that
 * will make a later line durable before acting on the outcome may pass `{ durable: false }`
 * for the earlier one: that line is in the file (every reader sees it, and it survives the
 * process dying) when `append` resolves, and the next durable line's fdatasync carries it to
 * disk too. The pipeline uses this for the decision line: written before the call executes,
 * on disk, with the outcome line, before the result is returned.
 *
 * Many processes, one trail (CONTRACT section 2): several gateways may share one config. The
 * configured `audit.file` is the base chain, written by one process at a time, continued
 * across restarts as a single writer always has; a process that finds it held (or ending in
 * a torn line) writes a chain of its own beside it, `<stem>.<writer><ext>`
 * (`audit.host-4242-20250602T091403Z.jsonl`), which no other process ever continues. A
 * replica with a stable id (`GATEHOUSE_REPLICA_ID`) always writes `audit.<id>.jsonl` and
 * continues it across its restarts. Every line names its `writer`; every chain starts at
 * GENESIS_PREV; `listAuditChains` finds them all for `verify` and `tail`.
 *
 * Limit worth knowing: a chain proves order and integrity from the first line to the last
 * one it holds. Someone able to rewrite the whole file can recompute every hash, and
 * dropping whole lines from the end is indistinguishable from a log that stopped there. Ship
 * the last `hash` somewhere else (a SIEM, a ticket) when that matters.
 */

export const GENESIS_PREV = '0'.repeat(64);

export interface AuditRecord {
  callId: string;
  session: string;
  sub: string;
  groups: string[];
  tool: string;
  target: string | null;
  operation: string | null;
  input: unknown;
  decision: { effect: string; rule: string; reason: string };
  /**
   * On an outcome line: the approval the call ran under (`answer` approve; `approver` the
   * approvers' subs, comma-separated) or was refused by. On an `approval` line: the event
   * (requested, answered, expired, consumed, grant-used) and, for an answer, who and why.
   */
  approval?: {
    id: string;
    approver: string;
    answer: string;
    event?: ApprovalEventName;
    reason?: string;
    grant?: string;
  };
  /** The agent's stated purpose for the call (the governed tools' `reason` input). */
  reason?: string;
  /** The W3C traceparent of the request, when one came in `_meta`. */
  trace?: string;
  /** null on a decision line: the call has not run yet. */
  outcome?: {
    status: string;
    rows?: number;
    bytes?: number;
    exitCode?: number | null;
    durationMs: number;
    code?: string;
    /** Why a failed call failed: the text the agent saw (masked, secrets scrubbed), bounded. */
    reason?: string;
  } | null;
  /** Counts per detector on an outcome line ({} when nothing was masked); null on a decision line. */
  masked?: Record<string, number> | null;
  /** `approval`: a step of a human approval (server/approvals), between decision and outcome. */
  kind: 'decision' | 'outcome' | 'approval';
}

export type ApprovalEventName =
  | 'requested'
  | 'joined'
  | 'answered'
  | 'approved'
  | 'denied'
  | 'expired'
  | 'consumed'
  | 'grant-used'
  | 'grant-revoked';

export interface AuditLine extends AuditRecord {
  /** pino's numeric level: 30 (info), 40 (warn) for a denial or a failed outcome. */
  level: number;
  /** pino's message key: `<kind> <tool> <effect or status>`, for log pipelines and pino-pretty. */
  msg: string;
  /**
   * Who wrote the line: GATEHOUSE_REPLICA_ID, else `<host>-<pid>-<start>`. Absent only in
   * lines written before several processes could share a config.
   */
  writer?: string;
  time: string;
  seq: number;
  prev: string;
  hash: string;
}

/**
 * The log cannot be trusted or continued; the message says why and what to do. `why` lets
 * `openAuditChain` tell a chain another process holds, or one a crash left torn (both: write
 * a chain of its own), from one that was tampered with (refuse to start).
 */
export class AuditIntegrityError extends Error {
  readonly why: 'busy' | 'torn' | 'invalid' | undefined;
  constructor(message: string, options?: { cause?: unknown; why?: 'busy' | 'torn' | 'invalid' }) {
    super(message, options);
    this.name = 'AuditIntegrityError';
    this.why = options?.why;
  }
}

/** A writer id as it appears in a chain's file name: what GATEHOUSE_REPLICA_ID may hold. */
const WRITER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * Who writes: the stable replica id from GATEHOUSE_REPLICA_ID when set (a replica that
 * restarts continues its chain), else `<hostname>-<pid>-<start time>`, unique per process.
 */
export function auditWriterId(env: NodeJS.ProcessEnv = process.env): string {
  const replica = env.GATEHOUSE_REPLICA_ID;
  if (replica !== undefined && replica !== '') {
    if (!WRITER_ID.test(replica) || replica.endsWith('.lock')) {
      throw new AuditIntegrityError(
        `GATEHOUSE_REPLICA_ID must be 1 to 128 characters of A-Z a-z 0-9 _ . - starting with ` +
          `a letter or digit (it names the replica's audit chain file), not ${JSON.stringify(replica)}`,
      );
    }
    return replica;
  }
  const host =
    os
      .hostname()
      .replace(/[^A-Za-z0-9_.-]/g, '_')
      .replace(/^[^A-Za-z0-9]+/, '') || 'host';
  return `${host.slice(0, 64)}-${process.pid}-${compactTime(PROCESS_START)}`;
}

const PROCESS_START = new Date(Date.now() - Math.round(process.uptime() * 1000));

/** 2025-06-02T09:14:03.188Z -> 20250602T091403188Z: sortable, and safe in a file name. */
function compactTime(d: Date): string {
  return d.toISOString().replace(/[-:.]/g, '');
}

/** The chain file of one writer, beside the base: audit.jsonl -> audit.<writer>.jsonl. */
export function auditChainFile(base: string, writer: string): string {
  const { dir, stem, ext } = splitBase(base);
  return path.join(dir, `${stem}.${writer}${ext}`);
}

function splitBase(base: string): { dir: string; stem: string; ext: string } {
  const abs = path.resolve(base);
  const ext = path.extname(abs);
  return { dir: path.dirname(abs), stem: path.basename(abs, ext), ext };
}

/**
 * Every chain the base names: the base itself when it exists, then each writer's chain
 * beside it (`<stem>.<writer><ext>`), by name. Lock files and drafts are not chains.
 */
export async function listAuditChains(base: string): Promise<string[]> {
  const abs = path.resolve(base);
  const { dir, stem, ext } = splitBase(abs);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const chains = names
    .filter((name) => isChainName(name, stem, ext))
    .sort()
    .map((name) => path.join(dir, name));
  if (names.includes(path.basename(abs))) chains.unshift(abs);
  return chains;
}

/** `<stem>.<writer><ext>` where the writer part could have come from auditWriterId. */
export function isChainName(name: string, stem: string, ext: string): boolean {
  if (!name.startsWith(`${stem}.`) || !name.endsWith(ext)) return false;
  const writer = name.slice(stem.length + 1, name.length - ext.length);
  return WRITER_ID.test(writer) && !/\.(lock|tmp)$/.test(writer);
}

const HEX64 = /^[0-9a-f]{64}$/;

/** Audit files this process holds open (the lock file cannot tell this process from itself). */
const OPEN_HERE = new Set<string>();

/** The chain link: sha256 over the previous hash and the canonical line without its hash. */
export function auditHash(prev: string, line: Record<string, unknown>): string {
  const { hash: _hash, ...rest } = line;
  return createHash('sha256')
    .update(prev + canonicalJson(rest), 'utf8')
    .digest('hex');
}

export class AuditLog {
  private queue: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;
  /** Set when a failed write may have left the file in an unknown state: no more appends. */
  private broken: Error | undefined;

  private constructor(
    readonly file: string,
    /** The writer id in every line this log appends. */
    readonly writer: string,
    private readonly handle: FileHandle,
    private readonly lock: { file: string; content: string },
    private readonly identity: { dev: number; ino: number },
    private seq: number,
    private prev: string,
    private size: number,
  ) {}

  /**
   * Opens exactly this file (creating it if needed) and continues the chain from its last
   * line. A torn or invalid tail refuses to open: starting a fresh chain on top of it would
   * hide the damage. The gateway opens through `openAuditChain`, which picks the file.
   */
  static async open(file: string, opts: { writer?: string } = {}): Promise<AuditLog> {
    const abs = path.resolve(file);
    if (OPEN_HERE.has(abs)) {
      throw new AuditIntegrityError(`audit log ${abs} is already open in this process`, {
        why: 'busy',
      });
    }
    OPEN_HERE.add(abs);
    try {
      return await AuditLog.openLocked(abs, opts.writer ?? auditWriterId());
    } catch (err) {
      OPEN_HERE.delete(abs);
      throw err;
    }
  }

  private static async openLocked(abs: string, writer: string): Promise<AuditLog> {
    const dir = path.dirname(abs);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = await acquireLock(abs, writer);
    const existed = await stat(abs).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false;
        throw err;
      },
    );
    let handle: FileHandle | undefined;
    try {
      // O_APPEND: every write goes to the end, and the tail can still be read by position.
      handle = await open(abs, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND, 0o600);
      const st = await handle.stat();
      let seq = 0;
      let prev = GENESIS_PREV;
      if (st.size > 0) {
        const last = await lastLine(handle, st.size);
        const checked = last === null ? { reason: 'no trailing newline' } : checkLine(last);
        if ('reason' in checked) {
          throw new AuditIntegrityError(
            `audit log ${abs}: the last line is torn or invalid (${checked.reason}); refusing to ` +
              `continue the chain. Inspect it with "gatehouse audit verify --file ${abs}", then ` +
              'repair it or move the file aside to start a new log.',
            { why: last === null ? 'torn' : 'invalid' },
          );
        }
        seq = checked.line.seq;
        prev = checked.line.hash;
      }
      if (!existed) await syncDir(dir);
      return new AuditLog(
        abs,
        writer,
        handle,
        lock,
        { dev: st.dev, ino: st.ino },
        seq,
        prev,
        st.size,
      );
    } catch (err) {
      await handle?.close().catch(() => undefined);
      await releaseLock(lock);
      throw err;
    }
  }

  /**
   * Appends one line; resolves once it is on disk (or, with `durable: false`, once it is in
   * the file: see the class comment). Appends run one at a time in call order, so concurrent
   * calls can neither interleave bytes nor fork the chain. A rejection means the line is not
   * in the log: the caller must fail the call.
   */
  append(rec: AuditRecord, opts: { durable?: boolean } = {}): Promise<AuditLine> {
    if (this.closing) return Promise.reject(new Error(`audit log ${this.file} is closed`));
    const durable = opts.durable ?? true;
    const run = this.queue.then(() => this.write(rec, durable));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Waits for pending appends, then closes the file. */
  close(): Promise<void> {
    this.closing ??= this.queue.then(async () => {
      try {
        await this.handle.close();
      } finally {
        await releaseLock(this.lock);
        OPEN_HERE.delete(this.file);
      }
    });
    return this.closing;
  }

  private async write(rec: AuditRecord, durable: boolean): Promise<AuditLine> {
    if (this.broken) {
      throw new AuditIntegrityError(
        `audit log ${this.file} is unusable after a failed write (${this.broken.message}); restart to re-check it`,
        { cause: this.broken },
      );
    }
    // Through JSON first: what gets hashed is exactly what a reader will parse back
    // (Dates become strings, undefined members vanish) and the caller's object stays untouched.
    const body = JSON.parse(JSON.stringify(rec)) as Record<string, unknown>;
    delete body.hash;
    const seq = this.seq + 1;
    const refused =
      rec.kind === 'decision'
        ? rec.decision.effect === 'deny'
        : rec.kind === 'approval'
          ? rec.approval?.event === 'denied' || rec.approval?.event === 'expired'
          : rec.outcome?.status !== 'ok';
    const what =
      rec.kind === 'decision'
        ? rec.decision.effect
        : rec.kind === 'approval'
          ? (rec.approval?.event ?? 'unknown')
          : (rec.outcome?.status ?? 'unknown');
    const line: Record<string, unknown> = {
      level: refused ? 40 : 30,
      msg: `${rec.kind} ${rec.tool} ${what}`,
      ...body,
      writer: this.writer,
      time: new Date().toISOString(),
      seq,
      prev: this.prev,
    };
    const hash = auditHash(this.prev, line);
    const full = { ...line, hash } as unknown as AuditLine;
    const bytes = Buffer.from(canonicalJson(full) + '\n', 'utf8');

    await this.checkFile();
    let written = false;
    try {
      let off = 0;
      while (off < bytes.length) {
        const { bytesWritten } = await this.handle.write(bytes, off, bytes.length - off, null);
        off += bytesWritten;
      }
      written = true;
      if (durable) await this.handle.datasync();
    } catch (err) {
      await this.rollback(err, written);
      throw err;
    }
    this.size += bytes.length;
    this.seq = seq;
    this.prev = hash;
    return full;
  }

  /** The path must still be our file, at the size we left it: anything else is not ours to extend. */
  // Two stat calls of a few microseconds each: done synchronously, they cost less than the
  // trips through the thread pool their async forms take.
  private async checkFile(): Promise<void> {
    let onDisk;
    try {
      onDisk = statSync(this.file);
    } catch (err) {
      throw new AuditIntegrityError(
        `audit log ${this.file} is gone or unreachable (${(err as NodeJS.ErrnoException).code ?? String(err)}); refusing to write`,
        { cause: err },
      );
    }
    if (onDisk.dev !== this.identity.dev || onDisk.ino !== this.identity.ino) {
      throw new AuditIntegrityError(
        `audit log ${this.file} was replaced or moved since it was opened; refusing to write`,
      );
    }
    const st = fstatSync(this.handle.fd);
    if (st.size !== this.size) {
      throw new AuditIntegrityError(
        `audit log ${this.file} changed size underneath its writer (${this.size} -> ${st.size} bytes): ` +
          'another writer or an edit; refusing to write',
      );
    }
  }

  /**
   * A failed write may have left part of a line: cut back to the last whole line so the next
   * append continues a valid chain. After a failed fsync the kernel may already have dropped
   * dirty pages, so nothing written since can be trusted: stop appending until a restart.
   */
  private async rollback(err: unknown, fsyncFailed: boolean): Promise<void> {
    const cause = err instanceof Error ? err : new Error(String(err));
    try {
      await this.handle.truncate(this.size);
      await this.handle.datasync();
    } catch {
      this.broken = cause;
      return;
    }
    if (fsyncFailed) this.broken = cause;
  }
}

/**
 * The gateway's audit log on a config's `audit.file` (the base). Without a replica id: the
 * base chain when no other live process holds it, else a chain of this process's own beside
 * it. A base whose last line is torn (a crash mid-write) is left as it is, closed, and this
 * process writes its own chain: `audit verify` reports the torn tail, and no crash stops the
 * gateways that come after. A base whose last complete line fails its check was edited:
 * that still refuses to start. With GATEHOUSE_REPLICA_ID the replica's own chain, always
 * (a second process with the same id is refused by its lock).
 * `notice` hears why a process did not take the base (for the process log).
 */
export async function openAuditChain(
  base: string,
  opts: { env?: NodeJS.ProcessEnv; notice?: (message: string) => void } = {},
): Promise<AuditLog> {
  const env = opts.env ?? process.env;
  const writer = auditWriterId(env);
  if (env.GATEHOUSE_REPLICA_ID) return AuditLog.open(auditChainFile(base, writer), { writer });
  try {
    return await AuditLog.open(base, { writer });
  } catch (err) {
    if (!(err instanceof AuditIntegrityError) || (err.why !== 'busy' && err.why !== 'torn')) {
      throw err;
    }
    const own = auditChainFile(base, writer);
    opts.notice?.(
      err.why === 'busy'
        ? `${path.resolve(base)} is held by another gateway: writing the chain ${own}`
        : `${path.resolve(base)} ends in a torn line (a crash mid-write?): leaving it closed, ` +
            `writing the chain ${own}; "gatehouse audit verify" reports the torn tail`,
    );
    return AuditLog.open(own, { writer });
  }
}

/**
 * Checks the whole chain. Stops at the first problem and names its 1-based line number.
 * Throws only when the file cannot be read at all (missing, a directory).
 */
export type AuditVerdict =
  | { ok: true; lines: number }
  | {
      ok: false;
      line: number;
      reason: string;
      /**
       * Set when the only problem is an incomplete last line (what a crash mid-write leaves):
       * every line before it verified, and the whole lines end at byte `intactBytes`.
       */
      torn?: { intactBytes: number };
    };

export async function verifyAuditFile(file: string): Promise<AuditVerdict> {
  let n = 0;
  let prev = GENESIS_PREV;
  let offset = 0;
  for await (const { bytes, complete } of scanLines(file)) {
    n++;
    if (!complete) {
      return {
        ok: false,
        line: n,
        reason: 'torn last line: no trailing newline (interrupted write?)',
        torn: { intactBytes: offset },
      };
    }
    offset += bytes.length + 1;
    const checked = checkLine(bytes);
    if ('reason' in checked) return { ok: false, line: n, reason: checked.reason };
    const { line } = checked;
    if (line.seq !== n) {
      return {
        ok: false,
        line: n,
        reason: `seq ${line.seq} where ${n} was expected: a line was removed, inserted or reordered`,
      };
    }
    if (line.prev !== prev) {
      return {
        ok: false,
        line: n,
        reason:
          n === 1
            ? 'prev of the first line is not 64 zeros: the start of the log is missing'
            : `prev does not match the hash of line ${n - 1}: a line was removed, replaced or reordered`,
      };
    }
    prev = line.hash;
  }
  return { ok: true, lines: n };
}

/**
 * Parsed audit lines in file order. With `follow`, keeps waiting for new lines until the
 * signal aborts (then returns normally). This reads; it does not verify (see verifyAuditFile).
 * An incomplete last line is not yielded: it may be a write in flight.
 */
export async function* readAuditLines(
  file: string,
  opts: { follow?: boolean; signal?: AbortSignal } = {},
): AsyncGenerator<AuditLine> {
  for await (const entry of readAuditEntries(file, opts)) yield entry.line;
}

/** Like readAuditLines, with the raw text of each line (for `audit tail --json`). */
export async function* readAuditEntries(
  file: string,
  opts: { follow?: boolean; signal?: AbortSignal } = {},
): AsyncGenerator<{ raw: string; line: AuditLine }> {
  let n = 0;
  for await (const { bytes, complete } of scanLines(file, opts)) {
    n++;
    if (!complete) return;
    const raw = bytes.toString('utf8');
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      throw new Error(`${file}:${n}: not a JSON line`);
    }
    if (!isObject(value)) throw new Error(`${file}:${n}: not a JSON object`);
    yield { raw, line: value as unknown as AuditLine };
  }
}

type Checked = { line: AuditLine } | { reason: string };

/** Everything one line can prove about itself: it parses, its hash matches, it is canonical. */
function checkLine(bytes: Buffer): Checked {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return { reason: 'not valid UTF-8' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { reason: 'not valid JSON' };
  }
  if (!isObject(value)) return { reason: 'not a JSON object' };
  const { seq, prev, hash } = value;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) {
    return { reason: 'missing or malformed seq' };
  }
  if (typeof prev !== 'string' || !HEX64.test(prev)) return { reason: 'missing or malformed prev' };
  if (typeof hash !== 'string' || !HEX64.test(hash)) return { reason: 'missing or malformed hash' };
  let expected: string;
  let canonical: string;
  try {
    expected = auditHash(prev, value);
    canonical = canonicalJson(value);
  } catch {
    // e.g. a number too large for a double parses as Infinity: no writer produced that.
    return { reason: 'holds a value the writer cannot produce' };
  }
  if (expected !== hash) return { reason: 'hash mismatch: the line was edited' };
  // Same values, different bytes (reordered keys, duplicate keys, spacing): a rewrite, and a
  // duplicate key could show one value to one parser and another to the next.
  if (canonical !== text) return { reason: 'line is not in canonical form: it was rewritten' };
  return { line: value as unknown as AuditLine };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The last line without its newline; null when the file does not end with a newline. */
async function lastLine(handle: FileHandle, size: number): Promise<Buffer | null> {
  const one = Buffer.alloc(1);
  await handle.read(one, 0, 1, size - 1);
  if (one[0] !== 0x0a) return null;
  const end = size - 1;
  const parts: Buffer[] = [];
  let pos = end;
  const chunk = Buffer.alloc(64 * 1024);
  while (pos > 0) {
    const len = Math.min(chunk.length, pos);
    pos -= len;
    const { bytesRead } = await handle.read(chunk, 0, len, pos);
    const view = chunk.subarray(0, bytesRead);
    const nl = view.lastIndexOf(0x0a);
    if (nl !== -1) {
      parts.unshift(Buffer.from(view.subarray(nl + 1)));
      break;
    }
    parts.unshift(Buffer.from(view));
  }
  return Buffer.concat(parts);
}

/**
 * One writer per audit file, enforced with `<file>.lock` (pid and host). Two stdio gateways
 * started by two MCP clients with the same config would otherwise both append; the size check
 * in `append()` would catch it, but only by failing calls. Failing at start says it plainly.
 * A lock whose process is gone (a crash) is stale and taken over.
 */
async function acquireLock(
  file: string,
  writer: string,
): Promise<{ file: string; content: string }> {
  const lockFile = `${file}.lock`;
  const content = JSON.stringify({
    pid: process.pid,
    host: os.hostname(),
    writer,
    since: new Date().toISOString(),
  });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(lockFile, content, { flag: 'wx', mode: 0o600 });
      return { file: lockFile, content };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = await readFile(lockFile, 'utf8').then(parseHolder, () => null);
    if (holder && holderAlive(holder)) {
      throw new AuditIntegrityError(
        `audit log ${file} is in use by process ${holder.pid} on ${holder.host} (since ` +
          `${holder.since}${holder.writer === undefined ? '' : `, writer ${holder.writer}`}): ` +
          'one process per chain file; two replicas with the same GATEHOUSE_REPLICA_ID would ' +
          `share one. If that process is gone, delete ${lockFile}.`,
        { why: 'busy' },
      );
    }
    await unlink(lockFile).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
  }
  throw new AuditIntegrityError(`could not take the lock ${lockFile}: it keeps coming back`);
}

function parseHolder(
  text: string,
): { pid: number; host: string; since: string; writer?: string } | null {
  try {
    const v = JSON.parse(text) as {
      pid?: unknown;
      host?: unknown;
      since?: unknown;
      writer?: unknown;
    };
    if (typeof v.pid !== 'number' || typeof v.host !== 'string') return null;
    return {
      pid: v.pid,
      host: v.host,
      since: typeof v.since === 'string' ? v.since : '?',
      ...(typeof v.writer === 'string' ? { writer: v.writer } : {}),
    };
  } catch {
    return null;
  }
}

function holderAlive(h: { pid: number; host: string }): boolean {
  // Another host's pid cannot be checked from here: assume it is alive.
  if (h.host !== os.hostname()) return true;
  // Our own pid: a previous life (containers reuse pid 1); same-process opens are OPEN_HERE's job.
  if (h.pid === process.pid) return false;
  try {
    process.kill(h.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes the lock only if it is still ours. */
async function releaseLock(lock: { file: string; content: string }): Promise<void> {
  const now = await readFile(lock.file, 'utf8').catch(() => null);
  if (now === lock.content) await unlink(lock.file).catch(() => undefined);
}

/** A new file's directory entry must reach the disk too, or a crash can lose the whole file. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch {
    // Some file systems refuse fsync on a directory; the file's own data is synced regardless.
  } finally {
    await handle.close();
  }
}

/**
 * The lines of a file as bytes, without their newlines. A last piece without a newline comes
 * with `complete: false` (non-follow mode only; in follow mode it is held until it completes).
 * With `follow`, polls for growth until the signal aborts. Shared with the recordings reader.
 */
export async function* scanLines(
  file: string,
  opts: { follow?: boolean; signal?: AbortSignal; pollMs?: number } = {},
): AsyncGenerator<{ bytes: Buffer; complete: boolean }> {
  const handle = await open(file, 'r');
  try {
    const chunk = Buffer.alloc(64 * 1024);
    let pending: Buffer[] = [];
    let pos = 0;
    for (;;) {
      if (opts.signal?.aborted) return;
      const { bytesRead } = await handle.read(chunk, 0, chunk.length, pos);
      if (bytesRead === 0) {
        if (!opts.follow) break;
        if ((await handle.stat()).size < pos) {
          throw new Error(`${file} shrank while being read: it was truncated or rewritten`);
        }
        await sleep(opts.pollMs ?? 200, opts.signal);
        continue;
      }
      pos += bytesRead;
      const view = chunk.subarray(0, bytesRead);
      let start = 0;
      for (let nl = view.indexOf(0x0a); nl !== -1; nl = view.indexOf(0x0a, start)) {
        pending.push(Buffer.from(view.subarray(start, nl)));
        yield { bytes: Buffer.concat(pending), complete: true };
        pending = [];
        start = nl + 1;
      }
      if (start < view.length) pending.push(Buffer.from(view.subarray(start)));
    }
    if (pending.length > 0) yield { bytes: Buffer.concat(pending), complete: false };
  } finally {
    await handle.close();
  }
}

/** Resolves after `ms`, or at once when the signal aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Merges chains read in parallel into one stream in time order: each source is already in
 * its own time order (a chain is appended as it is written), so this is a k-way merge that
 * holds one entry per source. Ties keep the order of the sources. A time that does not parse
 * sorts first, rather than stalling the others.
 */
export async function* mergeByTime<T>(
  sources: readonly AsyncIterable<T>[],
  timeOf: (item: T) => number,
): AsyncGenerator<T> {
  const iterators = sources.map((s) => s[Symbol.asyncIterator]());
  try {
    const heads: Array<{ item: T; time: number } | undefined> = [];
    const pull = async (i: number) => {
      const next = await iterators[i]!.next();
      if (next.done) heads[i] = undefined;
      else {
        const t = timeOf(next.value);
        heads[i] = { item: next.value, time: Number.isNaN(t) ? -Infinity : t };
      }
    };
    await Promise.all(iterators.map((_, i) => pull(i)));
    for (;;) {
      let best = -1;
      for (let i = 0; i < heads.length; i++) {
        const h = heads[i];
        if (h && (best === -1 || h.time < heads[best]!.time)) best = i;
      }
      if (best === -1) return;
      yield heads[best]!.item;
      await pull(best);
    }
  } finally {
    await Promise.all(
      iterators.map(async (it) => {
        await it.return?.();
      }),
    );
  }
}
