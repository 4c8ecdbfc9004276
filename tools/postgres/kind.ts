import { z } from 'zod';
import { GovernanceError } from '../../server/kernel/errors.js';
import { SecretRef } from '../../server/kernel/secrets.js';
import { Duration } from '../../server/kernel/units.js';
import type { TargetKind } from '../kind.js';
import { bindTool } from '../types.js';
import { CatalogSource } from './catalog.js';
import { checkPostgresTarget } from './check.js';
import { discoverPostgres } from './discover.js';
import { postgresQueryTool } from './definition.js';
import { PostgresExecutor } from './executor.js';
import { PostgresPools, type ResolvedPostgresTarget } from './pool.js';

export const PostgresTarget = z.strictObject({
  kind: z.literal('postgres'),
  description: z.string().optional(),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(5432),
  database: z.string().min(1),
  user: z.string().min(1),
  password: SecretRef.optional(),
  ssl: z.enum(['disable', 'require', 'verify-full']).default('disable'),
  sslCa: z.strictObject({ file: z.string().min(1) }).optional(),
  poolSize: z.number().int().min(1).max(100).default(4),
  connectTimeout: Duration.default(5_000),
  // Objects defined in the database that a statement may reach and still be a read:
  // `schema.name` (a function, operator, type or relation) or `extension:NAME`.
  trusted: z
    .array(
      z
        .string()
        .regex(
          /^(extension:[^\s]+|[^\s.]+\.[^\s]+)$/,
          'trusted entries are schema.name or extension:NAME',
        ),
    )
    .default([]),
});
export type PostgresTargetConfig = z.output<typeof PostgresTarget> & { name: string };

/**
 * PostgreSQL targets: `postgres_query`, with pooled sessions (read pools are read-only
 * sessions), and the catalog check that proves what a statement reaches.
 */
export const postgresKind: TargetKind<PostgresTargetConfig> = {
  kind: 'postgres',
  configSchema: PostgresTarget,
  summary: (t) => `postgres ${t.host}:${t.port}/${t.database}`,
  secretRefs: (t) => (t.password ? [{ key: 'password', ref: t.password }] : []),
  open(env) {
    const pools = new PostgresPools();
    const resolve = async (name: string): Promise<ResolvedPostgresTarget | undefined> => {
      const t = env.target(name);
      if (!t) return undefined;
      return {
        name: t.name,
        host: t.host,
        port: t.port,
        database: t.database,
        user: t.user,
        password: t.password ? await env.secret(t.password, `target ${t.name}`) : undefined,
        ssl: t.ssl,
        sslCa: t.sslCa ? await env.readFile(t.sslCa.file) : undefined,
        poolSize: t.poolSize,
        connectTimeoutMs: t.connectTimeout,
      };
    };
    // Offline (policy explain/test), the catalog is never read: the parse tree alone decides.
    const catalogs = env.live
      ? new CatalogSource(pools, async (name) => {
          const target = await resolve(name);
          return target && { target, trusted: env.target(name)?.trusted ?? [] };
        })
      : undefined;
    const query = bindTool(postgresQueryTool(new PostgresExecutor(pools), catalogs), {
      targetKind: 'postgres',
      async resolve(name) {
        const target = name === null ? undefined : await resolve(name);
        if (!target) {
          throw new GovernanceError(
            'INVALID_INPUT',
            `no postgres target named ${JSON.stringify(name)}`,
          );
        }
        return { target, secrets: target.password ? [target.password] : [] };
      },
    });
    return {
      tools: [query],
      async check(t) {
        const target = await resolve(t.name);
        return target ? checkPostgresTarget(target) : [];
      },
      async discover(t, opts) {
        const target = await resolve(t.name);
        if (!target) throw new Error(`no postgres target named ${t.name}`);
        return discoverPostgres(target, opts);
      },
      close: () => pools.closeAll(),
    };
  },
};
