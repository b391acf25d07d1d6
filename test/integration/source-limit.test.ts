/**
 * limits.maxConnectionsPerSource through the real listeners: one address that opens connections and
 * sends nothing cannot hold more than its share. Over the limit, the plain HTTP listener answers 429
 * `rate-limit` and closes; the SOCKS and HTTPS listeners close; the count spans listeners; other addresses are
 * served throughout; a closed connection frees its place; behind a trusted balancer the claimed client
 * is the source, not the balancer; the metrics and one warning say what was refused. An IPv4 client
 * of a dual-stack listener is the same source as on an IPv4 listener (it counted twice before).
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV1 } from '../../gateway/protocol/proxy-protocol.ts';
import { echoOrigin, type TcpOrigin } from '../helpers/detection-live.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, type TestPki } from '../helpers/tls.ts';
import { readUntil } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

const LIMIT = 5;
const FLOODER = '127.0.0.50';
const OTHER = '127.0.0.51';
/** A dual-stack listener needs IPv6 on the host. */
const hasIpv6 = await ipv6LoopbackAvailable();

let echo: TcpOrigin;
let gw: TestGateway | null = null;
const opened = new Set<Socket>();

beforeAll(async () => {
  echo = await echoOrigin('127.0.0.1');
});
afterAll(async () => {
  await echo.close();
});
afterEach(async () => {
  for (const s of opened) s.destroy();
  opened.clear();
  await gw?.stop();
  gw = null;
});

/** A TCP connection from `from` to `port`, established (the gateway accepted it). */
async function open(port: number, from: string): Promise<Socket> {
  const s = connect({ port, host: '127.0.0.1', localAddress: from });
  s.on('error', () => undefined);
  opened.add(s);
  await once(s, 'connect');
  return s;
}

/** A CONNECT through `s` to the echo origin; resolves with the proxy's status line. */
async function connectThrough(s: Socket, prefix: Buffer = Buffer.alloc(0)): Promise<string> {
  s.write(Buffer.concat([prefix, Buffer.from(`CONNECT 127.0.0.1:${echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${echo.port}\r\n\r\n`)]));
  const head = await readUntil(s, '\r\n\r\n');
  return head.toString('latin1').split('\r\n')[0] as string;
}

async function metric(g: TestGateway, name: string): Promise<number> {
  const m = new RegExp(`^${name} (\\d+)$`, 'm').exec((await adminGet(g, '/metrics')).text);
  return Number(m?.[1] ?? Number.NaN);
}

