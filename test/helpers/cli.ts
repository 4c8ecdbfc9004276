import { fileURLToPath } from 'node:url';

/** Run the CLI from source (through tsx), so tests exercise the code as it is in the tree. */
export const CLI = [
  '--import',
  'tsx',
  fileURLToPath(new URL('../../server/cli.ts', import.meta.url)),
];

export function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && !k.startsWith('VITEST')) env[k] = v;
  return { ...env, ...extra };
}
