import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { Identity, Verifier } from '../identity/identity.js';
import { GovernanceError } from '../kernel/errors.js';
import { log } from '../kernel/log.js';

/**
 * Gatehouse as an OAuth 2.1 resource server (MCP authorization, 2025-11-25): every request
 * carries `Authorization: Bearer <token>`, verified exactly as over stdio (issuer, audience,
 * expiry, algorithm allowlist, the identity verifier); a request without one, or with one that
 * fails, gets 401 and a `WWW-Authenticate` challenge naming the protected resource metadata
 * (RFC 9728), which names the authorization servers where a client gets a token for this
 * resource. Tokens are never passed on to targets: the gateway uses its own credentials.
 */

export const METADATA_PATH = '/.well-known/oauth-protected-resource';

/** What the HTTP layer knows of the resource it protects. */
export interface Resource {
  /** The resource identifier (`http.publicUrl`, else the listening URL). */
  readonly id: string;
  /** Where the protected resource metadata is served. */
  readonly metadataUrl: string;
  /** RFC 9728 metadata. */
  readonly metadata: Readonly<Record<string, unknown>>;
  /** True when `id` is the audience tokens are checked for (http.publicUrl is set). */
  readonly isAudience: boolean;
}

export function describeResource(opts: {
  id: string;
  isAudience: boolean;
  authorizationServers: readonly string[];
}): Resource {
  const base = opts.id.replace(/\/+$/, '');
  return {
    id: opts.id,
    isAudience: opts.isAudience,
    metadataUrl: `${base}${METADATA_PATH}`,
    metadata: {
      resource: opts.id,
      ...(opts.authorizationServers.length
        ? { authorization_servers: [...opts.authorizationServers] }
        : {}),
      bearer_methods_supported: ['header'],
      resource_name: 'Gatehouse',
    },
  };
}

/** A verified caller: its identity and the SDK's AuthInfo for this request. */
export interface Caller {
  readonly identity: Identity;
  readonly auth: AuthInfo;
}

/**
 * The caller of this request, or undefined once a 401 was written. A refusal's reason is the
 * verifier's short public text (`token expired`, `token audience not accepted`); the detail
 * stays in the gateway log.
 */
export async function authenticateRequest(
  req: IncomingMessage,
  res: ServerResponse,
  verifier: Verifier,
  resource: Resource,
): Promise<Caller | undefined> {
  const header = req.headers.authorization;
  if (header === undefined || header.trim() === '') {
    challenge(res, resource, undefined, 'no token: send Authorization: Bearer <token>');
    return undefined;
  }
  const m = /^Bearer[ ]+([A-Za-z0-9._~+/=-]+)[ ]*$/i.exec(header);
  if (!m) {
    challenge(res, resource, 'invalid_token', "the Authorization header must be 'Bearer <token>'");
    return undefined;
  }
  const token = m[1]!;
  let identity: Identity;
  try {
    identity = await verifier.verify(token);
  } catch (err) {
    const reason =
      err instanceof GovernanceError && err.code === 'UNAUTHENTICATED'
        ? err.message
        : 'token refused';
    refusedLog.note(reason, (err as Error)?.cause);
    challenge(res, resource, 'invalid_token', reason);
    return undefined;
  }
  const claims = identity.claims;
  const text = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  return {
    identity,
    auth: {
      token,
      clientId: text(claims.client_id) ?? text(claims.azp) ?? identity.sub,
      scopes: (text(claims.scope) ?? '').split(' ').filter(Boolean),
      expiresAt: identity.expiresAt,
      ...(resource.isAudience ? { resource: new URL(resource.id) } : {}),
      extra: { sub: identity.sub },
    },
  };
}

/** 401 with the RFC 6750 / RFC 9728 challenge. Without a token there is no error code. */
function challenge(
  res: ServerResponse,
  resource: Resource,
  error: 'invalid_token' | undefined,
  description: string,
): void {
  const quoted = (s: string) => `"${s.replace(/["\\]/g, "'")}"`;
  const params = [
    ...(error ? [`error=${quoted(error)}`, `error_description=${quoted(description)}`] : []),
    `resource_metadata=${quoted(resource.metadataUrl)}`,
  ];
  res.setHeader('WWW-Authenticate', `Bearer ${params.join(', ')}`);
  writeRpcError(res, 401, -32001, `UNAUTHENTICATED: ${description}`);
}

/** An HTTP answer carrying a JSON-RPC error without an id (the request was not read as one). */
/**
 * Refused tokens are logged, but at most REFUSED_LOG_BURST lines per window; the rest are
 * counted and summed up in one line when the window ends. A client sending bad tokens in a
 * loop is not an identity the per-identity limits can see, and must not fill the disk
 * (found by the blind red-team pass over HTTP: ~250 bytes of stderr per request).
 */
const REFUSED_LOG_BURST = 20;
const REFUSED_LOG_WINDOW_MS = 10_000;
const refusedLog = {
  windowStart: 0,
  logged: 0,
  dropped: 0,
  note(reason: string, cause: unknown): void {
    const now = Date.now();
    if (now - this.windowStart >= REFUSED_LOG_WINDOW_MS) {
      if (this.dropped > 0) {
        log.warn(
          { dropped: this.dropped, windowMs: REFUSED_LOG_WINDOW_MS },
          'http: more bearer tokens were refused than logged',
        );
      }
      this.windowStart = now;
      this.logged = 0;
      this.dropped = 0;
    }
    if (this.logged < REFUSED_LOG_BURST) {
      this.logged++;
      log.info({ reason, cause }, 'http: bearer token refused');
    } else {
      this.dropped++;
    }
  },
};

export function writeRpcError(
  res: ServerResponse,
  status: number,
  code: number,
  message: string,
  headers: Record<string, string> = {},
  id: string | number | null = null,
): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const body = JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id });
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}
