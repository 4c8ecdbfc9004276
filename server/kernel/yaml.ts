import { readFile } from 'node:fs/promises';
import { LineCounter, parseDocument, isNode } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from './errors.js';

/**
 * Parse a YAML file against a zod schema. Every problem becomes one `file:line:col: message`
 * line naming the key path, so `gatehouse policy check` output can be clicked in an editor.
 */
export async function loadYamlFile<S extends z.ZodType>(
  file: string,
  schema: S,
): Promise<{ value: z.output<S>; locate: (path: readonly PropertyKey[]) => string }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
  return parseYamlText(file, text, schema);
}

export function parseYamlText<S extends z.ZodType>(
  file: string,
  text: string,
  schema: S,
): { value: z.output<S>; locate: (path: readonly PropertyKey[]) => string } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const where = (offset: number | undefined): string => {
    if (offset === undefined) return `${file}:1:1`;
    const { line, col } = lineCounter.linePos(offset);
    return `${file}:${line}:${col}`;
  };
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((e) => `${where(e.pos[0])}: ${e.message.split('\n')[0]}`);
    throw new ConfigError(issues[0] ?? `${file}: invalid YAML`, issues);
  }
  const locate = (path: readonly PropertyKey[]): string => {
    // Walk up the path until a node exists: a missing key is reported at its parent.
    for (let n = path.length; n >= 0; n--) {
      const node: unknown = doc.getIn(path.slice(0, n) as unknown[], true);
      if (isNode(node) && node.range) return where(node.range[0]);
    }
    return where(undefined);
  };
  const result = schema.safeParse(doc.toJS() ?? {});
  if (!result.success) {
    const issues = result.error.issues.map((issue) => {
      const path = issue.path.map(String).join('.');
      return `${locate(issue.path)}: ${path ? `${path}: ` : ''}${issue.message}`;
    });
    throw new ConfigError(issues[0] ?? `${file}: invalid`, issues);
  }
  return { value: result.data, locate };
}
