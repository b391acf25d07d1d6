import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ once before any test: tests spawn the CLI from dist/cli.js (test/build-dist.ts).
    globalSetup: ['test/build-dist.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration tests bind real loopback sockets and spawn real clients, and spend most of their
    // time waiting on them: with three workers on this 2-core machine the whole suite kept the CPUs
    // 169 % busy of 200 and took 243 s instead of ~300 with two (2,087 tests, all passed), which keeps
    // `.ci/run` (the suite on node 20, 22 and 24) well inside its 15 minutes.
    pool: 'forks',
    maxWorkers: 3,
  },
});
