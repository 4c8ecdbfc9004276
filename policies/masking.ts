import { createHmac } from 'node:crypto';
import { compileGlobs } from './glob.js';
import { compilePattern, PatternError, type CompiledPattern } from './pattern.js';

/**
 * Masking v1: pure functions, no I/O. A masker hides whole columns (by their real origin)
 * and, inside every string that reaches the agent, values that detectors recognise.
 *
 * Every masked form is built so that no detector recognises it again (no '@' after a local
 * part, fewer than 13 digits, '+*' instead of '+digit'...): masking masked output changes
 * nothing, which keeps recordings, audit counts and re-rendered results stable.
 */

export const DETECTOR_NAMES = [
  'email',
  'credit_card',
  'ssn',
  'iban',
  'phone',
  'jwt',
  'aws_key',
  'private_key',
  'bearer',
  'api_key',
] as const;
export type Detector = (typeof DETECTOR_NAMES)[number];
export type MaskStyle = 'redact' | 'partial' | 'pseudonym';

export interface MaskProfile {
  detectors: Detector[];
  /** Globs `table.column` or `schema.table.column` (or a bare `column`); `*` and `?` wildcards, case-insensitive. */
  columns: string[];
  style: MaskStyle;
  /** Add the columns discovery finds on the call's target to `columns` (server/discovery.ts). */
  discover?: boolean;
  /**
   * A value computed from a masked column: `mask` (default) hides it; `deny` refuses the
   * statement, since whether a computation fails, how long it runs and how large its result
   * is can each answer a question about the value (`1/(ascii(password) - 97)`).
   */
  computed?: 'mask' | 'deny';
  /**
   * Custom detectors, by name: patterns in a linear-time subset of regular expressions
   * (policies/pattern.ts). What they match is masked like a detector's find.
   */
  patterns?: Record<string, string>;
}

/** A custom pattern's name: its masked form reads `[redacted:NAME]`, its count `NAME`. */
export const PATTERN_NAME = /^[a-z][a-z0-9_]{0,31}$/;

const compiledPatterns = new Map<string, CompiledPattern>();

/**
 * A custom pattern, compiled once per process (policies are reloaded, patterns rarely
 * change). Throws an Error naming the pattern and what in it is not supported.
 */
export function customPattern(name: string, source: string): CompiledPattern {
  if (!PATTERN_NAME.test(name)) {
    throw new Error(
      `masking pattern name ${JSON.stringify(name)} must be lower case letters, digits and _ (at most 32, a letter first)`,
    );
  }
  if ((DETECTOR_NAMES as readonly string[]).includes(name) || name === 'column') {
    throw new Error(`masking pattern name "${name}" is taken by a built-in detector`);
  }
  let compiled = compiledPatterns.get(source);
  if (!compiled) {
    try {
      compiled = compilePattern(source);
    } catch (err) {
      if (err instanceof PatternError) {
        throw new Error(`masking pattern ${name} (${JSON.stringify(source)}): ${err.message}`);
      }
      throw err;
    }
    if (compiledPatterns.size < 1000) compiledPatterns.set(source, compiled);
  }
  return compiled;
}

export interface ColumnOrigin {
  /** Result column name (the alias). */
  name: string;
  /** Real table name, from the field's tableID. */
  table?: string;
  schema?: string;
  /** Real column name, from the field's columnID. */
  column?: string;
  /**
   * For a view's column: what its value is computed from in the view's definition (and the
   * views it reads). A view column derived from a masked column is hidden like it.
   */
  derived?: { output: SourceRef[]; wholeRow: boolean };
}

/** A column a statement mentions: its name as written, and the table or alias before it. */
export interface SourceRef {
  qualifier?: string;
  column: string;
}

