import { homedir } from 'node:os';
import path from 'node:path';

/**
 * Where `gatehouse demo` keeps its config, keys, audit log and recordings when `--dir` does
 * not say: a per-user directory, never the current one. Clients start servers from a working
 * directory of their own (Claude Desktop: `/`), where `.gatehouse/` cannot be created.
 * `$XDG_STATE_HOME/gatehouse/demo` when that is set (the XDG spec ignores a relative value),
 * else `~/.gatehouse/demo`, next to the `~/.gatehouse/` the README uses for tokens.
 *
 * Kept apart from demo.ts so the CLI can name it without loading the embedded database.
 */
export function defaultDemoDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'gatehouse', 'demo');
  return path.join(homedir(), '.gatehouse', 'demo');
}

export const DEMO_DIR_HELP = '$XDG_STATE_HOME/gatehouse/demo, else ~/.gatehouse/demo';
