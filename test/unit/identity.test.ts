import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SignJWT,
  errors,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import { loadConfig } from '../../server/config.js';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { resolveSecret } from '../../server/kernel/secrets.js';
import { ConfigError, GovernanceError } from '../../server/kernel/errors.js';
import {
  createVerifier,
  groupsFrom,
  type IdentityConfig,
  type Verifier,
} from '../../server/identity/identity.js';

const ISS = 'https://idp.test.example/';
const AUD = 'gatehouse';
type Alg = 'EdDSA' | 'ES256' | 'RS256';

interface TestKey {
  alg: Alg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  publicJwk: JWK;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gatehouse-identity-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  vi.useRealTimers();
});

let fileSeq = 0;
function tmpPath(name: string): string {
  return join(dir, `${++fileSeq}-${name}`);
}

async function makeKey(alg: Alg, kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { alg, kid, privateKey, publicKey, publicJwk };
}

async function writeJwks(keys: JWK[], path = tmpPath('jwks.json')): Promise<string> {
  await writeFile(path, JSON.stringify({ keys }));
  return path;
}

function config(over: Partial<IdentityConfig> = {}): IdentityConfig {
  return {
    issuer: ISS,
    audience: AUD,
    algorithms: ['RS256', 'ES256', 'EdDSA'],
    groupsClaim: 'groups',
    clockToleranceSec: 30,
    ...over,
  };
}

const now = (): number => Math.floor(Date.now() / 1000);

interface SignOpts {
  header?: Record<string, unknown>;
  omit?: string[];
  crit?: Record<string, boolean>;
}

async function sign(key: TestKey, claims: JWTPayload = {}, opts: SignOpts = {}): Promise<string> {
  const payload: JWTPayload = {
    iss: ISS,
    aud: AUD,
    sub: 'alice',
    groups: ['analysts'],
    iat: now(),
    exp: now() + 300,
    ...claims,
  };
  for (const c of opts.omit ?? []) delete payload[c];
  return new SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, ...opts.header })
    .sign(key.privateKey, opts.crit ? { crit: opts.crit } : undefined);
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64url');
const b64json = (v: unknown): string => b64(JSON.stringify(v));

/** Refused with UNAUTHENTICATED and a short, key-free public reason. */
async function expectRefused(
  v: Verifier,
  token: string,
  reason?: string | RegExp,
): Promise<GovernanceError> {
  const err: unknown = await v.verify(token).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(GovernanceError);
  const g = err as GovernanceError;
  expect(g.code).toBe('UNAUTHENTICATED');
  expect(g.message).toMatch(/^(token |identity provider )/);
  expect(g.message.length).toBeLessThan(64);
  expect(g.message).not.toMatch(/BEGIN|"kty"|"d"/);
  if (reason !== undefined) expect(g.message).toMatch(reason);
  return g;
}

async function expectAccepted(v: Verifier, token: string, sub = 'alice'): Promise<void> {
  const id = await v.verify(token);
  expect(id.sub).toBe(sub);
}

