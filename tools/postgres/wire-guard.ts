import type pg from 'pg';

/**
 * A watch on the lengths of backend messages, read off the socket before node-postgres
 * buffers them.
 *
 * pg-protocol keeps a whole message in memory before it parses it, and decodes each value as
 * one string: `SELECT repeat('x', 536870900)` made it throw ERR_STRING_TOO_LONG inside the
 * socket's 'data' handler (outside every catch: the process died), and a 400 MB value took
 * the gateway to 1.3 GiB. Every message starts with a type byte and an int32 big-endian
 * length that counts itself, so the size of a message is known from its first five bytes:
 * past the cap the socket is destroyed at once, before more of it arrives.
 */

/** What tripped the guard: the message type (a letter, e.g. 'D' for DataRow) and its size. */
export interface Oversize {
  type: string;
  bytes: number;
}

export interface WireGuard {
  /** Largest message allowed, header included. Set per call. */
  cap: number;
  /** Called once, after the socket has been destroyed. */
  onTrip: ((o: Oversize) => void) | undefined;
  tripped: Oversize | undefined;
}

interface Stream {
  prependListener(event: 'data', fn: (chunk: Buffer) => void): unknown;
  destroy(): void;
}

const guards = new WeakMap<object, WireGuard>();

/** The socket under a pg client (the TLS socket once upgraded). */
export function clientStream(client: pg.ClientBase): Stream | undefined {
  return (client as unknown as { connection?: { stream?: Stream } }).connection?.stream;
}

/**
 * The guard of this client's connection, installed the first time. It must start at a message
 * boundary: a client handed out by the pool is idle (its last message was ReadyForQuery, and
 * the server sends nothing unasked between statements but whole messages).
 */
export function guardClient(client: pg.ClientBase, cap: number): WireGuard {
  const stream = clientStream(client);
  if (!stream) throw new Error('pg client has no connection stream');
  let guard = guards.get(stream);
  if (guard) {
    guard.cap = cap;
    return guard;
  }
  const g: WireGuard = { cap, onTrip: undefined, tripped: undefined };
  guards.set(stream, g);
  guard = g;
  const header = Buffer.alloc(5);
  let headerLen = 0;
  // Bytes of the current message's body still to come.
  let skip = 0;
  stream.prependListener('data', (chunk: Buffer) => {
    if (g.tripped) return;
    let i = 0;
    while (i < chunk.length) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - i);
        skip -= n;
        i += n;
        continue;
      }
      header[headerLen++] = chunk[i++]!;
      if (headerLen < 5) continue;
      headerLen = 0;
      const length = header.readUInt32BE(1);
      const bytes = 1 + length;
      if (bytes > g.cap) {
        g.tripped = { type: String.fromCharCode(header[0]!), bytes };
        // Nothing more of it is read; the rest of this one chunk (one socket read, at most
        // 64 KiB) still reaches pg's parser, which is harmless.
        stream.destroy();
        g.onTrip?.(g.tripped);
        return;
      }
      skip = Math.max(0, length - 4);
    }
  });
  return guard;
}