/** What a statement's result values may be derived from (tools/postgres/lineage.ts). */
export interface Lineage {
  /** Columns mentioned where values flow into the result (select lists, RETURNING, SET). */
  output: SourceRef[];
  /** Columns mentioned where they only pick, order or count rows (WHERE, JOIN, ORDER BY...). */
  conditions: SourceRef[];
  /** A whole row used as a value in the result (`row_to_json(u)`, `u::text`, `json_agg(u)`). */
  wholeRow: boolean;
  wholeRowInConditions: boolean;
  /**
   * Columns used as arguments of a computation whose value flows into the result (a function,
   * an operator, a cast, a CASE), and whether a whole row is: for profiles with
   * `computed: deny`, which refuse computations over masked values.
   */
  computed?: SourceRef[];
  wholeRowComputed?: boolean;
  /**
   * Bare columns rows are grouped or made distinct by (`GROUP BY country`, `SELECT DISTINCT
   * country`): equality among stored values only, allowed on a masked column itself, but not
   * on a name that stands for something else (a subquery's alias of a computed value, a
   * VALUES column that mixes a masked value with one the caller wrote).
   */
  grouped?: SourceRef[];
  /**
   * Per result column, when the statement lets each be told apart (a plain SELECT without
   * `*`): what that column is computed from. With `inner`, what the derived relations it
   * reads from (subqueries, functions in FROM, CTEs) put out, which any column may carry.
   */
  columns?: Array<{ output: SourceRef[]; wholeRow: boolean }>;
  inner?: { output: SourceRef[]; wholeRow: boolean };
  /** The relations the statement names (tables, views), as written. */
  reads?: Array<{ schema?: string; name: string }>;
  /**
   * Names the statement gives to values (`password AS p`, `users AS u(a, b, x)`) and what each
   * stands for: a mention of the name is a mention of those (a whole row: any column).
   */
  aliases?: Record<string, { output: SourceRef[]; wholeRow: boolean }>;
  /** The statement reads the planner's statistics, which hold sampled column values. */
  statistics?: boolean;
  /** Names given to relations (`FROM v AS x`): lower-case alias -> the relations (lower case). */
  relationAliases?: Record<string, string[]>;
  /**
   * The views the statement reads, found in the target's catalog (tools/postgres/views.ts):
   * per name the statement calls the view by (lower case), per view column (lower case), what
   * the column is computed from. A condition on a view column computed from a masked column
   * is a condition on that column.
   */
  viewColumns?: Record<string, Record<string, { output: SourceRef[]; wholeRow: boolean }>>;
}

export interface MaskResult<T> {
  value: T;
  /** Per detector name, or 'column' for values hidden by a column rule. Only non-zero keys. */
  counts: Record<string, number>;
}

export interface Masker {
  /** False when no profile applies: callers may skip the work entirely. */
  readonly active: boolean;
  /**
   * Column rules first (whole value), then detectors inside every string (also inside JSON and
   * arrays). With the statement's `lineage`, a column with no origin (a computed value) is
   * hidden whole when the statement derives output from a masked column or a whole row.
   */
  maskRows(columns: ColumnOrigin[], rows: unknown[][], lineage?: Lineage): MaskResult<unknown[][]>;
  /**
   * Why the statement must not run under these masks: it filters, joins or orders on a masked
   * column (or a whole row), which reveals the value bit by bit whatever the result shows.
   */
  conditionLeak(lineage: Lineage): string | undefined;
  /**
   * Under a profile with `computed: deny`: the masked column (or whole row) the statement
   * computes on, or undefined.
   */
  computationLeak(lineage: Lineage): string | undefined;
  /** Does the statement mention a masked column, or use a whole row, anywhere? */
  touches(lineage: Lineage): boolean;
  /** Detectors only: error texts, command output, anything that is not a result set. */
  maskText(text: string): MaskResult<string>;
}

// Stricter first: a mixed set of profiles never shows more than its strictest member allows.
const STYLE_RANK: Record<MaskStyle, number> = { partial: 0, pseudonym: 1, redact: 2 };

interface DetectorImpl {
  /** Cheap pre-check so long texts without the telltale character skip the regex. */
  maybe(text: string): boolean;
  /** Global regex; candidates still go through `valid`. */
  pattern: RegExp;
  valid(match: string): boolean;
  /** What the pseudonym hashes: equal values in different spellings share a pseudonym. */
  normalize(match: string): string;
  /** 'partial' style; must not be recognised again by any detector. */
  partial(match: string): string;
}

const digitsOf = (s: string): string => s.replace(/\D/g, '');

/** Replace every digit except the last `keep` ones with '*', leaving separators in place. */
function starDigits(s: string, keep: number): string {
  let left = digitsOf(s).length - keep;
  return s.replace(/\d/g, (d) => (left-- > 0 ? '*' : d));
}

export function luhnValid(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return false;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

export function ibanValid(iban: string): boolean {
  const s = iban.replace(/ /g, '').toUpperCase();
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$/.test(s)) return false;
  // mod-97 over the rearranged string, letters as 10..35, computed piecewise (no bigint needed).
  let rem = 0;
  for (const ch of s.slice(4) + s.slice(0, 4)) {
    const v = ch >= 'A' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const c of v) rem = (rem * 10 + (c.charCodeAt(0) - 48)) % 97;
  }
  return rem === 1;
}

const REDACT_ONLY = (): string => '';

