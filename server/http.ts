import {
  createServer,
  type IncomingMessage,
  type Server as NodeHttpServer,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { httpAudience, isLoopbackHost, parseListen } from './config.js';
import {
  authenticateRequest,
  describeResource,
  METADATA_PATH,
  writeRpcError,
  type Caller,
  type Resource,
} from './http/auth.js';
import { isApprovalsPath, serveApprovals } from './http/approvals.js';
import { sendJson } from './http/respond.js';
import { CallLimiter, type Refused } from './http/limits.js';
import type { Identity } from './identity/identity.js';
import { ConfigError } from './kernel/errors.js';
import { log } from './kernel/log.js';
import { formatBytes } from './kernel/units.js';
import { DRAIN_GRACE_MS, InFlight, Lifecycle, type LifecycleOptions } from './lifecycle.js';
import { createMcpServer } from './mcp.js';
import { createRuntime, type Runtime } from './runtime.js';
import { closeRecording, newSession, type Session } from './session.js';

/**
 * `gatehouse serve --transport http`: MCP over Streamable HTTP (`/mcp`) and the older
 * HTTP+SSE transport (`GET /sse`, `POST /messages?sessionId=`), on node:http and the SDK's
 * transports. One process, one runtime (config, policies, verifier, pools, audit log), many
 * MCP sessions, each with its own `Session` and MCP server, each bound to the identity (`sub`)
 * that opened it.
 *
 * Every request goes through, in order: shutdown (503 once draining), Host (DNS rebinding,
 * loopback binds), Origin (403 unless listed in http.allowedOrigins; no Origin is a
 * non-browser client and passes), the bearer token (401 + challenge, server/http/auth.ts),
 * the session's owner (403 for another identity), the body limit (413), then the SDK
 * transport. The token of the request reaches the pipeline as `authInfo`, where
 * `authenticate` verifies it again, so an expired token stops working mid-session.
 */

const MCP_PATH = '/mcp';
const SSE_PATH = '/sse';
const MESSAGES_PATH = '/messages';

/** A Streamable HTTP session nobody used for this long is closed (a client that never DELETEs). */
const SESSION_IDLE_MS = 30 * 60_000;
/** How long closing the transports waits for connections to end before cutting them. */
const CONNECTIONS_GRACE_MS = 1_000;
/** Exit backstop after the lifecycle ended (as over stdio). */
const EXIT_BACKSTOP_MS = 3_000;

interface HttpSession {
  readonly kind: 'streamable' | 'sse';
  readonly sub: string;
  readonly session: Session;
  readonly server: Server;
  readonly transport: StreamableHTTPServerTransport | SSEServerTransport;
  lastSeen: number;
  /** Ids of this session's requests not answered yet (a duplicate is refused). */
  readonly inFlight: Set<string | number>;
}

type AuthedRequest = IncomingMessage & { auth?: AuthInfo };

export interface HttpGatewayOptions {
  /** HOST:PORT, over `http.listen`. */
  listen?: string;
  lifecycle?: LifecycleOptions;
}

/** `gatehouse serve --transport http`. */
export async function serveHttp(
  configFile: string,
  opts: { listen?: string } = {},
): Promise<number> {
  const rt = await createRuntime(configFile, { transport: 'http' });
  const code = await serveHttpWith(rt, opts);
  setTimeout(() => {
    log.warn('the process is still running after the server stopped; exiting');
    process.exit(code);
  }, EXIT_BACKSTOP_MS).unref();
  return code;
}

/**
 * Serves until SIGINT/SIGTERM, then shuts down in the one order of server/lifecycle.ts.
 * `banner` writes what a person needs to connect (the demo adds its token).
 */
export async function serveHttpWith(
  rt: Runtime,
  opts: HttpGatewayOptions & { banner?: (gw: HttpGateway) => string } = {},
): Promise<number> {
  const gw = await HttpGateway.start(rt, opts);
  process.stderr.write(
    opts.banner?.(gw) ??
      `gatehouse: serving MCP over HTTP at ${gw.url.href} (Streamable HTTP; HTTP+SSE at ${gw.sseUrl.href})\n`,
  );
  const removeSignalHandlers = gw.lifecycle.handleSignals();
  try {
    await gw.lifecycle.ended;
  } finally {
    removeSignalHandlers();
  }
  return 0;
}

export class HttpGateway {
  readonly calls = new InFlight();
  readonly lifecycle: Lifecycle;
  /** The Streamable HTTP endpoint as this process serves it. */
  url!: URL;
  sseUrl!: URL;
  resource!: Resource;

  private readonly sessions = new Map<string, HttpSession>();
  /** Sessions that ended while calls may still record into them. */
  private readonly ending = new Set<Session>();
  private readonly limiter: CallLimiter;
  private readonly server: NodeHttpServer;
  private readonly closed: Promise<void>;
  private draining = false;
  private sweeper: NodeJS.Timeout | undefined;
  private allowedHostnames: Set<string> | undefined;
  /** Path prefix of http.publicUrl (a proxy serving Gatehouse under /prefix). */
  private readonly prefix: string;

  private constructor(
    private readonly rt: Runtime,
    lifecycle: LifecycleOptions = {},
  ) {
    const http = rt.config.http;
    this.limiter = new CallLimiter(http.limits);
    this.prefix = http.publicUrl ? new URL(http.publicUrl).pathname.replace(/\/+$/, '') : '';
    this.server = createServer((req, res) => void this.handle(req, res));
    this.closed = new Promise((resolve) => this.server.once('close', resolve));
    // One shutdown order for every session: stop accepting, drain the calls of all sessions,
    // close the sessions, their recordings, then the pools and the audit log.
    this.lifecycle = new Lifecycle(
      this.calls,
      {
        stopInput: () => this.stopAccepting(),
        closeTransport: () => this.closeSessions(),
        closeRecording: () => this.closeRecordings(),
        closeRuntime: () => rt.close(),
      },
      lifecycle,
    );
  }

  /** Listens (HOST:PORT from opts.listen, else http.listen) and serves. */
  static async start(rt: Runtime, opts: HttpGatewayOptions = {}): Promise<HttpGateway> {
    const gw = new HttpGateway(rt, opts.lifecycle);
    try {
      await gw.listen(opts.listen ?? rt.config.http.listen);
    } catch (err) {
      await rt.close();
      throw err;
    }
    return gw;
  }

  /** Sessions open now (tests). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Stops the server as a signal would, and settles once everything is closed. */
  shutdown(reason = 'shutdown'): Promise<void> {
    return this.lifecycle.shutdown(reason);
  }

  private async listen(listen: string): Promise<void> {
    const where = parseListen(listen);
    if (!where) throw new ConfigError(`http.listen: ${JSON.stringify(listen)} is not HOST:PORT`);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) =>
        reject(
          new ConfigError(
            `cannot listen on ${listen}: ${err.code === 'EADDRINUSE' ? 'the address is in use' : (err.code ?? err.message)}`,
          ),
        );
      this.server.once('error', onError);
      this.server.listen(where.port, where.host || undefined, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    const addr = this.server.address() as AddressInfo;
    const unspecified = where.host === '' || where.host === '0.0.0.0' || where.host === '::';
    const host = unspecified ? '127.0.0.1' : where.host;
    const origin = `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`;
    const http = this.rt.config.http;
    this.url = new URL(`${origin}${MCP_PATH}`);
    this.sseUrl = new URL(`${origin}${SSE_PATH}`);
    const issuer = this.rt.config.identity.issuer;
    this.resource = describeResource({
      id: http.publicUrl ?? origin,
      isAudience: http.publicUrl !== undefined,
      authorizationServers:
        http.authorizationServers ?? (issuer && /^https?:\/\//.test(issuer) ? [issuer] : []),
    });
    if (isLoopbackHost(where.host)) {
      // DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 sends
      // Host: evil.example. A loopback server answers only to its own names.
      this.allowedHostnames = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);
      if (http.publicUrl) this.allowedHostnames.add(new URL(http.publicUrl).hostname);
    }
    if (!http.publicUrl) {
      log.warn(
        { audience: httpAudience(this.rt.config), resource: this.resource.id },
        'http.publicUrl is not set: tokens are checked for identity.audience; set publicUrl to bind tokens to this resource (RFC 8707)',
      );
    }
    this.sweeper = setInterval(() => this.sweepIdle(), 60_000);
    this.sweeper.unref();
    log.info(
      { url: this.url.href, resource: this.resource.id, audience: httpAudience(this.rt.config) },
      'serving MCP over HTTP',
    );
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      await this.route(req, res);
    } catch (err) {
      log.error({ err: (err as Error)?.message ?? String(err) }, 'http: request failed');
      writeRpcError(res, 500, -32603, 'Internal error; see the gateway log');
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://gatehouse.invalid');
    const path = url.pathname;
    if (this.draining) {
      writeRpcError(res, 503, -32000, 'the gateway is shutting down; retry on another instance', {
        'Retry-After': '5',
        Connection: 'close',
      });
      return;
    }
    if (path === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res, 'GET, HEAD');
      return sendJson(res, 200, { status: 'ok' });
    }
    if (!this.hostAllowed(req)) {
      writeRpcError(
        res,
        403,
        -32000,
        `Forbidden: Host ${JSON.stringify(req.headers.host ?? '')} is not this server (DNS rebinding protection)`,
      );
      return;
    }
    if (
      path === METADATA_PATH ||
      path === `${METADATA_PATH}${MCP_PATH}` ||
      path === `${METADATA_PATH}${SSE_PATH}`
    ) {
      // Public, and readable by browser-based clients of any origin: it holds no secret.
      res.setHeader('Access-Control-Allow-Origin', '*');
      if (req.method === 'OPTIONS') return preflight(res, 'GET, OPTIONS');
      if (req.method !== 'GET' && req.method !== 'HEAD') return methodNotAllowed(res, 'GET');
      return sendJson(res, 200, this.resource.metadata);
    }
    const approvalsApi = isApprovalsPath(path);
    if (path !== MCP_PATH && path !== SSE_PATH && path !== MESSAGES_PATH && !approvalsApi) {
      writeRpcError(res, 404, -32601, `Not found: MCP is served at ${MCP_PATH} (and ${SSE_PATH})`);
      return;
    }
    // A browser page of another origin must not drive an agent's session (MCP transports:
    // servers MUST validate Origin). No Origin: not a browser, nothing to check.
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (!this.rt.config.http.allowedOrigins.includes(origin)) {
        writeRpcError(
          res,
          403,
          -32000,
          `Forbidden: Origin ${JSON.stringify(origin)} is not in http.allowedOrigins`,
        );
        return;
      }
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Vary', 'Origin');
      res.setHeader(
        'Access-Control-Expose-Headers',
        'Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate',
      );
      if (req.method === 'OPTIONS') return preflight(res, 'GET, POST, DELETE, OPTIONS');
    }
    const caller = await authenticateRequest(req, res, this.rt.verifier, this.resource);
    if (!caller) return;
    const authed = req as AuthedRequest;
    authed.auth = caller.auth;
    if (approvalsApi) {
      const who = { sub: caller.identity.sub, groups: caller.identity.groups };
      return serveApprovals(req, res, path, who, this.rt.approvals, () => this.readBody(req, res));
    }
    if (path === MCP_PATH) return this.streamable(authed, res, caller);
    if (path === SSE_PATH) {
      if (req.method !== 'GET') return methodNotAllowed(res, 'GET');
      return this.openSse(res, caller);
    }
    if (req.method !== 'POST') return methodNotAllowed(res, 'POST');
    const session = this.owned(url.searchParams.get('sessionId'), 'sse', caller, res);
    if (!session) return;
    const body = await this.readBody(req, res);
    if (body === undefined) return;
    if (!this.track(session, body, res)) return;
    await (session.transport as SSEServerTransport).handlePostMessage(authed, res, body);
  }

  /** Streamable HTTP: POST (messages), GET (the server's stream), DELETE (end the session). */
  private async streamable(req: AuthedRequest, res: ServerResponse, caller: Caller) {
    const header = req.headers['mcp-session-id'];
    const sid = Array.isArray(header) ? header[0] : header;
    if (req.method === 'POST') {
      const body = await this.readBody(req, res);
      if (body === undefined) return;
      if (sid === undefined) {
        if (!isInitializeRequest(body)) {
          writeRpcError(
            res,
            400,
            -32000,
            'Bad Request: no Mcp-Session-Id header; a session starts with an initialize request',
          );
          return;
        }
        if (!this.admitSession(res, caller)) return;
        const opened = await this.open('streamable', caller.identity);
        await (opened.transport as StreamableHTTPServerTransport).handleRequest(req, res, body);
        return;
      }
      const session = this.owned(sid, 'streamable', caller, res);
      if (!session) return;
      if (!this.track(session, body, res)) return;
      await (session.transport as StreamableHTTPServerTransport).handleRequest(req, res, body);
      return;
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (sid === undefined) {
        writeRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
        return;
      }
      const session = this.owned(sid, 'streamable', caller, res);
      if (!session) return;
      await (session.transport as StreamableHTTPServerTransport).handleRequest(req, res);
      return;
    }
    methodNotAllowed(res, 'GET, POST, DELETE');
  }

  /** GET /sse: the older transport's event stream; its first event names the POST endpoint. */
  private async openSse(res: ServerResponse, caller: Caller): Promise<void> {
    if (!this.admitSession(res, caller)) return;
    await this.open('sse', caller.identity, res);
  }

  /**
   * A new MCP session for `identity`: its Session (recorded under the identity that opened
   * it), its own MCP server, the shared in-flight registry and limiter.
   */
  private async open(
    kind: 'streamable' | 'sse',
    identity: Identity,
    sseResponse?: ServerResponse,
  ): Promise<HttpSession> {
    // The token of each request reaches the pipeline as authInfo; the session keeps none.
    const noToken = () => undefined;
    let transport: StreamableHTTPServerTransport | SSEServerTransport;
    let session: Session;
    let entry: HttpSession | undefined = undefined;
    if (kind === 'sse') {
      const sse = new SSEServerTransport(`${this.prefix}${MESSAGES_PATH}`, sseResponse!);
      transport = sse;
      session = newSession('http', noToken, sse.sessionId);
    } else {
      session = newSession('http', noToken);
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => session.id,
        // Only once the initialize request was accepted does the session exist.
        onsessioninitialized: () => {
          if (entry) this.sessions.set(session.id, entry);
        },
      });
    }
    session.identity = identity;
    const server = createMcpServer(this.rt, session, this.calls, { limiter: this.limiter });
    entry = {
      kind,
      sub: identity.sub,
      session,
      server,
      transport,
      lastSeen: Date.now(),
      inFlight: new Set(),
    };
    const opened = entry;
    // A response frees its request's id (over either transport, whatever carried it).
    const send = transport.send.bind(transport);
    transport.send = (message, options) => {
      if ('id' in message && !('method' in message) && message.id !== undefined) {
        opened.inFlight.delete(message.id);
      }
      return send(message, options);
    };
    server.onclose = () => this.forget(opened);
    server.onerror = (err) => log.debug({ err: err.message }, 'MCP protocol error');
    await server.connect(transport);
    if (kind === 'sse') this.sessions.set(session.id, entry);
    log.info({ session: session.id, sub: identity.sub, kind }, 'http: session opened');
    return entry;
  }

  /** The session `sid` if it exists and belongs to this caller; otherwise the answer is written. */
  private owned(
    sid: string | null | undefined,
    kind: HttpSession['kind'],
    caller: Caller,
    res: ServerResponse,
  ): HttpSession | undefined {
    const s = sid ? this.sessions.get(sid) : undefined;
    if (!s || s.kind !== kind) {
      writeRpcError(res, 404, -32001, 'Session not found: start a new one with initialize');
      return undefined;
    }
    if (s.sub !== caller.identity.sub) {
      // Identity comes from the token of each request, never from the session id: holding
      // someone's session id gives nothing without their token.
      log.warn(
        { session: s.session.id, owner: s.sub, sub: caller.identity.sub },
        'http: a request for a session of another identity was refused',
      );
      writeRpcError(
        res,
        403,
        -32001,
        'Forbidden: this session belongs to another identity; a session is bound to the subject that opened it (start your own with initialize)',
      );
      return undefined;
    }
    s.lastSeen = Date.now();
    return s;
  }

  /**
   * A request whose id is still in flight in its session is refused: the transport maps
   * answers by id, so a duplicate got the other request's result and left one response open
   * (found by the blind red-team pass). A cancel frees its id.
   */
  private track(s: HttpSession, body: unknown, res: ServerResponse): boolean {
    if (body === null || typeof body !== 'object') return true;
    const m = body as { id?: unknown; method?: unknown; params?: { requestId?: unknown } };
    const idOf = (v: unknown) => (typeof v === 'string' || typeof v === 'number' ? v : undefined);
    if (m.method === 'notifications/cancelled') {
      const id = idOf(m.params?.requestId);
      if (id !== undefined) s.inFlight.delete(id);
      return true;
    }
    const id = idOf(m.id);
    if (typeof m.method !== 'string' || id === undefined) return true;
    if (s.inFlight.has(id)) {
      writeRpcError(
        res,
        409,
        -32600,
        'Invalid Request: a request with this id is still in flight in this session; use a new id',
        {},
        id,
      );
      return false;
    }
    s.inFlight.add(id);
    return true;
  }

  /** Opening a session counts against the identity's rate: HTTP 429 when over it. */
  private admitSession(res: ServerResponse, caller: Caller): boolean {
    // Open sessions are capped per identity too: each holds memory, and an SSE stream a
    // socket, until it ends; a rate alone let one identity hold thousands.
    const max = this.rt.config.http.limits.sessions;
    let open = 0;
    for (const s of this.sessions.values()) if (s.sub === caller.identity.sub) open++;
    if (open >= max) {
      tooMany(res, {
        ok: false,
        reason: `${caller.identity.sub} has ${open} open sessions (http.limits.sessions: ${max}); end one (DELETE /mcp with its Mcp-Session-Id, or close its SSE stream)`,
        retryAfterSec: 60,
      });
      return false;
    }
    const a = this.limiter.admit(caller.identity.sub, { running: false });
    if (a.ok) return true;
    tooMany(res, a);
    return false;
  }

  /**
   * The request body as JSON, bounded by http.maxBodyBytes (413 past it, read no further);
   * undefined once an error answer was written. Batches are refused: MCP 2025-06-18 removed
   * them, and one request is one identity's one message here.
   */
  private async readBody(req: IncomingMessage, res: ServerResponse): Promise<unknown> {
    const max = this.rt.config.http.maxBodyBytes;
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\s*(;|$)/i.test(type)) {
      writeRpcError(
        res,
        415,
        -32000,
        'Unsupported Media Type: Content-Type must be application/json',
      );
      return undefined;
    }
    const tooLarge = () => {
      writeRpcError(
        res,
        413,
        -32000,
        `Payload Too Large: a request body is at most ${formatBytes(max)} (http.maxBodyBytes)`,
        { Connection: 'close' },
      );
      // Discard what is still coming (bounded in time), so the client reads the 413. The
      // socket is taken now: once the response is done `req.socket` is null, and reading it
      // from the timer crashed the process (found by the blind red-team pass over HTTP).
      const socket = req.socket as typeof req.socket | null;
      req.resume();
      setTimeout(() => socket?.destroy(), 10_000).unref();
    };
    if (Number(req.headers['content-length']) > max) {
      tooLarge();
      return undefined;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) {
        over = true;
        break;
      }
      chunks.push(chunk);
    }
    if (over) {
      tooLarge();
      return undefined;
    }
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      writeRpcError(res, 400, -32700, 'Parse error: the body is not valid JSON');
      return undefined;
    }
    if (Array.isArray(body)) {
      writeRpcError(
        res,
        400,
        -32600,
        'Invalid Request: JSON-RPC batches are not supported (MCP 2025-06-18 removed them); send one message per request',
      );
      return undefined;
    }
    return body;
  }

  private hostAllowed(req: IncomingMessage): boolean {
    if (!this.allowedHostnames) return true;
    const host = req.headers.host;
    if (!host) return false;
    try {
      return this.allowedHostnames.has(new URL(`http://${host}`).hostname);
    } catch {
      return false;
    }
  }

  /** A session ended (DELETE, the SSE stream dropped, shutdown): its recording closes once calls settle. */
  private forget(entry: HttpSession): void {
    if (this.sessions.get(entry.session.id) === entry) this.sessions.delete(entry.session.id);
    if (this.ending.has(entry.session)) return;
    this.ending.add(entry.session);
    log.info({ session: entry.session.id, sub: entry.sub }, 'http: session closed');
    void this.calls.settled(DRAIN_GRACE_MS).then(async () => {
      if (this.lifecycle.shuttingDown) return; // shutdown closes it in its own order
      await closeRecording(entry.session).catch((err: unknown) =>
        log.error({ session: entry.session.id, err: String(err) }, 'recording close failed'),
      );
      this.ending.delete(entry.session);
    });
  }

  private sweepIdle(): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (s.kind === 'streamable' && now - s.lastSeen > SESSION_IDLE_MS) {
        log.info({ session: s.session.id }, 'http: idle session closed');
        void s.server.close();
      }
    }
  }

  // ---- shutdown steps (server/lifecycle.ts runs them in order) ----------------------------

  private stopAccepting(): void {
    this.draining = true;
    if (this.sweeper) clearInterval(this.sweeper);
    // No new connections; requests on open ones are answered 503 (route).
    this.server.close();
    this.server.closeIdleConnections();
  }

  private async closeSessions(): Promise<void> {
    const open = [...this.sessions.values()];
    const all = new Set([...open.map((s) => s.session), ...this.ending]);
    for (const s of open) this.forget(s);
    for (const s of all) this.ending.add(s);
    await Promise.allSettled(open.map((s) => s.server.close()));
    const timer = setTimeout(() => this.server.closeAllConnections(), CONNECTIONS_GRACE_MS);
    await this.closed;
    clearTimeout(timer);
  }

  private async closeRecordings(): Promise<void> {
    await Promise.allSettled([...this.ending].map((s) => closeRecording(s)));
    this.ending.clear();
  }
}

function methodNotAllowed(res: ServerResponse, allow: string): void {
  writeRpcError(res, 405, -32000, `Method not allowed (allowed: ${allow})`, { Allow: allow });
}

function preflight(res: ServerResponse, methods: string): void {
  res.writeHead(204, {
    'Access-Control-Allow-Methods': methods,
    'Access-Control-Allow-Headers':
      'Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID',
    'Access-Control-Max-Age': '600',
  });
  res.end();
}

function tooMany(res: ServerResponse, refused: Refused): void {
  writeRpcError(res, 429, -32000, `LIMIT_EXCEEDED: ${refused.reason}`, {
    'Retry-After': String(refused.retryAfterSec),
  });
}
