/**
 * Custom masking patterns from policy (`patterns:` in a masking profile), matched in time
 * linear in the text whatever the pattern: a pattern is compiled to a Thompson NFA and the
 * text is scanned once, keeping each NFA state at most once per position. JavaScript's own
 * RegExp backtracks (`(a|aa)*c` on a long run of `a` never ends), and a policy author's
 * pattern runs over every value every agent reads: a ReDoS there stops the gateway.
 *
 * The syntax is the part of regular expressions that needs no backtracking: literals,
 * escapes (`\d \D \w \W \s \S \t \n \r` and escaped punctuation), `.` (not a newline),
 * classes `[a-z0-9_]`, `[^…]`, groups `(…)` and `(?:…)`, alternation `|`, quantifiers
 * `? * + {n} {n,} {n,m}`, the word boundaries `\b`/`\B`, and a leading `(?i)` for
 * case-insensitive ASCII. Anything else (anchors, backreferences, lookaround, lazy or
 * possessive quantifiers) is refused with a message naming it, so a pattern never means
 * something other than what it says.
 *
 * What is masked is every character some match covers (the union of all matches, overlapping
 * or not), one masked value per run of covered characters. For masking that is the safe
 * reading, and it is what makes one pass enough: for each end position the scan knows the
 * earliest start of any match ending there, and the union of those spans is the union of
 * all matches.
 */

/** Pattern source length, and NFA size after `{n,m}` is unrolled. */
export const MAX_PATTERN_LENGTH = 512;
const MAX_STATES = 2048;
const MAX_REPEAT = 256;

type CharTest = (cp: number) => boolean;

type Node =
  | { op: 'char'; test: CharTest; out: number }
  | { op: 'split'; out: number; out2: number }
  | { op: 'assert'; word: boolean; out: number }
  | { op: 'match' };

/** A compiled pattern: the NFA, ready to scan. Immutable; share it freely. */
export interface CompiledPattern {
  readonly source: string;
  /** Character ranges [start, end) that some match covers, merged, in order. */
  spans(text: string): Array<[number, number]>;
}

export class PatternError extends Error {}

// ---- parsing: a small recursive-descent parser to an AST --------------------------------

type Ast =
  | { t: 'char'; test: CharTest }
  | { t: 'seq'; items: Ast[] }
  | { t: 'alt'; items: Ast[] }
  | { t: 'rep'; item: Ast; min: number; max: number } // max Infinity: unbounded
  | { t: 'assert'; word: boolean };

const isWordCp = (cp: number) =>
  (cp >= 48 && cp <= 57) || (cp >= 65 && cp <= 90) || (cp >= 97 && cp <= 122) || cp === 95;
const isDigitCp = (cp: number) => cp >= 48 && cp <= 57;
const isSpaceCp = (cp: number) =>
  cp === 32 ||
  (cp >= 9 && cp <= 13) ||
  cp === 0xa0 ||
  cp === 0x1680 ||
  (cp >= 0x2000 && cp <= 0x200a) ||
  cp === 0x2028 ||
  cp === 0x2029 ||
  cp === 0x202f ||
  cp === 0x205f ||
  cp === 0x3000 ||
  cp === 0xfeff;

const CLASS_ESCAPES: Record<string, CharTest> = {
  d: isDigitCp,
  D: (c) => !isDigitCp(c),
  w: isWordCp,
  W: (c) => !isWordCp(c),
  s: isSpaceCp,
  S: (c) => !isSpaceCp(c),
};
const CONTROL_ESCAPES: Record<string, number> = { t: 9, n: 10, r: 13, f: 12, v: 11 };
// Punctuation that may be escaped to stand for itself.
const PUNCT = new Set('\\^$.|?*+()[]{}/-:#@!%&=~`\'",;<>_ ');

class Parser {
  private i = 0;
  constructor(
    private readonly src: string,
    private readonly fold: boolean,
  ) {}

  parse(): Ast {
    const ast = this.alternation();
    if (this.i < this.src.length) {
      // Only a stray ')' stops alternation early.
      throw this.error(`unmatched ")"`);
    }
    return ast;
  }