describe.each<Alg>(['EdDSA', 'ES256', 'RS256'])('issuer key %s: test/corpus/jwt.md', (alg) => {
  let key: TestKey;
  let other: TestKey;
  let v: Verifier;
  const good = (): Promise<string> => sign(key);

  /** The corpus rule: refused, and a valid token for the same identity right after works. */
  async function refusedThenValid(token: string, reason?: string | RegExp) {
    const err = await expectRefused(v, token, reason);
    await expectAccepted(v, await good());
    return err;
  }

  beforeAll(async () => {
    key = await makeKey(alg, `${alg}-1`);
    other = await makeKey(alg, `${alg}-2`);
    v = await createVerifier(config({ jwks: await writeJwks([key.publicJwk]) }));
  });

  it('accepts a valid token and returns the identity', async () => {
    const token = await good();
    const id = await v.verify(token);
    expect(id).toMatchObject({ sub: 'alice', groups: ['analysts'], issuer: ISS });
    expect(id.expiresAt).toBeGreaterThan(now());
    expect(id.claims.aud).toBe(AUD);
  });

  it('#1 alg none, no signature', async () => {
    const payload = b64json({ iss: ISS, aud: AUD, sub: 'alice', exp: now() + 300 });
    for (const none of ['none', 'None', 'NONE']) {
      const header = b64json({ alg: none });
      await refusedThenValid(`${header}.${payload}.`);
      await refusedThenValid(`${header}.${payload}`);
      await refusedThenValid(`${header}.${payload}.${b64('x')}`, /algorithm/);
    }
  });

  it('#2 HS256 keyed with the issuer public key (PEM or JWK bytes)', async () => {
    const pem = await exportSPKI(key.publicKey);
    const secrets = [pem, `${pem.trim()}`, JSON.stringify(key.publicJwk)];
    for (const secret of secrets) {
      const token = await new SignJWT({ iss: ISS, aud: AUD, sub: 'alice', exp: now() + 300 })
        .setProtectedHeader({ alg: 'HS256', kid: key.kid })
        .sign(new TextEncoder().encode(secret));
      const err = await refusedThenValid(token, /algorithm/);
      expect(err.cause).toBeInstanceOf(errors.JOSEAlgNotAllowed);
    }
  });

  it('#3 expired beyond the clock tolerance', async () => {
    const err = await refusedThenValid(await sign(key, { exp: now() - 60 }), 'token expired');
    expect(err.cause).toBeInstanceOf(errors.JWTExpired);
    await refusedThenValid(await sign(key, { iat: now() - 7200, exp: now() - 3600 }));
  });

  it('#4 not yet valid beyond the clock tolerance', async () => {
    await refusedThenValid(await sign(key, { nbf: now() + 60 }), 'token not yet valid');
  });

  it('#5 no exp at all', async () => {
    await refusedThenValid(await sign(key, {}, { omit: ['exp'] }), /exp/);
  });

  it('#6 wrong iss; missing iss', async () => {
    await refusedThenValid(await sign(key, { iss: 'https://evil.example/' }), /issuer/);
    await refusedThenValid(await sign(key, { iss: ISS.slice(0, -1) }), /issuer/);
    await refusedThenValid(await sign(key, {}, { omit: ['iss'] }), /issuer/);
    await refusedThenValid(await sign(key, { iss: [ISS] as unknown as string }), /issuer|claim/);
  });

  it('#7 wrong aud; missing aud', async () => {
    await refusedThenValid(await sign(key, { aud: 'other-service' }), /audience/);
    await refusedThenValid(await sign(key, { aud: ['a', 'b'] }), /audience/);
    await refusedThenValid(await sign(key, {}, { omit: ['aud'] }), /aud/);
    // An aud list that contains ours is fine.
    await expectAccepted(v, await sign(key, { aud: ['other', AUD] }));
  });

  it('#8 unknown kid; right kid but another key', async () => {
    await refusedThenValid(await sign(key, {}, { header: { kid: 'nope' } }), /key not found/);
    await refusedThenValid(
      await sign(other, {}, { header: { kid: key.kid } }),
      'token signature invalid',
    );
    // No kid at all, signed by a key that is not in the set.
    await refusedThenValid(await sign(other, {}, { header: { kid: undefined } }), /signature/);
  });

  it('#9 payload edited after signing; signature removed', async () => {
    const [h, p, s] = (await good()).split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as JWTPayload;
    const forged = [
      b64json({ ...claims, sub: 'root' }),
      b64json({ ...claims, groups: ['admins'] }),
      b64json({ ...claims, exp: now() + 86_400 }),
    ];
    for (const fp of forged) await refusedThenValid(`${h}.${fp}.${s}`, 'token signature invalid');
    await refusedThenValid(`${h}.${p}.`);
    await refusedThenValid(`${h}.${p}`);
    await refusedThenValid(`${h}.${p}.${s.slice(0, -4)}`, /signature|malformed/);
    const [, , s2] = (await sign(key, { sub: 'bob' })).split('.') as [string, string, string];
    await refusedThenValid(`${h}.${p}.${s2}`, 'token signature invalid');
  });

  it('#10 jwk / jku / x5u / x5c headers pointing at the attacker key', async () => {
    const attacker = await makeKey(alg, 'attacker');
    const { kid: _kid, ...embedded } = attacker.publicJwk;
    const headers: Record<string, unknown>[] = [
      { jwk: embedded, kid: undefined },
      { jwk: embedded },
      { jku: 'https://evil.example/jwks.json', kid: 'attacker' },
      { x5u: 'https://evil.example/cert.pem', kid: 'attacker' },
      { x5c: ['MIIBszCCAVmgAwIBAgIUQ'], kid: 'attacker' },
    ];
    for (const header of headers) {
      await refusedThenValid(await sign(attacker, {}, { header }), 'token header not accepted');
    }
    // Refused outright, even when the real key signed it: the header is never consulted.
    await refusedThenValid(
      await sign(key, {}, { header: { jku: 'https://evil.example/jwks.json' } }),
      'token header not accepted',
    );
  });

  it('#11 an unknown crit header', async () => {
    const token = await sign(
      key,
      {},
      { header: { crit: ['urn:evil:ext'], 'urn:evil:ext': true }, crit: { 'urn:evil:ext': true } },
    );
    await refusedThenValid(token, 'token header not accepted');
  });

  it('#12 garbage: parts, base64, JSON, size', async () => {
    const [h, p, s] = (await good()).split('.') as [string, string, string];
    const garbage = [
      '',
      'abc',
      'a.b',
      `${h}.${p}.${s}.${s}`,
      `${h}..${s}`,
      `.${p}.${s}`,
      `${h}.${p}.${s}=`,
      `${h}.${p}.${s.replace(/.$/, '+')}`,
      `${h} .${p}.${s}`,
      `Bearer ${h}.${p}.${s}`,
      `!!!.${p}.${s}`,
      `a.${p}.${s}`,
      `${b64('not json')}.${p}.${s}`,
      `${b64json([1, 2])}.${p}.${s}`,
      `${b64json('str')}.${p}.${s}`,
      `${h}.${b64('not json')}.${s}`,
      `${h}.${b64json([1])}.${s}`,
      `${b64('\xff\xfe')}.${p}.${s}`,
      `${b64json({ alg: key.alg, kid: key.kid, b64: false, crit: ['b64'] })}.${p}.${s}`,
    ];
    for (const g of garbage) await refusedThenValid(g);
  });

  it('#12 an oversized token is refused fast, before parsing', async () => {
    const [h, , s] = (await good()).split('.') as [string, string, string];
    const huge = `${h}.${b64json({ sub: 'alice', pad: 'A'.repeat(1 << 20) })}.${s}`;
    expect(huge.length).toBeGreaterThan(1 << 20);
    const start = performance.now();
    await refusedThenValid(huge, 'token too large');
    const dots = '.'.repeat(1 << 20);
    await refusedThenValid(dots, 'token too large');
    expect(performance.now() - start).toBeLessThan(1_000);
    const t0 = performance.now();
    for (let i = 0; i < 100; i++) await expectRefused(v, huge, 'token too large');
    expect(performance.now() - t0).toBeLessThan(500);
    // Just over the 8 KiB limit.
    const big = await sign(key, { pad: 'A'.repeat(8 * 1024) });
    await refusedThenValid(big, 'token too large');
  });

  it('requires a non-empty sub', async () => {
    await refusedThenValid(await sign(key, {}, { omit: ['sub'] }), /sub/);
    await refusedThenValid(await sign(key, { sub: '' }), /sub/);
    await refusedThenValid(await sign(key, { sub: '   ' }), /sub/);
  });
});

