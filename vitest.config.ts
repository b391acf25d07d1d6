import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests bind real loopback sockets and spawn real clients, and mostly wait on them
    // (timeouts, lingering closes, dials that hang): three workers on 2 cores take the suite from
    // ~210 to ~177 s, which keeps `.ci/run` (three node versions) well inside its 15 minutes.
    pool: 'forks',
    maxWorkers: 3,
  },
});
