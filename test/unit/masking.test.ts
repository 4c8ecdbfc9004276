import { describe, expect, it } from 'vitest';
import {
  createMasker,
  DETECTOR_NAMES,
  ibanValid,
  luhnValid,
  type ColumnOrigin,
  type Detector,
  type MaskProfile,
  type MaskStyle,
} from '../../policies/masking.js';

const KEY = new Uint8Array(32).fill(7);
const OTHER_KEY = new Uint8Array(32).fill(9);

function masker(
  detectors: Detector[],
  style: MaskStyle = 'redact',
  columns: string[] = [],
  key = KEY,
) {
  return createMasker([{ detectors, columns, style }], { pseudonymKey: key });
}

const ALL = [...DETECTOR_NAMES];

describe('luhn and mod-97', () => {
  it.each([
    ['4111111111111111', true],
    ['5555555555554444', true],
    ['378282246310005', true],
    ['6011111111111117', true],
    ['4111111111111112', false],
    ['1234567890123456', false],
    ['79927398713', true],
    ['79927398710', false],
  ])('luhnValid(%s) is %s', (digits, ok) => {
    expect(luhnValid(digits)).toBe(ok);
  });

  it.each([
    ['DE89370400440532013000', true],
    ['DE89 3704 0044 0532 0130 00', true],
    ['GB82WEST12345698765432', true],
    ['FR1420041010050500013M02606', true],
    ['DE89370400440532013001', false],
    ['GB82WEST12345698765433', false],
  ])('ibanValid(%s) is %s', (iban, ok) => {
    expect(ibanValid(iban)).toBe(ok);
  });
});

describe('credit_card detector', () => {
  const m = masker(['credit_card']);

  it.each([
    ['4111 1111 1111 1111'],
    ['5555-5555-5555-4444'],
    ['378282246310005'],
    ['3782 822463 10005'],
    ['4111111111111111'],
    ['6011111111111117'],
    ['3530111333300000'],
    ['2223003122003222'],
    ['4222222222222'],
  ])('masks the Luhn-valid card %s inside text', (card) => {
    const r = m.maskText(`paid with ${card}, thanks`);
    expect(r.value).toBe('paid with [redacted:credit_card], thanks');
    expect(r.counts).toEqual({ credit_card: 1 });
  });

  it.each([
    ['a random 16-digit number that fails Luhn', 'ref 1234567890123456'],
    ['a near-miss of a test card', '4111111111111112'],
    ['an order number', 'order ORD-2024-000123 shipped'],
    ['an order number with a card-like length', 'order #9876543210123456 shipped'],
    ['a Luhn-valid number with no card issuer prefix', '0000000000000000'],
    ['a card inside a longer digit run', '41111111111111110000'],
    ['too short', '4111 1111 1111'],
    ['mixed separators', '4111 1111-1111 1111'],
    ['a timestamp in ms', '1718000000000'],
  ])('leaves %s alone', (_why, text) => {
    const r = m.maskText(text);
    expect(r.value).toBe(text);
    expect(r.counts).toEqual({});
  });

  it.each([
    ['a letter glued before', 'x4111111111111111'],
    ['a letter glued after', '4111111111111111a'],
    ['letters on both sides (as in a hex hash: masked, fail closed)', 'a4111111111111111b'],
    ['an SSN with a letter glued on', 'ssn:x123-45-6789y'],
  ])('a letter glued on does not hide it: %s', (_why, text) => {
    const r = masker(['credit_card', 'ssn']).maskText(text);
    expect(r.value).toMatch(/\[redacted:(credit_card|ssn)\]/);
    expect(r.value).not.toMatch(/4111111111111111|123-45-6789/);
  });

  it('keeps the last four in partial style, separators in place', () => {
    const p = masker(['credit_card'], 'partial');
    expect(p.maskText('4111 1111 1111 1111').value).toBe('**** **** **** 1111');
    expect(p.maskText('5555-5555-5555-4444').value).toBe('****-****-****-4444');
    expect(p.maskText('378282246310005').value).toBe('***********0005');
  });
});

