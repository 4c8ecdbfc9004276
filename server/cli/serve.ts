import { readFileSync } from 'node:fs';
import { parseListen } from '../config.js';
import { DEMO_DIR_HELP } from '../demo/state-dir.js';
import { serveStdio } from '../serve.js';
import { command, configOption, requireConfig, UsageError, type Option } from './command.js';

/** `gatehouse serve` and `gatehouse demo`: the two commands that speak MCP (stdio or HTTP). */

const transportOption = {
  type: 'string',
  default: 'stdio',
  value: 'stdio|http',
  help: 'the MCP transport: stdio, or http (Streamable HTTP at /mcp, HTTP+SSE at /sse)',
} as const satisfies Option;

/** CONTRACT section 1 names it; it means something only with --transport http. */
const listenOption = {
  type: 'string',
  value: 'HOST:PORT',
  help: 'where --transport http listens (default: http.listen, else 127.0.0.1:8080; port 0 picks a free one); refused with stdio',
} as const satisfies Option;

export const serve = command({
  name: 'serve',
  summary:
    'the MCP server over stdio (identity: the token in GATEHOUSE_TOKEN or --token-file, verified at start, exit 1 if bad, and on every call) or over HTTP (identity: the Authorization: Bearer token of every request)',
  details: [
    'Over stdio nothing but MCP messages is written to stdout; logs (pino JSON) go to stderr (GATEHOUSE_LOG_LEVEL=debug for more).',
    'Over HTTP the URL is printed on stderr; SIGINT or SIGTERM stops accepting, lets calls in flight finish, then closes.',
  ],
  options: {
    config: configOption,
    'token-file': {
      type: 'string',
      value: 'F',
      help: 'read the token from this file instead of GATEHOUSE_TOKEN, again on every call (a rotated file takes effect at once)',
    },
    transport: transportOption,
    listen: listenOption,
  },
  exits:
    '0 the session ended (stdio) or the server stopped (http), 1 no token or a token refused at start (stdio), 2 usage or config error (or an address that cannot be listened on)',
  async run({ values }) {
    const http = checkTransport(values.transport, values.listen);
    const config = requireConfig(values.config);
    if (http) {
      if (values['token-file'] !== undefined)
        throw new UsageError(
          '--token-file applies to stdio; over HTTP every request carries its token',
        );
      const { serveHttp } = await import('../http.js');
      return serveHttp(config, values.listen !== undefined ? { listen: values.listen } : {});
    }
    const tokenFile = values['token-file'];
    if (tokenFile) {
      try {
        readFileSync(tokenFile, 'utf8');
      } catch (err) {
        throw new UsageError(
          `cannot read --token-file ${tokenFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
        );
      }
    }
    // The token is read again on every call, so a rotated token file takes effect at once.
    const token = tokenFile
      ? () => readToken(tokenFile)
      : () => process.env.GATEHOUSE_TOKEN?.trim() || undefined;
    return serveStdio(config, token);
  },
});

export const demo = command({
  name: 'demo',
  summary:
    'the zero-setup demo over stdio or HTTP: an embedded PostgreSQL seeded with (fake) PII, the demo policy and a local dev issuer; state in ~/.gatehouse/demo/ unless --dir says',
  details: [
    'Over stdio the session identifies itself with a token the demo mints (demo-user, group analysts), also printed on stderr for clients that connect another way.',
    'Over HTTP (--transport http) the demo prints its URL and that token on stderr: send it as Authorization: Bearer.',
    'The state directory (config, dev issuer key, audit log, recordings) is per user, not the working directory, which a client may start the demo in (Claude Desktop: /). Its path is printed on stderr at start. One demo at a time per state directory.',
  ],
  options: {
    transport: transportOption,
    listen: listenOption,
    dir: {
      type: 'string',
      value: 'D',
      help: `where the demo keeps its config, keys, audit log and recordings (default: ${DEMO_DIR_HELP})`,
    },
  },
  exits:
    '0 the session ended, 1 another demo is using the state directory, 2 usage error (or a state directory that cannot be created)',
  async run({ values }) {
    const http = checkTransport(values.transport, values.listen);
    if (values.dir === '') throw new UsageError('--dir needs a directory');
    // Loaded only when asked for: the embedded PostgreSQL (PGlite) is heavy to import.
    const { runDemo } = await import('../demo/demo.js');
    return runDemo({
      ...(values.dir !== undefined ? { dir: values.dir } : {}),
      ...(http
        ? { http: { ...(values.listen !== undefined ? { listen: values.listen } : {}) } }
        : {}),
    });
  },
});

/** True for --transport http; usage errors for an unknown transport or a bad --listen. */
function checkTransport(transport: string, listen: string | undefined): boolean {
  if (listen !== undefined && parseListen(listen) === undefined) {
    throw new UsageError(
      `--listen ${JSON.stringify(listen)} is not HOST:PORT (e.g. 127.0.0.1:8080)`,
    );
  }
  if (transport === 'stdio') {
    if (listen !== undefined) {
      throw new UsageError('--listen applies to --transport http; stdio has nothing to listen on');
    }
    return false;
  }
  if (transport === 'http') return true;
  throw new UsageError(`unknown transport ${JSON.stringify(transport)}: use stdio or http`);
}

function readToken(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