describe('clock tolerance', () => {
  let key: TestKey;
  let v: Verifier;
  beforeAll(async () => {
    key = await makeKey('EdDSA', 'k');
    v = await createVerifier(config({ jwks: await writeJwks([key.publicJwk]) }));
  });

  it('accepts exp 10 s ago with tolerance 30, refuses 60 s ago', async () => {
    await expectAccepted(v, await sign(key, { iat: now() - 600, exp: now() - 10 }));
    await expectRefused(v, await sign(key, { exp: now() - 60 }), 'token expired');
  });

  it('accepts nbf 10 s ahead, refuses 60 s ahead', async () => {
    await expectAccepted(v, await sign(key, { nbf: now() + 10 }));
    await expectRefused(v, await sign(key, { nbf: now() + 60 }), 'token not yet valid');
  });

  it('tolerance 0 refuses a token that expired a few seconds ago', async () => {
    const strict = await createVerifier(
      config({ jwks: await writeJwks([key.publicJwk]), clockToleranceSec: 0 }),
    );
    await expectRefused(strict, await sign(key, { exp: now() - 2 }), 'token expired');
    await expectAccepted(strict, await sign(key));
  });
});

describe('reuse of a verified token', () => {
  let key: TestKey;
  let jwksFile: string;
  beforeAll(async () => {
    key = await makeKey('EdDSA', 'reuse');
    jwksFile = await writeJwks([key.publicJwk]);
  });

  it('still refuses the token once it expires, within the reuse window', async () => {
    vi.useFakeTimers({ now: Date.now(), toFake: ['Date'] });
    const v = await createVerifier(config({ jwks: jwksFile, clockToleranceSec: 0 }));
    const token = await sign(key, { iat: now(), exp: now() + 5 });
    await expectAccepted(v, token);
    vi.setSystemTime(Date.now() + 6_000);
    await expectRefused(v, token, 'token expired');
  });

  it('a token differing by one byte takes the full check', async () => {
    const v = await createVerifier(config({ jwks: jwksFile }));
    const token = await sign(key);
    await expectAccepted(v, token);
    const [h, p, sig] = token.split('.') as [string, string, string];
    const flipped = `${h}.${p}.${sig.slice(0, -2)}${sig.endsWith('AA') ? 'BA' : 'AA'}`;
    await expectRefused(v, flipped, 'token signature invalid');
  });
});

describe('HS256 when explicitly configured with a secret', () => {
  const secret = 'correct horse battery staple, but much longer!';
  let key: TestKey;
  let v: Verifier;
  beforeAll(async () => {
    key = await makeKey('RS256', 'rsa');
    v = await createVerifier(
      config({
        jwks: await writeJwks([key.publicJwk]),
        algorithms: ['RS256', 'HS256'],
        hmacSecret: secret,
      }),
    );
  });
  const hs = (keyBytes: string, claims: JWTPayload = {}) =>
    new SignJWT({ iss: ISS, aud: AUD, sub: 'alice', exp: now() + 300, ...claims })
      .setProtectedHeader({ alg: 'HS256', kid: key.kid })
      .sign(new TextEncoder().encode(keyBytes));

  it('#2 an HS256 token keyed with the public key still fails', async () => {
    const pem = await exportSPKI(key.publicKey);
    for (const s of [pem, JSON.stringify(key.publicJwk)]) {
      await expectRefused(v, await hs(s), 'token signature invalid');
      await expectAccepted(v, await hs(secret));
    }
  });

  it('the configured secret and the issuer key both work; HS384 is not listed', async () => {
    await expectAccepted(v, await hs(secret));
    await expectAccepted(v, await sign(key));
    const hs384 = await new SignJWT({ iss: ISS, aud: AUD, sub: 'alice', exp: now() + 300 })
      .setProtectedHeader({ alg: 'HS384' })
      .sign(new TextEncoder().encode(secret.repeat(2)));
    await expectRefused(v, hs384, /algorithm/);
  });
});