describe('email detector', () => {
  const m = masker(['email']);

  it.each([
    ['Contact jane.doe@example.com today', 'Contact [redacted:email] today'],
    ['<JOHN+tag@Mail.Example.ORG>', '<[redacted:email]>'],
    ['mailto:a@b.co', 'mailto:[redacted:email]'],
    ['x@y.io, z@w.io', '[redacted:email], [redacted:email]'],
    ['{"owner":"ops@example.net"}', '{"owner":"[redacted:email]"}'],
  ])('masks %s', (text, expected) => {
    expect(m.maskText(text).value).toBe(expected);
  });

  it.each([['user@localhost'], ['@handle'], ['a @ b.com'], ['no email here']])(
    'leaves %s alone',
    (text) => {
      expect(m.maskText(text).value).toBe(text);
    },
  );

  it('keeps the first character and the domain in partial style', () => {
    expect(masker(['email'], 'partial').maskText('jane@example.com').value).toBe(
      'j***@example.com',
    );
  });
});

describe('other detectors', () => {
  it.each<[Detector, string, string]>([
    ['ssn', 'ssn 123-45-6789.', 'ssn ***-**-6789.'],
    ['iban', 'IBAN DE89 3704 0044 0532 0130 00', 'IBAN DE** **** **** **** **30 00'],
    ['iban', 'GB82WEST12345698765432', 'GB****************5432'],
    ['phone', 'call +1 (202) 555-0143', 'call +* (***) ***-**43'],
    ['phone', '+44 20 7946 0958', '+** ** **** **58'],
    ['aws_key', 'id=AKIAIOSFODNN7EXAMPLE', 'id=AKIA****************'],
    ['jwt', 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.abc_DEF-123', 'Bearer [redacted:jwt]'],
    [
      'private_key',
      'k=-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- ok',
      'k=[redacted:private_key] ok',
    ],
    [
      'private_key',
      'cut: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt',
      'cut: [redacted:private_key]',
    ],
  ])('%s masks %j (partial style)', (d, text, expected) => {
    const r = masker([d], 'partial').maskText(text);
    expect(r.value).toBe(expected);
    expect(r.counts).toEqual({ [d]: 1 });
  });

  it.each<[Detector, string]>([
    ['ssn', '000-12-3456'],
    ['ssn', '666-12-3456'],
    ['ssn', '912-34-5678'],
    ['ssn', '123-00-4567'],
    ['ssn', '123-45-0000'],
    ['ssn', 'date 2024-01-15'],
    ['ssn', 'part 123-45-6789-0'],
    ['iban', 'DE89370400440532013001'],
    ['iban', 'de89370400440532013000'],
    ['phone', '202 555 0143'],
    ['phone', '1+2345678901'],
    ['phone', '2024-01-15T10:00:00+01:00'],
    ['phone', '+1234567'],
    ['phone', '+12345678901234567'],
    ['aws_key', 'AKIAIOSFODNN7EXAMPL'],
    ['jwt', 'eyJhbGciOiJIUzI1NiJ9'],
    ['private_key', '-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----'],
  ])('%s leaves %j alone', (d, text) => {
    expect(masker([d]).maskText(text).value).toBe(text);
  });
});

describe('styles', () => {
  it('pseudonyms are stable within a key and differ across keys', () => {
    const a = masker(['email', 'credit_card'], 'pseudonym');
    const b = masker(['email', 'credit_card'], 'pseudonym', [], OTHER_KEY);
    const x = a.maskText('jane@example.com').value;
    expect(x).toMatch(/^email_[0-9a-f]{8}$/);
    expect(a.maskText('jane@example.com').value).toBe(x);
    // Same address in another spelling, same person: same pseudonym.
    expect(a.maskText('JANE@example.com').value).toBe(x);
    expect(a.maskText('john@example.com').value).not.toBe(x);
    expect(b.maskText('jane@example.com').value).not.toBe(x);
    expect(a.maskText('4111 1111 1111 1111').value).toBe(a.maskText('4111-1111-1111-1111').value);
    expect(a.maskText('4111111111111111').value).toMatch(/^credit_card_[0-9a-f]{8}$/);
  });

  it.each<[MaskStyle[], string]>([
    [['partial', 'redact'], '[redacted:email]'],
    [['partial', 'pseudonym'], 'pseudonym'],
    [['pseudonym', 'redact'], '[redacted:email]'],
    [['partial', 'partial'], 'j***@example.com'],
  ])('the strictest of %j wins', (styles, expected) => {
    const m = createMasker(
      styles.map((style) => ({ detectors: ['email'], columns: [], style })),
      { pseudonymKey: KEY },
    );
    const v = m.maskText('jane@example.com').value;
    if (expected === 'pseudonym') expect(v).toMatch(/^email_[0-9a-f]{8}$/);
    else expect(v).toBe(expected);
  });

  it('unions detectors and columns across profiles', () => {
    const m = createMasker(
      [
        { detectors: ['email'], columns: ['users.password'], style: 'redact' },
        { detectors: ['credit_card'], columns: ['*.ssn'], style: 'redact' },
      ],
      { pseudonymKey: KEY },
    );
    expect(m.maskText('jane@example.com 4111111111111111').value).toBe(
      '[redacted:email] [redacted:credit_card]',
    );
    const cols: ColumnOrigin[] = [
      { name: 'password', table: 'users', column: 'password' },
      { name: 'ssn', table: 'customers', column: 'ssn' },
    ];
    expect(m.maskRows(cols, [['h', 's']]).value).toEqual([
      ['[redacted:column]', '[redacted:column]'],
    ]);
  });
});

const SAMPLE =
  'Jane <jane@example.com> paid 4111 1111 1111 1111 and 378282246310005; ssn 123-45-6789; ' +
  'IBAN DE89 3704 0044 0532 0130 00; +1 202-555-0143; AKIAIOSFODNN7EXAMPLE; ' +
  'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig; -----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----';

describe('idempotence', () => {
  it.each<MaskStyle>(['redact', 'partial', 'pseudonym'])(
    'masking %s output again changes nothing',
    (style) => {
      const m = masker(ALL, style, ['*.password']);
      const once = m.maskText(SAMPLE);
      expect(once.counts).toEqual({
        email: 1,
        credit_card: 2,
        ssn: 1,
        iban: 1,
        phone: 1,
        aws_key: 1,
        jwt: 1,
        private_key: 1,
      });
      const twice = m.maskText(once.value);
      expect(twice.value).toBe(once.value);
      expect(twice.counts).toEqual({});

      const hidden = ['*.password', '*.email', '*.card', '*.ssn', '*.iban', '*.phone', '*.key'];
      const c = masker(ALL, style, hidden);
      const cols: ColumnOrigin[] = [
        ...['password', 'email', 'card', 'ssn', 'iban', 'phone', 'key'].map((column) => ({
          name: column,
          table: 't',
          column,
        })),
        { name: 'note' },
      ];
      const row = [
        '$2b$12$hash',
        'jane@example.com',
        '4111 1111 1111 1111',
        '123-45-6789',
        'DE89 3704 0044 0532 0130 00',
        '+1 202-555-0143',
        'AKIAIOSFODNN7EXAMPLE',
        SAMPLE,
      ];
      const rows1 = c.maskRows(cols, [row]);
      const rows2 = c.maskRows(cols, rows1.value);
      expect(rows2.value).toEqual(rows1.value);
      expect(rows2.counts).toEqual({
        column: 7,
        ...Object.fromEntries(hidden.map((h) => [`column:${h}`, 1])),
      });
    },
  );
});

describe('maskRows', () => {
  const cols: ColumnOrigin[] = [
    { name: 'id', table: 'users', schema: 'public', column: 'id' },
    { name: 'p', table: 'users', schema: 'public', column: 'password' },
    { name: 'contact', table: 'users', schema: 'public', column: 'email' },
    { name: 'doc' },
  ];
  const rows = [
    [1, '$2b$12$abcdefghijklmnopqrstuv', 'jane@example.com', { to: ['a@example.org'], n: 3 }],
    [2, null, 'john@example.org', null],
    [3, 12345, 'no email', ['4111111111111111', 7]],
  ];

  it('hides columns by their real origin (not the alias), then runs detectors in every string', () => {
    const m = masker(['email', 'credit_card'], 'redact', ['*.password']);
    const input = structuredClone(rows);
    const r = m.maskRows(cols, rows);
    expect(r.value).toEqual([
      [1, '[redacted:column]', '[redacted:email]', { to: ['[redacted:email]'], n: 3 }],
      [2, null, '[redacted:email]', null],
      [3, '[redacted:column]', 'no email', ['[redacted:credit_card]', 7]],
    ]);
    // Per detector, and per column rule beside the total.
    expect(r.counts).toEqual({ column: 2, 'column:*.password': 2, email: 3, credit_card: 1 });
    expect(rows).toEqual(input); // the input is not mutated
  });

  it('an alias cannot unmask, and an alias alone does not mask a known column', () => {
    const m = masker([], 'redact', ['users.password']);
    const r = m.maskRows(
      [
        { name: 'x', table: 'users', column: 'password' },
        { name: 'password', table: 'customers', column: 'name' },
      ],
      [['h', 'Jane']],
    );
    expect(r.value).toEqual([['[redacted:column]', 'Jane']]);
  });

  it.each<[string, ColumnOrigin, boolean]>([
    ['users.password', { name: 'p', table: 'users', column: 'password' }, true],
    ['USERS.PASSWORD', { name: 'p', table: 'users', column: 'password' }, true],
    ['users.password', { name: 'p', table: 'admins', column: 'password' }, false],
    ['*.password', { name: 'p', table: 'admins', column: 'password' }, true],
    ['*.pass*', { name: 'p', table: 'admins', column: 'password_hash' }, true],
    ['public.users.ssn', { name: 's', schema: 'public', table: 'users', column: 'ssn' }, true],
    ['audit.users.ssn', { name: 's', schema: 'public', table: 'users', column: 'ssn' }, false],
    ['*.*.ssn', { name: 's', schema: 'public', table: 'users', column: 'ssn' }, true],
    ['audit.users.ssn', { name: 's', table: 'users', column: 'ssn' }, true],
    ['ssn', { name: 's', table: 'users', column: 'ssn' }, true],
    // Unknown origin (an expression): the alias is matched against the column part.
    ['*.password', { name: 'password' }, true],
    ['users.password', { name: 'PASSWORD' }, true],
    ['users.password', { name: 'lower' }, false],
  ])('glob %s vs %j -> %s', (glob, origin, hidden) => {
    const r = masker([], 'redact', [glob]).maskRows([origin], [['v']]);
    expect(r.value[0]![0]).toBe(hidden ? '[redacted:column]' : 'v');
  });

  it('reuses detector forms for whole values in partial and pseudonym styles', () => {
    const c: ColumnOrigin[] = [
      { name: 'email', table: 'customers', column: 'email' },
      { name: 'card', table: 'customers', column: 'card' },
      { name: 'ssn', table: 'customers', column: 'ssn' },
      { name: 'password', table: 'users', column: 'password' },
      { name: 'n', table: 'customers', column: 'n' },
    ];
    const row = ['jane@example.com', '4111 1111 1111 1111', '123-45-6789', '$2b$12$abc', 42];
    const globs = ['customers.*', 'users.password'];
    expect(masker([], 'partial', globs).maskRows(c, [row]).value).toEqual([
      [
        'j***@example.com',
        '**** **** **** 1111',
        '***-**-6789',
        '[redacted:column]',
        '[redacted:column]',
      ],
    ]);
    const p = masker(['email'], 'pseudonym', globs);
    const [out] = p.maskRows(c, [row]).value;
    expect(out![0]).toBe(p.maskText('jane@example.com').value); // joins with text occurrences
    expect(out![1]).toMatch(/^credit_card_[0-9a-f]{8}$/);
    expect(out![3]).toMatch(/^column_[0-9a-f]{8}$/);
    expect(out![4]).toMatch(/^column_[0-9a-f]{8}$/);
  });

  it('passes through only masked forms at least as strict as its own style', () => {
    const c: ColumnOrigin[] = [{ name: 'email', table: 'customers', column: 'email' }];
    const partialForm = [['j***@example.com']];
    expect(masker([], 'partial', ['*.email']).maskRows(c, partialForm).value).toEqual(partialForm);
    expect(masker([], 'pseudonym', ['*.email']).maskRows(c, partialForm).value[0]![0]).toMatch(
      /^column_[0-9a-f]{8}$/,
    );
    expect(masker([], 'redact', ['*.email']).maskRows(c, [['email_0123abcd']]).value).toEqual([
      ['[redacted:column]'],
    ]);
  });

  it('masks JSON keys too, keeping colliding entries apart', () => {
    const r = masker(['email']).maskRows(
      [{ name: 'j' }],
      [[{ 'a@example.com': 1, 'b@example.com': 2 }]],
    );
    expect(r.value[0]![0]).toEqual({ '[redacted:email]': 1, '[redacted:email]#2': 2 });
    expect(r.counts).toEqual({ email: 2 });
  });

  it('a key a column rule names is hidden inside JSON at any depth, whatever its value', () => {
    const m = masker([], 'redact', ['*.password', 'customers.ssn']);
    const r = m.maskRows(
      [{ name: 'profile', table: 'accounts', column: 'profile' }],
      [
        [{ user: 'x', password: 'hunter2', nested: [{ SSN: 123456789, ok: 1 }], pass: 'kept' }],
        [{ password: null }],
      ],
    );
    expect(r.value).toEqual([
      [
        {
          user: 'x',
          password: '[redacted:column]',
          nested: [{ SSN: '[redacted:column]', ok: 1 }],
          pass: 'kept',
        },
      ],
      [{ password: null }],
    ]);
    expect(r.counts).toEqual({ column: 2, 'column:*.password': 1, 'column:customers.ssn': 1 });
  });

  it('a computed value from a masked column hides its NULLs too; the column itself keeps them', () => {
    const m = masker([], 'redact', ['*.password']);
    const lineage = {
      output: [{ column: 'password' }],
      conditions: [],
      wholeRow: false,
      wholeRowInConditions: false,
    };
    const r = m.maskRows(
      [{ name: 'password', table: 'users', column: 'password' }, { name: 'nullif' }],
      [
        [null, null],
        ['h', 1],
      ],
      lineage,
    );
    expect(r.value).toEqual([
      [null, '[redacted:column]'],
      ['[redacted:column]', '[redacted:column]'],
    ]);
  });

  it('a name a statement gives to a masked value is that value (aliases, renamed columns)', () => {
    const m = masker([], 'redact', ['*.password']);
    const base = { output: [], wholeRow: false, wholeRowInConditions: false };
    expect(
      m.conditionLeak({
        ...base,
        conditions: [{ column: 'p' }],
        aliases: {
          p: { output: [{ column: 'q' }], wholeRow: false },
          q: { output: [{ column: 'password' }], wholeRow: false },
        },
      }),
    ).toMatch(/^p, a name for a masked column/);
    expect(
      m.conditionLeak({
        ...base,
        conditions: [{ column: 'x' }],
        aliases: { x: { output: [], wholeRow: true } },
      }),
    ).toBeDefined();
    expect(
      m.conditionLeak({
        ...base,
        conditions: [{ column: 'n' }],
        aliases: { n: { output: [], wholeRow: false } },
      }),
    ).toBeUndefined();
  });

  it('leaves dates and buffers as they are', () => {
    const d = new Date(0);
    const b = Buffer.from('x');
    const r = masker(['email']).maskRows([{ name: 'd' }, { name: 'b' }], [[d, b]]);
    expect(r.value[0]![0]).toBe(d);
    expect(r.value[0]![1]).toBe(b);
  });
});

describe('createMasker', () => {
  it('is inactive without profiles and passes everything through', () => {
    const m = createMasker([], { pseudonymKey: new Uint8Array(0) });
    expect(m.active).toBe(false);
    expect(m.maskText('jane@example.com')).toEqual({ value: 'jane@example.com', counts: {} });
    const rows = [['jane@example.com']];
    expect(m.maskRows([{ name: 'e' }], rows).value).toBe(rows);
  });

  it.each<[string, MaskProfile]>([
    ['an unknown detector', { detectors: ['passport' as Detector], columns: [], style: 'redact' }],
    ['an empty glob part', { detectors: [], columns: ['users.'], style: 'redact' }],
    ['a glob with four parts', { detectors: [], columns: ['a.b.c.d'], style: 'redact' }],
    ['an unknown style', { detectors: [], columns: [], style: 'blur' as MaskStyle }],
  ])('refuses %s', (_why, profile) => {
    expect(() => createMasker([profile], { pseudonymKey: KEY })).toThrow(/masking/);
  });

  it('refuses a short pseudonym key', () => {
    expect(() => masker(['email'], 'pseudonym', [], new Uint8Array(4))).toThrow(/key/);
  });
});

describe('cost', () => {
  const N = 1 << 20;
  it.each([
    ['letters', 'a'.repeat(N)],
    ['digits', '1'.repeat(N)],
    ['dotted local part', 'a.'.repeat(N / 2) + '@x'],
    ['many ats', 'a@'.repeat(N / 2)],
    ['digit groups', '4111 '.repeat(N / 5)],
    ['letters between digit runs', 'a4111111111111111'.repeat(N / 17)],
    ['dash-separated digits', '123-45-'.repeat(N / 7)],
    ['plus signs', '+1 '.repeat(N / 3)],
    ['unterminated PEM headers', '-----BEGIN RSA PRIVATE KEY-----\n'.repeat(N / 32)],
    ['bearer words', 'Bearer '.repeat(N / 7)],
    ['api key prefixes', 'ghp_sk-xoxb-AIza'.repeat(N / 16)],
    ['a long api key body', 'sk-' + 'a'.repeat(N)],
  ])('scans 1 MiB of %s in linear time', (_what, text) => {
    const t = performance.now();
    masker(ALL).maskText(text);
    expect(performance.now() - t).toBeLessThan(1000);
  });
});

describe('api keys and bearer tokens', () => {
  const GH = 'ghp_' + 'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8';
  it.each([
    [`token=${GH}`, 'token=[redacted:api_key]'],
    [`x${GH}`, `x${GH}`], // glued to a word: not a token boundary (left for lineage)
    ['github_pat_11ABCDEFG0123456789_abcdefghijklmnop', '[redacted:api_key]'],
    ['glpat-Ab3dEf6hIj9lMn2pQr5t', '[redacted:api_key]'],
    ['SLACK=xoxb-1234567890-abcdefghij', 'SLACK=[redacted:api_key]'],
    ['sk_live_4eC39HqLyjWDarjtT1zdp7dc', '[redacted:api_key]'],
    ['OPENAI_API_KEY=sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12', 'OPENAI_API_KEY=[redacted:api_key]'],
    ['key AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q', 'key [redacted:api_key]'],
    ['hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789', '[redacted:api_key]'],
    // Prose and slugs that share a prefix stay as they are.
    ['risk-assessment-quarterly-report-2026', 'risk-assessment-quarterly-report-2026'],
    ['see sk-learn-documentation-for-details', 'see sk-learn-documentation-for-details'],
    ['Authorization: Bearer abcDEF123456ghiJKL789==', 'Authorization: [redacted:bearer]'],
    [
      'curl -H "authorization: bearer 0123456789abcdef0123"',
      'curl -H "authorization: [redacted:bearer]"',
    ],
    ['the bearer of bad news', 'the bearer of bad news'],
    ['Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln', 'Bearer [redacted:jwt]'],
  ])('%s', (text, want) => {
    expect(masker(['api_key', 'bearer', 'jwt']).maskText(text).value).toBe(want);
  });

  it('keeps the vendor prefix only in partial style', () => {
    expect(masker(['api_key'], 'partial').maskText(`k=${GH}`).value).toBe('k=ghp_********');
  });
});

describe('custom patterns', () => {
  const profile = (patterns: Record<string, string>, style: MaskStyle = 'redact'): MaskProfile => ({
    detectors: ['email'],
    columns: [],
    style,
    patterns,
  });

  it('masks what a pattern matches, counted under its name, also inside JSON', () => {
    const m = createMasker([profile({ employee_id: '\\bEMP-\\d{6}\\b' })], { pseudonymKey: KEY });
    const r = m.maskRows(
      [{ name: 'doc' }],
      [[{ owner: 'EMP-123456', cc: 'EMP-654321 and jane@example.com', id: 'EMP-1234567' }]],
    );
    expect(r.value[0]![0]).toEqual({
      owner: '[redacted:employee_id]',
      cc: '[redacted:employee_id] and [redacted:email]',
      id: 'EMP-1234567',
    });
    expect(r.counts).toEqual({ employee_id: 2, email: 1 });
  });

  it('gives stable pseudonyms per key, and a run of overlapping matches is one value', () => {
    const key = (k: Uint8Array) =>
      createMasker([profile({ ticket: 'T-\\d{4}' }, 'pseudonym')], { pseudonymKey: k });
    const a = key(KEY).maskText('T-1234 T-1234 T-12345').value;
    expect(a).toMatch(/^ticket_[0-9a-f]{8} ticket_[0-9a-f]{8} ticket_[0-9a-f]{8}5$/);
    const [x, y] = a.split(' ');
    expect(x).toBe(y);
    expect(key(OTHER_KEY).maskText('T-1234').value).not.toBe(x);
  });

  it.each([
    [{ Bad: 'x' }, /name/],
    [{ email: 'x+' }, /taken by a built-in/],
    [{ p: '(?=x)y' }, /lookaround/],
    [{ p: 'x*' }, /empty string/],
  ])('refuses %j', (patterns, why) => {
    expect(() => createMasker([profile(patterns)], { pseudonymKey: KEY })).toThrow(why);
  });

  it('refuses one name with two patterns across profiles', () => {
    expect(() =>
      createMasker([profile({ p: 'a+b' }), profile({ p: 'c+d' })], { pseudonymKey: KEY }),
    ).toThrow(/defined twice/);
  });

  it('scans 1 MiB of adversarial text against a backtracking-prone pattern in linear time', () => {
    const m = createMasker([profile({ evil: '(a|aa)+c' })], { pseudonymKey: KEY });
    const t = performance.now();
    m.maskText('a'.repeat(1 << 20));
    expect(performance.now() - t).toBeLessThan(2000);
  });
});

describe('look-alike characters and case', () => {
  const fullwidth = (s: string) =>
    [...s]
      .map((c) => (c > ' ' && c <= '~' ? String.fromCodePoint(c.codePointAt(0)! + 0xfee0) : c))
      .join('');
  const GH = 'ghp_Q9x7LmN2pR5sT8vW1yZ4aB6cD3eF0gH7jK9m';
  it.each([
    ['a fullwidth key', `token ${fullwidth(GH)}`, 'token [redacted:api_key]'],
    ['zero-width spaces in an email', 'mail j\u200bane@exa\u200bmple.com', 'mail [redacted:email]'],
    ['a soft hyphen in a card', 'card 4111 \u00ad1111 1111 1111', null],
    ['an upper-cased key', `k=${GH.toUpperCase()}`, 'k=[redacted:api_key]'],
  ])('%s is still found', (_what, text, want) => {
    const r = masker(['api_key', 'email', 'credit_card']).maskText(text);
    if (want) expect(r.value).toBe(want);
    expect(Object.values(r.counts).reduce((a, b) => a + b, 0)).toBe(1);
  });

  it('text beyond ASCII with nothing to find is left exactly as it is', () => {
    const text = 'Grüße aus Köln — ｆｕｌｌｗｉｄｔｈ ok\u200b';
    expect(masker(ALL).maskText(text)).toEqual({ value: text, counts: {} });
  });
});
