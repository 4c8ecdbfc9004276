import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { readAuditLines } from '../../recordings/audit.js';
import { startGateway, textOf, type TestGateway } from '../helpers/gateway.js';
import { connectAs } from '../helpers/postgres.js';

const pgInfo = inject('pg');

/**
 * The jwt.md corpus through the whole pipeline: each token is refused with UNAUTHENTICATED
 * and nothing reaches the database (a call that would bump a sequence leaves it untouched).
 * The verifier's own unit tests go deeper; this proves the pipeline fails closed on them.
 */
const policy = {
  rules: [
    {
      id: 'writers-write',
      match: {
        groups: ['writers'],
        tools: ['postgres_query'],
        targets: ['app-db-rw'],
        operations: ['read', 'write'],
      },
      effect: 'allow',
    },
  ],
};
const BUMP = { target: 'app-db-rw', sql: "SELECT nextval('canary_seq')" };

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

/**
 * Signs exactly the header and payload given (jose's SignJWT refuses some of the headers
 * an attacker would send, such as an unknown crit), with the dev issuer's own key or an
 * attacker's.
 */
const rawSign = (
  key: KeyObject,
  header: Record<string, unknown>,
  body: Record<string, unknown>,
) => {
  const input = `${b64(header)}.${b64(body)}`;
  return `${input}.${sign(null, Buffer.from(input), key).toString('base64url')}`;
};