describe('config checks', () => {
  let jwks: string;
  beforeAll(async () => {
    jwks = await writeJwks([(await makeKey('EdDSA', 'k')).publicJwk]);
  });

  it.each<[string, Partial<IdentityConfig>]>([
    ['none listed', { algorithms: ['EdDSA', 'none'] }],
    ['HS256 without secret', { algorithms: ['HS256'] }],
    ['short HMAC secret', { algorithms: ['HS256'], hmacSecret: 'short' }],
    ['no algorithms', { algorithms: [] }],
    ['no issuer and no dev issuer', { issuer: undefined, jwks: undefined }],
    ['relative jwks path', { jwks: 'keys/jwks.json' }],
    ['missing jwks file', { jwks: '/nonexistent/gatehouse/jwks.json' }],
  ])('%s is a ConfigError', async (_name, over) => {
    await expect(createVerifier(config({ jwks, ...over }))).rejects.toBeInstanceOf(ConfigError);
  });

  it('a JWKS file with a private key is a ConfigError', async () => {
    const { privateKey } = await generateKeyPair('EdDSA', { extractable: true });
    const path = await writeJwks([{ ...(await exportJWK(privateKey)), kid: 'p' }]);
    await expect(createVerifier(config({ jwks: path }))).rejects.toThrow(/public keys only/);
  });

  it('a JWKS file that is not JSON is a ConfigError', async () => {
    const path = tmpPath('bad.json');
    await writeFile(path, '{ nope');
    await expect(createVerifier(config({ jwks: path }))).rejects.toBeInstanceOf(ConfigError);
  });
});

/**
 * Issue #7 item 7: one set of identity rules. `policy check` (loadConfig) and `serve`
 * (createVerifier, fed the way the runtime feeds it) accept and refuse the same sections.
 */
