/**
 * A trusted load balancer's TCP health check on a PROXY protocol front, through a real `serve`: it
 * connects from a trusted source and closes without a byte. That is closed silently, as an untrusted
 * peer's empty connection is and a SOCKS port probe is; a header begun and abandoned still warns.
 *
 * Regression: every such check logged `PROXY protocol: connection refused`, `closed before a
 * complete PROXY header`, `bytes: 0`, on the HTTP and SOCKS listeners alike.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, loggedLines, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';

const REFUSED = 'PROXY protocol: connection refused';
const dir = mkdtempSync(join(tmpdir(), 'egw-pp-health-'));
let served: Served | null = null;

beforeAll(async () => {
  const path = join(dir, 'serve.yaml');
  writeFileSync(path, `${loopbackServeConfig('-')}proxyProtocol: { trustedSources: [127.0.0.1/32] }\n`);
  served = await spawnServe(path);
}, 120_000);

afterAll(async () => {
  await killIfRunning(served?.child ?? null);
  rmSync(dir, { recursive: true, force: true });
});

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/**
 * Connect to 127.0.0.1:port, send `bytes` (if any), half-close, and resolve with the local port once
 * the gateway has closed its side (whatever it logs for the connection is written by then).
 */
function probe(port: number, bytes: Buffer | null): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('the gateway did not close the probe within 5 s'));
    }, 5_000);
    let local = 0;
    s.on('connect', () => {
      local = s.localPort ?? 0;
      if (bytes !== null) s.write(bytes);
      s.end();
    });
    s.on('error', () => {});
    s.resume();
    s.on('close', () => {
      clearTimeout(timer);
      resolve(local);
    });
  });
}

function refusedFor(local: number): Array<Record<string, unknown>> {
  return loggedLines(served as Served, REFUSED).filter((l) => l['client'] === `127.0.0.1:${local}`);
}

describe('a trusted source that connects and closes without a byte (a health check)', () => {
  it.each(['http', 'socks'] as const)('on the %s listener is closed without a log line; a begun header still warns', async (listener) => {
    const s = served as Served;
    const port = listener === 'http' ? s.http.port : portOf(s.socks);
    const check = await probe(port, null);
    // Written after the check's line would have been: once it is in stderr, the check's would be too.
    const begun = await probe(port, Buffer.from('PROXY TCP4 '));
    await until('the begun header\'s warning', () => refusedFor(begun).length > 0);
    expect(refusedFor(begun)).toMatchObject([{ level: 'warn', listener, trusted: true, why: 'closed before a complete PROXY header', bytes: 11 }]);
    expect(refusedFor(check)).toEqual([]);
  });
});
