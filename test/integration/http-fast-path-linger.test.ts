/**
 * The end of a connection served on the absolute-URI fast path after its last answer (a 429, an
 * answer to `Connection: close`, one given while the gateway drains, or none: idle at the drain):
 * our FIN, what the client still sends read and dropped, and the connection closed at the client's
 * FIN or 2 s after the answer is written out, whatever the client sends meanwhile. Regression: only
 * the client's FIN or 5 s of its silence ended it, so a client that kept sending kept the connection
 * and its descriptor (reproduced: a half-open client writing 1 KiB every 50 ms after a 429 was still
 * connected at 8 s, 154 writes later), also while the gateway drained.
 */
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Origin, startOrigin } from './http-harness.ts';

/** Far beyond the 2 s linger: the connection must have closed long before. */
const GUARD_MS = 15_000;

let origin: Origin;
/** /late answers, held until the test releases them. */
const held: ServerResponse[] = [];
/** A destination that accepts and holds: a tunnel to it keeps a flow live, so a drain waits. */
let sink: Server;
let sinkPort: number;
const sinkSockets = new Set<Socket>();

beforeAll(async () => {
  origin = await startOrigin((req, res) => {
    if (req.url !== '/late') return false;
    held.push(res);
    return true;
  });
  sink = createServer((c) => {
    sinkSockets.add(c);
    c.on('error', () => undefined);
    c.on('close', () => sinkSockets.delete(c));
  });
  sink.listen(0, '127.0.0.1');
  await once(sink, 'listening');
  sinkPort = (sink.address() as { port: number }).port;
});

afterAll(async () => {
  for (const res of held.splice(0)) res.destroy();
  await origin?.close();
  for (const c of sinkSockets) c.destroy();
  await new Promise<void>((r) => (sink ? sink.close(() => r()) : r()));
});

function get(path: string, extra = ''): string {
  return `GET http://127.0.0.1:${origin.port}${path} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n${extra}\r\n`;
}

/** A raw client that keeps its side open after the gateway's FIN (a client that goes on writing). */
interface Client {
  s: Socket;
  port: number;
  text(): string;
  isEnded(): boolean;
  isClosed(): boolean;
  closed: Promise<void>;
}

async function client(port: number): Promise<Client> {
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(s, 'connect');
  s.on('error', () => undefined);
  let text = '';
  let isEnded = false;
  let isClosed = false;
  s.on('data', (c: Buffer) => {
    text += c.toString('latin1');
  });
  s.on('end', () => {
    isEnded = true;
  });
  const closed = new Promise<void>((r) =>
    s.once('close', () => {
      isClosed = true;
      r();
    }),
  );
  return { s, port: s.localPort as number, text: () => text, isEnded: () => isEnded, isClosed: () => isClosed, closed };
}

/** Whether `text` holds one whole response (head and a body of its Content-Length) after `from`. */
function isWhole(text: string, from: number): boolean {
  const split = text.indexOf('\r\n\r\n', from);
  if (split < 0) return false;
  const length = Number(/\r\ncontent-length: (\d+)/i.exec(text.slice(from, split))?.[1] ?? Number.NaN);
  return text.length - split - 4 >= length;
}

/**
 * Write `piece()` every 50 ms until the gateway closes the connection or GUARD_MS pass. True when
 * the gateway closed it while the client was still writing (never by the guard).
 */