describe('loadConfig and createVerifier agree on identity', () => {
  const HMAC_ENV = 'GH_UNIT_IDENTITY_HMAC';
  const secret = 'an HMAC secret long enough for HS256, 32+ bytes';
  let cfgDir: string;
  let seq = 0;
  beforeAll(async () => {
    cfgDir = await mkdtemp(join(tmpdir(), 'gatehouse-identity-cfg-'));
    await writeJwks([(await makeKey('EdDSA', 'k')).publicJwk], join(cfgDir, 'jwks.json'));
    process.env[HMAC_ENV] = secret;
  });
  afterAll(async () => {
    delete process.env[HMAC_ENV];
    await rm(cfgDir, { recursive: true, force: true });
  });

  const hmacSecret = { env: HMAC_ENV };
  const dev = { keyFile: 'dev-issuer.json' };
  it.each<[string, Record<string, unknown>, boolean]>([
    [
      'an HS-only issuer with hmacSecret, no jwks',
      { issuer: ISS, algorithms: ['HS256'], hmacSecret },
      true,
    ],
    [
      'an HS384/HS512 issuer with hmacSecret, no jwks',
      { issuer: ISS, algorithms: ['HS384', 'HS512'], hmacSecret },
      true,
    ],
    [
      'an issuer with HS256 and RS256 but no jwks',
      { issuer: ISS, algorithms: ['HS256', 'RS256'], hmacSecret },
      false,
    ],
    ['an issuer with the default (asymmetric) algorithms and no jwks', { issuer: ISS }, false],
    ['an issuer with a jwks file', { issuer: ISS, jwks: 'jwks.json' }, true],
    [
      'an issuer with a jwks URL',
      { issuer: ISS, jwks: 'https://idp.test.example/jwks.json' },
      true,
    ],
    ['a jwks URL that is not a URL', { issuer: ISS, jwks: 'https://[idp/jwks.json' }, false],
    [
      'an issuer with HS256, RS256, a jwks and hmacSecret',
      { issuer: ISS, jwks: 'jwks.json', algorithms: ['RS256', 'HS256'], hmacSecret },
      true,
    ],
    ['HS256 without hmacSecret', { issuer: ISS, jwks: 'jwks.json', algorithms: ['HS256'] }, false],
    ["alg 'none'", { issuer: ISS, jwks: 'jwks.json', algorithms: ['EdDSA', 'none'] }, false],
    ['an unsupported algorithm', { issuer: ISS, jwks: 'jwks.json', algorithms: ['HS1024'] }, false],
    ['no algorithms', { issuer: ISS, jwks: 'jwks.json', algorithms: [] }, false],
    ['only a dev issuer', { devIssuer: dev }, true],
    ['a jwks without an issuer', { devIssuer: dev, jwks: 'jwks.json' }, false],
    [
      'a dev issuer named like the issuer',
      { issuer: ISS, jwks: 'jwks.json', devIssuer: { ...dev, issuer: ISS } },
      false,
    ],
    ['neither issuer nor dev issuer', {}, false],
    ['a clock tolerance over 300 s', { devIssuer: dev, clockToleranceSec: 301 }, false],
    ['an empty audience', { devIssuer: dev, audience: '' }, false],
    ['a groupsSeparator of letters', { devIssuer: dev, groupsSeparator: 'or' }, false],
  ])('%s', async (_name, section, accepted) => {
    const file = join(cfgDir, `gatehouse-${++seq}.yaml`);
    await writeFile(file, stringify({ identity: section, policies: [] }));
    const outcome = (p: Promise<unknown>): Promise<boolean> =>
      p.then(
        () => true,
        (err: unknown) => {
          if (err instanceof ConfigError) return false;
          throw err;
        },
      );

    // The `policy check` path.
    const loaded = await loadConfig(file).catch((err: unknown) => err);
    expect(!(loaded instanceof Error), String(loaded)).toBe(accepted);
    // The `serve` path, fed from the section itself (with the config file's defaults and
    // paths resolved), whatever loadConfig said.
    const raw = section as Partial<IdentityConfig> & {
      devIssuer?: { keyFile: string; issuer?: string };
    };
    const fromSection: IdentityConfig = {
      audience: 'gatehouse',
      algorithms: ['RS256', 'ES256', 'EdDSA'],
      groupsClaim: 'groups',
      clockToleranceSec: 30,
      ...raw,
      ...(raw.jwks && !raw.jwks.startsWith('http') ? { jwks: join(cfgDir, raw.jwks) } : {}),
      ...(raw.hmacSecret ? { hmacSecret: secret } : {}),
      ...(raw.devIssuer
        ? {
            devIssuer: {
              keyFile: join(cfgDir, raw.devIssuer.keyFile),
              issuer: raw.devIssuer.issuer ?? 'urn:gatehouse:dev',
            },
          }
        : {}),
    };
    expect(await outcome(createVerifier(fromSection))).toBe(accepted);
    if (loaded instanceof Error) return;
    // And from what loadConfig produced, as the runtime builds it.
    const id = (loaded as Awaited<ReturnType<typeof loadConfig>>).identity;
    const fromConfig: IdentityConfig = {
      ...(id.issuer ? { issuer: id.issuer } : {}),
      audience: id.audience,
      ...(id.jwks ? { jwks: id.jwks } : {}),
      algorithms: [...id.algorithms],
      ...(id.hmacSecret ? { hmacSecret: await resolveSecret(id.hmacSecret, cfgDir, 'hmac') } : {}),
      groupsClaim: id.groupsClaim,
      ...(id.groupsSeparator !== undefined ? { groupsSeparator: id.groupsSeparator } : {}),
      clockToleranceSec: id.clockToleranceSec,
      ...(id.devIssuer ? { devIssuer: id.devIssuer } : {}),
    };
    expect(await outcome(createVerifier(fromConfig))).toBe(true);
  });

  it('an HS-only issuer verifies HS256 tokens with no JWKS at all', async () => {
    const v = await createVerifier(config({ algorithms: ['HS256'], hmacSecret: secret }));
    const token = await new SignJWT({ iss: ISS, aud: AUD, sub: 'alice', exp: now() + 300 })
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode(secret));
    await expectAccepted(v, token);
  });

  it('the verifier names the key path, like the config file does', async () => {
    await expect(
      createVerifier(config({ algorithms: ['HS256', 'RS256'], hmacSecret: secret })),
    ).rejects.toThrow(/^identity\.jwks: required when issuer is set with RS256/);
  });
});

