import { describe, expect, it } from 'vitest';
import { renderRows, TEXT_ROWS_MAX, TEXT_TABLE_MAX_CHARS } from '../../server/render.js';

/** #8.11: the text view is for a model's context; the structured content has every row. */
describe('renderRows', () => {
  const result = (n: number, width = 10) => ({
    columns: [{ name: 'id' }, { name: 'v' }],
    rows: Array.from({ length: n }, (_, i) => [i, 'x'.repeat(width)]),
    rowCount: n,
    truncated: false,
    operation: 'read',
  });

  it('shows a small result whole, without a note', () => {
    const text = renderRows('db', result(3), 'n0');
    expect(text.split('\n').filter((l) => /^\d+ +\| x+$/.test(l))).toHaveLength(3);
    expect(text).not.toMatch(/structured content/);
  });

  it(`caps the table at ${TEXT_ROWS_MAX} rows and says where the rest is`, () => {
    const text = renderRows('db', result(1000), 'n0');
    expect(text.split('\n').filter((l) => /^\d+ +\| x+$/.test(l))).toHaveLength(TEXT_ROWS_MAX);
    expect(text).toMatch(/^db: read, 1000 rows\n/);
    expect(text).toMatch(
      /\(the table shows the first 50 of 1000 rows; all 1000 are in the structured content\)$/,
    );
    // 1,000 rows x 4 columns once made a 225 KB text; now it stays small whatever the result.
    expect(text.length).toBeLessThan(TEXT_TABLE_MAX_CHARS + 1000);
  });

  it('caps wide rows by characters too', () => {
    const wide = {
      columns: Array.from({ length: 10 }, (_, i) => ({ name: `c${i}` })),
      rows: Array.from({ length: 40 }, (_, i) => [i, ...Array<string>(9).fill('y'.repeat(200))]),
      rowCount: 40,
      truncated: false,
      operation: 'read',
    };
    const text = renderRows('db', wide, 'n0');
    const shown = text.split('\n').filter((l) => /^\d+ +\| y+/.test(l)).length;
    expect(shown).toBeGreaterThan(0);
    expect(shown).toBeLessThan(40);
    expect(text).toMatch(new RegExp(`the table shows the first ${shown} of 40 rows`));
    expect(text.length).toBeLessThan(TEXT_TABLE_MAX_CHARS + 1000);
  });
});
