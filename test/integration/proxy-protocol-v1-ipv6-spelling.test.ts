/**
 * A PROXY v1 TCP6 header names its client in whatever IPv6 spelling the balancer writes
 * (`2001:db8:0:0:0:0:0:7` from Java's getHostAddress, leading zeros, upper case). The flow is known
 * by the one RFC 5952 spelling agents report, node's sockets give and v2's bytes decode to, so an
 * agent report names it. Regression: such a flow kept the spelling as written, no report ever
 * joined it (answer `attributed: 0, pending: 1`), and a proxyware process tunnelled, allowed.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_TOKEN, reportProcesses } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, startOrigin } from './http-harness.ts';

/** The load balancer: the one address whose PROXY headers are believed. */
const BALANCER = '127.0.0.5';

let gw: TestGateway;
let origin: Origin;
const sockets = new Set<Socket>();

beforeAll(async () => {
  origin = await startOrigin();
  gw = await startTestGateway({
    mode: 'enforce',
    proxyProtocol: { trustedSources: [`${BALANCER}/32`] },
    identity: { agents: [{ name: 'ws-agent', token: AGENT_TOKEN, sources: ['2001:db8::/32'] }] },
  });
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await gw?.stop();
  await origin?.close();
});

/** A CONNECT through the balancer, claiming `src`:`srcPort`; resolves once the tunnel is up. */
async function tunnelAs(src: string, srcPort: number): Promise<Socket> {
  const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: BALANCER });
  sockets.add(s);
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`PROXY TCP6 ${src} ::1 ${srcPort} 3128\r\nCONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  const [first] = (await once(s, 'data')) as [Buffer];
  expect(first.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  return s;
}

describe('PROXY v1 TCP6 source spellings', () => {
  // Each case its own client address, so the first kill's quarantine judges none of the others.
  const cases: Array<[string, string, number]> = [
    ['uncompressed', '2001:db8:0:0:0:0:0:7', 4701],
    ['leading zeros', '2001:0db8::8', 4702],
    ['upper case, partly compressed', '2001:DB8:0::9', 4703],
  ];
  for (const [what, written, port] of cases) {
    it(`${what} (${written}): the agent's report names the flow, and its proxyware is killed`, async () => {
      const canonical = `2001:db8::${written.slice(-1)}`;
      await tunnelAs(written, port);
      const answer = await reportProcesses(gw.adminUrl, 'ws-7', [{ localIp: canonical, localPort: port, remoteIp: '::1', remotePort: 3128, pid: 4242, name: 'honeygain' }]);
      expect(answer).toMatchObject({ attributed: 1, pending: 0 });
      const rec = await gw.waitForClosed((r) => r.client.port === port);
      expect(rec.client).toEqual({ ip: canonical, port });
      expect(rec.identity.process?.name).toBe('honeygain');
      expect(rec).toMatchObject({ verdict: 'block', closeReason: 'an0081.proxyware' });
    });
  }
});
