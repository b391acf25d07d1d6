/**
 * Two live connections from one client address and port, to two of the gateway's listeners: Linux
 * gives connect() the same ephemeral port for different destinations (only the 4-tuple must be
 * unique), so a CONNECT tunnel to the HTTP listener and a SOCKS5 connection to the SOCKS listener can
 * share 127.0.0.1:P. An agent report names its socket by both ends (localIp:localPort and
 * remoteIp:remotePort): it names the flow whose client connection is that socket, not whichever of
 * the two opened last. Before, the report about the tunnel named the SOCKS5 flow (the newest at the
 * client address): enforce mode killed the SOCKS5 connection as an0081.proxyware and the proxyware
 * tunnel ran on, verdict allow, process null.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closedOf, echoOrigin, echoRoundTrip, reportProcesses, type TcpOrigin, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';
import { readBytes } from './socks5-harness.ts';

let origin: TcpOrigin;
let gw: TestGateway;
const sockets: Socket[] = [];

beforeAll(async () => {
  origin = await echoOrigin('127.0.0.1');
  gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] }, detection: { sampleIntervalMs: 50 } });
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await gw?.stop();
  await origin?.close();
});

async function dial(port: number, localPort?: number): Promise<Socket> {
  const s = connect({ host: '127.0.0.1', port, localAddress: '127.0.0.1', ...(localPort === undefined ? {} : { localPort }) });
  sockets.push(s);
  s.on('error', () => undefined);
  await once(s, 'connect');
  return s;
}

/** A CONNECT tunnel to the echo origin through the HTTP listener, and a SOCKS5 CONNECT through the SOCKS one, from one client port. */
async function twoFlowsFromOnePort(): Promise<{ tunnel: Socket; socks: Socket; port: number }> {
  const tunnel = await dial(gw.httpPort);
  tunnel.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  expect((await readUntil(tunnel, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
  const port = tunnel.localPort as number;
  const socks = await dial(gw.socksPort, port);
  socks.write(Buffer.from([5, 1, 0]));
  expect([...(await readBytes(socks, 2))]).toEqual([5, 0]);
  socks.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, origin.port >> 8, origin.port & 0xff]));
  expect((await readBytes(socks, 10))[1]).toBe(0);
  await echoRoundTrip(tunnel, Buffer.from('via the tunnel'));
  await echoRoundTrip(socks, Buffer.from('via socks'));
  await until('both flows live', () => gw.flows.list({ state: 'active' }).filter((r) => r.client.port === port).length === 2);
  return { tunnel, socks, port };
}

describe('a report names the flow of its own socket when two share the client address', () => {
  it("a report about the tunnel's socket (remote end: the HTTP listener) kills the tunnel, not the SOCKS5 connection from the same port", async () => {
    const { tunnel, socks, port } = await twoFlowsFromOnePort();
    const tunnelClosed = closedOf(tunnel);
    const answer = await reportProcesses(gw.adminUrl, 'ws-shared', [{ localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: gw.httpPort, pid: 4711, name: 'honeygain' }]);
    expect(answer).toMatchObject({ accepted: 1, attributed: 1, pending: 0 });
    const killed = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'connect');
    expect(killed).toMatchObject({ verdict: 'block', detector: 'an0081.proxyware', closeReason: 'an0081.proxyware', identity: { process: { name: 'honeygain', pid: 4711 } } });
    await tunnelClosed;
    // The SOCKS5 connection from the same port is another socket: unnamed, and it goes on.
    await echoRoundTrip(socks, Buffer.from('still relayed'));
    const live = gw.flows.list({ state: 'active' }).find((r) => r.client.port === port);
    expect(live).toMatchObject({ protocol: 'socks5', verdict: 'allow', identity: { process: null } });
    // Its own report names it.
    expect(await reportProcesses(gw.adminUrl, 'ws-shared', [{ localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: gw.socksPort, pid: 4712, name: 'curl' }])).toMatchObject({ attributed: 1 });
    const socksClosed = closedOf(socks);
    socks.end();
    await socksClosed;
    const rec = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'socks5');
    expect(rec).toMatchObject({ verdict: 'allow', identity: { process: { name: 'curl', pid: 4712 } } });
  });

  it('after the newer of the two ends, a report about the older names it (it is the flow at the address again)', async () => {
    const { tunnel, socks, port } = await twoFlowsFromOnePort();
    const socksClosed = closedOf(socks);
    socks.end();
    await socksClosed;
    await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'socks5');
    const answer = await reportProcesses(gw.adminUrl, 'ws-shared', [{ localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: gw.httpPort, pid: 4713, name: 'wget' }]);
    expect(answer).toMatchObject({ accepted: 1, attributed: 1, pending: 0 });
    const tunnelClosed = closedOf(tunnel);
    tunnel.end();
    await tunnelClosed;
    const rec = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'connect');
    expect(rec).toMatchObject({ verdict: 'allow', identity: { process: { name: 'wget', pid: 4713 } } });
  });
});
