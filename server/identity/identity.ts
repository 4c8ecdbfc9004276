import { readFile } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
} from 'jose';
import { VerifierConfigSchema } from './config.js';
import { DEV_GROUPS_CLAIM, loadDevIssuer } from './dev-issuer.js';
import { ConfigError, GovernanceError } from '../kernel/errors.js';
import { log } from '../kernel/log.js';

/**
 * Token verification: who is calling. Every failure is UNAUTHENTICATED with a short public
 * reason; the jose error stays in `cause` for the gateway log. The verifier trusts exactly
 * two kinds of key: the configured issuer's JWKS (file or URL, plus an optional HMAC secret
 * when HS* is listed) and, when configured, the local dev issuer's own public key.
 */

/**
 * What createVerifier takes (the `identity:` section once loaded). Checked at creation with
 * the rules gatehouse.yaml is checked with (./config.ts), so `policy check` and `serve`
 * accept and refuse the same configurations.
 */
export interface IdentityConfig {
  issuer?: string;
  audience: string;
  jwks?: string;
  algorithms: string[];
  hmacSecret?: string;
  groupsClaim: string;
  /**
   * How a string groups claim is split into groups (e.g. "," or " "). Absent: a string is
   * one group, never split (`"readers admins"` is the single group `readers admins`).
   */
  groupsSeparator?: string;
  clockToleranceSec: number;
  devIssuer?: { keyFile: string; issuer: string };
}

export interface Identity {
  sub: string;
  groups: string[];
  claims: Record<string, unknown>;
  issuer: string;
  /** Epoch seconds. */
  expiresAt: number;
}

export interface Verifier {
  /** Resolves to the identity, or throws GovernanceError('UNAUTHENTICATED', reason). */
  verify(token: string): Promise<Identity>;
}

/** Real access tokens are 1-3 KiB; anything bigger is refused before any decoding work. */
export const MAX_TOKEN_CHARS = 8 * 1024;
/** Re-read a JWKS file on an unknown kid at most this often (key rotation on disk). */
const JWKS_FILE_REFRESH_MS = 60_000;
const JWKS_FILE_MAX_BYTES = 1024 * 1024;
const REMOTE_TIMEOUT_MS = 5_000;
const REMOTE_COOLDOWN_MS = 30_000;
const REMOTE_CACHE_MAX_AGE_MS = 10 * 60_000;
/**
 * A token whose signature was verified is taken again, byte for byte, without redoing the
 * signature check for this long; its time claims are checked on every call all the same, so
 * expiry still bites at once. Bounded, so key changes the key source picks up (a JWKS URL's
 * refresh, a re-read JWKS file) apply to a token already seen within this long.
 */
const VERIFIED_REUSE_MS = 30_000;
const VERIFIED_CACHE_MAX = 256;

/**
 * Header members that name a key by value or by reference. Trusting any of them lets the
 * attacker bring their own key (a `jwk` with their public key, a `jku`/`x5u` URL they
 * host, an `x5c` chain they made), so they are refused outright, never looked at.
 */
const FORBIDDEN_HEADERS = ['jwk', 'jku', 'x5u', 'x5c'] as const;
/** Three non-empty base64url segments; an empty signature (alg none) fails here. */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const HMAC_ALG = /^HS(256|384|512)$/;

/** A trusted issuer: the exact `iss` string, the keys that may sign for it, and its rules. */
interface Route {
  issuer: string;
  getKey: JWTVerifyGetKey;
  algorithms: string[];
  groupsClaim: string;
  groupsSeparator?: string;
}

/** A key source failed (endpoint down, bad JSON): refuse, never fall back to no check. */
class KeysUnavailable extends Error {
  constructor(cause: unknown) {
    super('JWKS unavailable', { cause });
    this.name = 'KeysUnavailable';
  }
}

