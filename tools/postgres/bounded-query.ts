import { createRequire } from 'node:module';
import type pg from 'pg';

/**
 * One statement, at most `limit` rows, in one round trip.
 *
 * Parse, Bind, Describe, Execute(limit) and Sync go out together in a single write. The
 * server sends at most `limit` rows, then PortalSuspended if the statement had more (the
 * unnamed portal is dropped at Sync, so the rest is never computed) or CommandComplete if it
 * did not, then ReadyForQuery. The row count is bounded by `limit` as with a cursor, but
 * without a cursor's second round trip to close the portal; the bytes kept are bounded by
 * `byteBudget`: once the rows received pass it, later rows are read and dropped one by one
 * (`overBudget`), so wide rows cannot pile up in memory. (One row always arrives whole: the
 * driver buffers a message before handing it over.)
 *
 * This is node-postgres's "Submittable" interface: the client hands the connection to
 * `submit` and then routes each backend message of this query to the matching `handle*`.
 * pg-cursor and pg-query-stream are built the same way.
 */

interface PgResult {
  fields: pg.FieldDef[];
  rowCount: number | null;
  command: string | null;
  addFields(fields: pg.FieldDef[]): void;
  parseRow(row: unknown[]): unknown[];
  addCommandComplete(msg: unknown): void;
}

interface Connection {
  stream: { cork?: () => void; uncork?: () => void };
  parse(q: { text: string }): void;
  bind(q: { values: unknown[] }): void;
  describe(q: { type: 'P'; name: string }): void;
  execute(q: { portal: string; rows: number }): void;
  sync(): void;
  sendCopyFail(msg: string): void;
}

// The result parser node-postgres itself uses (type parsers, client type overrides).
const require = createRequire(import.meta.url);
const Result = require('pg/lib/result.js') as new (rowMode: 'array') => PgResult;
const { prepareValue } = require('pg/lib/utils.js') as {
  prepareValue: (v: unknown) => unknown;
};

export interface BoundedResult {
  fields: pg.FieldDef[];
  rows: unknown[][];
  /** The server had more rows than `limit` (PortalSuspended). */
  suspended: boolean;
  /** The rows passed the byte budget: the rest were read and dropped. */
  overBudget: boolean;
  /** Rows affected, from CommandComplete (INSERT/UPDATE/DELETE...); null when suspended. */
  rowCount: number | null;
  command: string | null;
}

export class BoundedQuery {
  /** The client fills in its own type parsers here (`query._result._types`). */
  readonly _result: PgResult = new Result('array');
  readonly text: string;
  readonly promise: Promise<BoundedResult>;
  private readonly boundValues: unknown[];
  private readonly rows: unknown[][] = [];
  private suspended = false;
  private bytes = 0;
  private overBudget = false;
  private error: unknown;
  private settle!: { resolve(r: BoundedResult): void; reject(e: unknown): void };

  constructor(
    text: string,
    values: unknown[],
    private readonly limit: number,
    private readonly byteBudget = Number.POSITIVE_INFINITY,
  ) {
    if (!Number.isInteger(limit) || limit < 1)
      throw new RangeError(`limit must be >= 1 (got ${limit})`);
    this.text = text;
    this.boundValues = values.map((v) => prepareValue(v));
    this.promise = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  submit(connection: Connection): null {
    const stream = connection.stream;
    stream.cork?.();
    try {
      connection.parse({ text: this.text });
      connection.bind({ values: this.boundValues });
      connection.describe({ type: 'P', name: '' });
      connection.execute({ portal: '', rows: this.limit });
      connection.sync();
    } finally {
      stream.uncork?.();
    }
    return null;
  }

  handleRowDescription(msg: { fields: pg.FieldDef[] }): void {
    this._result.addFields(msg.fields);
  }

  handleDataRow(msg: { fields: unknown[] }): void {
    if (this.overBudget) return;
    for (const f of msg.fields) if (typeof f === 'string') this.bytes += f.length;
    if (this.bytes > this.byteBudget && this.rows.length > 0) {
      this.overBudget = true;
      return;
    }
    this.rows.push(this._result.parseRow(msg.fields));
  }

  handlePortalSuspended(): void {
    this.suspended = true;
  }

  handleCommandComplete(msg: unknown): void {
    this._result.addCommandComplete(msg);
  }

  handleEmptyQuery(): void {}

  /**
   * The client clears its active query before calling this; the ReadyForQuery that follows
   * our Sync then finds none and moves on. So an error settles the query here.
   */
  handleError(err: unknown): void {
    this.error ??= err;
    this.settle.reject(this.error);
  }

  handleReadyForQuery(): void {
    if (this.error !== undefined) return this.settle.reject(this.error);
    this.settle.resolve(this.result(this.suspended || this.overBudget));
  }

  private result(suspended: boolean): BoundedResult {
    return {
      fields: this._result.fields,
      rows: this.rows,
      suspended,
      overBudget: this.overBudget,
      rowCount: suspended ? null : this._result.rowCount,
      command: this._result.command,
    };
  }

  // The classifier never lets COPY through to here (COPY TO STDOUT runs as its query), but a
  // driver that cannot take the copy sub-protocol must not crash the process if one did.
  handleCopyInResponse(connection: Connection): void {
    this.error ??= new Error('COPY FROM STDIN is not supported');
    connection.sendCopyFail('COPY FROM STDIN is not supported by postgres_query');
    // The Sync sent with the query was ignored in copy-in mode; the backend now discards
    // messages until the next one.
    connection.sync();
  }

  handleCopyData(): void {
    this.error ??= new Error('COPY TO STDOUT is not supported');
  }
}
