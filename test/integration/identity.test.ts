import { generateKeyPair, SignJWT, exportJWK, type JWK } from 'jose';
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
    const attacker = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
    const attackerJwk: JWK = await exportJWK(attacker.publicKey);
    const kid = (JSON.parse(Buffer.from(header, 'base64url').toString()) as { kid: string }).kid;
    const signWith = (extraHeader: Record<string, unknown>, body: Record<string, unknown>) =>
      new SignJWT(body)
        .setProtectedHeader({ alg: 'EdDSA', kid, ...extraHeader })
        .sign(attacker.privateKey);
    const publicJwk = JSON.stringify(gw.issuer.jwks.keys[0]);
    const { createHmac } = await import('node:crypto');
    const hs = `${b64({ alg: 'HS256', typ: 'JWT', kid })}.${payload}`;
    return [
      ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`],
      [
        'HS256 with the public key as secret',
        `${hs}.${createHmac('sha256', publicJwk).update(hs).digest('base64url')}`,
      ],
      [
        'expired',
        await gw.issuer
          .mint({ sub: 'wendy', groups: ['writers'], audience: 'gatehouse', extra: {}, ttlSec: 1 })
          .then(async (t) => {
            await new Promise((r) => setTimeout(r, 2100));
            return t;
          }),
      ],
      [
        'wrong audience',
        await gw.issuer.mint({ sub: 'wendy', groups: ['writers'], audience: 'someone-else' }),
      ],
      [
        'payload edited after signing',
        `${header}.${b64({ ...claims, groups: ['writers', 'dba'] })}.${sig}`,
      ],
      ['signature removed', `${header}.${payload}.`],
      ['right kid, attacker key', await signWith({}, claims)],
      ['embedded jwk header', await signWith({ jwk: attackerJwk }, claims)],
      ['jku header', await signWith({ jku: 'http://127.0.0.1:1/jwks.json' }, claims)],
      ['unknown crit', await signWith({ crit: ['x-gatehouse'], 'x-gatehouse': 1 }, claims)],
      ['not a JWT', 'garbage'],
      ['bad base64', '!!!.@@@.###'],
      ['one megabyte', `${header}.${'A'.repeat(1024 * 1024)}.${sig}`],
      ['no exp', await signWith({}, { ...claims, exp: undefined, iat: now })],
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
    expect(refused.length).toBeGreaterThanOrEqual(10);
    expect(refused.every((l) => l.sub === '(unauthenticated)' || typeof l.sub === 'string')).toBe(
      true,
    );
  });
});
