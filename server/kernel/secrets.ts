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
 * needs it and never logged; errors name the reference, never the value:
 * `credentials for target shop-db are not available: environment variable SHOP_DB_PASSWORD
 * is not set`. The reference is config, not a secret, and without it the agent (whose client
 * may hide the gateway's stderr) could only say that something is wrong.
 */
export async function resolveSecret(
  ref: SecretRef,
  baseDir: string,
  what: string,
): Promise<string> {
  const unavailable = (why: string, cause?: unknown) =>
    new GovernanceError(
      'TARGET_ERROR',
      `credentials for ${what} are not available: ${describeSecretRef(ref)} ${why}`,
      cause === undefined ? {} : { cause },
    );
  if ('env' in ref) {
    const v = process.env[ref.env];
    if (v === undefined) throw unavailable('is not set');
    if (v === '') throw unavailable('is empty');
    return v;
  }
  try {
    return (await readFile(resolvePath(baseDir, ref.file), 'utf8')).replace(/\r?\n$/, '');
  } catch (err) {
    // Its errno code; the fs error's own text (with the resolved path) stays in the cause.
    const code = (err as { code?: unknown }).code;
    throw unavailable(`cannot be read${typeof code === 'string' ? ` (${code})` : ''}`, err);
  }
}