export async function createVerifier(config: IdentityConfig): Promise<Verifier> {
  const cfg = checkConfig(config);
  const routes = new Map<string, Route>();

  if (cfg.issuer !== undefined) {
    routes.set(cfg.issuer, {
      issuer: cfg.issuer,
      getKey: await issuerKeys(cfg),
      algorithms: [...cfg.algorithms],
      groupsClaim: cfg.groupsClaim,
      ...(cfg.groupsSeparator !== undefined ? { groupsSeparator: cfg.groupsSeparator } : {}),
    });
  }
  if (cfg.devIssuer !== undefined) {
    // The configured dev issuer is ours: create its key on first start so serve and
    // `gatehouse token` agree on one key whichever runs first.
    const dev = await loadDevIssuer(cfg.devIssuer.keyFile, cfg.devIssuer.issuer, {
      create: true,
    });
    routes.set(dev.issuer, {
      issuer: dev.issuer,
      getKey: createLocalJWKSet(dev.jwks),
      // Only the dev key's own algorithm: nothing else is ever signed for this issuer.
      algorithms: [dev.alg],
      // Dev tokens carry their groups as an array; a string there is one group.
      groupsClaim: DEV_GROUPS_CLAIM,
    });
  }

  const verifyOptions = (route: Route): JWTVerifyOptions => ({
    issuer: route.issuer,
    audience: cfg.audience,
    algorithms: route.algorithms,
    clockTolerance: cfg.clockToleranceSec,
    requiredClaims: ['exp', 'sub'],
  });

  // Only successful verifications are kept, keyed by the exact token text: a forged or
  // altered token is a different string and always takes the full path.
  const verified = new Map<string, { identity: Identity; at: number; nbf?: number }>();

  return {
    async verify(token: string): Promise<Identity> {
      const now = Date.now();
      const seen = verified.get(token);
      if (seen !== undefined && now - seen.at < VERIFIED_REUSE_MS) {
        const sec = Math.floor(now / 1000);
        if (sec - cfg.clockToleranceSec >= seen.identity.expiresAt) {
          verified.delete(token);
          throw unauthenticated('token expired');
        }
        if (seen.nbf !== undefined && sec + cfg.clockToleranceSec < seen.nbf) {
          throw unauthenticated('token not yet valid');
        }
        return seen.identity;
      }
      verified.delete(token);
      const payload = preflight(token);
      // Routing only: the unverified `iss` picks which keys to try; jwtVerify then checks
      // `iss` again under the signature, so a forged `iss` just picks keys that fail.
      const route = typeof payload.iss === 'string' ? routes.get(payload.iss) : undefined;
      if (route === undefined) throw unauthenticated('token issuer not accepted');

      let claims: JWTPayload;
      try {
        claims = await verifyWithRoute(token, route.getKey, verifyOptions(route));
      } catch (err) {
        throw unauthenticated(publicReason(err), err);
      }
      const identity = toIdentity(claims, route);
      if (verified.size >= VERIFIED_CACHE_MAX) verified.delete(verified.keys().next().value!);
      verified.set(token, {
        identity,
        at: now,
        ...(typeof claims.nbf === 'number' ? { nbf: claims.nbf } : {}),
      });
      return identity;
    },
  };
}

function checkConfig(cfg: IdentityConfig): IdentityConfig {
  const result = VerifierConfigSchema.safeParse(cfg);
  if (result.success) return result.data;
  const issues = result.error.issues.map(
    (issue) => `${['identity', ...issue.path.map(String)].join('.')}: ${issue.message}`,
  );
  throw new ConfigError(issues[0]!, issues);
}

/** The configured issuer's key function: HMAC secret for HS*, the JWKS for everything else. */
async function issuerKeys(cfg: IdentityConfig): Promise<JWTVerifyGetKey> {
  const jwks = cfg.jwks === undefined ? undefined : await jwksSource(cfg.jwks);
  const secret =
    cfg.hmacSecret !== undefined && cfg.algorithms.some((a) => HMAC_ALG.test(a))
      ? new TextEncoder().encode(cfg.hmacSecret)
      : undefined;
  return async (header, token) => {
    if (typeof header.alg === 'string' && HMAC_ALG.test(header.alg)) {
      // Algorithm confusion (HS256 keyed with the issuer's public key): an HMAC token is
      // only ever checked against the configured secret, never against JWKS material.
      if (secret === undefined) throw new errors.JOSEAlgNotAllowed('HMAC not configured');
      return secret;
    }
    if (jwks === undefined) throw new errors.JWKSNoMatchingKey();
    return jwks(header, token);
  };
}

