import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Low, type Adapter } from 'lowdb';
import { log } from '../kernel/log.js';
import type { ApprovalRecord, GrantRecord, StateStore } from './types.js';

/**
 * The embedded state backend (`state.file`): one JSON file through lowdb, shared safely by the
 * gateway processes of one machine (an HTTP server and the stdio gateways of its MCP clients,
 * on one config).
 *
 * lowdb alone is a single-process store: it keeps the data in memory, writes it whole, and
 * neither locks nor syncs. So every change here is a transaction of its own:
 *
 *   take `<file>.lock` (O_EXCL) -> re-read the file -> change -> write `<file>.<rand>.tmp`,
 *   fsync -> rename over the file -> fsync the folder -> release the lock
 *
 * A reader never sees a torn file (rename is atomic), a writer never overwrites a change it
 * did not read (the lock spans read and write), and a change that returned is on disk. A lock
 * left by a process that died (its pid is gone, or it is older than STALE_LOCK_MS) is broken.
 *
 * Other processes' changes are seen by polling the file's size and mtime every `pollMs`:
 * waiters on an approval in a stdio gateway learn of an answer given through the HTTP server
 * within a poll.
 */

interface StateData {
  version: 1;
  approvals: Record<string, ApprovalRecord>;
  grants: Record<string, GrantRecord>;
}

const EMPTY: StateData = { version: 1, approvals: {}, grants: {} };

/** A lock older than this is from a process that died mid-write: a change takes milliseconds. */
const STALE_LOCK_MS = 10_000;
/** How long a change waits for the lock before it fails. */
const LOCK_WAIT_MS = 5_000;

export async function openFileStore(
  file: string,
  opts: { pollMs?: number } = {},
): Promise<StateStore> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const store = new FileStore(file, opts.pollMs ?? 250);
  await store.load();
  return store;
}

/** lowdb's adapter contract, with the durability lowdb's own JSONFile leaves out. */
class DurableJsonFile implements Adapter<StateData> {
  constructor(private readonly file: string) {}

