import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { httpAudience, loadConfig, parseListen, type GatehouseConfig } from './config.js';
import { createNotifier } from './approvals/notify.js';
import { ApprovalService, policyVersion } from './approvals/service.js';
import { reviewApprovals } from './approvals/review.js';
import { openFileStore } from './approvals/store-file.js';
import { openPostgresStore } from './approvals/store-postgres.js';
import type { StateStore } from './approvals/types.js';
import type { DecisionPoint } from './decide.js';
import { openGateway, SECRET_MIN_LENGTH, targetSecretRefs } from './gateway.js';
import { createVerifier, type Verifier } from './identity/identity.js';
import { ConfigError, GovernanceError } from './kernel/errors.js';
import { log } from './kernel/log.js';
import { resolvePath } from './kernel/paths.js';
import { describeSecretRef, resolveSecret, type SecretRef } from './kernel/secrets.js';
import { formatFinding, lintGateway, refuseErrors, type Finding } from './policy-lint.js';
import { loadPolicies, type PolicySet } from '../policies/load.js';
import { createMasker, type Masker } from '../policies/masking.js';
import { openAuditChain, type AuditLog } from '../recordings/audit.js';
import type { TargetKind } from '../tools/kind.js';
import { TARGET_KINDS } from '../tools/kinds.js';
import type { ToolRegistry } from '../tools/registry.js';

/**
 * Everything a running gateway holds, built once at start from the config: the frozen config
 * and policies, the verifier, the audit log (this process is its only writer), and the
 * gateway (each target kind's tools and connections, and the one decision point).
 */
export interface Runtime {
  readonly config: GatehouseConfig;
  readonly policies: PolicySet;
  readonly verifier: Verifier;
  readonly audit: AuditLog;
  readonly tools: ToolRegistry;
  readonly decisions: DecisionPoint;
  /** Approvals and grants, in the state every process of the deployment shares. */
  readonly approvals: ApprovalService;
  /** The masker for a decision's profiles on a target (discovered columns included). */
  maskerFor(profiles: readonly string[], target?: string | null): Masker;
  /** Close the kinds' connections, the approvals' state, then the audit log. */
  close(): Promise<void>;
}

export async function loadGateway(
  configFile: string,
  kinds?: readonly TargetKind[],
): Promise<{ config: GatehouseConfig; policies: PolicySet; warnings: Finding[] }> {
  const config = await loadConfig(configFile, kinds);
  const policies = await loadPolicies(config.policies, config.file);
  // A rule on a misspelt tool, operation or tag never matches (a deny that fails open):
  // refused here, so no command and no gateway runs on it.
  const warnings = refuseErrors(lintGateway(config, policies, kinds));
  return { config, policies, warnings };
}

export interface RuntimeOptions {
  /** The target kinds (default: tools/kinds.ts); tests add a kind to prove the seam. */
  kinds?: readonly TargetKind[];
  /** Over HTTP a token's audience is the resource (`http.publicUrl`), see httpAudience. */
  transport?: 'stdio' | 'http';
}

