import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { scrubSecrets } from '../../server/pipeline.js';

const result = (said: string): CallToolResult => ({
  content: [{ type: 'text', text: JSON.stringify({ message: said }, null, 2) }],
  structuredContent: { code: 'TARGET_ERROR', reason: said, nested: [{ said }] },
  isError: true,
});

describe('scrubSecrets', () => {
  it.each([
    ['plainpassw0rd'],
    ['pa"ss\\word!'],
    ['tab\there'],
    ['quote"and\\back\\\\slash'],
    ['ünïcødé-pässwörd'],
  ])('removes %j from structured content and from JSON rendered in text', (secret) => {
    const out = scrubSecrets([secret], result(`driver said: password=${secret}`));
    const json = JSON.stringify(out);
    expect(json).not.toContain(JSON.stringify(secret).slice(1, -1));
    expect(out.structuredContent).toMatchObject({ reason: 'driver said: password=[secret]' });
    expect((out.content[0] as { text: string }).text).toContain('password=[secret]');
  });

  it('leaves results without secrets as they are (the same object)', () => {
    const r = result('nothing to see');
    expect(scrubSecrets(['s3cret-value'], r)).toBe(r);
  });

  it('ignores secrets under 4 characters', () => {
    const r = result('abc');
    expect(scrubSecrets(['abc'], r)).toBe(r);
  });
});
