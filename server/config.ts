import path from 'node:path';
import { z } from 'zod';
import { deepFreeze } from './kernel/freeze.js';
import { resolvePath } from './kernel/paths.js';
import { loadYamlFile } from './kernel/yaml.js';
import { IdentitySchema } from './identity/config.js';
import type { TargetKind } from '../tools/kind.js';
import { TARGET_KINDS, type PostgresTargetConfig, type TargetConfig } from '../tools/kinds.js';

/**
 * gatehouse.yaml (CONTRACT section 2). Parsed once at start with zod, strict everywhere
 * (a typo in a key is an error, not a silently ignored setting), then frozen.
 */

const TargetName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'target names are letters, digits, . _ -');

/**
 * One target entry: the kinds' own schemas (tools/kinds.ts), told apart by `kind`. The union
 * is built from the list, so a new kind needs no line here.
 */
function targetSchema(kinds: readonly TargetKind[]) {
  const [first, ...rest] = kinds.map((k) => k.configSchema);
  if (!first) throw new Error('no target kinds');
  return z.discriminatedUnion('kind', [first, ...rest]);
}

export type { TargetConfig, PostgresTargetConfig };

function configSchema(kinds: readonly TargetKind[]) {
  return z.strictObject({
    identity: IdentitySchema,
    targets: z.record(TargetName, targetSchema(kinds)).default({}),
    policies: z.array(z.string().min(1)).default(['./policies/*.yaml']),
    audit: z
      .strictObject({ file: z.string().min(1).default('.gatehouse/audit.jsonl') })
      .default({ file: '.gatehouse/audit.jsonl' }),
    recordings: z
      .strictObject({ dir: z.string().min(1).default('.gatehouse/recordings') })
      .default({ dir: '.gatehouse/recordings' }),
    state: z
      .strictObject({ file: z.string().min(1).default('.gatehouse/state.json') })
      .default({ file: '.gatehouse/state.json' }),
  });
}

/** The schema of gatehouse.yaml with the kinds this release serves. */
export const ConfigSchema = configSchema(TARGET_KINDS);
type RawConfig = z.output<typeof ConfigSchema>;

export interface GatehouseConfig {
  readonly file: string;
  readonly dir: string;
  readonly identity: RawConfig['identity'];
  readonly targets: Readonly<Record<string, TargetConfig>>;
  /** Absolute glob patterns of policy files. */
  readonly policies: readonly string[];
  readonly audit: { readonly file: string };
  readonly recordings: { readonly dir: string };
  readonly state: { readonly file: string };
}

/**
 * Load gatehouse.yaml. `kinds` is the list of target kinds (tests add a kind of their own to
 * prove the seam); each target is checked by its kind's schema.
 */
export async function loadConfig(
  file: string,
  kinds: readonly TargetKind[] = TARGET_KINDS,
): Promise<GatehouseConfig> {
  const abs = path.resolve(file);
  const dir = path.dirname(abs);
  const { value } = await loadYamlFile(
    abs,
    kinds === TARGET_KINDS ? ConfigSchema : configSchema(kinds),
  );
  const targets: Record<string, TargetConfig> = {};
  for (const [name, t] of Object.entries(value.targets)) {
    // The entry passed its kind's own schema: it is that kind's config, named.
    targets[name] = Object.freeze({ ...t, name } as TargetConfig);
  }
  const identity = {
    ...value.identity,
    jwks:
      value.identity.jwks && !/^https?:\/\//.test(value.identity.jwks)
        ? resolvePath(dir, value.identity.jwks)
        : value.identity.jwks,
    devIssuer: value.identity.devIssuer && {
      ...value.identity.devIssuer,
      keyFile: resolvePath(dir, value.identity.devIssuer.keyFile),
    },
  };
  return deepFreeze({
    file: abs,
    dir,
    identity,
    targets,
    policies: value.policies.map((p) => resolvePath(dir, p)),
    audit: { file: resolvePath(dir, value.audit.file) },
    recordings: { dir: resolvePath(dir, value.recordings.dir) },
    state: { file: resolvePath(dir, value.state.file) },
  });
}