async function writeUntilClosed(c: Client, piece: () => string | Buffer): Promise<{ isClosedByGateway: boolean; writes: number }> {
  const deadline = Date.now() + GUARD_MS;
  let writes = 0;
  while (!c.isClosed() && Date.now() < deadline) {
    if (c.s.writable) {
      c.s.write(piece());
      writes++;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const isClosedByGateway = c.isClosed();
  c.s.destroy();
  return { isClosedByGateway, writes };
}

const KIB = Buffer.alloc(1024, 0x78);

// Each case waits out the 2 s linger with a gateway of its own: the cases run concurrently.
describe.concurrent('fast path: after the last answer the connection ends within the linger, whatever the client sends', () => {
  it('a 429: the answer whole, FIN, then closed by the gateway while the client still writes 1 KiB every 50 ms', async ({ expect, onTestFinished }) => {
    const g = await startTestGateway({ limits: { maxNewFlowsPerSecPerIdentity: 1 } });
    onTestFinished(() => g.stop());
    const c = await client(g.httpPort);
    // One whole head at a time, nothing after it: each is the fast path's, until one is over the rate.
    let answers = 0;
    for (let i = 0; i < 6 && !c.text().includes('HTTP/1.1 429 '); i++) {
      c.s.write(get(`/size/${i + 1}`));
      await until(`answer ${i + 1}`, () => (c.text().match(/HTTP\/1\.1 \d{3} /g)?.length ?? 0) > answers || c.isClosed(), 5000);
      answers = c.text().match(/HTTP\/1\.1 \d{3} /g)?.length ?? 0;
    }
    const at = c.text().indexOf('HTTP/1.1 429 ');
    expect(at).toBeGreaterThanOrEqual(0);
    await until('the 429 whole', () => isWhole(c.text(), at), 5000);
    expect(c.text().slice(at)).toMatch(/\r\nconnection: close\r\n/i);
    await until("the gateway's FIN", () => c.isEnded(), 5000);
    const { isClosedByGateway, writes } = await writeUntilClosed(c, () => KIB);
    // Before: still open when the guard ran out, 300 writes later.
    expect(isClosedByGateway).toBe(true);
    expect(writes).toBeGreaterThan(0);
    // One record per request answered; nothing for what came after the 429.
    await until('records of the connection', () => g.closed.filter((r) => r.client.port === c.port).length >= answers, 5000);
    expect(g.closed.filter((r) => r.client.port === c.port)).toHaveLength(answers);
  }, 40_000);

  it('Connection: close: the 200 whole, FIN, then closed by the gateway while the client still sends requests', async ({ expect, onTestFinished }) => {
    const g = await startTestGateway({});
    onTestFinished(() => g.stop());
    const c = await client(g.httpPort);
    c.s.write(get('/size/1000', 'Connection: close\r\n'));
    await until('the 200 whole', () => isWhole(c.text(), 0), 5000);
    expect(c.text()).toMatch(/^HTTP\/1\.1 200 /);
    await until("the gateway's FIN", () => c.isEnded(), 5000);
    let n = 0;
    const { isClosedByGateway } = await writeUntilClosed(c, () => get(`/after/${n++}`));
    expect(isClosedByGateway).toBe(true);
    // The requests written after it were dropped unanswered: one response, one record.
    expect(c.text().match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect(g.closed.filter((r) => r.client.port === c.port)).toHaveLength(1);
  }, 40_000);
});

describe.concurrent('fast path while the gateway drains: a keep-alive connection that keeps sending requests ends within the grace', () => {
  /** Start a drain that waits on a live tunnel (a flow) for up to 30 s; `isDrained` tells when it ended. */
  async function drainHeldOpen(g: TestGateway): Promise<{ isDrained: () => boolean; tunnel: Socket }> {
    const tunnel = connect({ port: g.httpPort, host: '127.0.0.1' });
    await once(tunnel, 'connect');
    tunnel.on('error', () => undefined);
    tunnel.write(`CONNECT 127.0.0.1:${sinkPort} HTTP/1.1\r\nHost: 127.0.0.1:${sinkPort}\r\n\r\n`);
    const [first] = (await once(tunnel, 'data')) as [Buffer];
    expect(first.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    let isDrained = false;
    void g.drain(30_000).then(() => {
      isDrained = true;
    });
    return { isDrained: () => isDrained, tunnel };
  }

  it('answered while draining (connection: close): closed by the gateway while the drain still waits and the client still sends', async ({ expect, onTestFinished }) => {
    const g = await startTestGateway({});
    onTestFinished(() => g.stop());
    const c = await client(g.httpPort);
    c.s.write(get('/late'));
    await until('the origin holds the request', () => held.length === 1, 5000);
    const { isDrained, tunnel } = await drainHeldOpen(g);
    try {
      const res = held.shift() as ServerResponse;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 9 });
      res.end('late body');
      await until('the answer whole', () => isWhole(c.text(), 0), 5000);
      expect(c.text()).toMatch(/^HTTP\/1\.1 200 /);
      expect(c.text()).toMatch(/\r\nconnection: close\r\n/i);
      expect(c.text().endsWith('\r\n\r\nlate body')).toBe(true);
      await until("the gateway's FIN", () => c.isEnded(), 5000);
      let n = 0;
      const { isClosedByGateway } = await writeUntilClosed(c, () => get(`/pipelined/${n++}`));
      // Before: open until the guard ran out, the drain still waiting on the tunnel.
      expect(isClosedByGateway).toBe(true);
      expect(isDrained()).toBe(false);
      expect(c.text().match(/HTTP\/1\.1 /g)).toHaveLength(1);
    } finally {
      tunnel.destroy();
    }
  }, 40_000);

  it('idle when the drain starts: FIN, then closed by the gateway while the drain still waits; what it sends after is not served', async ({ expect, onTestFinished }) => {
    const g = await startTestGateway({});
    onTestFinished(() => g.stop());
    const c = await client(g.httpPort);
    c.s.write(get('/size/10'));
    await until('the first answer whole', () => isWhole(c.text(), 0), 5000);
    const { isDrained, tunnel } = await drainHeldOpen(g);
    try {
      await until("the gateway's FIN", () => c.isEnded(), 5000);
      let n = 0;
      const { isClosedByGateway } = await writeUntilClosed(c, () => get(`/pipelined/${n++}`));
      expect(isClosedByGateway).toBe(true);
      expect(isDrained()).toBe(false);
      // Only the request before the drain was answered and recorded.
      expect(c.text().match(/HTTP\/1\.1 /g)).toHaveLength(1);
      expect(g.closed.filter((r) => r.client.port === c.port)).toHaveLength(1);
    } finally {
      tunnel.destroy();
    }
  }, 40_000);
});