  private error(msg: string, at = this.i): PatternError {
    return new PatternError(`${msg} at position ${at + 1}`);
  }

  private peek(): string | undefined {
    return this.src[this.i];
  }

  private alternation(): Ast {
    const items = [this.sequence()];
    while (this.peek() === '|') {
      this.i++;
      items.push(this.sequence());
    }
    return items.length === 1 ? items[0]! : { t: 'alt', items };
  }

  private sequence(): Ast {
    const items: Ast[] = [];
    for (let c = this.peek(); c !== undefined && c !== '|' && c !== ')'; c = this.peek()) {
      items.push(this.quantified());
    }
    return { t: 'seq', items };
  }

  private quantified(): Ast {
    const at = this.i;
    let item = this.atom();
    for (;;) {
      const c = this.peek();
      let min: number;
      let max: number;
      if (c === '?') [min, max] = [0, 1];
      else if (c === '*') [min, max] = [0, Infinity];
      else if (c === '+') [min, max] = [1, Infinity];
      else if (c === '{' && /^\{\d+(,\d*)?\}/.test(this.src.slice(this.i))) {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.i))!;
        min = Number(m[1]);
        max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
        if (min > MAX_REPEAT || (max !== Infinity && max > MAX_REPEAT)) {
          throw this.error(`a count above ${MAX_REPEAT} in {…}`);
        }
        if (max < min) throw this.error(`{${min},${max}}: the maximum is below the minimum`);
        this.i += m[0].length - 1;
      } else return item;
      this.i++;
      if (item.t === 'assert') throw this.error('a quantifier on \\b or \\B', at);
      const next = this.peek();
      if (next === '?' || next === '+') {
        throw this.error(
          `lazy and possessive quantifiers ("${c}${next}") are not supported (every match is masked, so they would change nothing)`,
        );
      }
      item = { t: 'rep', item, min, max };
    }
  }

  private atom(): Ast {
    const c = this.src[this.i]!;
    const at = this.i;
    this.i++;
    switch (c) {
      case '(': {
        if (this.src.startsWith('?:', this.i)) this.i += 2;
        else if (this.peek() === '?') {
          throw this.error(
            'lookaround and other (?…) groups are not supported; only (?:…) and a leading (?i)',
            at,
          );
        }
        const inner = this.alternation();
        if (this.peek() !== ')') throw this.error('unclosed "("', at);
        this.i++;
        return inner;
      }
      case '[':
        return { t: 'char', test: this.fold ? foldTest(this.charClass(at)) : this.charClass(at) };
      case '.':
        return { t: 'char', test: (cp) => cp !== 10 && cp !== 13 };
      case '^':
      case '$':
        throw this.error(
          `anchors ("${c}") are not supported: a pattern is searched for inside every value (use \\b for a word boundary)`,
          at,
        );
      case '?':
      case '*':
      case '+':
        throw this.error(`"${c}" has nothing to repeat`, at);
      case '{':
        throw this.error('"{" has nothing to repeat (write \\{ for the character)', at);
      case '\\':
        return this.escape(at);
      default: {
        const cp = this.src.codePointAt(at)!;
        if (cp > 0xffff) this.i++;
        return { t: 'char', test: this.literal(cp) };
      }
    }
  }

  private literal(cp: number): CharTest {
    if (!this.fold) return (x) => x === cp;
    const lower = foldCp(cp);
    return (x) => foldCp(x) === lower;
  }

  private escape(at: number): Ast {
    const e = this.src[this.i];
    if (e === undefined) throw this.error('a pattern cannot end with "\\"', at);
    this.i++;
    if (e === 'b' || e === 'B') return { t: 'assert', word: e === 'b' };
    if (Object.hasOwn(CLASS_ESCAPES, e)) return { t: 'char', test: CLASS_ESCAPES[e]! };
    if (Object.hasOwn(CONTROL_ESCAPES, e))
      return { t: 'char', test: this.literal(CONTROL_ESCAPES[e]!) };
    if (PUNCT.has(e)) return { t: 'char', test: this.literal(e.codePointAt(0)!) };
    if (/[1-9]/.test(e)) throw this.error('backreferences are not supported', at);
    throw this.error(`unknown escape "\\${e}"`, at);
  }

  /** `[...]` after the '[': ranges, escapes, negation. */
  private charClass(at: number): CharTest {
    let negate = false;
    if (this.peek() === '^') {
      negate = true;
      this.i++;
    }
    const tests: CharTest[] = [];
    const ranges: Array<[number, number]> = [];
    let first = true;
    for (;;) {
      const c = this.peek();
      if (c === undefined) throw this.error('unclosed "["', at);
      if (c === ']' && !first) {
        this.i++;
        break;
      }
      first = false;
      const lo = this.classAtom(tests);
      if (lo === undefined) continue;
      if (
        this.peek() === '-' &&
        this.src[this.i + 1] !== ']' &&
        this.src[this.i + 1] !== undefined
      ) {
        this.i++;
        const hi = this.classAtom(tests);
        if (hi === undefined) throw this.error('a range cannot end in a class escape', at);
        if (hi < lo) throw this.error('a range out of order in [...]', at);
        ranges.push([lo, hi]);
      } else ranges.push([lo, lo]);
    }
    const test: CharTest = (cp) =>
      ranges.some(([lo, hi]) => cp >= lo && cp <= hi) || tests.some((t) => t(cp));
    return negate ? (cp) => !test(cp) : test;
  }

  /** One class member: a code point, or undefined after adding a class escape to `tests`. */
  private classAtom(tests: CharTest[]): number | undefined {
    const c = this.src[this.i]!;
    if (c !== '\\') {
      const cp = this.src.codePointAt(this.i)!;
      this.i += cp > 0xffff ? 2 : 1;
      return cp;
    }
    const e = this.src[this.i + 1];
    if (e === undefined) throw this.error('a pattern cannot end with "\\"');
    this.i += 2;
    if (Object.hasOwn(CLASS_ESCAPES, e)) {
      tests.push(CLASS_ESCAPES[e]!);
      return undefined;
    }
    if (Object.hasOwn(CONTROL_ESCAPES, e)) return CONTROL_ESCAPES[e]!;
    if (PUNCT.has(e)) return e.codePointAt(0)!;
    throw this.error(`unknown escape "\\${e}" in [...]`);
  }
}

