import type { Detector } from '../policies/masking.js';
import type { z } from 'zod';
import type { SecretRef } from '../server/kernel/secrets.js';
import type { RegisteredTool } from './types.js';

/**
 * A target kind (postgres, ssh, kubernetes) is the one seam a new kind of infrastructure plugs
 * into: the schema of its targets in gatehouse.yaml, the tools it provides, how a target is
 * checked (`gatehouse targets check`) and how its connections close. The config, the runtime,
 * the tool registry, list_targets and the CLI loop over the list in tools/kinds.ts and know
 * nothing else of a kind.
 */
export interface TargetKind<C extends TargetBase = TargetBase> {
  readonly kind: C['kind'];
  /** The target's keys in gatehouse.yaml: a strict object whose `kind` is this kind's literal. */
  readonly configSchema: z.ZodType<Omit<C, 'name'>> & z.ZodObject;
  /** Tools of this kind that the contract names but this release does not serve yet. */
  readonly laterTools?: readonly string[];
  /** One line naming where a target points, for `targets check` (`postgres db:5432/shop`). */
  summary(target: C): string;
  /** The secret references of a target's config, by key (checked at start, never printed). */
  secretRefs(target: C): Array<{ key: string; ref: SecretRef }>;
  /** Start this kind for a gateway: its tools and, when `live`, its connections. */
  open(env: KindEnv<C>): KindInstance<C>;
}

export interface TargetBase {
  readonly kind: string;
  readonly name: string;
  readonly description?: string | undefined;
}

export interface KindEnv<C extends TargetBase> {
  /** This kind's target by name (undefined for an unknown name or another kind's target). */
  target(name: string): C | undefined;
  /** Resolve a secret reference of a target's config; errors name the reference, never a value. */
  secret(ref: SecretRef, what: string): Promise<string>;
  /** Read a file a target's config names (relative to the config file's folder). */
  readFile(file: string): Promise<string>;
  /**
   * false for the offline policy commands (`policy explain`, `policy test`): tools classify
   * calls from their text alone and never connect.
   */
  readonly live: boolean;
}

export interface KindInstance<C extends TargetBase> {
  readonly tools: readonly RegisteredTool[];
  /** `gatehouse targets check`: what works, and warnings about powerful credentials. */
  check(target: C): Promise<CheckLine[]>;
  /** `gatehouse masking discover`: sample the target's columns for PII (kinds that hold data). */
  discover?(target: C, opts: { sample: number }): Promise<Discovery>;
  close(): Promise<void>;
}

/** A column whose sampled values a detector recognises (`gatehouse masking discover`). */
export interface DiscoveredColumn {
  schema: string;
  table: string;
  column: string;
  type: string;
  /** The detector with the most finds, and how many of the sampled non-null values it found. */
  detector: Detector;
  hits: number;
  sampled: number;
}

export interface Discovery {
  tables: number;
  columns: number;
  found: DiscoveredColumn[];
}

export interface CheckLine {
  level: 'ok' | 'warning' | 'error';
  text: string;
}
