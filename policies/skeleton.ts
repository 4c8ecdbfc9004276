/**
 * Look-alike folding for deny and approve matching (README "Policies", "How names are
 * matched"). `skeleton(s)` maps a string to a canonical form in which `Mallory`, `mallory `,
 * `mallоry` (Cyrillic о), `ｍａｌｌｏｒｙ`, `mal\u200Blory` and `rnallory` all become `mallory`,
 * in the spirit of Unicode TR39's confusable skeletons.
 *
 * It is deliberately lossy: two different names may share a skeleton (`mallory`,
 * `maiiory`, `ma11ory`). That is the fail-safe direction for a deny rule, and why allow
 * rules never use it (a look-alike must not gain an allow meant for someone else).
 *
 * Steps, in order, applied the same way to a rule's pattern and to the caller's value:
 *  1. NFKC: fullwidth, mathematical, circled, superscript letters and odd spaces become
 *     plain ones (`ｍ`, `𝐦`, `ⓜ` -> `m`).
 *  2. Upper-case look-alikes from other scripts become Latin capitals (Cyrillic `В`, Greek
 *     `Η`, Cherokee `Ꮇ`), before case folding turns them into letters that no longer look
 *     Latin (`в`, `η`, `ꮇ`).
 *  3. Lower case (`toLowerCase`, which is locale-independent in JavaScript: `I` never becomes
 *     Turkish `ı`), then `ß` -> `ss` and final `ς` -> `σ` (full case folding's extras).
 *  4. NFD, then every combining mark, default-ignorable code point (zero-width space and
 *     joiners, soft hyphen, BOM, variation selectors, tag characters, ...) and white space
 *     is dropped, so `mal\u200Blory`, ` mallory`, `mal lory` and `mällory` lose the extra.
 *  5. Lower-case look-alikes become Latin letters (Cyrillic `о`, Greek `ο`, Armenian `օ`,
 *     Latin small capitals `ᴍ`, `ı`, `ł`, ...), and within ASCII the pairs TR39 lists as
 *     confusable are folded: `1`, `i`, `|` -> `l` and `0` -> `o` (`I` and `l` look the same in
 *     many fonts, and case folding has already merged `I` into `i`).
 *  6. The multi-letter look-alikes `rn` -> `m`, `vv` -> `w`, `cl` -> `d`.
 *
 * The tables are compact on purpose (Cyrillic, Greek, Armenian, Cherokee, Lisu, Coptic,
 * Latin small capitals and stroked letters, and single strokes of a few other scripts), not the whole of TR39's confusables.txt: the npm
 * packages that ship that file are unmaintained or not skeletons (README "Why these
 * dependencies").
 */

/** Pairs of equal length: source characters, then the Latin letter each one looks like. */
const UPPER: ReadonlyArray<readonly [string, string]> = [
  // Cyrillic capitals: А В Е К М Н О Р С Т У Х Ѕ І Ј Ԛ Ԝ Ү Ӏ Һ Ԍ Ѵ
  [
    '\u0410\u0412\u0415\u041A\u041C\u041D\u041E\u0420\u0421\u0422\u0423\u0425\u0405\u0406\u0408\u051A\u051C\u04AE\u04C0\u04BA\u050C\u0474',
    'ABEKMHOPCTYXSIJQWYIHGV',
  ],
  // Greek capitals: Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ Ϲ Ϳ
  [
    '\u0391\u0392\u0395\u0396\u0397\u0399\u039A\u039C\u039D\u039F\u03A1\u03A4\u03A5\u03A7\u03F9\u037F',
    'ABEZHIKMNOPTYXCJ',
  ],
  // Armenian capitals: Օ Ս Տ Լ
  ['\u0555\u054D\u054F\u053C', 'OUSL'],
  // Cherokee capitals: Ꭺ Ᏼ Ꮯ Ꭰ Ꭼ Ꮐ Ꮋ Ꭵ Ꭻ Ꮶ Ꮮ Ꮇ Ꮲ Ꭱ Ꮪ Ꭲ Ꮩ Ꮃ Ꮓ
  [
    '\u13AA\u13F4\u13DF\u13A0\u13AC\u13C0\u13BB\u13A5\u13AB\u13E6\u13DE\u13B7\u13E2\u13A1\u13DA\u13A2\u13D9\u13B3\u13C3',
    'ABCDEGHiJKLMPRSTVWZ',
  ],
  // Cherokee capitals found by the red-team pass: Ꮎ Ꮍ Ꮢ Ꭹ Ꮤ
  ['\u13BE\u13BD\u13D2\u13A9\u13D4', 'OYRYW'],
  // Lisu (no case): ꓐ ꓑ ꓓ ꓔ ꓖ ꓗ ꓙ ꓚ ꓜ ꓝ ꓟ ꓠ ꓡ ꓢ ꓣ ꓦ ꓧ ꓪ ꓫ ꓬ ꓮ ꓰ ꓲ ꓳ ꓴ
  [
    '\uA4D0\uA4D1\uA4D3\uA4D4\uA4D6\uA4D7\uA4D9\uA4DA\uA4DC\uA4DD\uA4DF\uA4E0\uA4E1\uA4E2\uA4E3\uA4E6\uA4E7\uA4EA\uA4EB\uA4EC\uA4EE\uA4F0\uA4F2\uA4F3\uA4F4',
    'BPDTGKJCZFMNLSRVHWXYAEIOU',
  ],
  // Coptic capitals: Ⲁ Ⲃ Ⲉ Ⲓ Ⲕ Ⲙ Ⲛ Ⲟ Ⲣ Ⲥ Ⲧ Ⲩ Ⲭ
  [
    '\u2C80\u2C82\u2C88\u2C92\u2C94\u2C98\u2C9A\u2C9E\u2CA2\u2CA4\u2CA6\u2CA8\u2CAC',
    'ABEIKMNOPCTYX',
  ],
];

