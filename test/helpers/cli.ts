import { spawn } from 'node:child_process';
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

export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Run `gatehouse ARGS` from source in a child process; resolves with its exit and output. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...CLI, ...args], {
      env: cliEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}
