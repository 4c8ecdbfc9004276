import { randomBytes, randomUUID } from 'node:crypto';
import { link, mkdir, open, unlink, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import {
  SignJWT,
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  jwtVerify,
  type CryptoKey,
  type JWK,
} from 'jose';

/**
 * The local dev issuer: one signing key in a private JWK file, used by `gatehouse demo`,
 * `gatehouse token` and tests. Anyone who can read the key file can mint a token for any
 * subject and any group, so the file is created 0600 in a 0700 folder and refused when
 * other users can read it.
 */

export type DevIssuerAlg = 'EdDSA' | 'ES256';

export const DEV_ISSUER_DEFAULT = 'urn:gatehouse:dev';
/** The claim dev tokens carry their groups in, whatever `identity.groupsClaim` says. */
export const DEV_GROUPS_CLAIM = 'groups';

const DEFAULT_TTL_SEC = 15 * 60;
/** A dev token is a convenience, not a long-lived credential. */
const MAX_TTL_SEC = 7 * 24 * 3600;
const MAX_KEY_FILE_BYTES = 64 * 1024;
/** Claims the issuer sets itself; `extra` cannot forge them. */
const RESERVED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti']);

export interface MintOptions {
  sub: string;
  groups?: string[];
  /** Lifetime in seconds; default 900 (15 minutes), at most 7 days. */
  ttlSec?: number;
  audience: string;
  /** Additional claims; the registered claims (iss, sub, aud, exp, nbf, iat, jti) are ignored. */
  extra?: Record<string, unknown>;
}

export interface DevIssuer {
  issuer: string;
  alg: DevIssuerAlg;
  kid: string;
  /** The public key set (no private members) the verifier trusts for `issuer`. */
  jwks: { keys: JWK[] };
  mint(opts: MintOptions): Promise<string>;
}

export interface LoadDevIssuerOptions {
  /** Create the key file (and its folder) when it does not exist. */
  create?: boolean;
  /** Key type for a newly created file; default EdDSA (Ed25519). */
  alg?: DevIssuerAlg;
}

export async function loadDevIssuer(
  keyFile: string,
  issuer: string,
  opts: LoadDevIssuerOptions = {},
): Promise<DevIssuer> {
  if (typeof issuer !== 'string' || issuer.length === 0) {
    throw new Error('dev issuer: the issuer string must not be empty');
  }
  const file = resolve(keyFile);
  let text = await readKeyFile(file);
  if (text === undefined) {
    if (!opts.create) {
      throw new Error(
        `dev issuer key file not found: ${file} (it is created on first use by "gatehouse serve" or "gatehouse demo" when identity.devIssuer is configured)`,
      );
    }
    text = await createKeyFile(file, opts.alg ?? 'EdDSA');
  }
  const { privateJwk, alg } = parsePrivateJwk(text, file);
  const kid = privateJwk.kid as string;
  const publicJwk = toPublicJwk(privateJwk, alg);
  const signingKey = await importSigningKey(privateJwk, alg, file);
  await selfTest(signingKey, publicJwk, alg, file);

  return {
    issuer,
    alg,
    kid,
    jwks: { keys: [publicJwk] },
    async mint(m: MintOptions): Promise<string> {
      if (typeof m.sub !== 'string' || m.sub.trim().length === 0) {
        throw new Error('dev issuer: sub must be a non-empty string');
      }
      if (typeof m.audience !== 'string' || m.audience.length === 0) {
        throw new Error('dev issuer: audience must be a non-empty string');
      }
      const ttl = m.ttlSec ?? DEFAULT_TTL_SEC;
      if (!Number.isInteger(ttl) || ttl <= 0 || ttl > MAX_TTL_SEC) {
        throw new Error(`dev issuer: ttl must be a whole number of seconds in 1..${MAX_TTL_SEC}`);
      }
      const claims: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(m.extra ?? {})) {
        if (!RESERVED_CLAIMS.has(k)) claims[k] = v;
      }
      if (m.groups !== undefined) {
        if (!Array.isArray(m.groups) || m.groups.some((g) => typeof g !== 'string' || g === '')) {
          throw new Error('dev issuer: groups must be non-empty strings');
        }
        claims[DEV_GROUPS_CLAIM] = [...new Set(m.groups)];
      }
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT(claims)
        .setProtectedHeader({ alg, kid, typ: 'JWT' })
        .setIssuer(issuer)
        .setSubject(m.sub)
        .setAudience(m.audience)
        .setIssuedAt(now)
        .setExpirationTime(now + ttl)
        .setJti(randomUUID())
        .sign(signingKey);
    },
  };
}