export async function createRuntime(
  configFile: string,
  opts: RuntimeOptions = {},
): Promise<Runtime> {
  const { config, policies, warnings } = await loadGateway(configFile, opts.kinds);
  for (const w of warnings) log.warn({}, formatFinding(w));
  await checkTargetSecrets(config, opts.kinds ?? TARGET_KINDS);
  const id = config.identity;
  const verifier = await createVerifier({
    ...(id.issuer ? { issuer: id.issuer } : {}),
    audience: opts.transport === 'http' ? httpAudience(config) : id.audience,
    ...(id.jwks ? { jwks: id.jwks } : {}),
    algorithms: id.algorithms,
    ...(id.hmacSecret
      ? { hmacSecret: await startupSecret(config, id.hmacSecret, 'identity.hmacSecret') }
      : {}),
    groupsClaim: id.groupsClaim,
    ...(id.groupsSeparator !== undefined ? { groupsSeparator: id.groupsSeparator } : {}),
    clockToleranceSec: id.clockToleranceSec,
    ...(id.devIssuer ? { devIssuer: id.devIssuer } : {}),
  });
  const audit = await openAuditChain(config.audit.file, { notice: (m) => log.warn(m) });
  const approvals = new ApprovalService(await openStateStore(config), {
    policyVersion: policyVersion(
      policies.rules.map((r) => r.rule),
      policies.profiles,
    ),
    audit: (rec) => audit.append(rec),
    notifier: createNotifier(config.notifications, {
      configDir: config.dir,
      configFile: config.file,
      serverUrl: serverUrl(config),
    }),
  });
  const gateway = openGateway(config, policies.engine, {
    live: true,
    profiles: policies.profiles,
    ownTools: [reviewApprovals(approvals)],
    ...(opts.kinds ? { kinds: opts.kinds } : {}),
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
    tools: gateway.tools,
    decisions: gateway.decisions,
    approvals,
    maskerFor(names, target = null) {
      for (const n of names) {
        // loadPolicies already refused unknown profile names; this is a bug guard.
        if (!Object.hasOwn(policies.profiles, n)) {
          throw new GovernanceError('INTERNAL', 'masking profile missing', { cause: new Error(n) });
        }
      }
      const profiles = gateway.decisions.profilesFor(names, target);
      // Discovered columns make a masker per target (and per answer of discovery).
      const key = JSON.stringify([[...names].sort(), profiles.map((p) => p.columns)]);
      let m = maskers.get(key);
      if (!m) {
        m = createMasker(profiles, { pseudonymKey });
        if (maskers.size > 256) maskers.clear();
        maskers.set(key, m);
      }
      return m;
    },
    async close() {
      await gateway.close();
      await approvals.close();
      await audit.close();
    },
  };
}

/**
 * The state backend the config names: PostgreSQL (`state.postgres`, for replicas on several
 * machines) or the file (`state.file`, for the processes of one machine).
 */
export async function openStateStore(config: GatehouseConfig): Promise<StateStore> {
  const pg = config.state.postgres;
  if (!pg) return openFileStore(config.state.file);
  const password = pg.password
    ? await startupSecret(config, pg.password, 'state.postgres.password')
    : undefined;
  return openPostgresStore({
    connection: {
      host: pg.host,
      port: pg.port,
      database: pg.database,
      user: pg.user,
      ...(password !== undefined ? { password } : {}),
      ssl: pg.ssl,
      ...(pg.sslCa
        ? { sslCa: await readFile(resolvePath(config.dir, pg.sslCa.file), 'utf8') }
        : {}),
    },
    schema: pg.schema,
  });
}

/**
 * The base URL approvers use with `gatehouse approvals --server` (and the webhook's
 * commands): http.publicUrl, else the HTTP listen address.
 */
export function serverUrl(config: GatehouseConfig): string {
  if (config.http.publicUrl) return config.http.publicUrl.replace(/\/+$/, '');
  const where = parseListen(config.http.listen);
  const host = !where || where.host === '' || where.host === '0.0.0.0' ? '127.0.0.1' : where.host;
  return `http://${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${where?.port ?? 8080}`;
}

/**
 * A secret the gateway needs to start (the HMAC key of the identity config): one that cannot
 * be read, or is too short to scrub, is a config error naming the key (exit 2), not a
 * TARGET_ERROR.
 */
async function startupSecret(
  config: GatehouseConfig,
  ref: SecretRef,
  key: string,
): Promise<string> {
  let value: string;
  try {
    value = await resolveSecret(ref, config.dir, key);
  } catch {
    throw new ConfigError(
      `${config.file}: ${key}: ${describeSecretRef(ref)} is not set or cannot be read`,
    );
  }
  if (value.length < SECRET_MIN_LENGTH) {
    throw new ConfigError(
      `${config.file}: ${key}: the secret is shorter than ${SECRET_MIN_LENGTH} characters`,
    );
  }
  return value;
}

/**
 * Target secrets are resolved per call (a rotated password takes effect at once), but one
 * that is already set and too short to scrub safely is refused at start. One that is not set
 * yet is only logged: the calls to that target say so until it is.
 */
async function checkTargetSecrets(
  config: GatehouseConfig,
  kinds: readonly TargetKind[],
): Promise<void> {
  for (const { path, ref } of targetSecretRefs(config, kinds)) {
    const where = path.join('.');
    let value: string;
    try {
      value = await resolveSecret(ref, config.dir, where);
    } catch {
      log.warn({ key: where }, `${where}: ${describeSecretRef(ref)} is not set yet`);
      continue;
    }
    if (value.length < SECRET_MIN_LENGTH) {
      throw new ConfigError(
        `${config.file}: ${where}: the secret is shorter than ${SECRET_MIN_LENGTH} characters; ` +
          'use a longer one (a short secret cannot be scrubbed from results safely)',
      );
    }
  }
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
