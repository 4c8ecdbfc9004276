/**
 * Policy globs: `*` matches any run of characters and `?` any one character, `/` and `.`
 * included; `[abc]`, `[a-z]` and `[!abc]` match one character of (or not of) a set; anything
 * else matches itself, case-sensitively, and the whole name must match.
 *
 * Not a path glob on purpose. Subjects are often path-like (`spiffe://corp/ci/runner`,
 * `repo:org/app:ref:refs/heads/main`) and a path glob's `*` stops at `/`: a deny rule on
 * `spiffe://corp/ci/*`, or even `*`, would silently not match them, and deny rules must not
 * fail open on a slash.
 */
export function compileGlobs(patterns: readonly string[]): (name: string) => boolean {
  const res = patterns.map(globToRegExp);
  return (name) => res.some((re) => re.test(name));
}

export function globToRegExp(pattern: string): RegExp {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') {
      out += '[\\s\\S]*';
    } else if (c === '?') {
      out += '[\\s\\S]';
    } else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end === -1) {
        out += '\\[';
        continue;
      }
      let body = pattern.slice(i + 1, end);
      const negate = body.startsWith('!') || body.startsWith('^');
      if (negate) body = body.slice(1);
      // Inside a class only `\`, `]` and `^` are special; `-` keeps its range meaning.
      out += `[${negate ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
      i = end;
    } else {
      out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    }
  }
  return new RegExp(`^${out}$`);
}
