/**
 * The size limit on an origin's answer head on the Upgrade path (http-upgrade.ts readResponseHead):
 * a head longer than `limits.maxHeaderBytes` is a bad answer (502 upstream-bad-response, nothing
 * relayed or tunnelled), however its bytes are cut into reads; one of exactly that length passes.
 * The absolute-URI paths refuse such a head too (undici's header size limit, 16 KiB, the default).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfig } from '../../policy/config.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ScriptedOrigin, scriptedOrigin } from '../helpers/scripted-origin.ts';
import { jsonBody, rawConnect, rawExchange, readUntil } from './http-harness.ts';

const MAX = defaultConfig().limits.maxHeaderBytes;

/** `start` (status line and fields, each CRLF-ended) padded with an X-Pad field to `length` bytes in all, CRLFCRLF included. */
function headOf(start: string, length: number): string {
  const pad = length - start.length - 'X-Pad: \r\n\r\n'.length;
  return `${start}X-Pad: ${'a'.repeat(pad)}\r\n\r\n`;
}

const SWITCH = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n';
const DECLINE = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n';

let gw: TestGateway;
let origin: ScriptedOrigin;

beforeAll(async () => {
  // Each answer written in one write: on loopback it arrives in one read, head and what follows it.
  origin = await scriptedOrigin({
    '/101-over': `${headOf(SWITCH, MAX + 1)}HELLO`,
    '/200-over': `${headOf(DECLINE, MAX + 1)}ok`,
    '/101-at': `${headOf(SWITCH, MAX)}HELLO`,
  });
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

function upgradeRequest(path: string): string {
  return `GET http://${origin.authority}${path} HTTP/1.1\r\nHost: ${origin.authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;
}

// Regression: the limit was checked only while the head was unfinished, so a head whose end came in
// the same read passed at any size: a 101 or a declined 200 with a 40,000-byte field was relayed
// whole (the 101's tunnel opened), where the absolute-URI paths answer such a head 502.
describe('an origin answer head over limits.maxHeaderBytes on the Upgrade path', () => {
  it.each(['/101-over', '/200-over'])('%s: 502 upstream-bad-response, nothing relayed', async (path) => {
    const before = gw.closed.length;
    const got = await rawExchange(gw.httpPort, upgradeRequest(path), 5_000);
    expect(got.response).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(got.response)['reason']).toBe('upstream-bad-response');
    expect(got.response).not.toMatch(/X-Pad|HELLO/);
    const rec = await gw.waitForClosed((f) => gw.closed.indexOf(f) >= before);
    expect(rec).toMatchObject({ closeReason: 'upstream-bad-response', bytesIn: 0, bytesOut: 0 });
  });

  it('a head of exactly limits.maxHeaderBytes is relayed and the tunnel opens', async () => {
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    try {
      s.write(upgradeRequest('/101-at'));
      const got = (await readUntil(s, 'HELLO', 5_000)).toString('latin1');
      expect(got).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
      expect(got.endsWith('\r\n\r\nHELLO')).toBe(true);
    } finally {
      s.destroy();
    }
  });
});
