import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests bind real loopback sockets and spawn real clients; two workers fit 2 cores.
    pool: 'forks',
    maxWorkers: 2,
  },
});
