/**
 * Run as root inside a network namespace of its own (`unshare -n`, loopback up) whose IPv6 is
 * disabled (net.ipv6.conf.*.disable_ipv6 = 1, as in a container by default): every IPv6 connect there
 * fails EADDRNOTAVAIL at once. A real gateway (enforce mode) whose resolver answers dual-stack names:
 *  - `pair.test`: a refusing IPv4 address, an IPv6 one, then an IPv4 origin serving on ORIGIN_PORT;
 *  - `hung.test`: an IPv4 address whose connect hangs (test/helpers/hung-destination.ts), then an
 *    IPv6 one;
 *  - `v6only.test`: an IPv6 address alone.
 * Nothing is remembered of the addresses that did not answer (`resolver.rememberUnansweredMs: 0`),
 * so each path dials them in the answer's order. Prints one JSON line: each path's answer for pair.test (CONNECT, SOCKS5 CONNECT, absolute-URI GET),
 * the CONNECT's answer for hung.test, CONNECT's and GET's for v6only.test, and the records' closeReason and destination address.
 */
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, type Socket } from 'node:net';
import { SocksClient } from 'socks';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { httpConnect } from './detection-live.ts';
import { startTestGateway } from './gateway.ts';
import { hungDestination } from './hung-destination.ts';

for (const dev of ['all', 'default', 'lo']) writeFileSync(`/proc/sys/net/ipv6/conf/${dev}/disable_ipv6`, '1');

const origin = createServer((req, res) => res.end(`served by ${req.socket.localAddress}`));
origin.listen(0, '127.0.0.3');
await once(origin, 'listening');
const port = (origin.address() as { port: number }).port;
const hung = await hungDestination();
const zone: Record<string, string[]> = {
  'pair.test': ['127.0.0.2', '2001:db8::1', '127.0.0.3'],
  'hung.test': ['127.0.0.1', '2001:db8::1'],
  'v6only.test': ['2001:db8::1'],
};
const resolver = createDnsResolver({ lookup: (host) => Promise.resolve(zone[host] ?? []) });
const gw = await startTestGateway({ mode: 'enforce', limits: { connectTimeoutMs: 1500 }, resolver: { rememberUnansweredMs: 0 } }, { resolver });

async function readAll(s: Socket): Promise<string> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => undefined);
  const timer = setTimeout(() => s.destroy(), 10_000);
  await once(s, 'close');
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1');
}

const answers: Record<string, string> = {};
const tunnel = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `pair.test:${port}`);
if (tunnel.status === 200) {
  tunnel.socket.resume();
  tunnel.socket.write('GET / HTTP/1.1\r\nHost: pair.test\r\nConnection: close\r\n\r\n');
  answers['CONNECT'] = (await readAll(tunnel.socket)).split('\r\n\r\n')[1] ?? '';
} else answers['CONNECT'] = `${tunnel.status} ${tunnel.body}`;
try {
  const { socket } = await SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: 'pair.test', port }, timeout: 10_000 });
  socket.write('GET / HTTP/1.1\r\nHost: pair.test\r\nConnection: close\r\n\r\n');
  answers['SOCKS5'] = (await readAll(socket)).split('\r\n\r\n')[1] ?? '';
} catch (err) {
  answers['SOCKS5'] = (err as Error).message;
}
const get = connect(gw.httpPort, gw.httpHost);
get.write(`GET http://pair.test:${port}/ HTTP/1.1\r\nHost: pair.test:${port}\r\nConnection: close\r\n\r\n`);
const got = await readAll(get);
answers['GET'] = `${got.split(' ')[1]} ${got.split('\r\n\r\n')[1] ?? ''}`;
const slow = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `hung.test:${hung.port}`);
answers['CONNECT hung.test'] = `${slow.status} ${(/"reason":"([^"]+)"/.exec(slow.body) ?? [])[1] ?? ''}`;
slow.socket.destroy();
const v6 = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `v6only.test:${port}`);
answers['CONNECT v6only.test'] = `${v6.status} ${(/"reason":"([^"]+)"/.exec(v6.body) ?? [])[1] ?? ''}`;
v6.socket.destroy();
const v6get = connect(gw.httpPort, gw.httpHost);
v6get.write(`GET http://v6only.test:${port}/ HTTP/1.1\r\nHost: v6only.test:${port}\r\nConnection: close\r\n\r\n`);
const v6got = await readAll(v6get);
answers['GET v6only.test'] = `${v6got.split(' ')[1]} ${(/"reason":"([^"]+)"/.exec(v6got) ?? [])[1] ?? ''}`;
hung.close();
await gw.waitForClosed((r) => r.destination.host === 'hung.test');
await gw.waitForClosed((r) => r.destination.host === 'v6only.test' && r.protocol === 'http');
const records = gw.closed.map((r) => `${r.protocol} ${r.destination.host} ${r.destination.ip} ${r.closeReason}`);
await gw.stop();
origin.close();
process.stdout.write(`${JSON.stringify({ answers, records })}\n`);
process.exit(0);
