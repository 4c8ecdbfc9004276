import path from 'node:path';
import { z } from 'zod';
import { deepFreeze } from './kernel/freeze.js';
import { resolvePath } from './kernel/paths.js';
import { Duration, parseSize } from './kernel/units.js';
import { SecretRef } from './kernel/secrets.js';
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
    state: StateSchema.prefault({}),
    http: HttpSchema.prefault({}),
    notifications: NotificationsSchema.prefault({}),
  });
}

// ---- state: (approvals and grants) ----------------------------------------------------------

/**
 * Where approvals and grants live. `file` (lowdb, the default) is shared safely by the gateway
 * processes of one machine; `postgres` by replicas on several machines. `file`'s folder also
 * holds the pseudonym key, whichever backend keeps the approvals.
 */
const StateSchema = z.strictObject({
  file: z.string().min(1).default('.gatehouse/state.json'),
  postgres: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(1).max(65_535).default(5432),
      database: z.string().min(1),
      user: z.string().min(1),
      password: SecretRef.optional(),
      /** As a postgres target: `require` encrypts, `verify-full` also checks the server's name. */
      ssl: z.enum(['disable', 'require', 'verify-full']).default('disable'),
      sslCa: z.strictObject({ file: z.string().min(1) }).optional(),
      /** The schema holding Gatehouse's tables, created on first start. */
      schema: z
        .string()
        .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'a schema name is lower-case letters, digits and _')
        .default('gatehouse'),
    })
    .optional(),
});
export type StateConfig = z.output<typeof StateSchema>;

// ---- notifications: ------------------------------------------------------------------------

const NotificationsSchema = z.strictObject({
  /** POSTed a JSON message when an approval is requested and when it is answered. */
  webhook: z
    .strictObject({
      url: httpsUrl({ query: true }),
      /** HMAC-SHA256 key: each POST carries `X-Gatehouse-Signature`. */
      secret: SecretRef.optional(),
      timeout: Duration.default(5_000),
      /** Further attempts after a failed POST (1 s, 2 s, 4 s ... apart). */
      retries: z.number().int().min(0).max(10).default(3),
    })
    .optional(),
});
export type NotificationsConfig = z.output<typeof NotificationsSchema>;

// ---- http: (only for --transport http) ---------------------------------------------------

/** Where `--transport http` listens unless `http.listen` or `--listen` says otherwise. */
export const DEFAULT_LISTEN = '127.0.0.1:8080';

/** `HOST:PORT`, `[IPv6]:PORT`; the host may be empty (every interface). */
export function parseListen(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]*)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65_535) return undefined;
  return { host: m[1] ?? m[2] ?? '', port };
}

/** A loopback host name or address: plain http is acceptable there, and only there. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h);
}

const Listen = z.string().refine((s) => parseListen(s) !== undefined, {
  message: 'expected HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080)',
});

/**
 * An https URL (http only for a loopback host: tests, a local proxy), without query or
 * fragment: a resource identifier (RFC 9728 section 1.2, RFC 8707 section 2) or an issuer.
 */
const HttpsUrl = httpsUrl({ query: false });

/** An https URL (http only for a loopback host); `query: true` allows a query string. */
function httpsUrl(opts: { query: boolean }) {
  return z.string().superRefine((s, ctx) => {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      ctx.addIssue({ code: 'custom', message: `not a URL: ${JSON.stringify(s)}` });
      return;
    }
    if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
      ctx.addIssue({ code: 'custom', message: 'must be https (http only for a loopback host)' });
    } else if ((!opts.query && u.search) || u.hash || s.includes('#')) {
      ctx.addIssue({
        code: 'custom',
        message: opts.query ? 'must not have a fragment' : 'must not have a query or a fragment',
      });
    }
  });
}

/** A browser origin: scheme://host[:port], exactly as browsers send it in `Origin`. */
const Origin = z.string().superRefine((s, ctx) => {
  let origin: string | undefined;
  try {
    origin = new URL(s).origin;
  } catch {
    origin = undefined;
  }
  if (origin !== s) {
    ctx.addIssue({
      code: 'custom',
      message: `${JSON.stringify(s)} is not an origin (scheme://host[:port], no path or trailing slash)`,
    });
  }
});

/** A size as the config writes it ("64KiB", "1MiB"), parsed to bytes. */
const Size = z.string().transform((text, ctx) => {
  const bytes = parseSize(text);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${text}" is not a size (e.g. 64KiB, 1MiB)` });
    return z.NEVER;
  }
  return bytes;
});

const HttpSchema = z.strictObject({
  listen: Listen.default(DEFAULT_LISTEN),
  /** The resource identifier: the audience tokens must carry over HTTP, and the metadata's `resource`. */
  publicUrl: HttpsUrl.optional(),
  /** Default: the identity issuer. */
  authorizationServers: z.array(HttpsUrl).min(1).optional(),
  allowedOrigins: z.array(Origin).default([]),
  maxBodyBytes: Size.default(1024 * 1024),
  limits: z
    .strictObject({
      callsPerMinute: z.number().int().min(1).default(120),
      concurrentCalls: z.number().int().min(1).default(8),
      /** Open MCP sessions (Streamable HTTP and SSE) per identity. */
      sessions: z.number().int().min(1).default(16),
    })
    .prefault({}),
});

export type HttpConfig = z.output<typeof HttpSchema>;

/**
 * The audience a token must carry over HTTP: the resource (`http.publicUrl`) when set, so a
 * token minted for another service is never taken here (RFC 8707); otherwise
 * `identity.audience`, as over stdio (the server warns at start).
 */
export function httpAudience(config: Pick<GatehouseConfig, 'http' | 'identity'>): string {
  return config.http.publicUrl ?? config.identity.audience;
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
  readonly state: StateConfig;
  readonly notifications: NotificationsConfig;
  /** `http:`, defaults filled in; read only by --transport http. */
  readonly http: HttpConfig;
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
    state: { ...value.state, file: resolvePath(dir, value.state.file) },
    notifications: value.notifications,
    http: value.http,
  });
}