describe('groups claim', () => {
  it.each<[string, Record<string, unknown>, string, string[], string?]>([
    ['array', { groups: ['a', 'b'] }, 'groups', ['a', 'b']],
    ['space separated', { groups: 'a b  c' }, 'groups', ['a', 'b', 'c'], ' '],
    ['comma separated', { groups: 'a,b, c' }, 'groups', ['a', 'b', 'c'], ','],
    [
      'a string is one group by default',
      { groups: 'readers admins' },
      'groups',
      ['readers admins'],
    ],
    ['no comma splitting by default', { groups: 'readers,admins' }, 'groups', ['readers,admins']],
    [
      'comma separator leaves spaces inside names',
      { groups: 'a b,c' },
      'groups',
      ['a b', 'c'],
      ',',
    ],
    [
      'space separator leaves commas inside names',
      { groups: 'a,b c' },
      'groups',
      ['a,b', 'c'],
      ' ',
    ],
    ['separator never splits an array member', { groups: ['a b'] }, 'groups', ['a b'], ' '],
    ['empty pieces dropped', { groups: ',a,,b,' }, 'groups', ['a', 'b'], ','],
    ['empty string', { groups: '' }, 'groups', []],
    ['duplicates', { groups: ['a', 'a'] }, 'groups', ['a']],
    ['missing', {}, 'groups', []],
    ['number', { groups: 7 }, 'groups', []],
    ['object', { groups: { a: true } }, 'groups', []],
    ['mixed array', { groups: ['a', 1] }, 'groups', []],
    ['null', { groups: null }, 'groups', []],
    ['dotted', { realm_access: { roles: ['sre'] } }, 'realm_access.roles', ['sre']],
    ['dotted missing', { realm_access: {} }, 'realm_access.roles', []],
    ['dotted through array', { realm_access: [{ roles: ['x'] }] }, 'realm_access.roles', []],
    ['dotted through string', { realm_access: 'roles' }, 'realm_access.roles', []],
    ['key with dots', { 'https://ex.com/groups': ['ns'] }, 'https://ex.com/groups', ['ns']],
    ['prototype path', {}, '__proto__.toString', []],
    ['constructor path', { groups: [] }, 'constructor.name', []],
  ])('%s', (_name, claims, path, expected, separator) => {
    expect(groupsFrom(claims, path, separator)).toEqual(expected);
  });

  it('a string groups claim gains no second group through the verifier', async () => {
    const key = await makeKey('ES256', 'es');
    const jwks = await writeJwks([key.publicJwk]);
    const plain = await createVerifier(config({ jwks }));
    const token = await sign(key, { groups: 'readers admins' });
    expect((await plain.verify(token)).groups).toEqual(['readers admins']);
    const spaced = await createVerifier(config({ jwks, groupsSeparator: ' ' }));
    expect((await spaced.verify(token)).groups).toEqual(['readers', 'admins']);
    const comma = await createVerifier(config({ jwks, groupsSeparator: ',' }));
    expect((await comma.verify(token)).groups).toEqual(['readers admins']);
  });

  it.each(['', 'ab', '123456789'])('refuses groupsSeparator %j', async (groupsSeparator) => {
    const jwks = await writeJwks([(await makeKey('ES256', 'es')).publicJwk]);
    await expect(createVerifier(config({ jwks, groupsSeparator }))).rejects.toThrow(
      /identity\.groupsSeparator/,
    );
  });

  it('dev tokens: a string groups claim is one group', async () => {
    const keyFile = join(dir, 'dev-groups', 'dev-issuer.json');
    const dev = await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true });
    const v = await createVerifier({
      audience: AUD,
      algorithms: ['EdDSA'],
      groupsClaim: 'groups',
      groupsSeparator: ' ',
      clockToleranceSec: 30,
      devIssuer: { keyFile, issuer: 'urn:gatehouse:dev' },
    });
    const token = await dev.mint({
      sub: 'alice',
      audience: AUD,
      extra: { groups: 'readers admins' },
    });
    expect((await v.verify(token)).groups).toEqual(['readers admins']);
  });

  it('reads a dotted path end to end', async () => {
    const key = await makeKey('ES256', 'es');
    const v = await createVerifier(
      config({ jwks: await writeJwks([key.publicJwk]), groupsClaim: 'realm_access.roles' }),
    );
    const id = await v.verify(await sign(key, { realm_access: { roles: ['dba', 'sre'] } }));
    expect(id.groups).toEqual(['dba', 'sre']);
    const none = await v.verify(await sign(key, { realm_access: { roles: 'dba' } }));
    expect(none.groups).toEqual(['dba']);
    const wrong = await v.verify(await sign(key, { realm_access: 5 }));
    expect(wrong.groups).toEqual([]);
  });
});

describe('JWKS file rotation', () => {
  it('a key set with several kid-less keys tries each', async () => {
    const a = await makeKey('ES256', 'a');
    const b = await makeKey('ES256', 'b');
    const c = await makeKey('ES256', 'c');
    const strip = (k: TestKey): JWK => ({ ...k.publicJwk, kid: undefined });
    const v = await createVerifier(config({ jwks: await writeJwks([strip(a), strip(b)]) }));
    await expectAccepted(v, await sign(b, {}, { header: { kid: undefined } }));
    await expectAccepted(v, await sign(a, {}, { header: { kid: undefined } }));
    await expectRefused(v, await sign(c, {}, { header: { kid: undefined } }), /signature/);
  });

  it('re-reads the file on an unknown kid, at most once a minute', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    const a = await makeKey('EdDSA', 'a');
    const b = await makeKey('EdDSA', 'b');
    const path = await writeJwks([a.publicJwk]);
    const v = await createVerifier(config({ jwks: path }));
    await expectAccepted(v, await sign(a));

    await writeJwks([a.publicJwk, b.publicJwk], path);
    // Within the minute the new kid is unknown: no re-read for every random kid.
    await expectRefused(v, await sign(b), /key not found/);

    vi.setSystemTime(Date.now() + 61_000);
    await expectAccepted(v, await sign(b));
    await expectAccepted(v, await sign(a));
  });

  it('keeps the last good set when the file is broken', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    const a = await makeKey('EdDSA', 'a');
    const path = await writeJwks([a.publicJwk]);
    const v = await createVerifier(config({ jwks: path }));
    await writeFile(path, '{ half written');
    vi.setSystemTime(Date.now() + 61_000);
    await expectRefused(v, await sign(a, {}, { header: { kid: 'unknown' } }), /key not found/);
    await expectAccepted(v, await sign(a));
  });
});

