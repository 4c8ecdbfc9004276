import type { Readable, Writable } from 'node:stream';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  ErrorCode,
  JSONRPCMessageSchema,
  type JSONRPCMessage,
} from '@modelcontextprotocol/sdk/types.js';
import { GovernanceError } from './kernel/errors.js';
import { log } from './kernel/log.js';
import { InFlight, Lifecycle } from './lifecycle.js';
import { createMcpServer } from './mcp.js';
import { createRuntime, type Runtime } from './runtime.js';
import { closeRecording, newSession } from './session.js';

/**
 * If the process is still up this long after the session ended, something outside the
 * session holds it (every outcome, recording and the audit log are closed by then): exit.
 */
const EXIT_BACKSTOP_MS = 3_000;

/** `gatehouse serve` over stdio: one process, one MCP session, one identity. */
export async function serveStdio(
  configFile: string,
  token: () => string | undefined,
): Promise<number> {
  const rt = await createRuntime(configFile);
  const code = await serveStdioWith(rt, token);
  setTimeout(() => {
    log.warn('the process is still running after the session ended; exiting');
    process.exit(code);
  }, EXIT_BACKSTOP_MS).unref();
  return code;
}

export async function serveStdioWith(
  rt: Runtime,
  token: () => string | undefined,
): Promise<number> {
  // Verified at start so a bad token fails loudly now, and again on every call (expiry).
  const presented = token();
  if (!presented) {
    await rt.close();
    throw new GovernanceError(
      'UNAUTHENTICATED',
      'no token: set GATEHOUSE_TOKEN or pass --token-file (there is no anonymous mode)',
    );
  }
  let identity;
  try {
    identity = await rt.verifier.verify(presented);
  } catch (err) {
    await rt.close();
    throw err;
  }
  const session = newSession('stdio', token);
  session.identity = identity;
  const calls = new InFlight();
  const server = createMcpServer(rt, session, calls);
  const transport = new StdioTransport(process.stdin, process.stdout);
  const lifecycle = new Lifecycle(calls, {
    stopInput: () => transport.stopReading(),
    closeTransport: () => server.close(),
    closeRecording: () => closeRecording(session),
    closeRuntime: () => rt.close(),
  });
  // Every way the session can end leads to the one ordered shutdown.
  transport.onclientgone = (why) => void lifecycle.shutdown(why);
  server.onclose = () => void lifecycle.shutdown('transport closed');
  // A response that cannot be written once the client is gone, a response to nothing: the
  // outcome is on record already; nothing here is the agent's business or fatal.
  server.onerror = (err) => log.debug({ err: err.message }, 'MCP protocol error');
  const removeSignalHandlers = lifecycle.handleSignals();
  try {
    await server.connect(transport);
    log.info(
      { session: session.id, sub: identity.sub, groups: identity.groups },
      'serving MCP over stdio',
    );
    await lifecycle.ended;
  } finally {
    removeSignalHandlers();
  }
  log.info({ session: session.id }, 'session ended');
  return 0;
}

/** JSON-RPC 2.0 error codes this transport answers on its own. */
const PARSE_ERROR = ErrorCode.ParseError;
const INVALID_REQUEST = ErrorCode.InvalidRequest;

/** The longest line read as one message (the SDK's own stdio limit). */
const MAX_LINE_BYTES = 10 * 1024 * 1024;

/**
 * MCP over stdio: one JSON-RPC message per line on stdin, one per line on stdout.
 *
 * It replaces the SDK's StdioServerTransport, which silently drops a line that is not JSON or
 * not a JSON-RPC message (and a batch), closes the session on a line over 10 MiB, and never
 * notices stdin's end or a stdout the client closed. Here:
 *
 * - a line that is not JSON is answered with a parse error (-32700, no id);
 * - a batch (an array: MCP 2025-06-18 removed batching) and a message that is not valid
 *   JSON-RPC (an id that is null, an object or a fraction; a wrong `jsonrpc`; params that are
 *   not an object) are answered with -32600, with the request's id when it has a usable one;
 * - a line over 10 MiB is read to its end and dropped, and answered with -32600;
 * - EOF on stdin, and EPIPE (or any error) on stdout, mean the client is gone: `onclientgone`
 *   starts the session's shutdown, which lets calls in flight write their outcome. The
 *   process is never exited from here with a write in flight.
 */
