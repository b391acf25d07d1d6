/**
 * A parent proxy that is slow or silent at the TCP level, made on loopback without nftables: its
 * accept queue is full (test/helpers/stalled-parent.ts), so the kernel drops the gateway's SYN
 * until the test lets the parent accept. What is checked is what a user sees: the client's answer,
 * its reason, the flow record.
 */
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { describe, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type StalledParent, startStalledParent } from '../helpers/stalled-parent.ts';
import { jsonBody, readUntil } from './http-harness.ts';

/**
 * Each case waits on real timers (a retransmitted SYN, connectTimeoutMs) with a gateway and a parent
 * of its own, so the cases run concurrently; each stops what it started.
 */
async function withParent(opts: Parameters<typeof startStalledParent>[0], run: (parent: StalledParent, started: (g: TestGateway) => TestGateway) => Promise<void>): Promise<void> {
  const parent = await startStalledParent(opts);
  let gw: TestGateway | null = null;
  try {
    await run(parent, (g) => {
      gw = g;
      return g;
    });
  } finally {
    await (gw as TestGateway | null)?.stop();
    await parent.close();
  }
}

/** A CONNECT through the gateway's HTTP listener: the status line, the reason of a refusal, and what came after the head. */
async function connectThrough(g: TestGateway, target: string): Promise<{ status: string; reason: unknown; after: string }> {
  const socket = connect({ host: g.httpHost, port: g.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
    if (raw.endsWith('first-bytes')) socket.destroy();
  });
  await once(socket, 'close');
  const end = raw.indexOf('\r\n\r\n');
  const isRefused = !raw.startsWith('HTTP/1.1 200 ');
  return { status: raw.slice(0, raw.indexOf('\r\n')), reason: isRefused ? jsonBody(raw).reason : null, after: isRefused ? '' : raw.slice(end + 4) };
}

// Regression: the TCP connect to a parent and the parent's handshake each had the whole
// limits.connectTimeoutMs. With 5,000 ms, a parent whose accept took 2 s (SYNs dropped) and whose
// CONNECT answer came 4 s later gave the client its 200 after 6.1 s: a dial over its budget went on.
//
// The parent accepts at the first SYN the kernel sends after release(): 2 s after the first SYN at
// the earliest (Linux retransmits a SYN 1 s apart 4 times, then backs off; 3 s with the older 1, 3,
// 7 s), so connect + answer is at least 2 + 7 s, over the 8 s budget, and the answer alone (7 s) is
// within it. What a loaded machine may delay (the test noticing the retransmission, the release,
// the gateway's SOCKS5 greeting) has until the budget's end, 6 s later: with 5 s and an answer 4 s
// later it had 3 s, and a loaded run once used them up (504 upstream-proxy, the parent accepting
// too late to be asked for the destination, instead of connect-timeout).
const BUDGET_MS = 8000;
const ANSWER_DELAY_MS = 7000;

describe.concurrent('one budget for a dial through a parent: TCP connect and handshake together', () => {
  for (const protocol of ['http', 'socks5'] as const) {
    it(`${protocol} parent: accepted after a retransmitted SYN and answering 7 s later is over connectTimeoutMs 8,000: 504 connect-timeout`, async ({ expect }) => {
      const answer = protocol === 'http' ? 'HTTP/1.1 200 Connection established\r\n\r\nfirst-bytes' : 'first-bytes';
      await withParent({ protocol, answer, answerDelayMs: ANSWER_DELAY_MS }, async (parent, started) => {
        const gw = started(await startTestGateway({ upstream: parent.url, limits: { connectTimeoutMs: BUDGET_MS } }));
        const answered = connectThrough(gw, '127.0.0.1:9');
        // Let the parent accept only once the gateway's SYN has been dropped and sent again (1 s).
        await parent.waitSynRetransmits(1);
        parent.release();
        const r = await answered;
        expect(r).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'connect-timeout', after: '' });
        const rec = await gw.waitForClosed((x) => x.protocol === 'connect');
        expect(rec).toMatchObject({ closeReason: 'connect-timeout', bytesIn: 0, bytesOut: 0 });
      });
    }, 20_000);
  }
});

/** A raw SOCKS5 CONNECT (no auth) to 127.0.0.1:`port` through the gateway: the reply byte. */
async function socksThrough(g: TestGateway, port: number): Promise<number> {
  const socket = connect({ host: g.socksHost, port: g.socksPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]));
  const got = await new Promise<Buffer>((resolve, reject) => {
    let buf = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4) resolve(buf);
    });
    socket.once('close', () => reject(new Error(`closed after ${buf.toString('hex')}`)));
  });
  socket.destroy();
  // VER METHOD, then VER REP: the reply byte.
  return got[3] as number;
}