function foldCp(cp: number): number {
  return cp >= 65 && cp <= 90 ? cp + 32 : cp;
}
function foldTest(t: CharTest): CharTest {
  return (cp) =>
    t(cp) || (cp >= 65 && cp <= 90 && t(cp + 32)) || (cp >= 97 && cp <= 122 && t(cp - 32));
}

// ---- compiling: AST to NFA --------------------------------------------------------------

class Builder {
  readonly nodes: Node[] = [];

  private add(n: Node): number {
    if (this.nodes.length >= MAX_STATES) {
      throw new PatternError(
        `too large once its counts are unrolled (more than ${MAX_STATES} states): use smaller {n,m}`,
      );
    }
    this.nodes.push(n);
    return this.nodes.length - 1;
  }

  /** Compile `ast` so that it continues to `next`; returns the entry state. */
  build(ast: Ast, next: number): number {
    switch (ast.t) {
      case 'char':
        return this.add({ op: 'char', test: ast.test, out: next });
      case 'assert':
        return this.add({ op: 'assert', word: ast.word, out: next });
      case 'seq': {
        let entry = next;
        for (let k = ast.items.length - 1; k >= 0; k--) entry = this.build(ast.items[k]!, entry);
        return entry;
      }
      case 'alt': {
        const entries = ast.items.map((a) => this.build(a, next));
        let entry = entries[entries.length - 1]!;
        for (let k = entries.length - 2; k >= 0; k--) {
          entry = this.add({ op: 'split', out: entries[k]!, out2: entry });
        }
        return entry;
      }
      case 'rep': {
        let entry = next;
        if (ast.max === Infinity) {
          // A loop: split -> (item -> back to split) | next.
          const split = this.add({ op: 'split', out: -1, out2: next });
          const body = this.build(ast.item, split);
          (this.nodes[split] as { out: number }).out = body;
          entry = split;
        } else {
          // The optional copies, nested: (item (item (…)?)?)?, each able to skip to `next`.
          for (let k = ast.max - ast.min; k > 0; k--) {
            entry = this.add({ op: 'split', out: this.build(ast.item, entry), out2: next });
          }
        }
        for (let k = 0; k < ast.min; k++) entry = this.build(ast.item, entry);
        return entry;
      }
    }
  }
}

