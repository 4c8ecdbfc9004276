import type { TargetKind } from './kind.js';
import { kubernetesKind } from './kubernetes/kind.js';
import { postgresKind } from './postgres/kind.js';
import { sshKind } from './ssh/kind.js';

/**
 * Every target kind the gateway serves. Adding one (a folder under tools/ with its kind.ts)
 * is adding it to this list: the config schema, the runtime, the tool registry, list_targets
 * and `gatehouse targets check` all loop over it.
 */
const KINDS = [postgresKind, sshKind, kubernetesKind] as const;

export const TARGET_KINDS: readonly TargetKind[] = KINDS;

/** A target from gatehouse.yaml: one of the kinds' configs, with its name. */
export type TargetConfig = Parameters<(typeof KINDS)[number]['summary']>[0];
export type { PostgresTargetConfig } from './postgres/kind.js';
