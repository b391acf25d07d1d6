/**
 * The per-file set-up of the `serve` tests that tunnel to an echo origin, written once: a temp dir
 * and a socks5-harness echo origin for the file (made in beforeAll, closed and removed in afterAll),
 * and the `serve` processes its tests start, SIGKILLed after each test if they still run. Call it at
 * the file's top level: it registers the hooks there.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { startTcpOrigin, type TcpOrigin } from '../integration/socks5-harness.ts';
import { killIfRunning, type Served } from './serve-process.ts';

export interface ServeEchoFixture {
  /** The file's temp dir (from beforeAll on). */
  readonly dir: string;
  /** The file's echo origin (from beforeAll on). */
  readonly echo: TcpOrigin;
  /** SIGKILL `s`'s process after the test if it still runs. */
  killAfterTest(s: Served): void;
}

/** A temp dir named `prefix`… and an echo origin for the file; the serves given killAfterTest stopped after each test. */
export function serveEchoFixture(prefix: string): ServeEchoFixture {
  let dir = '';
  let echo: TcpOrigin | null = null;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
    echo = await startTcpOrigin();
  });
  afterEach(async () => {
    for (const c of children.splice(0)) await killIfRunning(c);
  });
  afterAll(async () => {
    await echo?.close();
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });
  return {
    get dir() {
      return dir;
    },
    get echo() {
      return echo as TcpOrigin;
    },
    killAfterTest(s) {
      children.push(s.child);
    },
  };
}