interface JwksServer {
  url: string;
  port: number;
  hits: number;
  status: number;
  body: unknown;
  close(): Promise<void>;
}

async function startJwksServer(body: unknown, port = 0): Promise<JwksServer> {
  const state: JwksServer = {
    url: '',
    port: 0,
    hits: 0,
    status: 200,
    body,
    close: async () => undefined,
  };
  const server: Server = createServer((_req, res) => {
    state.hits++;
    res.writeHead(state.status, { 'content-type': 'application/json' });
    res.end(typeof state.body === 'string' ? state.body : JSON.stringify(state.body));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}/jwks.json`;
  state.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  servers.push(state);
  return state;
}

const servers: JwksServer[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

describe('JWKS over HTTP', () => {
  it('fetches, caches, and refetches on a new kid after the cooldown', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    const a = await makeKey('RS256', 'a');
    const b = await makeKey('RS256', 'b');
    const srv = await startJwksServer({ keys: [a.publicJwk] });
    const v = await createVerifier(config({ jwks: srv.url }));

    await expectAccepted(v, await sign(a));
    await expectAccepted(v, await sign(a));
    expect(srv.hits).toBe(1);

    srv.body = { keys: [a.publicJwk, b.publicJwk] };
    // Inside the cooldown a random kid does not trigger a fetch (no request flood on the IdP).
    await expectRefused(v, await sign(b), /key not found/);
    expect(srv.hits).toBe(1);

    vi.setSystemTime(Date.now() + 31_000);
    await expectAccepted(v, await sign(b));
    expect(srv.hits).toBe(2);
    await srv.close();
  });

  it('#13 an unreachable JWKS endpoint fails closed, then recovers', async () => {
    const a = await makeKey('ES256', 'a');
    const srv = await startJwksServer({ keys: [a.publicJwk] });
    const port = srv.port;
    await srv.close(); // now a closed port
    const v = await createVerifier(config({ jwks: `http://127.0.0.1:${port}/jwks.json` }));

    const err = await expectRefused(v, await sign(a), 'identity provider keys unavailable');
    expect(err.cause).toBeDefined();
    await expectRefused(v, await sign(a, { sub: 'bob' }), 'identity provider keys unavailable');

    // The endpoint comes back: a valid token for the same identity works.
    await startJwksServer({ keys: [a.publicJwk] }, port);
    await expectAccepted(v, await sign(a));
  });

  it('#13 an endpoint answering 500 or non-JSON fails closed', async () => {
    const a = await makeKey('EdDSA', 'a');
    const srv = await startJwksServer({ keys: [a.publicJwk] });
    srv.status = 500;
    const v = await createVerifier(config({ jwks: srv.url }));
    await expectRefused(v, await sign(a), 'identity provider keys unavailable');
    srv.status = 200;
    srv.body = '<html>not json</html>';
    await expectRefused(v, await sign(a), 'identity provider keys unavailable');
    srv.body = { keys: 'nope' };
    await expectRefused(v, await sign(a), 'identity provider keys unavailable');
    srv.body = { keys: [a.publicJwk] };
    await expectAccepted(v, await sign(a));
  });
});