/** Characters that render as nothing (zero-width spaces and joiners, soft hyphens, BOMs…). */
const INVISIBLE = /\p{Default_Ignorable_Code_Point}/gu;

/**
 * Vendor prefixes of API keys and tokens, each with the body it is followed by: GitHub
 * (classic and fine-grained), GitLab, Slack (bot/user/app), Stripe secret and restricted keys,
 * OpenAI and Anthropic (`sk-`, `sk-proj-`, `sk-ant-`), Google, npm, PyPI, SendGrid, Hugging
 * Face, Shopify, DigitalOcean.
 */
const API_KEY_PREFIXES: ReadonlyArray<readonly [string, string]> = [
  ['github_pat_', '[A-Za-z0-9_]{22,}'],
  ['gh[pousr]_', '[A-Za-z0-9]{30,}'],
  ['glpat-', '[A-Za-z0-9_-]{20,}'],
  ['xox[abposr]-', '[A-Za-z0-9-]{10,}'],
  ['xapp-', '[A-Za-z0-9-]{10,}'],
  ['[sr]k_(?:live|test)_', '[A-Za-z0-9]{16,}'],
  ['sk-', '[A-Za-z0-9_-]{20,}'],
  ['AIza', '[A-Za-z0-9_-]{30,}'],
  ['npm_', '[A-Za-z0-9]{30,}'],
  ['pypi-', '[A-Za-z0-9_-]{40,}'],
  ['SG\\.', '[A-Za-z0-9_-]{16,}\\.[A-Za-z0-9_-]{16,}'],
  ['hf_', '[A-Za-z0-9]{30,}'],
  ['shp(?:at|ca|pa|ss)_', '[A-Fa-f0-9]{32,}'],
  ['do[opr]_v1_', '[a-f0-9]{64,}'],
];
const API_KEY_PREFIX = new RegExp(API_KEY_PREFIXES.map(([p]) => p).join('|'), 'i');
const API_KEY_PREFIX_AT_START = new RegExp(
  `^(?:${API_KEY_PREFIXES.map(([p]) => p).join('|')})`,
  'i',
);
function apiKeyPrefix(m: string): string {
  return API_KEY_PREFIX_AT_START.exec(m)?.[0] ?? '';
}

/*
 * Every pattern starts with a lookbehind that refuses to begin in the middle of a run of the
 * same character class. Besides precision, this keeps scanning linear: without it a long
 * run of letters with no '@' costs O(n^2) for the email pattern.
 */