async function jwksSource(location: string): Promise<JWTVerifyGetKey> {
  if (/^https?:\/\//i.test(location)) {
    let url: URL;
    try {
      url = new URL(location);
    } catch {
      throw new ConfigError(`identity.jwks: not a valid URL: ${location}`);
    }
    return remoteJwks(url);
  }
  const path = location.startsWith('file:') ? fileURLToPath(location) : location;
  if (!isAbsolute(path)) {
    throw new ConfigError(`identity.jwks: expected an http(s) URL or an absolute path`);
  }
  return fileJwks(path);
}

function remoteJwks(url: URL): JWTVerifyGetKey {
  // jose caches the set, refetches on an unknown kid at most once per cooldown (so random
  // kids cannot turn the gateway into a request flood against the IdP) and never follows
  // redirects.
  const remote = createRemoteJWKSet(url, {
    timeoutDuration: REMOTE_TIMEOUT_MS,
    cooldownDuration: REMOTE_COOLDOWN_MS,
    cacheMaxAge: REMOTE_CACHE_MAX_AGE_MS,
  });
  let lastWarn = 0;
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (isKeySelectionError(err)) throw err;
      if (Date.now() - lastWarn > 60_000) {
        lastWarn = Date.now();
        log.warn({ jwks: url.href, err: errText(err) }, 'identity: JWKS endpoint unavailable');
      }
      throw new KeysUnavailable(err);
    }
  };
}

async function fileJwks(path: string): Promise<JWTVerifyGetKey> {
  let current: JWTVerifyGetKey;
  try {
    current = createLocalJWKSet(await readJwksFile(path));
  } catch (err) {
    throw new ConfigError(`identity.jwks: ${errText(err)}`);
  }
  let lastLoad = Date.now();
  let pending: Promise<void> | undefined;
  const reload = async (): Promise<void> => {
    lastLoad = Date.now();
    try {
      current = createLocalJWKSet(await readJwksFile(path));
    } catch (err) {
      // Keep the last good set: a half-written file must not lock everyone out.
      log.warn({ jwks: path, err: errText(err) }, 'identity: JWKS file reload failed');
    }
  };
  return async (header, token) => {
    try {
      return await current(header, token);
    } catch (err) {
      // A rotated key shows up as an unknown kid. Re-read at most once a minute so a
      // stream of random kids cannot become a stream of disk reads.
      if (
        err instanceof errors.JWKSNoMatchingKey &&
        Date.now() - lastLoad >= JWKS_FILE_REFRESH_MS
      ) {
        pending ??= reload().finally(() => (pending = undefined));
        await pending;
        return current(header, token);
      }
      throw err;
    }
  };
}

async function readJwksFile(path: string): Promise<JSONWebKeySet> {
  let text: string;
  try {
    const buf = await readFile(path);
    if (buf.byteLength > JWKS_FILE_MAX_BYTES) throw new Error(`${path} is too large for a JWKS`);
    text = buf.toString('utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code ? `cannot read ${path} (${code})` : errText(err), { cause: err });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${path} is not valid JSON`);
  }
  const keys: unknown = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.some((k) => typeof k !== 'object' || k === null)) {
    throw new Error(`${path} is not a JWKS (expected {"keys": [...]})`);
  }
  // A private or symmetric key in a file meant to be public is a leak waiting to happen.
  if (keys.some((k) => 'd' in k || (k as { kty?: unknown }).kty === 'oct')) {
    throw new Error(`${path} must contain public keys only`);
  }
  return value as JSONWebKeySet;
}

/** jwtVerify, plus the rotation case of several keys without a kid matching one token. */
async function verifyWithRoute(
  token: string,
  getKey: JWTVerifyGetKey,
  options: JWTVerifyOptions,
): Promise<JWTPayload> {
  try {
    return (await jwtVerify(token, getKey, options)).payload;
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
    for await (const key of err) {
      try {
        return (await jwtVerify(token, key, options)).payload;
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner;
      }
    }
    throw new errors.JWSSignatureVerificationFailed();
  }
}

/**
 * Cheap structural checks before any real work, and the unverified payload for routing.
 * Nothing here trusts the token; it only refuses what can never be valid.
 */