export class StdioTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  /** The client went away (stdin ended, stdout is closed). */
  onclientgone?: (why: string) => void;

  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Inside a line over MAX_LINE_BYTES: bytes are dropped until its newline. */
  private skipping = false;
  private reading = false;
  private outputGone = false;
  private closed = false;

  constructor(
    private readonly input: Readable,
    private readonly output: Writable,
  ) {}

  start(): Promise<void> {
    this.reading = true;
    this.input.on('data', this.onData);
    this.input.on('end', this.onEnd);
    this.input.on('error', this.onInputError);
    if (this.output === process.stdout) {
      // The CLI's stdout handler exits on EPIPE, which suits `audit tail | head`; here it would
      // end the process with calls in flight. The client closing stdout ends the session instead.
      for (const l of this.output.listeners('error'))
        this.output.off('error', l as (err: Error) => void);
    }
    this.output.on('error', this.onOutputError);
    return Promise.resolve();
  }

  /** Stops reading requests; what was already read is still served. */
  stopReading(): void {
    if (!this.reading) return;
    this.reading = false;
    this.input.off('data', this.onData);
    // A paused stdin does not keep the process alive.
    this.input.pause();
  }

  send(message: JSONRPCMessage): Promise<void> {
    // Our answer ends the request: its id may be used again.
    if ('id' in message && !('method' in message) && message.id !== undefined)
      this.open.delete(message.id);
    return this.write(message);
  }

  /**
   * Ids of the client's requests not answered yet. A second request with the id of one still
   * running is refused: the client could not tell the answers apart, and a cancel naming
   * that id would stop whichever call the SDK found first.
   */
  private readonly open = new Set<string | number>();

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    this.stopReading();
    this.input.off('end', this.onEnd);
    this.input.off('error', this.onInputError);
    // The output error listener stays: a late EPIPE must not find the CLI's handler gone and
    // none in its place (an 'error' without a listener is an uncaught exception).
    this.onclose?.();
    return Promise.resolve();
  }

  private write(message: unknown): Promise<void> {
    if (this.outputGone) return Promise.reject(new Error('the client closed its input (stdout)'));
    return new Promise((resolve, reject) => {
      this.output.write(JSON.stringify(message) + '\n', (err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }

  /**
   * An error answer the transport writes itself (the SDK never saw the message). Without a
   * usable id the answer has none: JSON-RPC 2.0 says `"id": null`, but MCP's schema (and the
   * SDK's client, which drops such a line) allows only a string or integer, or no id.
   */
  private answer(id: string | number | undefined, code: number, message: string): void {
    this.write({
      jsonrpc: '2.0',
      ...(id === undefined ? {} : { id }),
      error: { code, message },
    }).catch(() => undefined);
  }

  private readonly onData = (chunk: Buffer) => {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      start = nl + 1;
      const over = this.skipping || this.pendingBytes + piece.length > MAX_LINE_BYTES;
      const line = over
        ? undefined
        : this.pending.length
          ? Buffer.concat([...this.pending, piece])
          : piece;
      this.pending = [];
      this.pendingBytes = 0;
      this.skipping = false;
      if (line) this.onLine(line.toString('utf8'));
      else
        this.answer(
          undefined,
          INVALID_REQUEST,
          `Invalid Request: a message over ${MAX_LINE_BYTES} bytes`,
        );
      if (!this.reading) return;
    }
    const rest = chunk.subarray(start);
    if (rest.length === 0 || this.skipping) return;
    if (this.pendingBytes + rest.length > MAX_LINE_BYTES) {
      this.pending = [];
      this.pendingBytes = 0;
      this.skipping = true;
      return;
    }
    this.pending.push(rest);
    this.pendingBytes += rest.length;
  };

  private onLine(raw: string): void {
    const text = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.answer(undefined, PARSE_ERROR, 'Parse error: the line is not valid JSON');
      return;
    }
    if (Array.isArray(value)) {
      this.answer(
        undefined,
        INVALID_REQUEST,
        'Invalid Request: JSON-RPC batches are not supported (MCP 2025-06-18 removed them); send one message per line',
      );
      return;
    }
    const parsed = JSONRPCMessageSchema.safeParse(value);
    if (parsed.success) {
      const m = parsed.data;
      if ('method' in m && 'id' in m) {
        if (this.open.has(m.id)) {
          this.answer(
            m.id,
            INVALID_REQUEST,
            'Invalid Request: a request with this id is still in flight; use a new id',
          );
          return;
        }
        this.open.add(m.id);
      } else if ('method' in m && m.method === 'notifications/cancelled') {
        // A cancelled request gets no answer: its id is free once the client gave it up.
        const id = (m.params as { requestId?: unknown } | undefined)?.requestId;
        if (typeof id === 'string' || typeof id === 'number') this.open.delete(id);
      }
      this.onmessage?.(m);
      return;
    }
    const obj =
      value !== null && typeof value === 'object' ? (value as Record<string, unknown>) : {};
    if (!('method' in obj) && ('result' in obj || 'error' in obj)) {
      // A malformed response to one of our requests: answering it could start a loop.
      log.warn('dropped a malformed JSON-RPC response from the client');
      return;
    }
    const id = obj.id;
    const usable = typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
    this.answer(
      usable ? id : undefined,
      INVALID_REQUEST,
      'Invalid Request: not a valid JSON-RPC 2.0 message (the id must be a string or an integer, params an object)',
    );
  }

  private readonly onEnd = () => this.gone('stdin closed');

  private readonly onInputError = (err: Error) => {
    this.onerror?.(err);
    this.gone('stdin failed');
  };

  private readonly onOutputError = (err: NodeJS.ErrnoException) => {
    if (this.outputGone) return;
    this.outputGone = true;
    this.gone(
      err.code === 'EPIPE'
        ? 'the client closed stdout (EPIPE)'
        : `stdout failed (${err.code ?? err.message})`,
    );
  };

  private gone(why: string): void {
    this.onclientgone?.(why);
  }
}
