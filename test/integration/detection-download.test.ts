/**
 * Live proof (issue 5): ordinary downloads raise nothing. Real curl, attributed from /proc by the
 * gateway's LocalAttributor, fetches a few MiB from a loopback origin several times — absolute-URI
 * through the HTTP proxy and through CONNECT tunnels (curl -p) — in enforce mode with the same
 * small thresholds the other live tests trip (scan, bulk-upload budget, proxyjack). Zero alerts,
 * every flow allowed and complete.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { type Server, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalAttributor } from '../../agent/attribution.ts';
import { ATTRIBUTION_GUARD_MS, MiB, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway, until } from '../helpers/gateway.ts';

const SIZE = 4 * MiB;
const payload = Buffer.alloc(SIZE, 0x61);

let origin: Server;
let originPort = 0;
let gw: TestGateway;
/** The origin's connections that carried a tunnelled request (no Via: curl spoke to it directly), by remote port. */
const tunnelledPorts = new Set<number>();
/** What each closed origin connection read and wrote, by remote port. */
const wire = new Map<number, { read: number; written: number }>();

beforeAll(async () => {
  origin = createServer((req, res) => {
    if (req.headers.via === undefined) tunnelledPorts.add(req.socket.remotePort ?? 0);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) });
    res.end(payload);
  });
  origin.on('connection', (s: Socket) => {
    const port = s.remotePort ?? 0;
    s.once('close', () => wire.set(port, { read: s.bytesRead, written: s.bytesWritten }));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as AddressInfo).port;
  gw = await startTestGateway(
    {
      mode: 'enforce',
      identity: { localAttribution: true },
      detection: {
        sampleIntervalMs: 50,
        detectors: {
          'an0081.scan': { action: 'block', windowSec: 60, failedPortsOnOneHost: 6, failedDestinations: 50 },
          'an0080.bulk-upload': { action: 'kill', bytesOut: 10 * MiB, minRatio: 10 },
          'an0081.proxyjack': { action: 'kill', windowSec: 60, minBytesOut: 320 * 1024, minRatio: 0.5, maxRatio: 2, minDistinctDestinations: 3 },
        },
      },
    },
    { attributor: new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS }) },
  );
});

afterAll(async () => {
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

/** Run curl with a 10 s bound; resolves with its exit code and stdout. */
async function curl(args: string[]): Promise<{ code: number | null; out: string }> {
  const child = spawn('curl', ['-sS', '--max-time', '10', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 12_000);
  const [code] = (await once(child, 'close')) as [number | null];
  clearTimeout(timer);
  return { code, out };
}

describe('ordinary downloads through the proxy', () => {
  it('curl fetching 4 MiB six times (absolute-URI and CONNECT) raises no alert', async () => {
    const proxy = `http://${gw.httpHost}:${gw.httpPort}`;
    const url = `http://127.0.0.1:${originPort}/file.bin`;
    for (let i = 0; i < 6; i++) {
      const tunnelled = i % 2 === 1;
      const r = await curl(['-x', proxy, ...(tunnelled ? ['-p'] : []), '-o', '/dev/null', '-w', '%{http_code} %{size_download}', url]);
      expect(r).toEqual({ code: 0, out: `200 ${SIZE}` });
    }
    const g = gw;
    await g.waitForClosed(() => g.closed.length >= 6);
    await waitForSweeps(g.flows, 4);
    expect(g.closed).toHaveLength(6);
    for (const rec of g.closed) {
      expect(rec.verdict).toBe('allow');
      expect(rec.identity.process?.name).toBe('curl');
    }
    // Absolute-URI: the response body in, no request body out.
    const forwarded = g.closed.filter((r) => r.protocol === 'http');
    expect(forwarded.map((r) => [r.bytesIn, r.bytesOut])).toEqual([[SIZE, 0], [SIZE, 0], [SIZE, 0]]);
    // CONNECT: exactly what the origin's tunnelled connections wrote and read.
    const tunnels = g.closed.filter((r) => r.protocol === 'connect');
    expect(tunnels).toHaveLength(3);
    expect(tunnelledPorts.size).toBe(3);
    await until("the origin's tunnelled connections closed", () => [...tunnelledPorts].every((p) => wire.has(p)));
    const sides = (xs: Array<{ in: number; out: number }>) => xs.map((x) => `${x.in}/${x.out}`).sort();
    expect(sides(tunnels.map((r) => ({ in: r.bytesIn, out: r.bytesOut })))).toEqual(
      sides([...tunnelledPorts].map((p) => ({ in: wire.get(p)?.written ?? -1, out: wire.get(p)?.read ?? -1 }))),
    );
    for (const r of tunnels) expect(r.bytesIn).toBeGreaterThan(SIZE);
    expect(g.alerts.list()).toEqual([]);
  });
});