const DETECTORS: Record<Detector, DetectorImpl> = {
  private_key: {
    maybe: (t) => t.includes('PRIVATE KEY-----'),
    // An unterminated block (output cut by a size limit) is masked to the end of the text.
    pattern: /-----BEGIN ([A-Z0-9 ]{0,40}PRIVATE KEY)-----[\s\S]*?(?:-----END \1-----|$)/g,
    valid: () => true,
    normalize: (m) => m.replace(/\s+/g, ''),
    partial: REDACT_ONLY,
  },
  jwt: {
    maybe: (t) => t.includes('eyJ'),
    // Header and payload are base64url JSON objects, so both begin with 'ey' ('{"' or '{ ').
    pattern:
      /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.ey[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*(?![A-Za-z0-9_-])/g,
    valid: () => true,
    normalize: (m) => m,
    partial: REDACT_ONLY,
  },
  aws_key: {
    maybe: (t) => t.includes('AKIA') || t.includes('ASIA'),
    pattern: /(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])/g,
    valid: () => true,
    normalize: (m) => m,
    // The 4-letter prefix only says "an access key id was here".
    partial: (m) => m.slice(0, 4) + '*'.repeat(16),
  },
  api_key: {
    maybe: (t) => API_KEY_PREFIX.test(t),
    // Prefixes that vendors put on their secrets so scanners can find them. The body runs as
    // far as its characters go (a character glued on is taken in, never a reason to let the
    // key through); a digit and a letter in it keep slugs such as `risk-assessment-…` out.
    // Case-insensitive: an upper-cased key (`GHP_…`) still gives most of it away.
    pattern: new RegExp(
      `(?<![A-Za-z0-9])(?:${API_KEY_PREFIXES.map(([p, body]) => `${p}${body}`).join('|')})`,
      'gi',
    ),
    valid: (m) => {
      const body = m.slice(apiKeyPrefix(m).length);
      return /\d/.test(body) && /[A-Za-z]/.test(body);
    },
    normalize: (m) => m,
    // The vendor's prefix only: 'ghp_********'.
    partial: (m) => apiKeyPrefix(m) + '********',
  },
  bearer: {
    maybe: (t) => /[Bb][Ee][Aa][Rr][Ee][Rr]/.test(t),
    // `Bearer <token>` (an Authorization header, a curl command line, a log line): the token
    // is at least 16 characters of the RFC 6750 token alphabet, so prose is left alone.
    pattern: /(?<![A-Za-z0-9_])[Bb][Ee][Aa][Rr][Ee][Rr](?:[ \t]+|%20)[A-Za-z0-9._~+/-]{16,}=*/g,
    valid: () => true,
    normalize: (m) => m.replace(/^\S+(?:[ \t]+|%20)/, ''),
    partial: REDACT_ONLY,
  },
  iban: {
    maybe: (t) => /[A-Z]{2}\d{2}/.test(t),
    // Upper case only, optionally in groups of four: lower case words of that shape are common.
    pattern:
      /(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])/g,
    valid: ibanValid,
    normalize: (m) => m.replace(/ /g, ''),
    // Country and the last four characters, spaces kept: 'DE** **** **** **** **30 00'.
    partial: (m) => {
      const n = m.replace(/ /g, '').length;
      let i = 0;
      return m.replace(/[A-Z0-9]/g, (c) => (i++ < 2 || i > n - 4 ? c : '*'));
    },
  },
  credit_card: {
    maybe: (t) => /\d{4}/.test(t),
    // 13-19 digits, contiguous or grouped 4-4-4-4(-3), 4-6-5 (Amex) or 4-6-4 (Diners), with one
    // consistent separator. Only digits bound it: a letter glued on (`x4111111111111111`,
    // `4111111111111111a`) must not hide a card, so stray digit runs (order numbers, ids) are
    // refused by the Luhn check and the issuer prefix instead, and a hash that passes both is
    // masked: a false positive costs a value, a false negative leaks one.
    pattern:
      /(?<!\d)(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1(?:\d{4}(?:\1\d{1,3})?|\d{1,3})|\d{4}([ -])\d{6}\2\d{4,5})(?!\d)/g,
    valid: (m) => {
      const d = digitsOf(m);
      // Issuers: 2 (Mastercard 2-series, Mir), 3 (Amex, Diners, JCB), 4 (Visa), 5 (Mastercard,
      // Maestro), 6 (Discover, UnionPay, Maestro). Numbers starting 0, 1, 7-9 are not cards.
      return d.length >= 13 && d.length <= 19 && /^[2-6]/.test(d) && luhnValid(d);
    },
    normalize: digitsOf,
    // Last four, the rest starred in place: '**** **** **** 1111', '***********0005'.
    partial: (m) => starDigits(m, 4),
  },
  ssn: {
    maybe: (t) => t.includes('-'),
    // Digits and dashes bound it, not letters: `x123-45-6789` is still an SSN.
    pattern: /(?<![0-9-])\d{3}-\d{2}-\d{4}(?![0-9-])/g,
    valid: (m) => {
      const [area = '', group = '', serial = ''] = m.split('-');
      // Never issued: area 000, 666, 900-999; group 00; serial 0000.
      return (
        area !== '000' && area !== '666' && area[0] !== '9' && group !== '00' && serial !== '0000'
      );
    },
    normalize: digitsOf,
    partial: (m) => '***-**-' + m.slice(-4),
  },
  email: {
    maybe: (t) => t.includes('@'),
    pattern:
      /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])/g,
    valid: () => true,
    normalize: (m) => m.toLowerCase(),
    // First character of the local part and the domain: 'j***@example.com'.
    partial: (m) => {
      const at = m.lastIndexOf('@');
      return m.slice(0, 1) + '***' + m.slice(at);
    },
  },
  phone: {
    maybe: (t) => t.includes('+'),
    // Conservative: international form only ('+' then 8-15 digits with light separators),
    // never after a word character, so sums like '1+2345678901' are left alone.
    pattern: /(?<![A-Za-z0-9_+])\+(?:\d[ .()-]{0,2}){7,14}\d(?![ .()-]{0,2}\d)(?![A-Za-z0-9])/g,
    valid: (m) => {
      const n = digitsOf(m).length;
      return n >= 8 && n <= 15;
    },
    normalize: (m) => '+' + digitsOf(m),
    // Last two digits: '+* ***-***-**43'. '+*' is not a phone any more.
    partial: (m) => starDigits(m, 2),
  },
};

// Most specific first: a PEM block holds base64 that could look like other things, an IBAN
// holds digit groups a card pattern could take, an email may hold a '+digits' local part.
const ORDER: readonly Detector[] = [
  'private_key',
  'jwt',
  'aws_key',
  'api_key',
  'bearer',
  'iban',
  'credit_card',
  'ssn',
  'email',
  'phone',
];

