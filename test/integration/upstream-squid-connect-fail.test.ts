/**
 * An http parent that says why a CONNECT failed keeps that meaning (SPEC §4): squid answers a
 * connect to the destination that failed with `503` and `X-Squid-Error: ERR_CONNECT_FAIL <errno>`,
 * read as the destination's refusal (111), no route (113, 101) or timeout (110), as a socks5
 * parent's 0x05 / 0x04 / 0x06 already were. Any other 503 stays the parent's own `upstream-proxy`.
 * Through the real HTTP and SOCKS5 listeners, raw clients, a scripted parent sending squid 5.7's
 * head, and a real squid when one is installed.
 *
 * Regression: every such 503 was 502 `upstream-proxy` / SOCKS 0x01, the parent blamed for a closed
 * port, and since a parent's own failure is no failed attempt for an0081.scan, a port scan through
 * squid went unseen: 27 CONNECTs to closed ports through squid 5.7 gave no alert, where direct or
 * through a socks5 parent the client was blocked and quarantined.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent } from '../helpers/parent-proxy.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type SquidParent, squidAvailable, startSquidParent } from '../helpers/squid-parent.ts';
import { closedPort as closedLoopbackPort } from '../helpers/closed-port.ts';

/** One more than an0081.scan's default failedDestinations (25), past failedPortsOnOneHost (15) too. */
const ATTEMPTS = 26;

/** squid 5.7's error page head for a refused connect (its HTML body left out). */
function squidFields(errno: number): string[] {
  return ['Server: squid/5.7', 'Mime-Version: 1.0', 'Content-Type: text/html;charset=utf-8', `X-Squid-Error: ERR_CONNECT_FAIL ${errno}`, 'Vary: Accept-Language'];
}

let parent: ParentProxy;
let gw: TestGateway;
let closedPort: number;


/** Send `request` to a listener, read until it closes: everything received. */
async function exchange(port: number, request: Buffer | string): Promise<Buffer> {
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  await once(socket, 'connect');
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.write(request);
  await Promise.race([once(socket, 'close'), new Promise((r) => setTimeout(r, 10_000))]);
  socket.destroy();
  return Buffer.concat(chunks);
}

/** A CONNECT through the HTTP listener: `<status> <reason>`. */
async function connectAnswer(g: TestGateway, port: number): Promise<string> {
  const raw = (await exchange(g.httpPort, `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)).toString('latin1');
  return `${raw.split(' ')[1]} ${/"reason":"([^"]+)"/.exec(raw)?.[1] ?? ''}`;
}

/** An absolute-URI GET through the HTTP listener: `<status> <reason>`. */
async function getAnswer(g: TestGateway, port: number): Promise<string> {
  const raw = (await exchange(g.httpPort, `GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`)).toString('latin1');
  return `${raw.split(' ')[1]} ${/"reason":"([^"]+)"/.exec(raw)?.[1] ?? ''}`;
}

/** A SOCKS5 CONNECT (no auth, IPv4) through the SOCKS5 listener: the reply code. */
async function socksReply(g: TestGateway, port: number): Promise<number | undefined> {
  const request = Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff]);
  const raw = await exchange(g.socksPort, request);
  return raw[3];
}

/** Wait for a few detector sweeps (sampleIntervalMs 100 in tests). */
async function sweeps(g: TestGateway, n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await once(g.flows, 'sweep');
}

beforeAll(async () => {
  parent = await startHttpParent();
  closedPort = await closedLoopbackPort();
  gw = await startTestGateway({ upstream: parent.url(), limits: { connectTimeoutMs: 3000 } });
});
afterAll(async () => {
  await gw?.stop();
  await parent?.close();
});

describe("squid's ERR_CONNECT_FAIL in an http parent's 503", () => {
  const cases = [
    { fields: squidFields(111), status: '502', reason: 'connection-refused', socks: 0x05 },
    { fields: squidFields(113), status: '502', reason: 'unreachable', socks: 0x04 },
    { fields: squidFields(101), status: '502', reason: 'unreachable', socks: 0x04 },
    { fields: squidFields(110), status: '504', reason: 'connect-timeout', socks: 0x06 },
    // The parent's own failure: no field, or an errno that is no word on the destination.
    { fields: [], status: '502', reason: 'upstream-proxy', socks: 0x01 },
    { fields: squidFields(0), status: '502', reason: 'upstream-proxy', socks: 0x01 },
  ];
  for (const c of cases) {
    const field = c.fields.find((f) => f.startsWith('X-Squid-Error')) ?? 'no X-Squid-Error';
    it(`${field}: CONNECT and absolute-URI ${c.status} ${c.reason}, SOCKS5 0x0${c.socks}, records ${c.reason}`, async () => {
      parent.mode = { kind: 'refuse', code: 503, fields: c.fields };
      const from = gw.closed.length;
      expect(await connectAnswer(gw, closedPort)).toBe(`${c.status} ${c.reason}`);
      expect(await getAnswer(gw, closedPort)).toBe(`${c.status} ${c.reason}`);
      expect(await socksReply(gw, closedPort)).toBe(c.socks);
      await gw.waitForClosed((r) => r.protocol === 'socks5' && gw.closed.indexOf(r) >= from);
      const recs = gw.closed.slice(from).map((r) => [r.protocol, r.closeReason, r.bytesOut, r.bytesIn]);
      expect(recs).toEqual([
        ['connect', c.reason, 0, 0],
        ['http', c.reason, 0, 0],
        ['socks5', c.reason, 0, 0],
      ]);
    });
  }

  it('the log line names the parent and what it said', async () => {
    parent.mode = { kind: 'refuse', code: 503, fields: squidFields(111) };
    await connectAnswer(gw, closedPort);
    const line = gw.logs.filter((l) => l.msg === 'CONNECT dial failed').at(-1);
    expect(line?.err).toBe(`parent proxy http://127.0.0.1:${parent.port} answered HTTP/1.1 503 Refused (ERR_CONNECT_FAIL 111)`);
  });
});

describe('a port scan through a squid parent', () => {
  let scanned: TestGateway | null = null;
  let squid: SquidParent | null = null;
  afterAll(async () => {
    await scanned?.stop();
    await squid?.close();
  });

  async function scan(upstream: string): Promise<void> {
    scanned = await startTestGateway({ mode: 'enforce', upstream, limits: { connectTimeoutMs: 3000 } });
    const answers: string[] = [];
    for (let i = 0; i < ATTEMPTS; i++) answers.push(await connectAnswer(scanned, 20_000 + i));
    // One host's ports: from the 15th failure (failedPortsOnOneHost) a sweep may quarantine the
    // client before the next CONNECT is asked.
    expect(new Set(answers.slice(0, 15))).toEqual(new Set(['502 connection-refused']));
    await sweeps(scanned);
    expect(scanned.alerts.list({}).find((a) => a.detector === 'an0081.scan')).toMatchObject({ action: 'block', enforced: true });
    expect(await connectAnswer(scanned, 20_000 + ATTEMPTS)).toBe('403 quarantine');
    await scanned.stop();
    scanned = null;
  }

  it(`${ATTEMPTS} CONNECTs to closed ports that squid's 503 says were refused are an0081.scan's failed attempts: blocked, quarantined`, async () => {
    parent.mode = { kind: 'refuse', code: 503, fields: squidFields(111) };
    await scan(parent.url());
  });

  it('the same through a real squid', async ({ skip }) => {
    if (!skipNotice(squidAvailable(), 'a scan through a real squid parent', 'squid is not installed')) skip();
    squid = await startSquidParent();
    await scan(squid.url);
  }, 30_000);
});
