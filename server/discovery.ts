import type { Discovery } from '../tools/kind.js';
import { GovernanceError } from './kernel/errors.js';
import { log } from './kernel/log.js';

/**
 * The PII columns discovery finds on each target, for masking profiles with `discover: true`
 * (policies/masking.ts): sampled the first time a call needs a target, then again every
 * `ttlMs` in the background (the old answer serves meanwhile, so no call waits twice). A
 * target that cannot be sampled the first time fails the call: masking must not start out
 * knowing less than it was told to find.
 */
export class DiscoveredColumns {
  private readonly cache = new Map<string, { at: number; columns: readonly string[] }>();
  private readonly pending = new Map<string, Promise<void>>();

  constructor(
    private readonly find: (target: string) => Promise<Discovery | undefined>,
    private readonly ttlMs = 5 * 60_000,
  ) {}

  /** Resolves once `columns(target)` can be used. */
  async warm(target: string): Promise<void> {
    const hit = this.cache.get(target);
    if (hit && Date.now() - hit.at < this.ttlMs) return;
    let run = this.pending.get(target);
    if (!run) {
      run = this.refresh(target).finally(() => this.pending.delete(target));
      this.pending.set(target, run);
    }
    if (hit) {
      run.catch((err: unknown) =>
        log.warn(
          { target, err: (err as Error).message },
          'PII discovery refresh failed; keeping the last answer',
        ),
      );
      return;
    }
    try {
      await run;
    } catch (err) {
      throw new GovernanceError(
        'TARGET_ERROR',
        `cannot sample ${target} for PII columns (a masking profile says discover: true), so the call is not run`,
        { cause: err },
      );
    }
  }

  /** `schema.table.column` of each column found on the target (empty before warm). */
  columns(target: string): readonly string[] {
    return this.cache.get(target)?.columns ?? [];
  }

  private async refresh(target: string): Promise<void> {
    const found = await this.find(target);
    this.cache.set(target, {
      at: Date.now(),
      columns: (found?.found ?? []).map((c) => `${c.schema}.${c.table}.${c.column}`),
    });
  }
}