describe('dev issuer', () => {
  it('creates the key file 0600 in a 0700 folder, and loads it again', async () => {
    const keyFile = join(dir, 'dev-a', 'nested', 'dev-issuer.json');
    const dev = await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true });
    expect(dev.alg).toBe('EdDSA');
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'dev-a', 'nested'))).mode & 0o777).toBe(0o700);
    const stored = JSON.parse(await readFile(keyFile, 'utf8')) as JWK;
    expect(stored).toMatchObject({ kty: 'OKP', crv: 'Ed25519', kid: dev.kid });
    expect(typeof stored.d).toBe('string');
    // The published set carries no private member.
    expect(dev.jwks.keys).toHaveLength(1);
    expect(dev.jwks.keys[0]).not.toHaveProperty('d');

    const again = await loadDevIssuer(keyFile, 'urn:gatehouse:dev');
    expect(again.kid).toBe(dev.kid);
    expect(again.jwks).toEqual(dev.jwks);
  });

  it('a missing key file without create is a clear error', async () => {
    const keyFile = join(dir, 'dev-missing', 'dev-issuer.json');
    await expect(loadDevIssuer(keyFile, 'urn:gatehouse:dev')).rejects.toThrow(/not found/);
  });

  it('refuses a key file other users can read, and a broken one', async () => {
    const keyFile = join(dir, 'dev-perm', 'dev-issuer.json');
    await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true });
    await chmod(keyFile, 0o644);
    await expect(loadDevIssuer(keyFile, 'urn:gatehouse:dev')).rejects.toThrow(/chmod 600/);
    await chmod(keyFile, 0o600);
    await writeFile(keyFile, '{"kty":"OKP","kid":"k"}');
    await expect(loadDevIssuer(keyFile, 'urn:gatehouse:dev')).rejects.toThrow(/private key/);
    await writeFile(keyFile, 'nope');
    await expect(loadDevIssuer(keyFile, 'urn:gatehouse:dev')).rejects.toThrow(/JSON/);
  });

  it('two processes creating at once agree on one key', async () => {
    const keyFile = join(dir, 'dev-race', 'dev-issuer.json');
    const [a, b] = await Promise.all([
      loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true }),
      loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true }),
    ]);
    expect(a.kid).toBe(b.kid);
  });

  it.each<'EdDSA' | 'ES256'>(['EdDSA', 'ES256'])('%s mint -> verify roundtrip', async (alg) => {
    const keyFile = join(dir, `dev-rt-${alg}`, 'dev-issuer.json');
    const dev = await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true, alg });
    expect(dev.alg).toBe(alg);
    // The verifier reads dev groups from `groups`, whatever groupsClaim says for the IdP.
    const v = await createVerifier({
      audience: AUD,
      algorithms: ['RS256'],
      groupsClaim: 'realm_access.roles',
      clockToleranceSec: 30,
      devIssuer: { keyFile, issuer: 'urn:gatehouse:dev' },
    });
    const token = await dev.mint({
      sub: 'alice',
      groups: ['analysts', 'sre'],
      audience: AUD,
      ttlSec: 120,
      extra: { iss: 'https://evil.example/', email: 'a@example.com' },
    });
    const id = await v.verify(token);
    expect(id).toMatchObject({
      sub: 'alice',
      groups: ['analysts', 'sre'],
      issuer: 'urn:gatehouse:dev',
    });
    expect(id.claims.email).toBe('a@example.com');
    expect(id.expiresAt - now()).toBeGreaterThan(100);
    expect(id.expiresAt - now()).toBeLessThanOrEqual(120);

    await expectRefused(v, await dev.mint({ sub: 'alice', audience: 'other' }), /audience/);
    await expectAccepted(v, await dev.mint({ sub: 'alice', audience: AUD }));
  });

  it('mint validates its inputs', async () => {
    const dev = await loadDevIssuer(join(dir, 'dev-mint', 'k.json'), 'urn:x', { create: true });
    await expect(dev.mint({ sub: '', audience: AUD })).rejects.toThrow(/sub/);
    await expect(dev.mint({ sub: 'a', audience: AUD, ttlSec: 0 })).rejects.toThrow(/ttl/);
    await expect(dev.mint({ sub: 'a', audience: AUD, ttlSec: 1e9 })).rejects.toThrow(/ttl/);
  });

  it('createVerifier creates the dev key when missing', async () => {
    const keyFile = join(dir, 'dev-auto', 'dev-issuer.json');
    await createVerifier({
      audience: AUD,
      algorithms: ['EdDSA'],
      groupsClaim: 'groups',
      clockToleranceSec: 30,
      devIssuer: { keyFile, issuer: 'urn:gatehouse:dev' },
    });
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
  });

  describe('next to a real issuer', () => {
    let idp: TestKey;
    let dev: Awaited<ReturnType<typeof loadDevIssuer>>;
    let v: Verifier;
    beforeAll(async () => {
      idp = await makeKey('RS256', 'idp');
      const keyFile = join(dir, 'dev-both', 'dev-issuer.json');
      await mkdir(join(dir, 'dev-both'), { recursive: true, mode: 0o700 });
      dev = await loadDevIssuer(keyFile, 'urn:gatehouse:dev', { create: true });
      v = await createVerifier(
        config({
          jwks: await writeJwks([idp.publicJwk]),
          devIssuer: { keyFile, issuer: 'urn:gatehouse:dev' },
        }),
      );
    });

    it('routes by iss and accepts both', async () => {
      expect((await v.verify(await sign(idp))).issuer).toBe(ISS);
      const id = await v.verify(await dev.mint({ sub: 'bob', audience: AUD }));
      expect(id).toMatchObject({ sub: 'bob', issuer: 'urn:gatehouse:dev', groups: [] });
    });

    it('an IdP key cannot sign for the dev issuer, nor the dev key for the IdP', async () => {
      // iss says dev issuer, signed by the IdP key (kid of the IdP).
      await expectRefused(v, await sign(idp, { iss: 'urn:gatehouse:dev' }), /key not found|alg/);
      // iss says dev issuer, kid of the dev key, signed by an attacker key of the same type.
      const forger = await makeKey('EdDSA', dev.kid);
      await expectRefused(
        v,
        await sign(forger, { iss: 'urn:gatehouse:dev' }),
        'token signature invalid',
      );
      // A genuine dev token with iss rewritten to the IdP: signature no longer matches.
      const [h, p, s] = (await dev.mint({ sub: 'bob', audience: AUD })).split('.') as [
        string,
        string,
        string,
      ];
      const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as JWTPayload;
      await expectRefused(v, `${h}.${b64json({ ...claims, iss: ISS })}.${s}`, /key|alg/);
      await expectAccepted(v, await dev.mint({ sub: 'bob', audience: AUD }), 'bob');
    });

    it('a token from neither issuer is refused', async () => {
      await expectRefused(v, await sign(idp, { iss: 'urn:gatehouse:other' }), /issuer/);
    });
  });
});
