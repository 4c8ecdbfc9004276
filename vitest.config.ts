import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 90_000,
    pool: 'forks',
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
