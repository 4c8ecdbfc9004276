import { describe, expect, it } from 'vitest';
import { compilePattern, PatternError } from '../../policies/pattern.js';

/**
 * The oracle: V8's backtracking RegExp, asked for every (start, end) pair whether the pattern
 * matches exactly there (with the text around it, for \b), and the covered characters merged
 * into runs. Slow and exact: only for short texts.
 */
function oracle(pattern: string, text: string): Array<[number, number]> {
  const fold = pattern.startsWith('(?i)');
  const body = fold ? pattern.slice(4) : pattern;
  const covered = new Array<boolean>(text.length).fill(false);
  for (let s = 0; s < text.length; s++) {
    for (let e = s + 1; e <= text.length; e++) {
      const re = new RegExp(`^[^]{${s}}(?:${body})(?<=^[^]{${e}})`, fold ? 'i' : '');
      if (re.test(text)) for (let k = s; k < e; k++) covered[k] = true;
    }
  }
  const runs: Array<[number, number]> = [];
  for (let k = 0; k < text.length; k++) {
    if (!covered[k]) continue;
    const last = runs[runs.length - 1];
    if (last && last[1] === k) last[1] = k + 1;
    else runs.push([k, k + 1]);
  }
  return runs;
}

/** Touching spans are one masked value; the oracle's runs may split where two matches touch. */
function merge(spans: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [s, e] of spans) {
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** A small seeded generator, so a failure names a case that can be replayed. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

function randomPattern(r: (n: number) => number, depth = 0): string {
  const atoms = ['a', 'b', '-', '\\d', '\\w', '[ab]', '[^a]', '.', 'A'];
  const pick = r(depth > 2 ? 3 : 7);
  if (pick <= 2) {
    const atom = atoms[r(atoms.length)]!;
    const q = ['', '', '?', '*', '+', '{2}', '{1,3}', '{0,2}', '{2,}'][r(9)]!;
    return atom + q;
  }
  if (pick === 3) return randomPattern(r, depth + 1) + randomPattern(r, depth + 1);
  if (pick === 4) return `(?:${randomPattern(r, depth + 1)}|${randomPattern(r, depth + 1)})`;
  if (pick === 5) return `(${randomPattern(r, depth + 1)})${['*', '+', '?', '{1,2}'][r(4)]!}`;
  return `\\b${randomPattern(r, depth + 1)}`;
}

describe('custom patterns', () => {
  it.each([
    [
      'EMP-\\d{6}',
      'id EMP-123456, EMP-12 and EMP-1234567',
      [
        [3, 13],
        [26, 36],
      ],
    ],
    ['\\bEMP-\\d{6}\\b', 'id EMP-123456, EMP-1234567', [[3, 13]]],
    [
      '(?i)emp-[0-9]{3}',
      'x Emp-123 eMP-999',
      [
        [2, 9],
        [10, 17],
      ],
    ],
    ['a|ab|abc', 'xabcx', [[1, 4]]],
    ['[^\\s]+@corp', 'mail bob@corp now', [[5, 13]]],
    [
      'é+',
      'café é',
      [
        [3, 4],
        [5, 6],
      ],
    ],
    ['\\{x\\}', 'a {x} b', [[2, 5]]],
  ] as Array<[string, string, Array<[number, number]>]>)('%s on %j', (pattern, text, want) => {
    expect(compilePattern(pattern).spans(text)).toEqual(want);
  });

  it('covers every match, overlapping ones included, as V8 would find them', () => {
    const r = rng(20261202);
    let compared = 0;
    for (let n = 0; n < 400; n++) {
      const pattern = randomPattern(r);
      let compiled;
      try {
        compiled = compilePattern(pattern);
      } catch (err) {
        expect(err).toBeInstanceOf(PatternError); // matches empty: refused, never a crash
        continue;
      }
      for (let t = 0; t < 6; t++) {
        const text = Array.from({ length: r(11) }, () => 'ab-1A '[r(6)]).join('');
        expect(compiled.spans(text), `${pattern} on ${JSON.stringify(text)}`).toEqual(
          merge(oracle(pattern, text)),
        );
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(1000);
  });

  it.each([
    ['^EMP', /anchors/],
    ['EMP$', /anchors/],
    ['(?=x)', /lookaround/],
    ['(?<n>x)', /lookaround/],
    ['(a)\\1', /backreferences/],
    ['a+?', /lazy and possessive/],
    ['a*', /empty string/],
    ['\\b', /empty string/],
    ['(a|)', /empty string/],
    ['a{300}', /above 256/],
    ['(a{200}){20}', /too large/],
    ['[z-a]', /out of order/],
    ['(ab', /unclosed/],
    ['ab)', /unmatched/],
    ['[ab', /unclosed/],
    ['*a', /nothing to repeat/],
    ['\\q', /unknown escape/],
    ['', /empty/],
  ])('refuses %j, saying why', (pattern, why) => {
    expect(() => compilePattern(pattern)).toThrow(why);
  });

  it('refuses a pattern longer than 512 characters', () => {
    expect(() => compilePattern('x'.repeat(600))).toThrow(/longer than/);
  });

  // The cost is the text's length times the NFA states alive at once: `.{0,32}` keeps 33
  // alive on a run of `a`. `npm run bench` measures the largest patterns allowed.
  it.each([
    ['(a|aa)*c', 'a'.repeat(1 << 20)],
    ['(a+)+b', 'a'.repeat(1 << 20)],
    ['(\\w+\\s?)+$x'.replace('$', ''), 'word '.repeat(1 << 18)],
    ['a.{0,32}z', 'a'.repeat(1 << 20)],
    ['(?:x|\\d){1,32}-', '1'.repeat(1 << 20)],
  ])('scans 1 MiB against %s in linear time', (pattern, text) => {
    const compiled = compilePattern(pattern);
    const t = performance.now();
    compiled.spans(text);
    // Backtracking takes hours on these; the NFA well under a second here (CI machines vary).
    expect(performance.now() - t).toBeLessThan(2000);
  });
});
