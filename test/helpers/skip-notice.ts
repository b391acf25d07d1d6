import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
/**
 * Integration tests that need something the machine may lack (IPv6 loopback, openssl, curl with
 * HTTPS-proxy support, network namespaces) skip only then, and say so loudly instead of passing
 * silently. Where the project's own CI runs (`.ci/run` provides all of it and sets
 * EGRESSGATE_REQUIRE_ALL_TESTS=1), a missing prerequisite is a failure, never a skip: no test can be
 * switched off there by an environment that drifted.
 */
export function skipNotice(isAvailable: boolean, what: string, why: string): boolean {
  if (isAvailable) return true;
  if (process.env.EGRESSGATE_REQUIRE_ALL_TESTS === '1') {
    throw new Error(`${what} cannot run: ${why}. .ci/run should have provided it (EGRESSGATE_REQUIRE_ALL_TESTS=1 forbids skipping).`);
  }
  console.warn(`SKIPPED: ${what} — ${why}. Install it (see .ci/run) to run these tests.`);
  return false;
}

/** Whether this machine can listen on the IPv6 loopback (::1). */
export function ipv6LoopbackAvailable(): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(0, '::1', () => probe.close(() => resolve(true)));
  });
}

/** Root on Linux, with setpriv (util-linux) to run a process as another user (nobody). */
export function canRunAsOtherUser(): boolean {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return false;
  try {
    execFileSync('setpriv', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