function preflight(token: unknown): JWTPayload {
  if (typeof token !== 'string' || token.length === 0) throw unauthenticated('token missing');
  // Resource exhaustion: a 1 MB "token" is refused on its length, before any decoding.
  if (token.length > MAX_TOKEN_CHARS) throw unauthenticated('token too large');
  if (!COMPACT_JWS.test(token)) throw unauthenticated('token malformed');

  let header: Record<string, unknown>;
  let payload: JWTPayload;
  try {
    header = decodeProtectedHeader(token);
    payload = decodeJwt(token);
  } catch (err) {
    throw unauthenticated('token malformed', err);
  }
  for (const name of FORBIDDEN_HEADERS) {
    if (Object.hasOwn(header, name)) throw unauthenticated('token header not accepted');
  }
  // We implement no JWS extensions; `b64: false` would sign a different byte string.
  if (Object.hasOwn(header, 'crit') || Object.hasOwn(header, 'b64')) {
    throw unauthenticated('token header not accepted');
  }
  if (typeof header.alg !== 'string' || header.alg.toLowerCase() === 'none') {
    throw unauthenticated('token algorithm not accepted');
  }
  return payload;
}

function toIdentity(claims: JWTPayload, route: Route): Identity {
  const sub = claims.sub;
  if (typeof sub !== 'string' || sub.trim() === '') throw unauthenticated('token subject invalid');
  if (typeof claims.exp !== 'number') throw unauthenticated('token missing required claim: exp');
  return {
    sub,
    groups: groupsFrom(claims, route.groupsClaim, route.groupsSeparator),
    claims: Object.freeze({ ...claims }),
    issuer: route.issuer,
    expiresAt: claims.exp,
  };
}

/**
 * Groups from a dotted claim path (`realm_access.roles`). A key that itself contains dots
 * (Auth0's `https://example.com/groups`) is looked up whole first. Only own properties are
 * followed, so `__proto__` or `constructor` in a path never reach Object.prototype.
 *
 * An array of strings is the list of groups. A string is ONE group unless `separator` is
 * given: then it is split on that exact string and each piece trimmed (`"a, b"` with "," is
 * `a` and `b`; with " ", runs of spaces count as one). Splitting on a guess is how
 * `"readers admins"` used to gain `admins`. Anything else (a number, an object, an array
 * with a non-string member) is not a groups claim the IdP meant: no groups at all, rather
 * than a guess at which members count. Empty names and duplicates are dropped.
 */
export function groupsFrom(
  claims: Record<string, unknown>,
  path: string,
  separator?: string,
): string[] {
  let value: unknown;
  if (Object.hasOwn(claims, path)) {
    value = claims[path];
  } else {
    value = claims;
    for (const part of path.split('.')) {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return [];
      if (!Object.hasOwn(value, part)) return [];
      value = (value as Record<string, unknown>)[part];
    }
  }
  let list: string[];
  if (typeof value === 'string') {
    list = separator === undefined ? [value] : value.split(separator).map((g) => g.trim());
  } else if (Array.isArray(value) && value.every((g) => typeof g === 'string')) {
    list = value;
  } else {
    return [];
  }
  return [...new Set(list.filter((g) => g !== ''))];
}

function isKeySelectionError(err: unknown): boolean {
  return (
    err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys ||
    err instanceof errors.JOSENotSupported ||
    err instanceof errors.JOSEAlgNotAllowed
  );
}

/** Short, generic public reasons; the detail stays in `cause`. */
function publicReason(err: unknown): string {
  if (err instanceof KeysUnavailable) return 'identity provider keys unavailable';
  if (err instanceof errors.JWTExpired) return 'token expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return `token missing required claim: ${err.claim}`;
    switch (err.claim) {
      case 'nbf':
        return 'token not yet valid';
      case 'iss':
        return 'token issuer not accepted';
      case 'aud':
        return 'token audience not accepted';
      default:
        return 'token claims invalid';
    }
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'token signature invalid';
  if (err instanceof errors.JOSEAlgNotAllowed) return 'token algorithm not accepted';
  if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) {
    return 'token signing key not found';
  }
  if (err instanceof errors.JOSENotSupported) return 'token not supported';
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid)
    return 'token malformed';
  return 'token not accepted';
}

function unauthenticated(reason: string, cause?: unknown): GovernanceError {
  return new GovernanceError('UNAUTHENTICATED', reason, cause === undefined ? {} : { cause });
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
