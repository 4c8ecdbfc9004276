import { describe, expect, it } from 'vitest';
import {
  DEFAULT_LIMITS,
  PolicyEngine,
  type CallFacts,
  type CallPart,
} from '../../policies/engine.js';
import { globMatch } from '../../policies/glob.js';
import { Rule } from '../../policies/schema.js';

const rules = (list: unknown[]) => new PolicyEngine(list.map((r) => Rule.parse(r)));
const part = (operation: string, extra: Partial<CallPart> = {}): CallPart => ({
  operation,
  tags: [],
  reason: `does ${operation}`,
  ...extra,
});
const facts = (over: Partial<CallFacts> = {}): CallFacts => ({
  principal: {
    sub: 'alice',
    groups: ['analysts'],
    claims: { dept: 'finance', org: { tier: 'gold' } },
  },
  tool: 'postgres_query',
  target: 'app-db',
  parts: [part('read')],
  ...over,
});

describe('policy engine', () => {
  it('denies by default, naming default-deny', () => {
    const d = rules([]).decide(facts());
    expect(d).toMatchObject({ effect: 'deny', rule: 'default-deny' });
    expect(d.reason).toMatch(/no rule allows postgres_query read on app-db/);
  });

  it('deny beats approve beats allow, whatever the order of rules', () => {
    const allow = { id: 'a', match: {}, effect: 'allow' };
    const approve = { id: 'b', match: {}, effect: 'approve', approval: { approvers: 'client' } };
    const deny = { id: 'c', match: {}, effect: 'deny' };
    expect(rules([allow, approve, deny]).decide(facts()).rule).toBe('c');
    expect(rules([deny, approve, allow]).decide(facts()).rule).toBe('c');
    expect(rules([allow, approve]).decide(facts())).toMatchObject({ effect: 'approve', rule: 'b' });
    expect(rules([approve, allow]).decide(facts())).toMatchObject({ effect: 'approve', rule: 'b' });
  });

  it('gives a call of several parts its strictest part, so an allowed part cannot carry a denied one', () => {
    const engine = rules([{ id: 'reads', match: { operations: ['read'] }, effect: 'allow' }]);
    const d = engine.decide(
      facts({
        parts: [
          part('read'),
          part('admin', { reason: 'statement is admin (TransactionStmt)' }),
          part('ddl'),
        ],
      }),
    );
    expect(d.effect).toBe('deny');
    expect(d.rule).toBe('default-deny');
    expect(d.reason).toMatch(/TransactionStmt/);
  });

  it('denies a call that has no parts at all', () => {
    expect(
      rules([{ id: 'all', match: {}, effect: 'allow' }]).decide(facts({ parts: [] })).effect,
    ).toBe('deny');
  });

  it.each([
    [{ subjects: ['ali*'] }, true],
    [{ subjects: ['bob'] }, false],
    [{ groups: ['sre', 'analysts'] }, true],
    [{ groups: ['sre'] }, false],
    [{ tools: ['postgres_*'] }, true],
    [{ tools: ['ssh_exec'] }, false],
    [{ targets: ['app-*'] }, true],
    [{ targets: ['prod-*'] }, false],
    [{ operations: ['read', 'write'] }, true],
    [{ operations: ['write'] }, false],
    [{ claims: { dept: 'finance' } }, true],
    [{ claims: { dept: ['hr', 'finance'] } }, true],
    [{ claims: { 'org.tier': 'gold' } }, true],
    [{ claims: { dept: 'hr' } }, false],
    [{ claims: { missing: 'x' } }, false],
    [{ tags: ['unbounded'] }, false],
  ])('match %j -> %s', (match, matches) => {
    const d = rules([{ id: 'r', match, effect: 'allow' }]).decide(facts());
    expect(d.effect === 'allow').toBe(matches);
  });

  it('matches classifier tags, e.g. to deny unbounded writes', () => {
    const engine = rules([
      { id: 'writes', match: { operations: ['write'] }, effect: 'allow' },
      { id: 'no-unbounded', match: { tags: ['unbounded'] }, effect: 'deny' },
    ]);
    expect(engine.decide(facts({ parts: [part('write')] })).effect).toBe('allow');
    expect(engine.decide(facts({ parts: [part('write', { tags: ['unbounded'] })] })).rule).toBe(
      'no-unbounded',
    );
  });

  it('never matches a target glob for a call without a target', () => {
    expect(
      rules([{ id: 'r', match: { targets: ['*'] }, effect: 'allow' }]).decide(
        facts({ target: null }),
      ).effect,
    ).toBe('deny');
  });

  it('globs do not cross into other names by case or prefix tricks', () => {
    const engine = rules([
      { id: 'r', match: { targets: ['app-db'], subjects: ['alice'] }, effect: 'allow' },
    ]);
    expect(engine.decide(facts({ target: 'APP-DB' })).effect).toBe('deny');
    expect(engine.decide(facts({ target: 'app-db-rw' })).effect).toBe('deny');
    expect(
      engine.decide(facts({ principal: { sub: 'alice2', groups: [], claims: {} } })).effect,
    ).toBe('deny');
  });

  it('takes the tightest limits and the union of masks of the rules that let the call through', () => {
    const engine = rules([
      {
        id: 'a',
        match: {},
        effect: 'allow',
        mask: ['pii'],
        limits: { maxRows: 100, timeout: '10s' },
      },
      {
        id: 'b',
        match: { groups: ['analysts'] },
        effect: 'allow',
        mask: ['secrets'],
        limits: { maxRows: 20, maxOutputBytes: '64KiB' },
      },
    ]);
    const d = engine.decide(facts());
    expect(d.mask.sort()).toEqual(['pii', 'secrets']);
    expect(d.limits).toEqual({ maxRows: 20, timeoutMs: 10_000, maxOutputBytes: 65536 });
    expect(rules([{ id: 'x', match: {}, effect: 'allow' }]).decide(facts()).limits).toEqual(
      DEFAULT_LIMITS,
    );
  });

  it('carries the approval block of an approve rule', () => {
    const d = rules([
      {
        id: 'w',
        match: {},
        effect: 'approve',
        approval: { approvers: { groups: ['dba'] }, timeout: '2m', grant: '15m' },
      },
    ]).decide(facts());
    expect(d.approval).toMatchObject({
      rule: 'w',
      timeout: 120_000,
      grant: 900_000,
      approvers: { groups: ['dba'] },
    });
  });
});

