import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 90_000,
    pool: 'forks',
    // The gateways the tests run log to stderr; only errors unless asked for more. (Tests that
    // check what a process logs set the level of that process themselves.)
    env: { GATEHOUSE_LOG_LEVEL: process.env.GATEHOUSE_LOG_LEVEL ?? 'error' },
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['test/unit/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // Starts one real PostgreSQL for the whole run and stops exactly the PID it started.
          globalSetup: ['test/helpers/global-setup.ts'],
          // The files share that server and compare its state before and after calls (rows,
          // sequences, schema, roles): one file at a time, so no file moves another's baseline.
          poolOptions: { forks: { singleFork: true } },
        },
      },
    ],
  },
});
