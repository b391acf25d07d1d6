/**
 * A TCP port probe on the SOCKS listener (a load balancer's health check, `nc -z`): it connects and
 * closes without a byte. The HTTP listener closes such a connection silently (node:http); the SOCKS
 * listener must too, and keep its warning for a handshake that began and was abandoned.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
});

/**
 * Connect to 127.0.0.1:port, send `bytes` (if any), half-close, and resolve with the local port once
 * the gateway has closed its side (so whatever it logs for the connection is logged by then).
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

/** The warn or error lines about a client at 127.0.0.1:port. */
function linesFor(port: number): Array<Record<string, unknown>> {
  return gw.logs.filter((l) => l['client'] === `127.0.0.1:${port}`);
}

async function socksConnections(): Promise<number> {
  const res = await fetch(`${gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${gw.adminToken}` } });
  const m = /^gw_downstream_cx_total\{listener="socks"\} (\d+)$/m.exec(await res.text());
  return Number(m?.[1] ?? Number.NaN);
}

// Regression: a connection that closed before its first byte was logged at warn level, "socks5
// refused" with `client closed during the handshake (at greeting)`, once per health check.
describe('a port probe on the SOCKS listener', () => {
  it('that connects and closes without a byte logs nothing, as on the HTTP listener, and is still counted', async () => {
    const countBefore = await socksConnections();
    const socksProbe = await probe(gw.socksPort, null);
    const httpProbe = await probe(gw.httpPort, null);
    expect(linesFor(socksProbe)).toEqual([]);
    expect(linesFor(httpProbe)).toEqual([]);
    expect(await socksConnections()).toBe(countBefore + 1);
    expect(gw.closed.filter((r) => r.client.port === socksProbe)).toEqual([]);
  });

  it('that sends part of a greeting and closes still logs the abandoned handshake', async () => {
    const partial = await probe(gw.socksPort, Buffer.from([0x05]));
    expect(linesFor(partial)).toMatchObject([{ level: 'warn', msg: 'socks5 refused', code: 'EGW_SOCKS_PROTOCOL', reason: 'client closed during the handshake (at greeting)' }]);
    const afterGreeting = await probe(gw.socksPort, Buffer.from([0x05, 0x01, 0x00]));
    expect(linesFor(afterGreeting)).toMatchObject([{ level: 'warn', reason: 'client closed during the handshake (at request)' }]);
  });
});