  async read(): Promise<StateData | null> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const data = JSON.parse(text) as Partial<StateData>;
    if (
      data.version !== 1 ||
      typeof data.approvals !== 'object' ||
      typeof data.grants !== 'object'
    ) {
      throw new Error(`${this.file} is not a Gatehouse state file (version 1)`);
    }
    return data as StateData;
  }

  async write(data: StateData): Promise<void> {
    const tmp = `${this.file}.${randomBytes(6).toString('hex')}.tmp`;
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(data));
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, this.file);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    // The rename itself is durable once the folder is synced.
    const dir = await open(path.dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

class FileStore implements StateStore {
  readonly kind = 'file' as const;
  private readonly db: Low<StateData>;
  private readonly lockFile: string;
  private readonly listeners = new Set<(id: string) => void>();
  /** What each approval looked like when last seen, to tell listeners which ones changed. */
  private seen = new Map<string, string>();
  private lastStamp = '';
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;
  /** Changes from this process run one at a time (the lock file serializes processes). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly file: string,
    private readonly pollMs: number,
  ) {
    this.db = new Low(new DurableJsonFile(file), structuredClone(EMPTY));
    this.lockFile = `${file}.lock`;
  }

  async load(): Promise<void> {
    await this.refresh();
  }

  /** Re-reads the file and tells listeners about approvals that changed. */
  private async refresh(): Promise<void> {
    await this.db.read();
    this.db.data ??= structuredClone(EMPTY);
    this.lastStamp = await this.stamp();
    this.announce();
  }

  private announce(): void {
    const next = new Map<string, string>();
    const changed: string[] = [];
    for (const [id, rec] of Object.entries(this.db.data.approvals)) {
      const form = `${rec.status}:${rec.answers.length}:${rec.result === undefined ? 0 : 1}`;
      next.set(id, form);
      if (this.seen.get(id) !== form) changed.push(id);
    }
    this.seen = next;
    for (const id of changed) for (const l of this.listeners) l(id);
  }

  private async stamp(): Promise<string> {
    try {
      const s = await stat(this.file);
      return `${s.size}:${s.mtimeMs}:${s.ino}`;
    } catch {
      return 'none';
    }
  }

  /**
   * Brings the in-memory copy up to date with the file as it is now. A caller arriving while a
   * look is under way waits for the next one (which starts after it): the one under way may
   * have read the file before the change this caller is waiting to see. Callers arriving
   * together share that next look.
   */
  private poll(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.queued) return this.queued;
    if (!this.running) return (this.running = this.look());
    const next = this.running.then(() => {
      this.queued = undefined;
      return (this.running = this.look());
    });
    this.queued = next;
    return next;
  }

  private async look(): Promise<void> {
    try {
      if ((await this.stamp()) !== this.lastStamp) await this.refresh();
    } catch (err) {
      log.warn({ file: this.file, err: (err as Error).message }, 'state file: cannot re-read');
    } finally {
      this.running = undefined;
    }
  }

  /** One read-change-write under the lock. `change` returns whether it changed anything. */
  private transact<T>(change: (data: StateData) => T): Promise<T> {
    const run = async (): Promise<T> => {
      const release = await this.lock();
      try {
        await this.db.read();
        this.db.data ??= structuredClone(EMPTY);
        const before = JSON.stringify(this.db.data);
        const out = change(this.db.data);
        if (JSON.stringify(this.db.data) !== before) await this.db.write();
        this.lastStamp = await this.stamp();
        return out;
      } finally {
        await release();
        this.announce();
      }
    };
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => {});
    return next;
  }

  private async lock(): Promise<() => Promise<void>> {
    const deadline = Date.now() + LOCK_WAIT_MS;
    const token = `${os.hostname()} ${process.pid} ${randomBytes(6).toString('hex')}\n`;
    for (let attempt = 0; ; attempt++) {
      try {
        const fh = await open(this.lockFile, 'wx', 0o600);
        await fh.writeFile(token);
        await fh.close();
        return async () => {
          // Remove it only if it is still ours (a stale-lock breaker may have taken it).
          const now = await readFile(this.lockFile, 'utf8').catch(() => '');
          if (now === token) await unlink(this.lockFile).catch(() => {});
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      if (await this.breakStaleLock()) continue;
      if (Date.now() > deadline) {
        throw new Error(`state file ${this.file} is locked by another process (${this.lockFile})`);
      }
      await new Promise((r) => setTimeout(r, Math.min(5 + attempt * 5, 50)));
    }
  }

  /** A lock whose holder is gone (same host, pid not alive) or that is older than STALE_LOCK_MS. */
  private async breakStaleLock(): Promise<boolean> {
    let text: string;
    let age: number;
    try {
      text = await readFile(this.lockFile, 'utf8');
      age = Date.now() - (await stat(this.lockFile)).mtimeMs;
    } catch {
      return true; // gone meanwhile: try again
    }
    const [host, pidText] = text.split(' ');
    const pid = Number(pidText);
    let dead = false;
    if (host === os.hostname() && Number.isInteger(pid) && pid > 0) {
      try {
        process.kill(pid, 0);
      } catch (err) {
        dead = (err as NodeJS.ErrnoException).code === 'ESRCH';
      }
    }
    if (!dead && age < STALE_LOCK_MS) return false;
    // Only the lock as read is removed; a new holder's lock has another token.
    const again = await readFile(this.lockFile, 'utf8').catch(() => '');
    if (again !== text) return true;
    log.warn({ lock: this.lockFile, holder: text.trim() }, 'state file: breaking a stale lock');
    await unlink(this.lockFile).catch(() => {});
    return true;
  }

  createApproval(
    rec: ApprovalRecord,
    joinable?: (open: ApprovalRecord) => boolean,
  ): Promise<{ record: ApprovalRecord; created: boolean }> {
    return this.transact((d) => {
      if (joinable) {
        const now = Date.now();
        const open = Object.values(d.approvals).find(
          (r) =>
            (r.status === 'pending' || r.status === 'approved') && now < r.expiresAt && joinable(r),
        );
        if (open) return { record: structuredClone(open), created: false };
      }
      if (Object.hasOwn(d.approvals, rec.id)) throw new Error(`approval ${rec.id} exists`);
      d.approvals[rec.id] = structuredClone(rec);
      return { record: structuredClone(rec), created: true };
    });
  }

  async getApproval(id: string): Promise<ApprovalRecord | undefined> {
    await this.poll();
    const rec = Object.hasOwn(this.db.data.approvals, id) ? this.db.data.approvals[id] : undefined;
    return rec && structuredClone(rec);
  }

  async listApprovals(): Promise<ApprovalRecord[]> {
    await this.poll();
    return Object.values(this.db.data.approvals)
      .map((r) => structuredClone(r))
      .sort((a, b) => a.createdAt - b.createdAt);
  }

  updateApproval(
    id: string,
    change: (rec: ApprovalRecord) => ApprovalRecord | undefined,
  ): Promise<{ record: ApprovalRecord | undefined; changed: boolean }> {
    return this.transact((d) => {
      const cur = Object.hasOwn(d.approvals, id) ? d.approvals[id] : undefined;
      if (!cur) return { record: undefined, changed: false };
      const next = change(structuredClone(cur));
      if (!next) return { record: structuredClone(cur), changed: false };
      d.approvals[id] = structuredClone(next);
      return { record: structuredClone(next), changed: true };
    });
  }

  async createGrant(rec: GrantRecord): Promise<void> {
    await this.transact((d) => {
      d.grants[rec.id] = structuredClone(rec);
    });
  }

  async listGrants(): Promise<GrantRecord[]> {
    await this.poll();
    return Object.values(this.db.data.grants)
      .map((r) => structuredClone(r))
      .sort((a, b) => a.createdAt - b.createdAt);
  }

  updateGrant(
    id: string,
    change: (rec: GrantRecord) => GrantRecord | undefined,
  ): Promise<{ record: GrantRecord | undefined; changed: boolean }> {
    return this.transact((d) => {
      const cur = Object.hasOwn(d.grants, id) ? d.grants[id] : undefined;
      if (!cur) return { record: undefined, changed: false };
      const next = change(structuredClone(cur));
      if (!next) return { record: structuredClone(cur), changed: false };
      d.grants[id] = structuredClone(next);
      return { record: structuredClone(next), changed: true };
    });
  }

  watch(listener: (approvalId: string) => void): () => void {
    this.listeners.add(listener);
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => void this.poll(), this.pollMs);
      this.timer.unref();
    }
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  }

  async prune(now: number, retainMs: number): Promise<void> {
    await this.transact((d) => {
      for (const [id, rec] of Object.entries(d.approvals)) {
        if (rec.expiresAt < now - retainMs) delete d.approvals[id];
      }
      for (const [id, rec] of Object.entries(d.grants)) {
        if (rec.expiresAt < now - retainMs) delete d.grants[id];
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
    await this.queue;
  }
}