/** Compile a pattern, or throw PatternError saying what in it is not supported. */
export function compilePattern(source: string): CompiledPattern {
  if (source.length === 0) throw new PatternError('a pattern cannot be empty');
  if (source.length > MAX_PATTERN_LENGTH) {
    throw new PatternError(`longer than ${MAX_PATTERN_LENGTH} characters`);
  }
  const fold = source.startsWith('(?i)');
  const ast = new Parser(fold ? source.slice(4) : source, fold).parse();
  const b = new Builder();
  const match = b.nodes.push({ op: 'match' }) - 1;
  const start = b.build(ast, match);
  const nfa = b.nodes;
  const matcher = new Matcher(nfa, start);
  if (matcher.matchesEmpty()) {
    throw new PatternError('it matches the empty string (every value would be masked)');
  }
  return { source, spans: (text) => matcher.spans(text) };
}

// ---- matching: one pass, each state at most once per position ---------------------------

class Matcher {
  private readonly size: number;
  /** Per `char` state s: which ASCII characters pass, at [s * 128 + c]; the test for the rest. */
  private readonly ascii: Uint8Array;
  private readonly outOf: Int32Array;
  /**
   * What each state reaches without reading, per word-boundary context (previous character
   * a word character: 2, next one: 1), computed on first use: the `char` states, as a range
   * of `closureData`, and whether the match state is among them.
   */
  private readonly closureFrom: Int32Array;
  private readonly closureTo: Int32Array;
  private readonly closureMatch: Uint8Array;
  private closureData: Int32Array;
  private closureUsed = 0;
  /** ASCII characters a match can begin with (non-ASCII ones are always tried). */
  private readonly firstAscii: Uint8Array;

  constructor(
    private readonly nfa: readonly Node[],
    private readonly start: number,
  ) {
    const size = nfa.length;
    this.size = size;
    this.ascii = new Uint8Array(size * 128);
    this.outOf = new Int32Array(size);
    nfa.forEach((n, s) => {
      if (n.op !== 'char') return;
      this.outOf[s] = n.out;
      for (let c = 0; c < 128; c++) this.ascii[s * 128 + c] = n.test(c) ? 1 : 0;
    });
    this.closureFrom = new Int32Array(size * 4).fill(-1);
    this.closureTo = new Int32Array(size * 4);
    this.closureMatch = new Uint8Array(size * 4);
    this.closureData = new Int32Array(size * 4);
    this.firstAscii = new Uint8Array(128);
    for (let ctx = 0; ctx < 4; ctx++) {
      const at = this.closure(start, ctx);
      for (let j = this.closureFrom[at]!; j < this.closureTo[at]!; j++) {
        const s = this.closureData[j]!;
        for (let c = 0; c < 128; c++) this.firstAscii[c]! |= this.ascii[s * 128 + c]!;
      }
    }
  }

  /** The index of the closure of `s0` in context `ctx`, computed on first use. */
  private closure(s0: number, ctx: number): number {
    const at = ctx * this.size + s0;
    if (this.closureFrom[at] !== -1) return at;
    const chars: number[] = [];
    let match = false;
    const seen = new Set<number>();
    const stack = [s0];
    const before = (ctx & 2) !== 0;
    const after = (ctx & 1) !== 0;
    while (stack.length > 0) {
      const s = stack.pop()!;
      if (seen.has(s)) continue;
      seen.add(s);
      const n = this.nfa[s]!;
      if (n.op === 'char') chars.push(s);
      else if (n.op === 'match') match = true;
      else if (n.op === 'split') stack.push(n.out2, n.out);
      else if ((before !== after) === n.word) stack.push(n.out);
    }
    if (this.closureUsed + chars.length > this.closureData.length) {
      const grown = new Int32Array(
        Math.max(this.closureData.length * 2, this.closureUsed + chars.length),
      );
      grown.set(this.closureData);
      this.closureData = grown;
    }
    this.closureData.set(chars, this.closureUsed);
    this.closureFrom[at] = this.closureUsed;
    this.closureUsed += chars.length;
    this.closureTo[at] = this.closureUsed;
    this.closureMatch[at] = match ? 1 : 0;
    return at;
  }