describe('limits.maxConnectionsPerSource', () => {
  it('one address that opens connections and sends nothing gets no more than its limit; others are served', async () => {
    gw = await startTestGateway({ limits: { maxConnectionsPerSource: LIMIT } });
    const g = gw;
    const idle: Socket[] = [];
    for (let i = 0; i < LIMIT; i++) idle.push(await open(g.httpPort, FLOODER));

    // Over the limit on the HTTP listener: 429 rate-limit, then closed.
    const over = await open(g.httpPort, FLOODER);
    const answer = await readToEnd(over);
    const text = answer.data.toString('latin1');
    expect(text.split('\r\n')[0]).toBe('HTTP/1.1 429 Too Many Requests');
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'too many connections from this address', reason: 'rate-limit' });
    // The count spans listeners: the SOCKS listener closes without a byte.
    const socks = await open(g.socksPort, FLOODER);
    socks.write(Buffer.from([5, 1, 0]));
    expect((await readToEnd(socks)).data.length).toBe(0);

    // Another address is served all along.
    const other = await open(g.httpPort, OTHER);
    expect(await connectThrough(other)).toBe('HTTP/1.1 200 Connection Established');

    // A connection that closes frees its place.
    idle[0]?.destroy();
    await until('the freed place to be usable', async () => {
      const s = await open(g.httpPort, FLOODER);
      const line = await connectThrough(s).catch(() => 'closed');
      return line === 'HTTP/1.1 200 Connection Established';
    });

    expect(await metric(g, 'gw_downstream_cx_source_limited_total')).toBeGreaterThanOrEqual(2);
    const warnings = g.logs.filter((l) => l['code'] === 'EGW_SOURCE_CONNECTIONS');
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatchObject({ client: FLOODER, limit: LIMIT, refused: 1 });
  });

  it('behind a trusted balancer, the claimed client is the source (the balancer is not limited as one)', async () => {
    gw = await startTestGateway({ limits: { maxConnectionsPerSource: LIMIT }, proxyProtocol: { trustedSources: ['127.0.0.1/32'] } });
    const g = gw;
    const claim = (srcIp: string, srcPort: number) => encodeProxyV1({ srcIp, srcPort, dstIp: '127.0.0.1', dstPort: g.httpPort });
    // LIMIT tunnels claimed for one client, all from the balancer's one address.
    for (let i = 0; i < LIMIT; i++) expect(await connectThrough(await open(g.httpPort, '127.0.0.1'), claim('203.0.113.7', 5000 + i))).toBe('HTTP/1.1 200 Connection Established');
    // The same client once more: refused.
    const over = await open(g.httpPort, '127.0.0.1');
    over.write(claim('203.0.113.7', 5100));
    expect((await readToEnd(over)).data.toString('latin1')).toMatch(/^HTTP\/1\.1 429 /);
    // Another client through the same balancer: served.
    expect(await connectThrough(await open(g.httpPort, '127.0.0.1'), claim('203.0.113.8', 5200))).toBe('HTTP/1.1 200 Connection Established');
  });

  it('with a PROXY protocol front, an untrusted peer is counted from its accept, not once its first bytes came', async () => {
    // The front waits up to headerTimeoutMs for an untrusted peer's first bytes (a PROXY signature
    // is refused): 60 s here, so only the count can answer within the 10 s guard below.
    gw = await startTestGateway({ limits: { maxConnectionsPerSource: LIMIT, headerTimeoutMs: 60_000 }, proxyProtocol: { trustedSources: ['127.0.0.1/32'] } });
    const g = gw;
    const idle: Socket[] = [];
    for (let i = 0; i < LIMIT; i++) idle.push(await open(g.httpPort, FLOODER));
    const answerOf = async (s: Socket): Promise<Buffer> => {
      const guard = setTimeout(() => s.destroy(), 10_000);
      try {
        return (await readToEnd(s)).data;
      } finally {
        clearTimeout(guard);
      }
    };
    // Over the limit, silent: 429 and closed at once on HTTP (before: held open, unanswered, 60 s);
    // closed on SOCKS, the count spanning listeners.
    const over = await open(g.httpPort, FLOODER);
    expect((await answerOf(over)).toString('latin1').split('\r\n')[0]).toBe('HTTP/1.1 429 Too Many Requests');
    const socks = await open(g.socksPort, FLOODER);
    socks.write(Buffer.from([5, 1, 0]));
    expect((await answerOf(socks)).length).toBe(0);
    expect(g.logs).toContainEqual(expect.objectContaining({ code: 'EGW_SOURCE_CONNECTIONS', client: FLOODER, limit: LIMIT }));
    // The balancer's clients are not that source: served.
    const claim = encodeProxyV1({ srcIp: '203.0.113.7', srcPort: 5300, dstIp: '127.0.0.1', dstPort: g.httpPort });
    expect(await connectThrough(await open(g.httpPort, '127.0.0.1'), claim)).toBe('HTTP/1.1 200 Connection Established');
    // A held connection that closes frees its place (counted once, released once); its successor
    // goes through the front, unread by it, as the flooder's own address.
    idle[0]?.destroy();
    await until('the freed place to be usable', async () => {
      const s = await open(g.httpPort, FLOODER);
      const line = await connectThrough(s).catch(() => 'closed');
      return line === 'HTTP/1.1 200 Connection Established';
    });
    // Every held one still counted: one more is refused again.
    expect((await answerOf(await open(g.httpPort, FLOODER))).toString('latin1')).toMatch(/^HTTP\/1\.1 429 /);
  });

  it('the HTTPS listener: under the limit TLS and CONNECT work; over it the connection is closed before any handshake', async () => {
    const pki: TestPki = await createTestPki({});
    try {
      gw = await startTestGateway({
        listen: { https: '127.0.0.1:0' },
        tls: { cert: pki.server.certPath, key: pki.server.keyPath },
        limits: { maxConnectionsPerSource: 2 },
      });
      const g = gw;
      const httpsPort = Number((g.https as string).split(':').pop());
      const tlsTunnel = async (): Promise<string> => {
        const raw = await open(httpsPort, FLOODER);
        const s = tlsConnect({ socket: raw, ca: pki.ca.cert, host: '127.0.0.1' });
        s.on('error', () => undefined);
        const done = await new Promise<string>((resolve) => {
          s.once('secureConnect', () => resolve('secure'));
          s.once('close', () => resolve('closed'));
        });
        if (done !== 'secure') return done;
        return connectThrough(s);
      };
      expect(await tlsTunnel()).toBe('HTTP/1.1 200 Connection Established');
      await open(g.httpPort, FLOODER);
      // Two open from this address now (the tunnel and a plain HTTP connection): the next is closed.
      expect(await tlsTunnel()).toBe('closed');
    } finally {
      await pki.cleanup();
    }
  });

  // Regression: a TLS 1.3 client that closed (FIN, no close_notify) right after its handshake, as a
  // TLS health check does, was never seen to end: node's TLS socket, half-open from the handshake on,
  // lost the FIN that came with the client's Finished, and the connection held its place until
  // limits.headerTimeoutMs (here a minute). Now the socket is half-open only once the handshake is done.
  it('the HTTPS listener: a client that closes right after its handshake gives its place back at once', async () => {
    const pki: TestPki = await createTestPki({});
    try {
      gw = await startTestGateway({
        listen: { https: '127.0.0.1:0' },
        tls: { cert: pki.server.certPath, key: pki.server.keyPath },
        limits: { maxConnectionsPerSource: 1, headerTimeoutMs: 60_000 },
      });
      const g = gw;
      const httpsPort = Number((g.https as string).split(':').pop());
      const handshake = async () => {
        const s = tlsConnect({ socket: await open(httpsPort, FLOODER), ca: pki.ca.cert, host: '127.0.0.1' });
        s.on('error', () => undefined);
        await once(s, 'secureConnect');
        return s;
      };
      const httpsActive = async () => Number(/^gw_downstream_cx_active\{listener="https"\} (\d+)$/m.exec((await adminGet(g, '/metrics')).text)?.[1] ?? Number.NaN);
      for (let i = 0; i < 3; i++) {
        (await handshake()).destroy();
        await until(`health check ${i + 1} closed by the gateway`, async () => (await httpsActive()) === 0, 10_000);
      }
      expect(await connectThrough(await handshake())).toBe('HTTP/1.1 200 Connection Established');
      expect(await metric(g, 'gw_downstream_cx_source_limited_total')).toBe(0);
    } finally {
      await pki.cleanup();
    }
  }, 45_000);

  it('0 turns it off; a reload that sets a limit applies to connections already open', async () => {
    gw = await startTestGateway({ limits: { maxConnectionsPerSource: 0 } });
    const g = gw;
    for (let i = 0; i < LIMIT + 3; i++) await open(g.httpPort, FLOODER);
    expect(await connectThrough(await open(g.httpPort, FLOODER))).toBe('HTTP/1.1 200 Connection Established');
    expect(await metric(g, 'gw_downstream_cx_source_limited_total')).toBe(0);
    // Reloaded with a limit: the connections already open are not cut but count, so new ones from that address are refused.
    const config = structuredClone(g.policy.current().config);
    config.limits.maxConnectionsPerSource = LIMIT;
    expect(g.policy.reload(config).ok).toBe(true);
    const over = await open(g.httpPort, FLOODER);
    expect((await readToEnd(over)).data.toString('latin1')).toMatch(/^HTTP\/1\.1 429 /);
    expect(await connectThrough(await open(g.httpPort, OTHER))).toBe('HTTP/1.1 200 Connection Established');
  });

  // Regression: a dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d, and the count was keyed by
  // that spelling: one address held its limit on the HTTP listener ([::]) and its limit again on SOCKS.
  it.skipIf(!skipNotice(hasIpv6, 'source-limit dual-stack', 'needs IPv6 (a [::] listener)'))(
    'an IPv4 client of a dual-stack listener is one source with its connections to an IPv4 listener',
    async () => {
      gw = await startTestGateway({ listen: { http: '[::]:0' }, limits: { maxConnectionsPerSource: 2 } });
      const g = gw;
      expect(g.http).toMatch(/^\[::\]:\d+$/);
      // One connection to each listener from FLOODER: its two places.
      expect(await connectThrough(await open(g.httpPort, FLOODER))).toBe('HTTP/1.1 200 Connection Established');
      await open(g.socksPort, FLOODER);
      // A third, to either listener, is over the limit.
      const overHttp = await open(g.httpPort, FLOODER);
      expect((await readToEnd(overHttp)).data.toString('latin1')).toMatch(/^HTTP\/1\.1 429 /);
      const overSocks = await open(g.socksPort, FLOODER);
      overSocks.write(Buffer.from([5, 1, 0]));
      expect((await readToEnd(overSocks)).data.length).toBe(0);
      expect(g.logs.filter((l) => l['code'] === 'EGW_SOURCE_CONNECTIONS')[0]).toMatchObject({ client: FLOODER, limit: 2 });
      // Another address through the dual-stack listener is served.
      expect(await connectThrough(await open(g.httpPort, OTHER))).toBe('HTTP/1.1 200 Connection Established');
    },
  );
});