/** A GET through the gateway's HTTP listener (absolute-URI, or an Upgrade with `extra`): status line and reason. */
async function getThrough(g: TestGateway, url: string, extra = ''): Promise<{ status: string; reason: unknown }> {
  const socket = connect({ host: g.httpHost, port: g.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`GET ${url} HTTP/1.1\r\nHost: ${new URL(url).host}\r\n${extra}\r\n`);
  const raw = (await readUntil(socket, '}', 15_000)).toString('latin1');
  socket.destroy();
  return { status: raw.slice(0, raw.indexOf('\r\n')), reason: jsonBody(raw).reason };
}

/** The value of a counter sample in the gateway's /metrics, 0 when absent. */
async function metric(g: TestGateway, sample: string): Promise<number> {
  const { text } = await adminGet(g, '/metrics');
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

// Regression: a parent that never accepted the TCP connection (its SYNs dropped) gave 502
// `upstream-proxy` / SOCKS 0x01, where SPEC §4 has 504 for an upstream timeout and a parent that
// accepted but did not answer already gave 504. Its timeout is now 504 / 0x06 with reason
// `upstream-proxy` (the parent's own failure: not the destination's, not a scan attempt), on every
// client path, the log naming the parent.
describe.concurrent('a parent that does not accept in time', () => {
  for (const protocol of ['http', 'socks5'] as const) {
    it(`${protocol} parent: CONNECT, absolute-URI and Upgrade 504 upstream-proxy, SOCKS5 0x06; recorded and logged as the parent's`, async ({ expect }) => {
      await withParent({ protocol, answer: null }, async (parent, started) => {
        const g = started(await startTestGateway({ upstream: parent.url, limits: { connectTimeoutMs: 1000 } }));
        const failedBefore = await metric(g, 'gw_upstream_cx_connect_fail_total{type="upstream-proxy"}');
        // Port 9: nothing pooled towards it, so the absolute-URI request dials the parent too.
        const [connectAnswer, socksReply, plain, upgrade] = await Promise.all([
          connectThrough(g, '127.0.0.1:9'),
          socksThrough(g, 9),
          getThrough(g, 'http://127.0.0.1:9/'),
          getThrough(g, 'http://127.0.0.1:9/ws', 'Upgrade: echo\r\nConnection: Upgrade\r\n'),
        ]);
        expect(connectAnswer).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'upstream-proxy', after: '' });
        expect(socksReply).toBe(0x06);
        expect(plain).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'upstream-proxy' });
        expect(upgrade).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'upstream-proxy' });
        for (const p of ['connect', 'socks5', 'http']) await g.waitForClosed((r) => r.protocol === p);
        expect(g.closed.map((r) => [r.protocol, r.closeReason, r.bytesIn, r.bytesOut]).sort()).toEqual([
          ['connect', 'upstream-proxy', 0, 0],
          ['http', 'upstream-proxy', 0, 0],
          ['http', 'upstream-proxy', 0, 0],
          ['socks5', 'upstream-proxy', 0, 0],
        ]);
        expect(await metric(g, 'gw_upstream_cx_connect_fail_total{type="upstream-proxy"}')).toBe(failedBefore + 4);
        const lines = g.logs.map((l) => `${l.msg}: ${String(l['err'] ?? l['reason'] ?? '')}`);
        for (const msg of ['CONNECT dial failed', 'socks5 refused', 'origin request failed', 'Upgrade dial failed']) {
          expect(lines.find((l) => l.startsWith(`${msg}: `))).toContain(`parent proxy ${protocol}://127.0.0.1:${parent.port} unreachable`);
        }
      });
    }, 20_000);
  }

  it('a socks5 parent that accepts but never answers the greeting: SOCKS5 0x06, CONNECT 504 upstream-proxy', async ({ expect }) => {
    const held = new Set<Socket>();
    const silent: Server = createServer((c) => {
      held.add(c);
      c.on('error', () => {});
    });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const port = (silent.address() as AddressInfo).port;
    let gw: TestGateway | null = null;
    try {
      gw = await startTestGateway({ upstream: `socks5://127.0.0.1:${port}`, limits: { connectTimeoutMs: 1000 } });
      const g = gw;
      const [socksReply, connectAnswer] = await Promise.all([socksThrough(g, 9), connectThrough(g, '127.0.0.1:9')]);
      expect(socksReply).toBe(0x06);
      expect(connectAnswer).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'upstream-proxy', after: '' });
      const rec = await g.waitForClosed((r) => r.protocol === 'connect');
      expect(rec.closeReason).toBe('upstream-proxy');
      expect(g.logs.find((l) => l.msg === 'CONNECT dial failed')?.['err']).toBe(`parent proxy socks5://127.0.0.1:${port} did not answer its SOCKS5 greeting in time`);
    } finally {
      await gw?.stop();
      for (const c of held) c.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });
});
