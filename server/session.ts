import { randomUUID } from 'node:crypto';
import type { SessionRecorder } from '../recordings/session.js';
import type { Identity } from './identity/identity.js';

/**
 * One MCP session. The token is re-read and re-verified on every call: over stdio it is the
 * one the process started with (so an expired token stops working mid-session); over HTTP it
 * is the bearer of the current request.
 */
export interface Session {
  readonly id: string;
  readonly transport: 'stdio' | 'http' | 'memory';
  /** ISO time the session began (the recording header's `start`). */
  readonly startedAt: string;
  token(): string | undefined;
  clientInfo: { name: string; version: string } | null;
  /** Set on the first verified call; the recording header names this identity. */
  identity: Identity | null;
  recorder: SessionRecorder | null;
  /** The recording being created, so concurrent first calls share one file. */
  recorderPending?: Promise<SessionRecorder>;
}

/**
 * `id`: a session id chosen elsewhere (the SSE transport makes its own); by default a random
 * UUID, which over Streamable HTTP is also the `Mcp-Session-Id` (unguessable, and useless
 * without a token of the identity that opened the session).
 */
export function newSession(
  transport: Session['transport'],
  token: () => string | undefined,
  id: string = randomUUID(),
): Session {
  return {
    id,
    transport,
    startedAt: new Date().toISOString(),
    token,
    clientInfo: null,
    identity: null,
    recorder: null,
  };
}

/**
 * Closes the session's recording (synced to disk), once no call will record into it again:
 * also one still being created when the session ends.
 */
export async function closeRecording(session: Session): Promise<void> {
  const recorder =
    session.recorder ?? (await session.recorderPending?.catch(() => undefined)) ?? null;
  await recorder?.close();
}
