import { log } from './kernel/log.js';

/**
 * How a session ends without losing an outcome. A call that started has its decision line in
 * the audit log; it must also get its outcome line and its recording line, whatever ends the
 * session (stdin closed, the client gone from stdout, SIGINT or SIGTERM). So shutdown is one
 * ordered path:
 *
 *   stop accepting calls -> let calls in flight finish (DRAIN_GRACE_MS) -> cancel the rest
 *   through their AbortSignal (the executor cancels the statement) and let them write their
 *   outcome (CANCEL_GRACE_MS) -> close the transport -> close the recording -> close the pools,
 *   then the audit log.
 *
 * Closing pools or the audit log under a running call is what lost outcomes before: the call
 * failed writing its outcome ("audit log ... is closed"), or opened a fresh pool after close
 * and kept the process alive.
 */

/** How long shutdown lets calls in flight finish on their own before it cancels them. */
export const DRAIN_GRACE_MS = 5_000;
/** After the cancel, how long cancelled calls get to write their outcome (they answer at once). */
export const CANCEL_GRACE_MS = 2_000;
/** On a second signal, how long cancelled calls get to write their outcome before the exit. */
export const FORCED_EXIT_GRACE_MS = 1_000;

const SIGNAL_NUMBERS = { SIGINT: 2, SIGTERM: 15 } as const;
type ShutdownSignal = keyof typeof SIGNAL_NUMBERS;

interface Running {
  controller: AbortController;
  settled: Promise<void>;
}

/** `promise`, or `undefined` after `ms` (the timer never outlives the wait: exit stays prompt). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The tools/call requests a session has started. Each gets its own AbortController, combined
 * with the SDK's per-request signal (a client's notifications/cancelled), so shutdown can
 * cancel what it will not wait for, through the same path a client's cancel takes.
 */
export class InFlight {
  private readonly running = new Set<Running>();
  private accepting = true;

  /** Calls started and not yet settled. */
  get size(): number {
    return this.running.size;
  }

  /**
   * Runs `call`, tracked, with a signal that aborts on the client's cancel or on shutdown's.
   * Returns undefined once shutdown began: the call is not started (nothing is decided,
   * nothing is audited, nothing runs).
   */
  start<T>(
    clientSignal: AbortSignal,
    call: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> | undefined {
    if (!this.accepting) return undefined;
    const controller = new AbortController();
    const signal = AbortSignal.any([clientSignal, controller.signal]);
    // Async, so a call that throws before its first await is a rejected promise all the same.
    const result = (async () => call(signal))();
    const entry: Running = {
      controller,
      settled: result.then(
        () => undefined,
        () => undefined,
      ),
    };
    this.running.add(entry);
    void entry.settled.then(() => this.running.delete(entry));
    return result;
  }

  stopAccepting(): void {
    this.accepting = false;
  }

  /** True once every call started so far has settled; false if `ms` passed first. */
  async settled(ms: number): Promise<boolean> {
    const all = Promise.all([...this.running].map((r) => r.settled)).then(() => true);
    return (await within(all, ms)) ?? false;
  }

  /** Aborts every call in flight; returns how many. */
  cancelAll(reason: string): number {
    const n = this.running.size;
    for (const r of this.running) r.controller.abort(new Error(reason));
    return n;
  }

  /**
   * Stops accepting, waits up to `graceMs` for the calls in flight, cancels the rest and
   * waits up to `cancelGraceMs` for them to write their outcome.
   */
  async drain(
    graceMs = DRAIN_GRACE_MS,
    cancelGraceMs = CANCEL_GRACE_MS,
  ): Promise<{ waited: number; cancelled: number; abandoned: number }> {
    this.stopAccepting();
    const waited = this.size;
    if (await this.settled(graceMs)) return { waited, cancelled: 0, abandoned: 0 };
    const cancelled = this.cancelAll('the gateway is shutting down');
    await this.settled(cancelGraceMs);
    return { waited, cancelled, abandoned: this.size };
  }
}

/** What shutdown closes, in this order, after the calls in flight. */
export interface ShutdownSteps {
  /** Stop reading requests (before the calls drain: nothing new arrives meanwhile). */
  stopInput(): void;
  /** Close the MCP server and its transport, once the calls' responses are written. */
  closeTransport(): Promise<void>;
  /** Close (and sync) the session recording. */
  closeRecording(): Promise<void>;
  /** Close the connection pools, then the audit log (Runtime.close). */
  closeRuntime(): Promise<void>;
}

export interface LifecycleOptions {
  drainGraceMs?: number;
  cancelGraceMs?: number;
  forcedExitGraceMs?: number;
  /** How a second signal ends the process (tests replace it). */
  exit?: (code: number) => void;
}

/**
 * One session's end. `shutdown(reason)` may be called any number of times from anywhere (EOF,
 * transport close, stdout gone, a signal); the first call runs the ordered path and every call
 * returns the same promise. A second signal during shutdown cancels what is still running,
 * gives outcomes FORCED_EXIT_GRACE_MS, and exits (128 + the signal's number).
 */
export class Lifecycle {
  private shutting: Promise<void> | undefined;
  private forced = false;
  private readonly opts: Required<LifecycleOptions>;
  private markEnded!: () => void;
  /** Settles when a shutdown, started by whatever, has run every step. */
  readonly ended = new Promise<void>((resolve) => (this.markEnded = resolve));

