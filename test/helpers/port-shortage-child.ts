/**
 * Run as root inside a network namespace of its own (`unshare -n`, loopback up): the gateway out of
 * local ports. SHORTAGE_PORTS loopback origins; a gateway (enforce mode, real HTTP listener); then
 * the namespace's ephemeral port range is narrowed to one port, so the gateway's dial to each origin
 * takes that port once (one connection per destination address and port) and its second dial to
 * the same origin fails EADDRNOTAVAIL. Per origin: a CONNECT held open, then a second one. The
 * clients bind explicit ports (127.0.0.2:61000+), outside the range. Prints one JSON line: the
 * second CONNECTs' answers, their records' closeReasons, the an0081.scan alerts after a few sweeps,
 * and what the gateway logged at error level.
 */
import { writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { httpConnect, waitForSweeps } from './detection-live.ts';
import { startTestGateway } from './gateway.ts';

const PORTS = Number(process.env['SHORTAGE_PORTS'] ?? 18);
const held: Socket[] = [];
const origins: Server[] = [];
for (let i = 0; i < PORTS; i++) {
  const s = createServer((c) => held.push(c));
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  origins.push(s);
}
const gw = await startTestGateway({ mode: 'enforce', detection: { sampleIntervalMs: 50 } });
const proxy = { host: gw.httpHost, port: gw.httpPort };
writeFileSync('/proc/sys/net/ipv4/ip_local_port_range', '50000 50000');
const first: number[] = [];
const second: string[] = [];
let clientPort = 61_000;
for (const o of origins) {
  const port = (o.address() as { port: number }).port;
  const a = await httpConnect(proxy, `127.0.0.1:${port}`, { localAddress: '127.0.0.2', localPort: clientPort++ });
  first.push(a.status);
  held.push(a.socket);
  const b = await httpConnect(proxy, `127.0.0.1:${port}`, { localAddress: '127.0.0.2', localPort: clientPort++ });
  second.push(`${b.status} ${(/"reason":"([^"]+)"/.exec(b.body) ?? [])[1] ?? ''}`);
}
await waitForSweeps(gw.flows, 5);
const closeReasons = gw.closed.map((r) => `${r.verdict} ${r.closeReason}`);
const scan = gw.alerts.list({}).filter((a) => a.detector === 'an0081.scan').map((a) => `${a.action} ${a.reasons[0] ?? ''}`);
const errors = gw.logs.filter((l) => l.level === 'error').map((l) => `${String(l['code'])} ${String(l['errno'])}`);
process.stdout.write(`${JSON.stringify({ first, second, closeReasons, scan, errors })}\n`);
for (const s of held) s.destroy();
await gw.stop();
for (const o of origins) o.close();
process.exit(0);
