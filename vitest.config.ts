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
    // Each worker imports the gateway's modules once and runs its files one after another, instead of
    // importing them again for every file: the suite imports fastify, undici and the gateway ~360 times
    // otherwise. On 2026-12-07 (362 files, 2,853 tests, quiet machine, node 20) the whole suite took
    // 380 s with isolation (266 s of it importing, 644 CPU-s) and 217 s without (19 s importing, 279
    // CPU-s), every test passing both ways; `.ci/run` runs the suite two and a half times and must stay
    // under 15 minutes. Tests share no state through modules: gateways are started per test file, and
    // a test that changes a process-wide thing (an env variable, os.networkInterfaces, fake timers)
    // puts it back in its finally / afterAll.
    isolate: false,
  },
});