describe('policy rule schema', () => {
  it.each([
    [{ id: 'x', effect: 'allow', match: { grups: ['a'] } }, /Unrecognized key/],
    [{ id: 'x', effect: 'approve' }, /approval/],
    [{ id: 'x', effect: 'allow', approval: { approvers: 'client' } }, /approval/],
    [{ id: 'x', effect: 'permit' }, /effect/],
    [{ id: 'has space', effect: 'allow' }, /rule ids/],
    [{ id: 'x', effect: 'allow', limits: { timeout: 'soon' } }, /not a duration/],
    [{ id: 'x', effect: 'allow', limits: { maxOutputBytes: 'lots' } }, /not a size/],
  ])('rejects %j', (rule, message) => {
    const r = Rule.safeParse(rule);
    expect(r.success).toBe(false);
    expect(JSON.stringify(r.error?.issues)).toMatch(message);
  });
});

describe('globs in rules', () => {
  it('match path-like subjects: * crosses / and ., so deny rules do not fail open on them', () => {
    const engine = rules([
      {
        id: 'no-contractors',
        match: { subjects: ['contractor-*', 'spiffe://corp/ci/*'], targets: ['prod-*'] },
        effect: 'deny',
      },
      { id: 'no-writes', match: { subjects: ['*'], operations: ['write'] }, effect: 'deny' },
      { id: 'staff', match: { groups: ['staff'], targets: ['prod-*'] }, effect: 'allow' },
    ]);
    const as = (sub: string, operation = 'read') =>
      engine.decide(
        facts({
          principal: { sub, groups: ['staff'], claims: {} },
          target: 'prod-db',
          parts: [part(operation)],
        }),
      ).rule;
    expect(as('contractor-bob')).toBe('no-contractors');
    expect(as('contractor-bob/laptop')).toBe('no-contractors');
    expect(as('spiffe://corp/ci/ns/runner')).toBe('no-contractors');
    expect(as('repo:org/app:ref:refs/heads/main', 'write')).toBe('no-writes');
    expect(as('alice')).toBe('staff');
  });

  it.each([
    ['app-?', 'app-1', true],
    ['app-?', 'app-12', false],
    ['db-[0-9]', 'db-7', true],
    ['db-[!0-9]', 'db-7', false],
    ['db-[!0-9]', 'db-x', true],
    ['a.b', 'axb', false],
    ['(x)+', '(x)+', true],
    ['prod*', 'PROD-db', false],
    ['[unclosed', '[unclosed', true],
    ['*', '', true],
    ['[!]]', 'x', true],
    ['[!]]', ']', false],
    ['[]a]', ']', true],
    ['[!]', '[!]', true],
    ['[z-a]', 'm', false],
    ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'aXbY', false],
    ['**x', 'x', true],
    ['é?', 'éü', true],
  ])('%s against %s: %s', (glob, name, expected) => {
    expect(globMatch(glob, name)).toBe(expected);
  });

  it('answers hostile names without backtracking (a regex took 27 s and 98 s on these)', () => {
    // No timing assertion here (figures belong in the benchmark): a return to backtracking
    // would blow the test timeout instead.
    expect(globMatch('*-*-*-db', '-'.repeat(4_000))).toBe(false);
    expect(globMatch('*a*b*c*', 'ab'.repeat(5_000))).toBe(false);
  });
});

