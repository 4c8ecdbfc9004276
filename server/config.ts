import path from 'node:path';
import { z } from 'zod';
import { deepFreeze } from './kernel/freeze.js';
import { resolvePath } from './kernel/paths.js';
import { SecretRef } from './kernel/secrets.js';
import { Duration } from './kernel/units.js';
import { loadYamlFile } from './kernel/yaml.js';
import { IdentitySchema } from './identity/config.js';

/**
 * gatehouse.yaml (CONTRACT section 2). Parsed once at start with zod, strict everywhere
 * (a typo in a key is an error, not a silently ignored setting), then frozen.
 */

const TargetName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'target names are letters, digits, . _ -');

const PostgresTarget = z.strictObject({
  kind: z.literal('postgres'),
  description: z.string().optional(),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(5432),
  database: z.string().min(1),
  user: z.string().min(1),
  password: SecretRef.optional(),
  ssl: z.enum(['disable', 'require', 'verify-full']).default('disable'),
  sslCa: z.strictObject({ file: z.string().min(1) }).optional(),
  poolSize: z.number().int().min(1).max(100).default(4),
  connectTimeout: Duration.default(5_000),
  // Objects defined in the database that a statement may reach and still be a read:
  // `schema.name` (a function, operator, type or relation) or `extension:NAME`.
  trusted: z
    .array(
      z
        .string()
        .regex(
          /^(extension:[^\s]+|[^\s.]+\.[^\s]+)$/,
          'trusted entries are schema.name or extension:NAME',
        ),
    )
    .default([]),
});

const SshTarget = z.strictObject({
  kind: z.literal('ssh'),
  description: z.string().optional(),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(22),
  user: z.string().min(1),
  privateKey: SecretRef,
  hostKey: z
    .string()
    .regex(/^(ssh-|ecdsa-)\S+ \S+/, 'hostKey is a public key line such as "ssh-ed25519 AAAA..."'),
});

const KubernetesTarget = z.strictObject({
  kind: z.literal('kubernetes'),
  description: z.string().optional(),
  kubeconfig: SecretRef,
  context: z.string().min(1).optional(),
});

const Target = z.discriminatedUnion('kind', [PostgresTarget, SshTarget, KubernetesTarget]);
export type PostgresTargetConfig = z.infer<typeof PostgresTarget> & { name: string };
export type SshTargetConfig = z.infer<typeof SshTarget> & { name: string };
export type KubernetesTargetConfig = z.infer<typeof KubernetesTarget> & { name: string };
export type TargetConfig = PostgresTargetConfig | SshTargetConfig | KubernetesTargetConfig;

export const ConfigSchema = z.strictObject({
  identity: IdentitySchema,
  targets: z.record(TargetName, Target).default({}),
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

export async function loadConfig(file: string): Promise<GatehouseConfig> {
  const abs = path.resolve(file);
  const dir = path.dirname(abs);
  const { value } = await loadYamlFile(abs, ConfigSchema);
  const targets: Record<string, TargetConfig> = {};
  for (const [name, t] of Object.entries(value.targets))
    targets[name] = Object.freeze({ ...t, name });
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