const LOWER: ReadonlyArray<readonly [string, string]> = [
  // Cyrillic: а в е г к м н о п р с т у х ѕ і ј һ ԁ ԛ ԝ ӏ ь ԍ ѵ ү є
  [
    '\u0430\u0432\u0435\u0433\u043A\u043C\u043D\u043E\u043F\u0440\u0441\u0442\u0443\u0445\u0455\u0456\u0458\u04BB\u0501\u051B\u051D\u04CF\u044C\u050D\u0475\u04AF\u0454',
    'aberkmhonpctyxsijhdqwlbgvye',
  ],
  // Greek: α β γ ε η ι κ ν ο ρ τ υ χ ω ϲ ϳ
  [
    '\u03B1\u03B2\u03B3\u03B5\u03B7\u03B9\u03BA\u03BD\u03BF\u03C1\u03C4\u03C5\u03C7\u03C9\u03F2\u03F3',
    'abyenikvoptuxwcj',
  ],
  // Armenian: օ ո ս հ ց զ
  ['\u0585\u0578\u057D\u0570\u0581\u0566', 'onuhgq'],
  // Coptic: ⲁ ⲟ ⲥ ⲣ ⲓ ⲭ
  ['\u2C81\u2C9F\u2CA5\u2CA3\u2C93\u2CAD', 'aocpix'],
  // Single strokes and rings of other scripts: Tifinagh ⵏ, runic ᛁ, Old Italic 𐌉, N'Ko ߀,
  // Latin ɾ and blackletter ꬽ
  ['\u2D4F\u16C1\u{10309}\u07C0\u027E\uAB3D', 'llloro'],
  // Latin: dotless ı ȷ, ɑ ɡ ɩ ǀ, stroked ł đ ħ ø ŧ ƀ
  ['\u0131\u0237\u0251\u0261\u0269\u01C0\u0142\u0111\u0127\u00F8\u0167\u0180', 'ijagilldhotb'],
  // Latin small capitals: ᴀ ʙ ᴄ ᴅ ᴇ ɢ ʜ ɪ ᴊ ᴋ ʟ ᴍ ɴ ᴏ ᴘ ʀ ꜱ ᴛ ᴜ ᴠ ᴡ ʏ ᴢ
  [
    '\u1D00\u0299\u1D04\u1D05\u1D07\u0262\u029C\u026A\u1D0A\u1D0B\u029F\u1D0D\u0274\u1D0F\u1D18\u0280\uA731\u1D1B\u1D1C\u1D20\u1D21\u028F\u1D22',
    'abcdeghijklmnoprstuvwyz',
  ],
];

/** ASCII look-alikes, applied to every target as well (so Cyrillic і ends up as l too). */
const ASCII_FOLD: Readonly<Record<string, string>> = { i: 'l', '1': 'l', '|': 'l', '0': 'o' };
const SEQUENCES: ReadonlyArray<readonly [RegExp, string]> = [
  [/rn/g, 'm'],
  [/vv/g, 'w'],
  [/cl/g, 'd'],
  [/\u01C1/g, 'll'],
];

function table(pairs: ReadonlyArray<readonly [string, string]>, fold: boolean) {
  const map = new Map<string, string>();
  for (const [from, to] of pairs) {
    const src = [...from];
    const dst = [...to];
    if (src.length !== dst.length) throw new Error('skeleton: table rows differ in length');
    src.forEach((c, i) => map.set(c, fold ? (ASCII_FOLD[dst[i]!] ?? dst[i]!) : dst[i]!));
  }
  return map;
}

const UPPER_MAP = table(UPPER, false);
const LOWER_MAP = table(LOWER, true);
for (const [from, to] of Object.entries(ASCII_FOLD)) LOWER_MAP.set(from, to);

const CHEROKEE_SMALL = /[\uAB70-\uABBF\u13F8-\u13FD]/gu;

const DROP = /[\p{M}\p{Default_Ignorable_Code_Point}\p{White_Space}]/gu;

/** The look-alike skeleton of a name; see the file comment for the steps. */
export function skeleton(s: string): string {
  // Cherokee small letters are written as their capitals first, so the capitals' table
  // covers both (case folding would otherwise turn `Ꮎ` into `ꮎ`, which looks nothing Latin).
  const nfkc = s.normalize('NFKC').replace(CHEROKEE_SMALL, (c) => c.toUpperCase());
  let out = mapChars(nfkc, UPPER_MAP)
    .toLowerCase()
    .replace(/ß/g, 'ss')
    .replace(/ς/g, 'σ')
    .normalize('NFD')
    .replace(DROP, '');
  out = mapChars(out, LOWER_MAP);
  for (const [re, to] of SEQUENCES) out = out.replace(re, to);
  return out;
}

function mapChars(s: string, map: ReadonlyMap<string, string>): string {
  let out = '';
  for (const c of s) out += map.get(c) ?? c;
  return out;
}