  /** Does the pattern match "" somewhere (in any word-boundary context)? */
  matchesEmpty(): boolean {
    return [0, 1, 2, 3].some((ctx) => this.closureMatch[this.closure(this.start, ctx)] === 1);
  }

  spans(text: string): Array<[number, number]> {
    const nfa = this.nfa;
    const size = this.size;
    const { ascii, outOf, closureFrom, closureTo, closureMatch } = this;
    // Threads: a state to continue from and the earliest start that reached it. `mark` holds
    // the step that last took a `char` state, so nothing needs clearing between steps.
    const cur = new Int32Array(size + 1);
    const curStart = new Int32Array(size + 1);
    const next = new Int32Array(size);
    const nextStart = new Int32Array(size);
    const mark = new Int32Array(size).fill(-1);
    let curN = 0;
    const out: Array<[number, number]> = [];

    const record = (s: number, e: number) => {
      // Spans arrive by end; one overlapping or touching the last extends it, and one
      // reaching back over earlier ones swallows them.
      const last = out[out.length - 1];
      if (!last || s > last[1]) {
        out.push([s, e]);
        return;
      }
      last[0] = Math.min(last[0], s);
      last[1] = e;
      while (out.length > 1 && out[out.length - 2]![1] >= out[out.length - 1]![0]) {
        const top = out.pop()!;
        const prev = out[out.length - 1]!;
        prev[0] = Math.min(prev[0], top[0]);
        prev[1] = Math.max(prev[1], top[1]);
      }
    };

    const { firstAscii } = this;
    let prevWord = false;
    for (let pos = 0, step = 0; ; step++) {
      if (curN === 0) {
        // No match in progress: skip to a character a match can begin with.
        const from = pos;
        for (
          let c = text.charCodeAt(pos);
          c < 128 && firstAscii[c] === 0;
          c = text.charCodeAt(++pos)
        );
        if (pos !== from) prevWord = isWordCp(text.charCodeAt(pos - 1));
      }
      const cp = pos < text.length ? text.codePointAt(pos)! : -1;
      const ctx = (prevWord ? 2 : 0) | (cp >= 0 && cp < 128 && isWordCp(cp) ? 1 : 0);
      // Expand each thread, earliest starts first, then a new thread starting here, into the
      // char states it waits in: the first thread to reach a state has the earliest start,
      // later ones are dropped. A thread that reaches the match state ends a match here.
      cur[curN] = this.start;
      curStart[curN] = pos;
      let nextN = 0;
      let matchStart = -1;
      for (let k = 0; k <= curN; k++) {
        const from = curStart[k]!;
        let at = ctx * size + cur[k]!;
        if (closureFrom[at] === -1) at = this.closure(cur[k]!, ctx);
        if (matchStart === -1 && closureMatch[at] === 1 && from < pos) matchStart = from;
        const data = this.closureData;
        for (let j = closureFrom[at]!, end = closureTo[at]!; j < end; j++) {
          const s = data[j]!;
          if (mark[s] === step) continue;
          mark[s] = step;
          next[nextN] = s;
          nextStart[nextN++] = from;
        }
      }
      if (matchStart !== -1) record(matchStart, pos);
      if (cp < 0) break;
      // Step every waiting thread over this character.
      curN = 0;
      for (let k = 0; k < nextN; k++) {
        const s = next[k]!;
        if (cp < 128 ? ascii[s * 128 + cp] === 1 : (nfa[s] as { test: CharTest }).test(cp)) {
          cur[curN] = outOf[s]!;
          curStart[curN++] = nextStart[k]!;
        }
      }
      prevWord = cp < 128 && isWordCp(cp);
      pos += cp > 0xffff ? 2 : 1;
    }
    return out;
  }
}
