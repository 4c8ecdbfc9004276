import { GovernanceError } from '../server/kernel/errors.js';
import type { KindEnv, KindInstance, TargetBase, TargetKind } from './kind.js';
import type { RegisteredTool } from './types.js';

export type ToolRegistry = ReadonlyMap<string, RegisteredTool>;

/** The kinds of a gateway, opened: their tools in one registry, and one close for all. */
export interface OpenKinds {
  readonly tools: ToolRegistry;
  readonly laterTools: ReadonlySet<string>;
  readonly kinds: ReadonlyMap<string, { kind: TargetKind; instance: KindInstance<TargetBase> }>;
  close(): Promise<void>;
}

/**
 * Open every kind and gather the tools: the gateway's own tools first (an agent reading the
 * list meets list_targets and explain before the rest), then each kind's in list order. Two
 * tools with one name are a bug, refused at start.
 */
export function openKinds(
  kinds: readonly TargetKind[],
  env: (kind: TargetKind) => KindEnv<TargetBase>,
  gatewayTools: readonly RegisteredTool[],
): OpenKinds {
  const opened = new Map<string, { kind: TargetKind; instance: KindInstance<TargetBase> }>();
  const tools = new Map<string, RegisteredTool>();
  const add = (t: RegisteredTool) => {
    if (tools.has(t.name)) {
      throw new GovernanceError('INTERNAL', `two tools are named ${t.name}`);
    }
    tools.set(t.name, t);
  };
  gatewayTools.forEach(add);
  for (const kind of kinds) {
    const instance = kind.open(env(kind));
    opened.set(kind.kind, { kind, instance });
    instance.tools.forEach(add);
  }
  return {
    tools,
    laterTools: new Set(kinds.flatMap((k) => k.laterTools ?? [])),
    kinds: opened,
    async close() {
      await Promise.allSettled([...opened.values()].map((o) => o.instance.close()));
    },
  };
}