describe('look-alike names: deny and approve match loosely, allow exactly', () => {
  // Mallory may read like everyone else, but a deny on her subject must hold however her
  // name is written.
  const engine = rules([
    { id: 'readers', match: { operations: ['read'] }, effect: 'allow' },
    { id: 'no-mallory', match: { subjects: ['mallory'] }, effect: 'deny' },
    { id: 'no-contractors', match: { groups: ['contractors'] }, effect: 'deny' },
    { id: 'no-vendor-dept', match: { claims: { dept: 'vendor' } }, effect: 'deny' },
  ]);
  const as = (sub: string, groups: string[] = [], claims: Record<string, unknown> = {}) =>
    engine.decide(facts({ principal: { sub, groups, claims } }));

  const LOOK_ALIKES: Array<[string, string]> = [
    ['capitalised', 'Mallory'],
    ['trailing space', 'mallory '],
    ['leading space', ' mallory'],
    ['Cyrillic о (U+043E)', 'mall\u043Ery'],
    ['Cyrillic а and Greek ο', 'm\u0430ll\u03BFry'],
    ['fullwidth', 'ｍａｌｌｏｒｙ'],
    ['zero-width space', 'mal\u200Blory'],
    ['zero-width joiner and soft hyphen', 'mall\u200Do\u00ADry'],
    ['BOM at the start', '\uFEFFmallory'],
    ['upper case', 'MALLORY'],
    ['Cyrillic capitals', 'M\u0410LL\u041ERY'],
    ['mathematical bold', '𝐦𝐚𝐥𝐥𝐨𝐫𝐲'],
    ['small capitals', 'ᴍᴀʟʟᴏʀʏ'],
    ['capital I for l', 'maIlory'],
    ['digit 1 for l', 'ma1lory'],
    ['rn for m', 'rnallory'],
    ['combining mark', 'ma\u0308llory'],
    ['no-break space', 'mallory\u00A0'],
    // Found by the blind red-team pass: each was allowed through the deny before.
    ['Cherokee capital Ꮎ', 'mall\u13BEry'],
    ['Cherokee small ꮎ', 'mall\uAB8Ery'],
    ['Lisu, every letter', '\uA4DF\uA4EE\uA4E1\uA4E1\uA4F3\uA4E3\uA4EC'],
    ['Tifinagh ⵏ for l', 'ma\u2D4F\u2D4Fory'],
    ['runic ᛁ for l', 'ma\u16C1\u16C1ory'],
    ['Old Italic 𐌉 for l', 'mal\u{10309}ory'],
    ["N'Ko ߀ for o", 'mall\u07C0ry'],
    ['Latin ǁ for ll', 'ma\u01C1ory'],
    ['Coptic ⲟ for o', 'mall\u2C9Fry'],
  ];

  it.each(LOOK_ALIKES)('subject %s (%j) is denied by the deny on mallory', (_name, sub) => {
    expect(as(sub)).toMatchObject({ effect: 'deny', rule: 'no-mallory' });
  });

  it.each(LOOK_ALIKES)('the control: %s (%j) is allowed without that deny', (_name, sub) => {
    const open = rules([{ id: 'readers', match: { operations: ['read'] }, effect: 'allow' }]);
    const principal = { sub, groups: [], claims: {} };
    expect(open.decide(facts({ principal })).effect).toBe('allow');
  });

  it('leaves other subjects alone', () => {
    expect(as('alice')).toMatchObject({ effect: 'allow', rule: 'readers' });
    expect(as('mallory2')).toMatchObject({ effect: 'allow', rule: 'readers' });
  });

  it.each<[string, string]>([
    ['exact', 'contractors'],
    ['capitalised', 'Contractors'],
    ['upper case', 'CONTRACTORS'],
    ['trailing space', 'contractors '],
    ['Cyrillic с and о', '\u0441\u043Entractors'],
    ['Greek ο', 'c\u03BFntractors'],
    ['fullwidth', 'ｃｏｎｔｒａｃｔｏｒｓ'],
    ['zero-width space', 'contr\u200Bactors'],
    ['digit 0 for o', 'c0ntractors'],
    ['an unsplit string claim with it', 'readers contractors'],
    ['an unsplit comma list with it', 'readers,contractors'],
  ])('group %s (%j) is denied by the deny on contractors', (_name, group) => {
    expect(as('alice', ['readers', group])).toMatchObject({
      effect: 'deny',
      rule: 'no-contractors',
    });
  });

  it.each<[string, unknown]>([
    ['capitalised', 'Vendor'],
    ['Cyrillic е', 'v\u0435ndor'],
    ['fullwidth', 'ｖｅｎｄｏｒ'],
    ['zero-width inside', 'ven\u200Cdor'],
    ['in a list', ['staff', 'VENDOR ']],
  ])('claim %s (%j) is denied by the deny on dept: vendor', (_name, dept) => {
    expect(as('alice', [], { dept })).toMatchObject({ effect: 'deny', rule: 'no-vendor-dept' });
  });

  it('deny globs match look-alikes too, and keep their exact matches', () => {
    const globs = rules([
      { id: 'all', match: {}, effect: 'allow' },
      { id: 'no-ci', match: { subjects: ['spiffe://corp/ci/*', 'svc-[0-9]?'] }, effect: 'deny' },
    ]);
    const sub = (s: string) =>
      globs.decide(facts({ principal: { sub: s, groups: [], claims: {} } }));
    expect(sub('SPIFFE://corp/\u0441i/runner').rule).toBe('no-ci');
    expect(sub('spiffe://corp/ci/runner').rule).toBe('no-ci');
    // `?` and classes are matched exactly as well, whatever folding does to the characters.
    expect(sub('svc-1m').rule).toBe('no-ci');
    expect(sub('svc-1\u043C').rule).toBe('no-ci');
    expect(sub('alice').rule).toBe('all');
  });

  it('allow rules match exactly: a look-alike gains no allow meant for someone else', () => {
    const allow = rules([
      {
        id: 'alice-writes',
        match: { subjects: ['alice'], operations: ['write'] },
        effect: 'allow',
      },
      { id: 'dba-writes', match: { groups: ['dba'], operations: ['write'] }, effect: 'allow' },
      { id: 'fin', match: { claims: { dept: 'finance' }, operations: ['write'] }, effect: 'allow' },
    ]);
    const write = (sub: string, groups: string[] = [], claims: Record<string, unknown> = {}) =>
      allow.decide(facts({ principal: { sub, groups, claims }, parts: [part('write')] }));
    expect(write('alice').effect).toBe('allow');
    for (const sub of ['Alice', '\u0430lice', 'alice ', 'ａｌｉｃｅ', 'al\u200Bice']) {
      expect(write(sub), sub).toMatchObject({ effect: 'deny', rule: 'default-deny' });
    }
    expect(write('bob', ['dba']).effect).toBe('allow');
    for (const g of ['DBA', 'db\u0430', 'dba ', 'readers dba']) {
      expect(write('bob', [g]), g).toMatchObject({ effect: 'deny', rule: 'default-deny' });
    }
    expect(write('bob', [], { dept: 'finance' }).effect).toBe('allow');
    expect(write('bob', [], { dept: 'Finance' }).rule).toBe('default-deny');
  });

  it('an approve rule matched only by look-alike tightens an allow but never lifts a default deny', () => {
    const approval = { approvers: { groups: ['dba'] } };
    const engine2 = rules([
      { id: 'reads', match: { operations: ['read'] }, effect: 'allow' },
      { id: 'review-mallory', match: { subjects: ['mallory'] }, effect: 'approve', approval },
    ]);
    const call = (sub: string, op: string) =>
      engine2.decide(facts({ principal: { sub, groups: [], claims: {} }, parts: [part(op)] }));
    // Exact: the approve rule applies as written, reads and writes alike.
    expect(call('mallory', 'read')).toMatchObject({ effect: 'approve', rule: 'review-mallory' });
    expect(call('mallory', 'write')).toMatchObject({ effect: 'approve', rule: 'review-mallory' });
    // Look-alike: an allowed read still goes through review...
    expect(call('MALL\u041ERY', 'read')).toMatchObject({
      effect: 'approve',
      rule: 'review-mallory',
    });
    // ...but a write nothing allows stays denied rather than reaching a human approver.
    expect(call('MALL\u041ERY', 'write')).toMatchObject({ effect: 'deny', rule: 'default-deny' });
  });
});
