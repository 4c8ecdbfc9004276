import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { GovernanceError } from './errors.js';
import { resolvePath } from './paths.js';

/** A secret in the config is always a reference, resolved at the last moment, never a literal. */
const literalSecretMessage =
  'a secret must be a reference ({ env: NAME } or { file: PATH }), never a literal value';

export const SecretRef = z.union(
  [z.strictObject({ env: z.string().min(1) }), z.strictObject({ file: z.string().min(1) })],
  {
    error: (issue) =>
      typeof issue.input === 'string' || typeof issue.input === 'number'
        ? literalSecretMessage
        : 'expected { env: NAME } or { file: PATH }',
  },
);
export type SecretRef = z.infer<typeof SecretRef>;

/** How a reference reads in messages: `env SHOP_DB_PASSWORD`, `file ./secrets/db`. Never the value. */
export function describeSecretRef(ref: SecretRef): string {
  return 'env' in ref ? `environment variable ${ref.env}` : `file ${ref.file}`;
}

/**
 * Resolve a secret reference at the last moment. The value is returned to the caller that
 * needs it and never logged; errors name the reference, not the value.
 */
export async function resolveSecret(
  ref: SecretRef,
  baseDir: string,
  what: string,
): Promise<string> {
  if ('env' in ref) {
    const v = process.env[ref.env];
    if (v === undefined || v === '') {
      throw new GovernanceError('TARGET_ERROR', `credentials for ${what} are not available`, {
        cause: new Error(`environment variable ${ref.env} is not set`),
      });
    }
    return v;
  }
  try {
    return (await readFile(resolvePath(baseDir, ref.file), 'utf8')).replace(/\r?\n$/, '');
  } catch (err) {
    throw new GovernanceError('TARGET_ERROR', `credentials for ${what} are not available`, {
      cause: err,
    });
  }
}
