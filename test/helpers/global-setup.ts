import type { TestProject } from 'vitest/node';
import {
  PgUnavailableError,
  pgUnavailable,
  seedFixtures,
  startPostgres,
  type RunningPostgres,
} from './postgres.js';

const isCI = (v = process.env.CI): boolean => !!v && !/^(0|false|no)$/i.test(v);

/**
 * One real PostgreSQL for the integration project, seeded with the corpus fixtures and handed
 * to tests as `inject('pg')`. Without PostgreSQL binaries the tests that need it are skipped
 * with the reason, unless CI is set: then the run fails, so CI never goes green untested.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = performance.now();
  let server: RunningPostgres;
  try {
    server = await startPostgres();
  } catch (err) {
    if (!(err instanceof PgUnavailableError)) throw err;
    if (isCI()) throw new Error(`CI is set and PostgreSQL is required: ${err.message}`);
    process.stderr.write(`[gatehouse] PostgreSQL integration tests skipped: ${err.message}\n`);
    project.provide('pg', pgUnavailable(err.message));
    return async () => {};
  }
  try {
    await seedFixtures(server.info);
  } catch (err) {
    await server.stop();
    throw err;
  }
  const { port, pid } = server.info;
  const ms = Math.round(performance.now() - started);
  process.stderr.write(
    `[gatehouse] PostgreSQL from ${server.binDir} on 127.0.0.1:${port} (pid ${pid}), seeded in ${ms} ms\n`,
  );
  project.provide('pg', server.info);
  return () => server.stop();
}