describe.skipIf(!pgInfo.available)('identity through the pipeline', () => {
  let gw: TestGateway;
  let su: pg.Client;
  let valid: string;
  const seq = async () =>
    (
      await su.query<{ last_value: string; is_called: boolean }>(
        'SELECT last_value, is_called FROM canary_seq',
      )
    ).rows[0];

  beforeAll(async () => {
    gw = await startGateway({ pg: pgInfo, policy, clockToleranceSec: 0 });
    su = await connectAs(pgInfo, 'superuser');
    valid = await gw.mint('wendy', ['writers']);
  });
  afterAll(async () => {
    await su?.end();
    await gw?.close();
  });

  const forged = async (): Promise<Array<[string, string]>> => {
    const [header, payload, sig] = valid.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<
      string,
      unknown
    >;
    const now = Math.floor(Date.now() / 1000);
    const issuerJwk = JSON.parse(
      await readFile(path.join(gw.dir, 'dev-issuer.json'), 'utf8'),
    ) as JsonWebKey & { kid: string };
    const issuerKey = createPrivateKey({ key: issuerJwk, format: 'jwk' });
    const attacker = generateKeyPairSync('ed25519');
    const attackerJwk = attacker.publicKey.export({ format: 'jwk' });
    const kid = issuerJwk.kid;
    const h = { alg: 'EdDSA', typ: 'JWT', kid };
    const genuine = (body: Record<string, unknown>, extraHeader: Record<string, unknown> = {}) =>
      rawSign(issuerKey, { ...h, ...extraHeader }, body);
    const byAttacker = (extraHeader: Record<string, unknown>) =>
      rawSign(attacker.privateKey, { ...h, ...extraHeader }, claims);
    const without = (k: string) =>
      Object.fromEntries(Object.entries(claims).filter(([c]) => c !== k));
    const publicJwk = JSON.stringify(gw.issuer.jwks.keys[0]);
    const hs = `${b64({ alg: 'HS256', typ: 'JWT', kid })}.${payload}`;
    const publicPem = createPublicKey({ key: issuerJwk, format: 'jwk' })
      .export({ format: 'pem', type: 'spki' })
      .toString();
    // The control: the same signer with the genuine claims is accepted (checked below).
    expect(genuine(claims).split('.')[1]).toBe(payload);
    return [
      ['#1 alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`],
      [
        '#2 HS256 keyed with the public JWK',
        `${hs}.${createHmac('sha256', publicJwk).update(hs).digest('base64url')}`,
      ],
      [
        '#2 HS256 keyed with the public PEM',
        `${hs}.${createHmac('sha256', publicPem).update(hs).digest('base64url')}`,
      ],
      ['#3 expired', genuine({ ...claims, iat: now - 600, exp: now - 300 })],
      ['#4 not yet valid', genuine({ ...claims, nbf: now + 300 })],
      ['#5 no exp', genuine(without('exp'))],
      ['#6 wrong iss', genuine({ ...claims, iss: 'https://evil.example' })],
      ['#6 missing iss', genuine(without('iss'))],
      ['#7 wrong aud', genuine({ ...claims, aud: 'someone-else' })],
      ['#7 missing aud', genuine(without('aud'))],
      ['#8 unknown kid', genuine(claims, { kid: 'not-a-known-kid' })],
      ['#8 right kid, attacker key', byAttacker({})],
      [
        '#9 payload edited after signing',
        `${header}.${b64({ ...claims, groups: ['writers', 'dba'] })}.${sig}`,
      ],
      ['#9 sub edited after signing', `${header}.${b64({ ...claims, sub: 'root' })}.${sig}`],
      ['#9 signature removed', `${header}.${payload}.`],
      ['#10 embedded jwk header', byAttacker({ jwk: attackerJwk })],
      ['#10 jku header', byAttacker({ jku: 'http://127.0.0.1:1/jwks.json' })],
      ['#10 x5u header', byAttacker({ x5u: 'http://127.0.0.1:1/cert.pem' })],
      ['#11 unknown crit', genuine(claims, { crit: ['x-gatehouse'], 'x-gatehouse': 1 })],
      ['#12 not a JWT', 'garbage'],
      ['#12 two parts', `${header}.${payload}`],
      ['#12 bad base64', '!!!.@@@.###'],
      [
        '#12 header not JSON',
        `${Buffer.from('{not json').toString('base64url')}.${payload}.${sig}`,
      ],
      ['#12 one megabyte', `${header}.${'A'.repeat(1024 * 1024)}.${sig}`],
    ];
  };

  it('refuses every forged, expired or malformed token, and nothing executes', async () => {
    const before = await seq();
    for (const [name, token] of await forged()) {
      const client = await gw.connect(token);
      const r = await client.call('postgres_query', BUMP);
      expect(r.isError, name).toBe(true);
      expect(textOf(r), name).toMatch(/^UNAUTHENTICATED: /);
      expect(r.structuredContent, name).toMatchObject({ code: 'UNAUTHENTICATED' });
      await client.close();
    }
    expect(await seq()).toEqual(before);

    // A valid token for the same identity, right after, works.
    const good = await gw.connect(valid);
    const r = await good.call('postgres_query', BUMP);
    expect(r.isError, textOf(r)).toBeFalsy();
    expect(await seq()).not.toEqual(before);
  });

  it('stops honouring a token that expires mid-session', async () => {
    const token = await gw.issuer.mint({
      sub: 'eve',
      groups: ['writers'],
      audience: 'gatehouse',
      ttlSec: 2,
    });
    const client = await gw.connect(token);
    const first = await client.call('postgres_query', { target: 'app-db-rw', sql: 'SELECT 1' });
    expect(first.isError, textOf(first)).toBeFalsy();
    await new Promise((r) => setTimeout(r, 3100));
    const later = await client.call('postgres_query', { target: 'app-db-rw', sql: 'SELECT 1' });
    expect(textOf(later)).toBe('UNAUTHENTICATED: token expired');
  });

  it('refuses a session whose token changes to another subject', async () => {
    let token = valid;
    const client = await gw.connect(() => token);
    expect((await client.call('list_targets', {})).isError).toBeFalsy();
    token = await gw.mint('mallory', ['writers']);
    const r = await client.call('list_targets', {});
    expect(textOf(r)).toMatch(/^UNAUTHENTICATED: /);
  });

  it('audits refusals with the reason', async () => {
    const lines = [];
    for await (const line of readAuditLines(`${gw.dir}/audit.jsonl`)) lines.push(line);
    const refused = lines.filter(
      (l) => l.kind === 'outcome' && l.outcome?.code === 'UNAUTHENTICATED',
    );
    expect(refused.length).toBeGreaterThanOrEqual(24);
    expect(refused.every((l) => l.sub === '(unauthenticated)' || typeof l.sub === 'string')).toBe(
      true,
    );
  });
});

describe.skipIf(!pgInfo.available)('#13 an unreachable JWKS endpoint, through the pipeline', () => {
  let gw: TestGateway;
  let su: pg.Client;
  let jwksUrl: string;
  beforeAll(async () => {
    // A port that was just free: nothing listens there, so the fetch is refused.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const { port } = probe.address() as AddressInfo;
    await new Promise((r) => probe.close(r));
    jwksUrl = `http://127.0.0.1:${port}/jwks.json`;
    gw = await startGateway({
      pg: pgInfo,
      policy,
      identity: { issuer: 'https://idp.gatehouse.test/', jwks: jwksUrl, algorithms: ['EdDSA'] },
    });
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
    await gw?.close();
  });

  it('refuses a token of that issuer (fail closed) and runs nothing; the dev issuer still works', async () => {
    const seq = async () =>
      (await su.query('SELECT last_value, is_called FROM canary_seq')).rows[0] as unknown;
    const before = await seq();
    const idp = generateKeyPairSync('ed25519');
    const now = Math.floor(Date.now() / 1000);
    const token = rawSign(
      idp.privateKey,
      { alg: 'EdDSA', typ: 'JWT', kid: 'idp-key-1' },
      {
        iss: 'https://idp.gatehouse.test/',
        aud: 'gatehouse',
        sub: 'wendy',
        groups: ['writers'],
        iat: now,
        exp: now + 300,
      },
    );
    const client = await gw.connect(token);
    const r = await client.call('postgres_query', BUMP);
    expect(r.isError).toBe(true);
    expect(textOf(r)).toMatch(/^UNAUTHENTICATED: /);
    expect(await seq()).toEqual(before);

    const dev = await gw.connect(await gw.mint('wendy', ['writers']));
    expect(
      (await dev.call('postgres_query', { target: 'app-db-rw', sql: 'SELECT 1' })).isError,
    ).toBeFalsy();
  });
});

describe.skipIf(!pgInfo.available)('look-alike identities through the pipeline', () => {
  // Writers may bump the canary sequence; mallory and contractors may not, however spelt.
  const lookAlikePolicy = {
    rules: [
      ...policy.rules,
      { id: 'no-mallory', match: { subjects: ['mallory'] }, effect: 'deny' },
      { id: 'no-contractors', match: { groups: ['contractors'] }, effect: 'deny' },
    ],
  };
  let gw: TestGateway;
  let su: pg.Client;
  const seq = async () =>
    (await su.query('SELECT last_value, is_called FROM canary_seq')).rows[0] as unknown;
  const canaryRows = async () =>
    Number((await su.query<{ n: string }>('SELECT count(*) AS n FROM canary')).rows[0]!.n);

  beforeAll(async () => {
    gw = await startGateway({ pg: pgInfo, policy: lookAlikePolicy });
    su = await connectAs(pgInfo, 'superuser');
  });
  afterAll(async () => {
    await su?.end();
    await gw?.close();
  });

  it.each<[string, string]>([
    ['Cyrillic о', 'mall\u043Ery'],
    ['capitalised', 'Mallory'],
    ['trailing space', 'mallory '],
    ['fullwidth', 'ｍａｌｌｏｒｙ'],
    ['zero-width space', 'mal\u200Blory'],
  ])(
    'a deny on mallory holds for the look-alike subject %s, and nothing executes',
    async (_n, sub) => {
      const before = { seq: await seq(), rows: await canaryRows() };
      const client = await gw.connect(await gw.mint(sub, ['writers']));
      for (const sql of [BUMP.sql, "INSERT INTO canary (v) VALUES ('mallory was here')"]) {
        const r = await client.call('postgres_query', { target: 'app-db-rw', sql });
        expect(r.isError, sql).toBe(true);
        expect(textOf(r), sql).toMatch(/^DENIED by rule no-mallory: /);
      }
      expect({ seq: await seq(), rows: await canaryRows() }).toEqual(before);
      await client.close();
    },
  );

  it('a deny on contractors holds for a look-alike group and for an unsplit string claim', async () => {
    const before = await seq();
    for (const groups of [
      ['writers', '\u0441ontractors'],
      ['writers', 'CONTRACTORS'],
    ]) {
      const client = await gw.connect(await gw.mint('wendy', groups));
      const r = await client.call('postgres_query', BUMP);
      expect(textOf(r), groups.join()).toMatch(/^DENIED by rule no-contractors: /);
      await client.close();
    }
    // A string groups claim is one group: "writers contractors" is not `writers`, so no allow,
    // and the deny on `contractors` still sees the piece.
    const token = await gw.issuer.mint({
      sub: 'wendy',
      audience: 'gatehouse',
      extra: { groups: 'writers contractors' },
    });
    const client = await gw.connect(token);
    const r = await client.call('postgres_query', BUMP);
    expect(textOf(r)).toMatch(/^DENIED by rule no-contractors: /);
    await client.close();
    expect(await seq()).toEqual(before);
  });

  it('a string groups claim does not gain a second group (no split without groupsSeparator)', async () => {
    const before = await seq();
    const token = await gw.issuer.mint({
      sub: 'wendy',
      audience: 'gatehouse',
      extra: { groups: 'readers writers' },
    });
    const client = await gw.connect(token);
    const r = await client.call('postgres_query', BUMP);
    expect(textOf(r)).toMatch(/^DENIED by rule default-deny: /);
    expect(await seq()).toEqual(before);
    await client.close();
  });

  it('the control: the real writer is allowed and bumps the sequence', async () => {
    const before = await seq();
    const client = await gw.connect(await gw.mint('wendy', ['writers']));
    const r = await client.call('postgres_query', BUMP);
    expect(r.isError, textOf(r)).toBeFalsy();
    expect(await seq()).not.toEqual(before);
    await client.close();
  });
});