/**
 * Which detectors find at least one valid value in `text` (for discovery: what a column
 * holds, not how to mask it).
 */
export function detectIn(text: string, only: readonly Detector[] = ORDER): Detector[] {
  return ORDER.filter((d) => {
    if (!only.includes(d)) return false;
    const impl = DETECTORS[d];
    if (!impl.maybe(text)) return false;
    return (text.match(impl.pattern) ?? []).some((m) => impl.valid(m));
  });
}

// The same patterns anchored to a whole value, for cells hidden by a column rule.
const WHOLE = Object.fromEntries(
  ORDER.map((d) => [d, new RegExp(`^(?:${DETECTORS[d].pattern.source})$`)]),
) as Record<Detector, RegExp>;

/*
 * Forms this module produces. A cell hidden by a column rule that already holds one is left
 * as it is, so column rules are idempotent too. Only forms at least as strict as the
 * masker's own style are accepted: a pseudonym masker does not pass a partial form through.
 */
const REDACTED_FORM = /^\[redacted:[a-z0-9_-]+\](?:#\d+)?$/;
const pseudonymForm = (names: readonly string[]) =>
  new RegExp(`^(?:${[...DETECTOR_NAMES, 'column', ...names].join('|')})_[0-9a-f]{8}$`);
const PSEUDONYM_FORM = pseudonymForm([]);
const PARTIAL_FORMS: readonly RegExp[] = [
  /^[A-Za-z0-9._%+-]\*\*\*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}$/, // email
  /^\*[* -]{8,}\d{4}$/, // credit_card
  /^\*\*\*-\*\*-\d{4}$/, // ssn
  /^[A-Z]{2}\*\*[* ]*(?:[A-Z0-9] ?){3}[A-Z0-9]$/, // iban
  /^\+\*[* .()-]*\d[ .()-]{0,2}\d$/, // phone
  /^(?:AKIA|ASIA)\*{16}$/, // aws_key
];

function isMaskedForm(s: string, style: MaskStyle, pseudonyms = PSEUDONYM_FORM): boolean {
  if (REDACTED_FORM.test(s)) return true;
  if (style === 'redact') return false;
  if (pseudonyms.test(s)) return true;
  return style === 'partial' && PARTIAL_FORMS.some((r) => r.test(s));
}

function compileGlob(glob: string): Matcher[] {
  const parts = glob.trim().split('.');
  if (glob.trim() === '' || parts.length > 3 || parts.some((p) => p === '')) {
    throw new Error(
      `masking column pattern "${glob}" must be column, table.column or schema.table.column`,
    );
  }
  // Identifiers compare case-insensitively here: `*.Password` masks `password`.
  return parts.map((p) => ({ test: compileGlobs([p], { ignoreCase: true }) }));
}

interface Matcher {
  test(s: string): boolean;
}

interface ColumnGlob {
  /** The rule as written, for the audit counts (`column:*.password`). */
  source: string;
  schema?: Matcher;
  table?: Matcher;
  column: Matcher;
}

function toColumnGlob(glob: string): ColumnGlob {
  const parts = compileGlob(glob);
  const column = parts[parts.length - 1]!;
  const source = glob.trim();
  if (parts.length === 3) return { source, schema: parts[0]!, table: parts[1]!, column };
  if (parts.length === 2) return { source, table: parts[0]!, column };
  return { source, column };
}

/**
 * Column rules match the real origin (tableID/columnID), never the alias, so
 * `SELECT password AS p FROM users` is still masked and an alias cannot unmask anything.
 * When the origin is unknown (an expression such as `lower(password) AS password`), the alias
 * is matched against the column part of every glob, whatever its table part: we cannot tell
 * where the value came from, so we prefer masking. A schema-qualified glob matches a column
 * whose schema is unknown on its table and column parts alone, for the same reason.
 */
function columnMatches(globs: readonly ColumnGlob[], origin: ColumnOrigin): ColumnGlob | undefined {
  if (origin.table !== undefined && origin.column !== undefined) {
    const { table, column, schema } = origin;
    return globs.find(
      (g) =>
        g.column.test(column) &&
        (g.table === undefined || g.table.test(table)) &&
        (g.schema === undefined || schema === undefined || g.schema.test(schema)),
    );
  }
  return globs.find((g) => g.column.test(origin.name));
}

/** Count one value hidden by a column rule: in all (`column`) and per rule (`column:GLOB`). */
function countColumn(counts: Record<string, number>, rule: string): void {
  counts.column = (counts.column ?? 0) + 1;
  const key = `column:${rule}`;
  counts[key] = (counts[key] ?? 0) + 1;
}