  constructor(
    readonly calls: InFlight,
    private readonly steps: ShutdownSteps,
    opts: LifecycleOptions = {},
  ) {
    this.opts = {
      drainGraceMs: opts.drainGraceMs ?? DRAIN_GRACE_MS,
      cancelGraceMs: opts.cancelGraceMs ?? CANCEL_GRACE_MS,
      forcedExitGraceMs: opts.forcedExitGraceMs ?? FORCED_EXIT_GRACE_MS,
      exit: opts.exit ?? ((code) => process.exit(code)),
    };
  }

  get shuttingDown(): boolean {
    return this.shutting !== undefined;
  }

  /** Settles when the session has ended (every step run, failed ones logged). */
  shutdown(reason: string): Promise<void> {
    this.shutting ??= this.run(reason).finally(() => this.markEnded());
    return this.shutting;
  }

  private async run(reason: string): Promise<void> {
    const started = Date.now();
    log.info({ reason, inFlight: this.calls.size }, 'shutting down');
    this.calls.stopAccepting();
    await this.step('stop input', async () => this.steps.stopInput());
    const drained = await this.calls.drain(this.opts.drainGraceMs, this.opts.cancelGraceMs);
    if (drained.cancelled > 0) {
      log.warn(drained, 'calls still running at shutdown were cancelled');
    }
    if (drained.abandoned > 0) {
      log.error(
        drained,
        'CALLS DID NOT END after their cancel; closing without their outcome lines',
      );
    }
    // The SDK writes a response after the handler's promise settles: let it go out first.
    await new Promise<void>((resolve) => setImmediate(resolve));
    await this.step('close transport', () => this.steps.closeTransport());
    await this.step('close recording', () => this.steps.closeRecording());
    await this.step('close pools and audit log', () => this.steps.closeRuntime());
    log.info({ reason, ms: Date.now() - started }, 'shut down');
  }

  private async step(name: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      // Every later step still runs: a recording that fails to close must not keep the audit
      // log open.
      log.error(
        { step: name, err: (err as Error)?.message ?? String(err) },
        'shutdown step failed',
      );
    }
  }

  /**
   * SIGINT and SIGTERM: the first starts the shutdown, a second one ends the process promptly.
   * Returns a function that removes the handlers.
   */
  handleSignals(proc: NodeJS.Process = process): () => void {
    const on = (signal: ShutdownSignal) => () => {
      if (!this.shuttingDown) {
        void this.shutdown(signal);
        return;
      }
      void this.force(signal);
    };
    const handlers = (Object.keys(SIGNAL_NUMBERS) as ShutdownSignal[]).map(
      (s) => [s, on(s)] as const,
    );
    for (const [s, h] of handlers) proc.on(s, h);
    return () => {
      for (const [s, h] of handlers) proc.off(s, h);
    };
  }

  private async force(signal: ShutdownSignal): Promise<void> {
    const code = 128 + SIGNAL_NUMBERS[signal];
    if (this.forced) {
      this.opts.exit(code);
      return;
    }
    this.forced = true;
    const cancelled = this.calls.cancelAll(`${signal} during shutdown`);
    log.warn({ signal, cancelled }, 'second signal during shutdown: exiting now');
    // Outcome lines are fdatasync'd as they are written; what cancelled calls can still
    // write in a moment is kept.
    await this.calls.settled(this.opts.forcedExitGraceMs);
    this.opts.exit(code);
  }
}
