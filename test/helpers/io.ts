import { Writable } from 'node:stream';
import type { Io } from '../../recordings/commands.js';

/** An `Io` for CLI commands under test, with what they wrote to each stream. */
export function capture(): { io: Io; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        append(chunk.toString());
        cb();
      },
    });
  return {
    io: { out: sink((s) => (out += s)), err: sink((s) => (err += s)) },
    out: () => out,
    err: () => err,
  };
}
