import { readFile } from 'node:fs/promises';
import type { PolicyEngine } from '../policies/engine.js';
import { awaitApprovalTool } from '../tools/await_approval/definition.js';
import { explainTool } from '../tools/explain/definition.js';
import type { KindEnv, TargetBase, TargetKind } from '../tools/kind.js';
import { TARGET_KINDS } from '../tools/kinds.js';
import { listTargetsTool } from '../tools/list_targets/definition.js';
import { openKinds, type OpenKinds } from '../tools/registry.js';
import type { MaskProfile } from '../policies/masking.js';
import { DiscoveredColumns } from './discovery.js';
import { bindTool, type GatewayView, type RegisteredTool } from '../tools/types.js';
import type { GatehouseConfig, TargetConfig } from './config.js';
import { DecisionPoint } from './decide.js';
import { GovernanceError } from './kernel/errors.js';
import { resolvePath } from './kernel/paths.js';
import { resolveSecret, type SecretRef } from './kernel/secrets.js';

/**
 * A secret shorter than this is refused: the gateway scrubs every credential it used from
 * whatever comes back, and a short or common word (`demo`, `postgres`) would be replaced
 * wherever it appears in a result, the target's own name included.
 */
export const SECRET_MIN_LENGTH = 8;

/**
 * Every target secret reference of a config, with its key path (`targets.shop-db.password`),
 * as each target's kind declares them: what start-up and `policy check` check.
 */
export function targetSecretRefs(
  config: GatehouseConfig,
  kinds: readonly TargetKind[] = TARGET_KINDS,
): Array<{ path: string[]; ref: SecretRef }> {
  return Object.values(config.targets).flatMap((target) => {
    const kind = kinds.find((k) => k.kind === target.kind);
    return (kind?.secretRefs(target) ?? []).map(({ key, ref }) => ({
      path: ['targets', target.name, key],
      ref,
    }));
  });
}

/** The tools and the decision point of a gateway, over the target kinds of its config. */
export interface Gateway extends OpenKinds {
  readonly decisions: DecisionPoint;
}

/**
 * Open the target kinds for a config: `live` for a serving gateway (pools, catalog checks),
 * not live for the offline policy commands, which classify from the text alone and never
 * connect anywhere.
 */
export function openGateway(
  config: GatehouseConfig,
  engine: PolicyEngine,
  opts: {
    live: boolean;
    kinds?: readonly TargetKind[];
    /** More gateway tools of a running server (review_approvals, on its approvals). */
    ownTools?: readonly RegisteredTool[];
    /** The policies' masking profiles (decisions refuse conditions on masked columns). */
    profiles?: Readonly<Record<string, MaskProfile>>;
  },
): Gateway {
  const kinds = opts.kinds ?? TARGET_KINDS;
  // The view the gateway's own tools get: built before the registry it lists, read after.
  const built: { decisions?: DecisionPoint } = {};
  const point = () => {
    if (!built.decisions) {
      throw new GovernanceError('INTERNAL', 'gateway used before it was opened');
    }
    return built.decisions;
  };
  const view: GatewayView = {
    targets: Object.values(config.targets).map((t) => ({
      name: t.name,
      kind: t.kind,
      ...(t.description ? { description: t.description } : {}),
    })),
    tools: () => [...point().tools.values()],
    decide: (principal, tool, args, at) => point().call(principal, tool, args, at),
    allowedOperations: (principal, tool, target, candidates) =>
      engine.allowedOperations(principal, tool, target, candidates),
  };
  const own = { targetKind: null, decidedBy: 'builtin' as const };
  const resolveView = async () => ({ target: view, secrets: [] });
  const opened = openKinds(kinds, (kind) => kindEnv(config, kind, opts.live), [
    bindTool(listTargetsTool, { ...own, resolve: resolveView }),
    bindTool(explainTool, { ...own, resolve: resolveView }),
    bindTool(awaitApprovalTool, { ...own, resolve: async () => ({ target: null, secrets: [] }) }),
    ...(opts.ownTools ?? []),
  ]);
  // Profiles with `discover: true` need each target's PII columns, sampled by its kind.
  const discovery =
    opts.live && Object.values(opts.profiles ?? {}).some((p) => p.discover)
      ? new DiscoveredColumns(async (name) => {
          const t = Object.hasOwn(config.targets, name) ? config.targets[name] : undefined;
          const kind = t && opened.kinds.get(t.kind);
          return t && kind?.instance.discover?.(t, { sample: 200 });
        })
      : undefined;
  const decisions = new DecisionPoint(
    opened.tools,
    engine,
    opened.laterTools,
    (name) => (Object.hasOwn(config.targets, name) ? config.targets[name]?.kind : undefined),
    opts.profiles,
    discovery,
  );
  built.decisions = decisions;
  return { ...opened, decisions };
}

/** What a kind may know of the config: its own targets, their secrets and files. */
export function kindEnv(
  config: GatehouseConfig,
  kind: TargetKind,
  live: boolean,
): KindEnv<TargetBase> {
  return {
    target: (name) => targetOf(config, kind, name),
    secret: (ref, what) => resolveTargetSecret(config, ref, what),
    readFile: (file) => readFile(resolvePath(config.dir, file), 'utf8'),
    live,
  };
}

function targetOf(config: GatehouseConfig, kind: TargetKind, name: string): TargetBase | undefined {
  const t: TargetConfig | undefined = Object.hasOwn(config.targets, name)
    ? config.targets[name]
    : undefined;
  return t?.kind === kind.kind ? t : undefined;
}

/** A target's secret for one call: resolved at the last moment, refused when too short. */
async function resolveTargetSecret(
  config: GatehouseConfig,
  ref: SecretRef,
  what: string,
): Promise<string> {
  const value = await resolveSecret(ref, config.dir, what);
  if (value.length < SECRET_MIN_LENGTH) {
    throw new GovernanceError('TARGET_ERROR', `credentials for ${what} are not usable`, {
      cause: new Error(`the secret is shorter than ${SECRET_MIN_LENGTH} characters`),
    });
  }
  return value;
}
