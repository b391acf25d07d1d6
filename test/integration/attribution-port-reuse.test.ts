/**
 * A process attributed to one client connection names that connection only. Before, an attribution
 * was also remembered for the client's address and port for 30 s, and the next connection from a
 * reused port inherited it, skipping attribution: another process, of another user, passed the
 * process-name checks and was recorded as the first. The requests of one HTTP keep-alive connection
 * do share it: they are the same socket.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reportProcesses, testAgent } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { readUntil, startOrigin, type Origin } from './http-harness.ts';

let gw: TestGateway;
let closer: Server;
let closerPort: number;
let origin: Origin;
let releaseSlow: () => void = () => undefined;

beforeAll(async () => {
  // Answers, then ends the connection first, so the gateway ends the client's side first and the
  // client's port is free again at once (no TIME_WAIT on the client's side).
  closer = createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => s.end('bye'));
  });
  closer.listen(0, '127.0.0.1');
  await once(closer, 'listening');
  closerPort = (closer.address() as { port: number }).port;
  // /slow answers after a while: a report can name the request's flow while it is live.
  let release: (() => void) | null = null;
  origin = await startOrigin((req, res) => {
    if (req.url !== '/slow') return false;
    release = () => res.end('abc');
    return true;
  });
  releaseSlow = () => {
    release?.();
    release = null;
  };
  gw = await startTestGateway({ identity: { agents: [testAgent] } });
});
afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  closer?.close();
});

async function tunnelFrom(localPort: number | undefined): Promise<Socket> {
  const s = connect({ host: '127.0.0.1', port: gw.httpPort, localAddress: '127.0.0.1', ...(localPort ? { localPort } : {}) });
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(`CONNECT 127.0.0.1:${closerPort} HTTP/1.1\r\n\r\n`);
  await readUntil(s, '\r\n\r\n');
  return s;
}

const report = (port: number, name: string) =>
  reportProcesses(gw.adminUrl, 'ws', [{ localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: gw.httpPort, pid: 4100, name, user: 'root' }]);

describe('an attribution names its own connection', () => {
  it('a later connection from the same client port does not inherit the earlier process', async () => {
    const a = await tunnelFrom(undefined);
    const port = a.localPort as number;
    expect(await report(port, 'apt-get')).toMatchObject({ attributed: 1 });
    const closedA = once(a, 'close');
    a.write('hello');
    await readUntil(a, 'bye');
    a.end();
    await closedA;
    const recA = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'connect');
    expect(recA.identity.process?.name).toBe('apt-get');

    // The same port again, at once: another socket, maybe another process and user.
    const b = await tunnelFrom(port);
    const closedB = once(b, 'close');
    b.write('hello');
    await readUntil(b, 'bye');
    b.end();
    await closedB;
    const recB = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'connect' && r.id !== recA.id);
    expect(recB.identity.process).toBeNull();
  });

  it('the requests of one keep-alive connection share a process reported while the first was live', async () => {
    const s = connect({ host: '127.0.0.1', port: gw.httpPort });
    s.on('error', () => undefined);
    await once(s, 'connect');
    const port = s.localPort as number;
    const get = (path: string) => `GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`;
    s.write(get('/slow'));
    // Once the origin has the first request, its flow is live (admitted, not yet answered): the report names it.
    await until('the origin has the first request', () => origin.seen.some((r) => r.url === '/slow'));
    expect(await report(port, 'curl')).toMatchObject({ attributed: 1 });
    releaseSlow();
    await readUntil(s, 'abc');
    const first = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'http');
    expect(first.identity.process?.name).toBe('curl');
    s.write(get('/size/3'));
    await readUntil(s, 'abc');
    const second = await gw.waitForClosed((r) => r.client.port === port && r.protocol === 'http' && r.id !== first.id);
    expect(second.identity.process?.name).toBe('curl');
    s.destroy();
  });
});

const hasIpv6 = await ipv6LoopbackAvailable();

// Regression: on a dual-stack listener ([::]) flows were known by `::ffff:127.0.0.1`, agents report
// `127.0.0.1`: no report ever joined, and process detection was off for every agent host.
describe.skipIf(!skipNotice(hasIpv6, 'attribution on a dual-stack listener', 'needs IPv6 (a [::] listener)'))('a dual-stack listener', () => {
  it("an IPv4 client's flow is known by its plain IPv4 address: the record says so and an agent report joins it", async () => {
    const dual = await startTestGateway({ listen: { http: '[::]:0' }, identity: { agents: [testAgent] } });
    try {
      const s = connect({ host: '127.0.0.1', port: dual.httpPort, localAddress: '127.0.0.1' });
      s.on('error', () => undefined);
      await once(s, 'connect');
      const port = s.localPort as number;
      s.write(`CONNECT 127.0.0.1:${closerPort} HTTP/1.1\r\n\r\n`);
      await readUntil(s, '\r\n\r\n');
      const answer = await reportProcesses(dual.adminUrl, 'ws', [
        { localIp: '127.0.0.1', localPort: port, remoteIp: '127.0.0.1', remotePort: dual.httpPort, pid: 4200, name: 'wget' },
      ]);
      expect(answer).toMatchObject({ attributed: 1, pending: 0 });
      const closed = once(s, 'close');
      s.write('hello');
      await readUntil(s, 'bye');
      s.end();
      await closed;
      const rec = await dual.waitForClosed((r) => r.client.port === port);
      expect(rec.client.ip).toBe('127.0.0.1');
      expect(rec.identity.process?.name).toBe('wget');
      expect(rec.communityId).not.toBeNull();
    } finally {
      await dual.stop();
    }
  });
});
