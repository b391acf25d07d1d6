/**
 * Integration tests that need something the machine may lack (IPv6 loopback, openssl, curl with
 * HTTPS-proxy support) skip only then, and say so loudly instead of passing silently.
 */
export function skipNotice(isAvailable: boolean, what: string, why: string): boolean {
  if (!isAvailable) console.warn(`SKIPPED: ${what} — ${why}. Install it (see .ci/run) to run these tests.`);
  return isAvailable;
}
