/**
 * Policy globs: `*` matches any run of characters and `?` any one character, `/` and `.`
 * included; `[abc]`, `[a-z]` and `[!abc]` (or `[^abc]`) match one character of (or not of) a
 * set, a `]` right after the opening `[` or `[!` being a member; anything else matches itself,
 * case-sensitively unless asked otherwise, and the whole name must match. A `[` with no
 * closing `]` is a literal. Masking column patterns use the same matcher, per dotted part.
 *
 * Not a path glob on purpose. Subjects are often path-like (`spiffe://corp/ci/runner`,
 * `repo:org/app:ref:refs/heads/main`) and a path glob's `*` stops at `/`: a deny rule on
 * `spiffe://corp/ci/*`, or even `*`, would silently not match them, and deny rules must not
 * fail open on a slash.
 *
 * Matching is the two-pointer wildcard walk, O(name x pattern) at worst, with no regular
 * expression: names come from agents (a target is whatever the call says), and a backtracking
 * regex for `*-*-*-db` takes seconds on a few thousand characters.
 */
type Token = { kind: 'star' } | { kind: 'one'; test: (c: string) => boolean };

export function compileGlobs(
  patterns: readonly string[],
  opts: { ignoreCase?: boolean } = {},
): (name: string) => boolean {
  const fold = opts.ignoreCase ? (x: string) => x.toLowerCase() : (x: string) => x;
  const compiled = patterns.map((p) => tokenize(fold(p)));
  return (name) => {
    const chars = [...fold(name)];
    return compiled.some((tokens) => matchTokens(tokens, chars));
  };
}

export function globMatch(pattern: string, name: string): boolean {
  return compileGlobs([pattern])(name);
}

function tokenize(pattern: string): Token[] {
  const chars = [...pattern];
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') {
      if (tokens.at(-1)?.kind !== 'star') tokens.push({ kind: 'star' });
    } else if (c === '?') {
      tokens.push({ kind: 'one', test: () => true });
    } else if (c === '[') {
      const cls = charClass(chars, i);
      if (cls) {
        tokens.push({ kind: 'one', test: cls.test });
        i = cls.end;
      } else {
        tokens.push({ kind: 'one', test: (x) => x === '[' });
      }
    } else {
      tokens.push({ kind: 'one', test: (x) => x === c });
    }
  }
  return tokens;
}

/** `[...]` starting at `start`: its test and the index of its `]`, or undefined if unclosed. */
function charClass(
  chars: string[],
  start: number,
): { test: (c: string) => boolean; end: number } | undefined {
  let i = start + 1;
  const negate = chars[i] === '!' || chars[i] === '^';
  if (negate) i++;
  const first = i;
  const members: Array<[string, string]> = [];
  for (; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === ']' && i > first) break;
    if (chars[i + 1] === '-' && chars[i + 2] !== undefined && chars[i + 2] !== ']') {
      members.push([c, chars[i + 2]!]);
      i += 2;
    } else {
      members.push([c, c]);
    }
  }
  if (i >= chars.length) return undefined;
  const inSet = (x: string) => members.some(([lo, hi]) => x >= lo && x <= hi);
  return { test: negate ? (x) => !inSet(x) : inSet, end: i };
}

function matchTokens(tokens: Token[], name: string[]): boolean {
  let t = 0;
  let n = 0;
  let starT = -1;
  let starN = 0;
  while (n < name.length) {
    const tok = tokens[t];
    if (tok?.kind === 'one' && tok.test(name[n]!)) {
      t++;
      n++;
    } else if (tok?.kind === 'star') {
      starT = t++;
      starN = n;
    } else if (starT >= 0) {
      // Let the last star take one more character and try again from there.
      t = starT + 1;
      n = ++starN;
    } else {
      return false;
    }
  }
  while (tokens[t]?.kind === 'star') t++;
  return t === tokens.length;
}
