/**
 * Per-identity limits on tools/call over HTTP (`http.limits`): a rate (a token bucket of
 * `callsPerMinute`, refilled continuously) and a number of calls running at once. Keyed by
 * the token's `sub`, so one agent cannot starve the others by opening more sessions.
 */
export interface Limits {
  readonly callsPerMinute: number;
  readonly concurrentCalls: number;
}

/** A call was let in: `release` once it settled. */
export interface Admitted {
  readonly ok: true;
  release(): void;
}
/** A call was refused: why, and when a retry may succeed (seconds). */
export interface Refused {
  readonly ok: false;
  readonly reason: string;
  readonly retryAfterSec: number;
}

interface Bucket {
  tokens: number;
  at: number;
  running: number;
}

/** Buckets idle this long are full again and dropped (bounded memory for many subjects). */
const IDLE_MS = 10 * 60_000;

export class CallLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private lastSweep = Date.now();

  constructor(
    readonly limits: Limits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes one call from `sub`'s rate, and, for a call that runs, a concurrency slot. */
  admit(sub: string, opts: { running: boolean } = { running: true }): Admitted | Refused {
    const b = this.bucket(sub);
    if (opts.running && b.running >= this.limits.concurrentCalls) {
      return {
        ok: false,
        reason: `${b.running} calls of ${sub} are already running (http.limits.concurrentCalls: ${this.limits.concurrentCalls}); wait for one to finish`,
        retryAfterSec: 1,
      };
    }
    if (b.tokens < 1) {
      const perMs = this.limits.callsPerMinute / 60_000;
      return {
        ok: false,
        reason: `${sub} made more than ${this.limits.callsPerMinute} calls in a minute (http.limits.callsPerMinute); slow down`,
        retryAfterSec: Math.max(1, Math.ceil((1 - b.tokens) / perMs / 1000)),
      };
    }
    b.tokens -= 1;
    if (!opts.running) return { ok: true, release: () => undefined };
    b.running += 1;
    let released = false;
    return {
      ok: true,
      release: () => {
        if (released) return;
        released = true;
        b.running -= 1;
      },
    };
  }

  private bucket(sub: string): Bucket {
    const now = this.now();
    if (now - this.lastSweep > IDLE_MS) {
      this.lastSweep = now;
      for (const [k, v] of this.buckets)
        if (v.running === 0 && now - v.at > IDLE_MS) this.buckets.delete(k);
    }
    let b = this.buckets.get(sub);
    if (!b) {
      b = { tokens: this.limits.callsPerMinute, at: now, running: 0 };
      this.buckets.set(sub, b);
      return b;
    }
    const refill = ((now - b.at) * this.limits.callsPerMinute) / 60_000;
    b.tokens = Math.min(this.limits.callsPerMinute, b.tokens + refill);
    b.at = now;
    return b;
  }
}
