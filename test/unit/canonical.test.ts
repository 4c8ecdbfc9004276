import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../recordings/canonical.js';

/** CONTRACT section 6: the chain's canonical JSON is RFC 8785 (JCS). Vectors from the RFC. */
describe('canonicalJson is RFC 8785 (JCS)', () => {
  it('matches the RFC 8785 section 3.2.2 example', () => {
    const input = JSON.parse(
      '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],' +
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}',
    ) as unknown;
    expect(canonicalJson(input)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
  });

  it('sorts keys by UTF-16 code units (RFC 8785 section 3.2.3)', () => {
    const keys = ['\u20ac', '\r', '\ufb33', '1', '\ud83d\ude00', '\u0080', '\u00f6'];
    const obj = Object.fromEntries(keys.map((k) => [k, 0]));
    expect(canonicalJson(obj)).toBe('{"\\r":0,"1":0,"\u0080":0,"ö":0,"€":0,"😀":0,"\ufb33":0}');
  });

  it.each([
    [1e-7, '1e-7'],
    [1e21, '1e+21'],
    [1e20, '100000000000000000000'],
    [0.1, '0.1'],
    [-0, '0'],
    [123456789012345680000, '123456789012345680000'],
    [5e-324, '5e-324'],
    [1.7976931348623157e308, '1.7976931348623157e+308'],
    [0.000001, '0.000001'],
    [-1.5e-7, '-1.5e-7'],
  ])('writes the number %s as %s', (n, text) => {
    expect(canonicalJson(n)).toBe(text);
  });

  it('writes U+2028, DEL, C1 and astral characters raw; escapes only C0, " and \\', () => {
    expect(canonicalJson('\u2028\u007f\u009b😀\u0001\t"\\')).toBe(
      '"\u2028\u007f\u009b😀\\u0001\\t\\"\\\\"',
    );
  });

  it.each([
    ['a lone high surrogate', 'a\ud800'],
    ['a lone low surrogate', '\udc00b'],
    ['reversed pair', '\ude00\ud83d'],
  ])('rejects %s, in values and in keys', (_name, s) => {
    expect(() => canonicalJson({ v: s })).toThrow(/lone UTF-16 surrogate/);
    expect(() => canonicalJson({ [s]: 1 })).toThrow(/lone UTF-16 surrogate/);
    expect(() => canonicalJson([s])).toThrow(/lone UTF-16 surrogate/);
  });

  it('still refuses values that would not survive a round trip', () => {
    expect(() => canonicalJson(Number.NaN)).toThrow();
    expect(() => canonicalJson({ a: Infinity })).toThrow();
    expect(() => canonicalJson(new Map())).toThrow();
  });
});