/**
 * Why a statement with this lineage must not run under these profiles (a condition on a
 * masked column), or undefined. The policy decision point asks this, so the call, `explain`
 * and `policy explain/test` give the same answer.
 */
export function maskingConditionLeak(
  profiles: readonly MaskProfile[],
  lineage: Lineage,
): string | undefined {
  if (profiles.length === 0) return undefined;
  // The key only makes pseudonyms; conditions do not use it.
  return createMasker(profiles, { pseudonymKey: new Uint8Array(16) }).conditionLeak(lineage);
}

/** The same for computations over masked values, under profiles with `computed: deny`. */
export function maskingComputationLeak(
  profiles: readonly MaskProfile[],
  lineage: Lineage,
): string | undefined {
  const strict = profiles.filter((p) => p.computed === 'deny');
  if (strict.length === 0) return undefined;
  return createMasker(strict, { pseudonymKey: new Uint8Array(16) }).computationLeak(lineage);
}

export function createMasker(
  profiles: readonly MaskProfile[],
  opts: { pseudonymKey: Uint8Array },
): Masker {
  const detectorSet = new Set<Detector>();
  const globs: ColumnGlob[] = [];
  const custom = new Map<string, CompiledPattern>();
  let style: MaskStyle = 'partial';
  for (const p of profiles) {
    for (const d of p.detectors) {
      if (!Object.hasOwn(DETECTORS, d))
        throw new Error(`masking detector "${String(d)}" is unknown`);
      detectorSet.add(d);
    }
    for (const c of p.columns) globs.push(toColumnGlob(c));
    for (const [name, source] of Object.entries(p.patterns ?? {})) {
      const known = custom.get(name);
      if (known && known.source !== source) {
        throw new Error(`masking pattern ${name} is defined twice, with different patterns`);
      }
      custom.set(name, customPattern(name, source));
    }
    if (!Object.hasOwn(STYLE_RANK, p.style)) {
      throw new Error(`masking style "${String(p.style)}" is unknown`);
    }
    if (STYLE_RANK[p.style] > STYLE_RANK[style]) style = p.style;
  }
  if (profiles.length > 0 && opts.pseudonymKey.length < 16) {
    // A short key makes pseudonyms guessable by hashing candidate values.
    throw new Error('masking pseudonym key must be at least 16 bytes');
  }
  const detectors = ORDER.filter((d) => detectorSet.has(d));
  const key = Buffer.from(opts.pseudonymKey);
  const patterns = [...custom.entries()];
  const scans = detectors.length > 0 || patterns.length > 0;
  const active = profiles.length > 0 && (scans || globs.length > 0);
  const pseudonyms = patterns.length > 0 ? pseudonymForm([...custom.keys()]) : PSEUDONYM_FORM;

  const pseudonym = (kind: string, normalized: string): string =>
    `${kind}_${createHmac('sha256', key).update(normalized).digest('hex').slice(0, 8)}`;

  const maskMatch = (d: Detector, m: string): string => {
    const impl = DETECTORS[d];
    if (style === 'pseudonym') return pseudonym(d, impl.normalize(m));
    if (style === 'partial') return impl.partial(m) || `[redacted:${d}]`;
    return `[redacted:${d}]`;
  };

  /**
   * Detectors and patterns over `text`; then, when the text holds anything beyond ASCII, over
   * its look-alike-free form too (NFKC, which maps fullwidth `ｇｈｐ＿` and the like to ASCII,
   * without the invisible characters a value can be sprinkled with): if that form shows a value
   * the text itself hid, the normalized form is what is shown, masked.
   */
  const maskString = (text: string, counts: Record<string, number>): string => {
    const out = scanString(text, counts);
    if (!/[\u0080-\uffff]/.test(out)) return out;
    const plain = out.normalize('NFKC').replace(INVISIBLE, '');
    if (plain === out) return out;
    const extra: Record<string, number> = {};
    const masked = scanString(plain, extra);
    if (Object.keys(extra).length === 0) return out;
    for (const [k, n] of Object.entries(extra)) counts[k] = (counts[k] ?? 0) + n;
    return masked;
  };

  const scanString = (text: string, counts: Record<string, number>): string => {
    let out = text;
    for (const d of detectors) {
      const impl = DETECTORS[d];
      if (!impl.maybe(out)) continue;
      out = out.replace(impl.pattern, (m) => {
        if (!impl.valid(m)) return m;
        counts[d] = (counts[d] ?? 0) + 1;
        return maskMatch(d, m);
      });
    }
    for (const [name, pattern] of patterns) {
      const spans = pattern.spans(out);
      if (spans.length === 0) continue;
      counts[name] = (counts[name] ?? 0) + spans.length;
      let rebuilt = '';
      let at = 0;
      for (const [from, to] of spans) {
        rebuilt += out.slice(at, from);
        rebuilt +=
          style === 'pseudonym' ? pseudonym(name, out.slice(from, to)) : `[redacted:${name}]`;
        at = to;
      }
      out = rebuilt + out.slice(at);
    }
    return out;
  };

  // Walks JSON (pg's json/jsonb) and arrays; returns new containers, never mutates the input.
  const maskDeep = (v: unknown, counts: Record<string, number>, depth: number): unknown => {
    if (typeof v === 'string') return maskString(v, counts);
    if (v === null || typeof v !== 'object') return v;
    if (depth > 200) return '[redacted:too-deep]';
    if (Array.isArray(v)) return v.map((x) => maskDeep(x, counts, depth + 1));
    const proto = Object.getPrototypeOf(v) as unknown;
    if (proto !== Object.prototype && proto !== null) return v; // Date, Buffer: no free text
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      // Keys can hold PII too ({"jane@example.com": ...}); a collision keeps both entries.
      const base = maskString(k, counts);
      let mk = base;
      for (let n = 2; mk !== k && Object.hasOwn(out, mk); n++) mk = `${base}#${n}`;
      // A key a column rule names is that column inside a document ({"password": ...} in a
      // jsonb profile, a row turned into JSON): its value is hidden whole, whatever it holds.
      const rule = x !== null && x !== undefined ? globs.find((g) => g.column.test(k)) : undefined;
      if (rule) {
        countColumn(counts, rule.source);
        out[mk] = maskCell(x);
        continue;
      }
      out[mk] = maskDeep(x, counts, depth + 1);
    }
    return out;
  };

  /**
   * A column rule hides the whole value, whatever its type; null stays null (it reveals
   * nothing the row count does not). 'partial' and 'pseudonym' reuse a detector's form when
   * the whole value is one (an email column reads 'j***@example.com' and joins with
   * pseudonyms found in text); anything else (hashes, free text) is fully redacted in
   * 'partial', since "keep a little" of a secret is still a leak.
   */
  const maskCell = (v: unknown): unknown => {
    if (v === null || v === undefined) return v;
    if (style === 'redact') return '[redacted:column]';
    const s =
      typeof v === 'string' ? v : typeof v === 'bigint' ? v.toString() : (JSON.stringify(v) ?? '');
    if (typeof v === 'string' && isMaskedForm(s, style, pseudonyms)) return s;
    for (const d of ORDER) {
      const impl = DETECTORS[d];
      if (WHOLE[d].test(s) && impl.valid(s)) {
        if (style === 'pseudonym') return pseudonym(d, impl.normalize(s));
        return impl.partial(s) || '[redacted:column]';
      }
    }
    return style === 'pseudonym' ? pseudonym('column', s) : '[redacted:column]';
  };

  /**
   * A mention names a masked column: its name is one, or it is a column of a view the
   * statement reads that is computed from one (or from a whole row).
   */
  let views: Lineage['viewColumns'];
  const maskedName = (ref: SourceRef): boolean => {
    if (globs.some((g) => g.column.test(ref.column))) return true;
    if (!views) return false;
    const column = ref.column.toLowerCase();
    const named =
      ref.qualifier === undefined ? Object.values(views) : [views[ref.qualifier.toLowerCase()]];
    return named.some((cols) => {
      const c = cols && Object.hasOwn(cols, column) ? cols[column] : undefined;
      return (
        c !== undefined &&
        (c.wholeRow || c.output.some((r) => globs.some((g) => g.column.test(r.column))))
      );
    });
  };
  /**
   * A mention is of a masked column when its name is one, or names (through the statement's
   * aliases, followed a few steps) a value computed from one or from a whole row.
   */
  let aliases: Lineage['aliases'];
  const masked = (ref: SourceRef): boolean => {
    if (maskedName(ref)) return true;
    let names = [ref.column];
    const seen = new Set<string>();
    for (let step = 0; step < 8 && names.length > 0; step++) {
      const next: string[] = [];
      for (const n of names) {
        if (seen.has(n) || !aliases || !Object.hasOwn(aliases, n)) continue;
        seen.add(n);
        const a = aliases[n]!;
        if (a.wholeRow || a.output.some(maskedName)) return true;
        next.push(...a.output.map((r) => r.column));
      }
      names = next;
    }
    return false;
  };
  const touchesMasked = (l: { output: SourceRef[]; wholeRow: boolean }) =>
    l.wholeRow || l.output.some(masked);
  /**
   * Does computed result column `i` derive from a masked column (it is then hidden whole)?
   * Per column where the statement lets columns be told apart and its derived relations put
   * out nothing masked; else for the statement as a whole.
   */
  const derivesMasked = (lineage: Lineage | undefined, i: number): boolean => {
    if (lineage === undefined || globs.length === 0) return false;
    const own = lineage.columns?.[i];
    if (own && lineage.inner && !touchesMasked(lineage.inner)) return touchesMasked(own);
    return touchesMasked(lineage);
  };

  return {
    active,
    conditionLeak(lineage) {
      if (!active || globs.length === 0) return undefined;
      aliases = lineage.aliases;
      views = lineage.viewColumns;
      if (lineage.wholeRowInConditions) return 'a whole row (which holds masked columns)';
      if (lineage.statistics) {
        return 'the planner statistics (pg_stats), which hold sampled values of every column';
      }
      const ref =
        lineage.conditions.find(masked) ??
        (lineage.grouped ?? []).find(
          (r) =>
            masked(r) &&
            (!globs.some((g) => g.column.test(r.column)) ||
              (aliases !== undefined && Object.hasOwn(aliases, r.column))),
        );
      if (!ref) return undefined;
      const name = `${ref.qualifier ? `${ref.qualifier}.` : ''}${ref.column}`;
      return maskedName(ref)
        ? `masked column ${name}`
        : `${name}, a name for a masked column or a value computed from one`;
    },
    computationLeak(lineage) {
      if (!active || globs.length === 0) return undefined;
      aliases = lineage.aliases;
      views = lineage.viewColumns;
      if (lineage.wholeRowComputed) return 'a whole row (which holds masked columns)';
      const ref = (lineage.computed ?? []).find(masked);
      if (!ref) return undefined;
      const name = `${ref.qualifier ? `${ref.qualifier}.` : ''}${ref.column}`;
      return maskedName(ref)
        ? `masked column ${name}`
        : `${name}, a name for a masked column or a value computed from one`;
    },
    touches(lineage) {
      aliases = lineage.aliases;
      views = lineage.viewColumns;
      return (
        active &&
        globs.length > 0 &&
        (lineage.wholeRow ||
          lineage.wholeRowInConditions ||
          lineage.output.some(masked) ||
          lineage.conditions.some(masked))
      );
    },
    maskRows(columns, rows, lineage) {
      const counts: Record<string, number> = {};
      if (!active) return { value: rows, counts };
      aliases = lineage?.aliases;
      views = lineage?.viewColumns;
      // 'column': a masked column as it is (its NULLs stay NULL: that a value is missing is
      // shown). 'derived': a value computed from one, whose NULL is hidden too, since
      // `nullif(get_bit(…), 0)` turns each bit of the value into NULL-or-not.
      // Which rule a derived value is counted under: the first one a column it is computed
      // from matches ('derived' when it comes from a whole row or an alias chain).
      const ruleOf = (refs: readonly SourceRef[]) =>
        globs.find((g) => refs.some((r) => g.column.test(r.column)))?.source ?? 'derived';
      type How = { how: 'column' | 'derived'; rule: string } | undefined;
      const hidden = columns.map((c, i): How => {
        if (globs.length === 0) return undefined;
        const direct = columnMatches(globs, c);
        if (direct && c.derived === undefined) return { how: 'column', rule: direct.source };
        if (c.derived !== undefined && (touchesMasked(c.derived) || direct)) {
          return { how: 'derived', rule: direct?.source ?? ruleOf(c.derived.output) };
        }
        if ((c.table === undefined || c.column === undefined) && derivesMasked(lineage, i)) {
          return {
            how: 'derived',
            rule: ruleOf(lineage?.columns?.[i]?.output ?? lineage?.output ?? []),
          };
        }
        return undefined;
      });
      const value = rows.map((row) =>
        row.map((cell, i) => {
          const h = hidden[i];
          if (h) {
            if (h.how === 'column' && (cell === null || cell === undefined)) return cell;
            countColumn(counts, h.rule);
            if (cell === null || cell === undefined) return '[redacted:column]';
            return maskCell(cell);
          }
          return scans || globs.length > 0 ? maskDeep(cell, counts, 0) : cell;
        }),
      );
      return { value, counts };
    },
    maskText(text) {
      const counts: Record<string, number> = {};
      if (!active || !scans) return { value: text, counts };
      return { value: maskString(text, counts), counts };
    },
  };
}
