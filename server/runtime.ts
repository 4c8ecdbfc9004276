import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { resolvePath } from './kernel/paths.js';
import { resolveSecret } from './kernel/secrets.js';
import {
  loadConfig,
  type GatehouseConfig,
  type PostgresTargetConfig,
  type TargetConfig,
} from './config.js';
import { GovernanceError } from './kernel/errors.js';
import { createVerifier, type Verifier } from './identity/identity.js';
import { loadPolicies, type PolicySet } from '../policies/load.js';
import { createMasker, type Masker } from '../policies/masking.js';
import { AuditLog } from '../recordings/audit.js';
import { createTools, type ToolRegistry } from '../tools/registry.js';
import { PostgresPools, type ResolvedPostgresTarget } from '../tools/postgres/pool.js';

/**
 * Everything a running gateway holds, built once at start from the config: the frozen config
 * and policies, the verifier, the audit log (this process is its only writer), the tools and
 * their connection pools.
 */
export interface Runtime {
  readonly config: GatehouseConfig;
  readonly policies: PolicySet;
  readonly verifier: Verifier;
  readonly audit: AuditLog;
  readonly tools: ToolRegistry;
  /** Resolve a target's credentials for one call. Returns the secrets used, for output scrubbing. */
  resolveTarget(target: TargetConfig): Promise<{ resolved: unknown; secrets: string[] }>;
  maskerFor(profiles: readonly string[]): Masker;
  close(): Promise<void>;
}

export async function loadGateway(
  configFile: string,
): Promise<{ config: GatehouseConfig; policies: PolicySet }> {
  const config = await loadConfig(configFile);
  const policies = await loadPolicies(config.policies, config.file);
  return { config, policies };
}

export async function createRuntime(configFile: string): Promise<Runtime> {
  const { config, policies } = await loadGateway(configFile);
  const id = config.identity;
  const verifier = await createVerifier({
    ...(id.issuer ? { issuer: id.issuer } : {}),
    audience: id.audience,
    ...(id.jwks ? { jwks: id.jwks } : {}),
    algorithms: id.algorithms,
    ...(id.hmacSecret
      ? { hmacSecret: await resolveSecret(id.hmacSecret, config.dir, 'identity.hmacSecret') }
      : {}),
    groupsClaim: id.groupsClaim,
    ...(id.groupsSeparator !== undefined ? { groupsSeparator: id.groupsSeparator } : {}),
    clockToleranceSec: id.clockToleranceSec,
    ...(id.devIssuer ? { devIssuer: id.devIssuer } : {}),
  });
  const audit = await AuditLog.open(config.audit.file);
  const pools = new PostgresPools();
  const tools = createTools(pools, async (name) => {
    const target = Object.hasOwn(config.targets, name) ? config.targets[name] : undefined;
    if (target?.kind !== 'postgres') return undefined;
    return { target: await resolvePostgres(config, target), trusted: target.trusted };
  });

  const pseudonymKey = await loadOrCreateKey(
    path.join(path.dirname(config.state.file), 'pseudonym.key'),
  );
  const maskers = new Map<string, Masker>();

  return {
    config,
    policies,
    verifier,
    audit,
    tools,
    async resolveTarget(target) {
      switch (target.kind) {
        case 'postgres': {
          const resolved = await resolvePostgres(config, target);
          return { resolved, secrets: resolved.password ? [resolved.password] : [] };
        }
        default:
          throw new GovernanceError(
            'TARGET_ERROR',
            `targets of kind ${target.kind} are not supported yet`,
          );
      }
    },
    maskerFor(names) {
      const key = [...names].sort().join('\0');
      let m = maskers.get(key);
      if (!m) {
        m = createMasker(
          names.map((n) => {
            const profile = policies.profiles[n];
            // loadPolicies already refused unknown profile names; this is a bug guard.
            if (!profile)
              throw new GovernanceError('INTERNAL', 'masking profile missing', {
                cause: new Error(n),
              });
            return profile;
          }),
          { pseudonymKey },
        );
        maskers.set(key, m);
      }
      return m;
    },
    async close() {
      await pools.closeAll();
      await audit.close();
    },
  };
}

/** A postgres target with its credentials resolved, for one call (or one catalog check). */
export async function resolvePostgres(
  config: GatehouseConfig,
  target: PostgresTargetConfig,
): Promise<ResolvedPostgresTarget> {
  const password = target.password
    ? await resolveSecret(target.password, config.dir, `target ${target.name}`)
    : undefined;
  const sslCa = target.sslCa
    ? await readFile(resolvePath(config.dir, target.sslCa.file), 'utf8')
    : undefined;
  return {
    name: target.name,
    host: target.host,
    port: target.port,
    database: target.database,
    user: target.user,
    password,
    ssl: target.ssl,
    sslCa,
    poolSize: target.poolSize,
    connectTimeoutMs: target.connectTimeout,
  };
}

/** The pseudonym key keeps pseudonyms stable across restarts; it lives beside the state file. */
async function loadOrCreateKey(file: string): Promise<Uint8Array> {
  try {
    const hex = (await readFile(file, 'utf8')).trim();
    if (/^[0-9a-f]{64}$/.test(hex)) return Buffer.from(hex, 'hex');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = randomBytes(32);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFile(file, key.toString('hex') + '\n', { mode: 0o600, flag: 'w' });
  return key;
}