/** Reads the key file through one descriptor (no stat/read race); undefined when missing. */
async function readKeyFile(file: string): Promise<string | undefined> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw new Error(`dev issuer key file ${file} cannot be opened: ${errnoText(err)}`, {
      cause: err,
    });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new Error(`dev issuer key file ${file} is not a regular file`);
    // A key other local users can read lets them mint tokens as anyone (ssh refuses the same).
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
      throw new Error(
        `dev issuer key file ${file} is accessible by other users (mode ${mode}); run: chmod 600 ${file}`,
      );
    }
    if (st.size > MAX_KEY_FILE_BYTES) {
      throw new Error(`dev issuer key file ${file} is too large to be a JWK`);
    }
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Generates a key and publishes it without ever exposing a half-written or world-readable
 * file: write a 0600 temp file, then hard-link it into place (fails if the name exists, so
 * two processes starting at once agree on one key: the loser reads the winner's file).
 */
async function createKeyFile(file: string, alg: DevIssuerAlg): Promise<string> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const pub = await exportJWK(publicKey);
  const priv = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint(pub);
  const text = `${JSON.stringify({ ...priv, kid, alg, use: 'sig' }, null, 2)}\n`;
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
  try {
    await link(tmp, file);
  } catch (err) {
    if (!isErrno(err, 'EEXIST')) throw err;
    const existing = await readKeyFile(file);
    if (existing === undefined) throw err;
    return existing;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  return text;
}

function parsePrivateJwk(text: string, file: string): { privateJwk: JWK; alg: DevIssuerAlg } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`dev issuer key file ${file} is not valid JSON`);
  }
  const bad = (why: string) => new Error(`dev issuer key file ${file}: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw bad('expected a private JWK object');
  }
  const jwk = value as JWK;
  if (typeof jwk.kid !== 'string' || jwk.kid.length === 0) throw bad('missing "kid"');
  if (typeof jwk.d !== 'string' || typeof jwk.x !== 'string') {
    throw bad('expected a private key (members "d" and "x")');
  }
  let alg: DevIssuerAlg;
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') {
    alg = 'EdDSA';
  } else if (jwk.kty === 'EC' && jwk.crv === 'P-256' && typeof jwk.y === 'string') {
    alg = 'ES256';
  } else {
    throw bad('only Ed25519 (EdDSA) and P-256 (ES256) keys are supported');
  }
  if (jwk.alg !== undefined && jwk.alg !== alg) throw bad(`"alg" ${jwk.alg} does not fit the key`);
  return { privateJwk: jwk, alg };
}

/** Only the public members: the private scalar `d` must never reach a published JWKS. */
function toPublicJwk(jwk: JWK, alg: DevIssuerAlg): JWK {
  const pub: JWK = { kty: jwk.kty, crv: jwk.crv, x: jwk.x, kid: jwk.kid, alg, use: 'sig' };
  if (jwk.y !== undefined) pub.y = jwk.y;
  return pub;
}

async function importSigningKey(jwk: JWK, alg: DevIssuerAlg, file: string): Promise<CryptoKey> {
  try {
    const key = await importJWK({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d: jwk.d }, alg);
    if (key instanceof Uint8Array) throw new Error('not an asymmetric key');
    return key;
  } catch (err) {
    throw new Error(`dev issuer key file ${file}: the key cannot be imported`, { cause: err });
  }
}

/** A file whose `d` does not belong to its `x`/`y` would mint tokens nobody accepts. */
async function selfTest(key: CryptoKey, pub: JWK, alg: DevIssuerAlg, file: string): Promise<void> {
  try {
    const probe = await new SignJWT({}).setProtectedHeader({ alg }).sign(key);
    await jwtVerify(probe, await importJWK(pub, alg), { algorithms: [alg] });
  } catch (err) {
    throw new Error(`dev issuer key file ${file}: private and public parts do not match`, {
      cause: err,
    });
  }
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

function errnoText(err: unknown): string {
  return err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : 'error';
}
