/**
 * Regression: the PROXY front re-concatenated every byte read so far at each read, so a trusted
 * peer trickling a v2 header of the largest size (16 + 65,535 bytes) one byte per write made it copy
 * the prefix once per read: 60,985 Buffer.concat calls and 2.0 GB copied for one header (one read
 * per byte, paced), 2,401 calls and 84 MB unpaced. It now appends into a buffer that grows by
 * doubling. What is checked here is behaviour, never speed: the header trickled byte by byte is
 * still accepted (the bytes after it reach the listener exactly, the record names the claimed
 * client), and a v1 line over its 107 bytes, trickled the same way, is still refused.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV2 } from '../../gateway/protocol/proxy-protocol.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, rawConnect, startOrigin } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

/** The largest v2 header: an IPv4 block (12 bytes) and one vendor TLV (0xE0) filling the 65,535. */
function largestV2Header(srcPort: number): Buffer {
  const tlv = Buffer.alloc(65_535 - 12);
  tlv[0] = 0xe0;
  tlv.writeUInt16BE(tlv.length - 3, 1);
  const header = encodeProxyV2({ srcIp: '203.0.113.9', srcPort, dstIp: '127.0.0.1', dstPort: 8080 }, tlv);
  expect(header.length).toBe(16 + 65_535);
  return header;
}

/** Write `bytes` one byte per write, each after the last one was handed to the kernel. */
async function trickle(s: Socket, bytes: Buffer): Promise<void> {
  for (let i = 0; i < bytes.length; i++) {
    await new Promise<void>((resolve, reject) => s.write(bytes.subarray(i, i + 1), (err) => (err ? reject(err) : resolve())));
  }
}

describe('a PROXY header trickled one byte per write', () => {
  let gw: TestGateway;
  let origin: Origin;
  const sockets: Socket[] = [];

  beforeAll(async () => {
    origin = await startOrigin();
    // Wide: 65,551 writes on a loaded machine; the header timeout is not what is tested.
    gw = await startTestGateway({ proxyProtocol: { trustedSources: ['127.0.0.1/32'] }, limits: { headerTimeoutMs: 120_000 } });
  });
  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await gw?.stop();
    await origin?.close();
  });

  async function open(): Promise<Socket> {
    const s = await rawConnect(gw.httpPort, '127.0.0.1');
    s.on('error', () => undefined);
    s.setNoDelay(true);
    sockets.push(s);
    return s;
  }

  it('a v2 header of the largest size is accepted: the request after it answered, the record names the claimed client', async () => {
    const s = await open();
    const done = readToEnd(s);
    const header = largestV2Header(4551);
    const request = Buffer.from(`GET http://127.0.0.1:${origin.port}/size/2000 HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\nConnection: close\r\n\r\n`);
    await trickle(s, header.subarray(0, header.length - 1));
    // The last byte with the request: what follows the header in a read is handed on exactly.
    s.write(Buffer.concat([header.subarray(header.length - 1), request]));
    const { data } = await done;
    expect(data.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
    expect(data.subarray(data.indexOf('\r\n\r\n') + 4).equals(pattern(2000))).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === 4551);
    expect(rec).toMatchObject({ protocol: 'http', client: { ip: '203.0.113.9', port: 4551 } });
  }, 120_000);

  it('a v1 line over 107 bytes is refused too-long, nothing passed on', async () => {
    const s = await open();
    const port = s.localPort;
    const done = readToEnd(s);
    // `PROXY TCP4 ` and then digits and spaces past the limit, no CRLF: closed at byte 107.
    const line = Buffer.from(`PROXY TCP4 ${'1'.repeat(120)}`, 'latin1');
    let written = 0;
    for (; written < line.length && !s.destroyed && s.writable; written++) {
      const ok = await new Promise<boolean>((resolve) => s.write(line.subarray(written, written + 1), (err) => resolve(!err)));
      if (!ok) break;
    }
    const { data } = await done;
    expect(data.length).toBe(0);
    const refusal = gw.logs.find((l) => l.msg === 'PROXY protocol: connection refused' && l['client'] === `127.0.0.1:${port}`);
    expect(refusal).toMatchObject({ trusted: true, code: 'too-long' });
  }, 60_000);
});
