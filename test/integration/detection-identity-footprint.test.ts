/**
 * What the detectors keep per identity (policy/detectors/state.ts, DetectionState.footprint): many
 * client addresses over 127.0.0.0/8, each its own identity, a CONNECT tunnel, an absolute-URI GET
 * and a SOCKS5 CONNECT each through the real listeners, every an0081/an0080 detector on (action
 * flag, as the bench runs them), and one address whose dials are refused. The failed-attempt
 * windows exist for that one only, each byte window holds a bucket per 5 s (60 s for the daily
 * total) in which its identity moved bytes, each destination list its flows, and no identity keeps
 * a grown-ports set past the sweep. Before, every identity held all of them from its first flow,
 * each list grown to 17 slots at its first entry: about 8.9 KB an identity, 3.9 KB now (3,000
 * identities × these 3 flows, heap measured with the windows dropped).
 */
import { once } from 'node:events';
import { createServer, request, type Server } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DetectionEngine } from '../../gateway/detection/detection-engine.ts';
import { DETECTOR_DEFAULTS } from '../../policy/detectors/defaults.ts';
import { echoOrigin, echoRoundTrip, httpConnect, refusingPorts, type TcpOrigin } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { readBytes } from './socks5-harness.ts';

/** Identities driven: enough that a per-identity structure shows in the counts, few enough for a loaded machine. */
const N = 200;
const CONCURRENCY = 8;

const detectors: Record<string, { enabled: boolean; action: 'flag' }> = {};
for (const d of Object.keys(DETECTOR_DEFAULTS)) if (d.startsWith('an008')) detectors[d] = { enabled: true, action: 'flag' };

/** The i-th client address: 127.1.x.y, away from 127.0.0.1 where the gateway and origins listen. */
const addressOf = (i: number): string => `127.1.${Math.floor(i / 250)}.${1 + (i % 250)}`;

let gw: TestGateway;
let echo: TcpOrigin;
let web: Server;
let webPort: number;

beforeAll(async () => {
  echo = await echoOrigin('127.0.0.1');
  web = createServer((_req, res) => res.end('hello'));
  web.listen(0, '127.0.0.1');
  await once(web, 'listening');
  webPort = (web.address() as AddressInfo).port;
  gw = await startTestGateway({
    mode: 'enforce',
    resolver: { hosts: { 'tun.example.test': '127.0.0.1', 'web.example.test': '127.0.0.1', 'sock.example.org': '127.0.0.1' } },
    detection: { detectors },
  });
});

afterAll(async () => {
  await gw?.stop();
  await echo?.close();
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
});

async function tunnel(from: string): Promise<void> {
  const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `tun.example.test:${echo.port}`, { localAddress: from });
  expect(a.status).toBe(200);
  await echoRoundTrip(a.socket, Buffer.alloc(500, 1));
  a.socket.destroy();
}

async function absoluteGet(from: string): Promise<void> {
  const status = await new Promise<number>((resolve, reject) => {
    const req = request(
      { host: gw.httpHost, port: gw.httpPort, localAddress: from, agent: false, path: `http://web.example.test:${webPort}/`, headers: { host: `web.example.test:${webPort}` }, timeout: 5000 },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('timeout', () => req.destroy(new Error('GET: no answer in 5 s')));
    req.on('error', reject);
    req.end();
  });
  expect(status).toBe(200);
}

async function socksConnect(from: string): Promise<void> {
  const s = connect({ host: gw.socksHost, port: gw.socksPort, localAddress: from });
  s.on('error', () => undefined);
  await once(s, 'connect');
  s.write(Buffer.from([5, 1, 0]));
  expect([...(await readBytes(s, 2))]).toEqual([5, 0]);
  const host = Buffer.from('sock.example.org');
  s.write(Buffer.concat([Buffer.from([5, 1, 0, 3, host.length]), host, Buffer.from([echo.port >> 8, echo.port & 0xff])]));
  const reply = await readBytes(s, 10);
  expect(reply[1]).toBe(0);
  if (reply.length > 10) s.unshift(reply.subarray(10));
  await echoRoundTrip(s, Buffer.alloc(300, 2));
  s.destroy();
}

describe('the detectors keep per identity only what its flows filled', () => {
  it(`${N} identities × a CONNECT, an absolute-URI GET and a SOCKS5 CONNECT, and one refused address`, async () => {
    const engine = gw.ctx.detection as DetectionEngine;
    // How long each identity's flows took: its byte windows may hold one bucket per 5 s of that.
    const spans: number[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < N) {
          const i = next++;
          const t0 = Date.now();
          await tunnel(addressOf(i));
          await absoluteGet(addressOf(i));
          await socksConnect(addressOf(i));
          spans.push(Date.now() - t0);
        }
      }),
    );
    // One identity whose dials fail: a failed attempt for an0081.scan (3 refused ports, far below its thresholds).
    const failing = addressOf(N);
    for (const port of await refusingPorts('127.0.0.1', 3)) {
      const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${port}`, { localAddress: failing });
      expect(a.status).toBe(502);
    }
    // Every flow closed (folded as it closes), and a sweep since the last one (the grown ports looked at).
    await until('every flow closed', () => gw.flows.activeFlows().size === 0, 20_000);
    await until('the sweeps took the grown ports', () => engine.state.footprint().portsGrown === 0, 10_000);

    const fp = engine.state.footprint();
    expect(fp.identities).toBe(N + 1);
    // Failed-attempt windows: the failing identity's only.
    expect(fp.failedAttempts).toBe(1);
    // example.test (the tunnel and the GET) and example.org (SOCKS5) per identity; refused dials reach none.
    expect(fp.destinations).toBe(2 * N);
    // Baselines of those that sent bytes.
    expect(fp.hourlyIdentities).toBe(N);
    // Nine byte windows an identity (out, in, 24 h out; out, in, uploads per destination), each with
    // a bucket per 5 s its flows spanned at most (the 24 h total's are a minute).
    const bucketBound = spans.reduce((sum, ms) => sum + 9 * (Math.ceil(ms / 5000) + 1), 0);
    expect(fp.buckets).toBeGreaterThanOrEqual(9 * N);
    expect(fp.buckets).toBeLessThanOrEqual(bucketBound);
    // Starts: 2 + 1; hours: one a destination (two if an hour began meanwhile); uploaders: the tunnel
    // and the SOCKS5 flow (the GET sends no body).
    expect(fp.listEntries).toBeGreaterThanOrEqual(7 * N);
    expect(fp.listEntries).toBeLessThanOrEqual(9 * N);
  });
});
