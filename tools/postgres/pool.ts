import { createHash } from 'node:crypto';
import pg from 'pg';
import { log } from '../../server/log.js';

/** A postgres target with its credentials resolved by the gateway (never by the agent). */
export interface ResolvedPostgresTarget {
  name: string;
  host: string;
  port: number;
  database: string;
  user: string;
  password: string | undefined;
  ssl: 'disable' | 'require' | 'verify-full';
  sslCa: string | undefined;
  poolSize: number;
  connectTimeoutMs: number;
}

export type PoolMode = 'read' | 'write';

/**
 * Connection pools, one per (target, mode, statement timeout, credential). Read pools open
 * their sessions with `default_transaction_read_only=on`, so a read needs no BEGIN/ROLLBACK
 * round trips and the server itself refuses a write that slipped past the classifier.
 */
export class PostgresPools {
  private readonly pools = new Map<string, pg.Pool>();

  get(target: ResolvedPostgresTarget, mode: PoolMode, statementTimeoutMs: number): pg.Pool {
    // The credential is part of the key (as a digest) so a rotated password gets a fresh pool.
    const credential = createHash('sha256')
      .update(target.password ?? '')
      .digest('hex')
      .slice(0, 16);
    const key = [
      target.name,
      mode,
      statementTimeoutMs,
      credential,
      target.host,
      target.port,
      target.database,
      target.user,
    ].join('\0');
    let pool = this.pools.get(key);
    if (!pool) {
      const options = [
        mode === 'read' ? '-c default_transaction_read_only=on' : '',
        // The classifier parses as PostgreSQL does with standard_conforming_strings on (its
        // only mode). A server, database or role that turns it off would read '\' differently
        // and see other statements in the same text; the startup option overrides all three.
        '-c standard_conforming_strings=on',
        // A pooled session must never sit in an open transaction holding locks.
        '-c idle_in_transaction_session_timeout=60000',
      ]
        .filter(Boolean)
        .join(' ');
      pool = new pg.Pool({
        host: target.host,
        port: target.port,
        database: target.database,
        user: target.user,
        password: target.password,
        ssl:
          target.ssl === 'disable'
            ? false
            : {
                rejectUnauthorized: target.ssl === 'verify-full',
                ...(target.sslCa ? { ca: target.sslCa } : {}),
              },
        max: target.poolSize,
        idleTimeoutMillis: 30_000,
        connectionTimeoutMillis: target.connectTimeoutMs,
        statement_timeout: statementTimeoutMs,
        application_name: 'gatehouse',
        options,
      });
      // An idle client's error (server restart) must not crash the process.
      pool.on('error', (err) =>
        log.warn(
          { target: target.name, code: (err as { code?: string }).code },
          'idle postgres connection failed',
        ),
      );
      this.pools.set(key, pool);
    }
    return pool;
  }

  async closeAll(): Promise<void> {
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.allSettled(pools.map((p) => p.end()));
  }
}
