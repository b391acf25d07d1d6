/**
 * `Max-Forwards` on a TRACE or OPTIONS that carries `Upgrade` (RFC 9110 §7.6.2): node:http hands
 * such a request to the Upgrade path (http-upgrade.ts), which must honour the field as the
 * absolute-URI paths do: at 0 the gateway answers itself and dials nothing, above 0 it passes the
 * field on one less, and two of them are 400 before admission.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { jsonBody, type RecordingDestination, rawExchange, startRecordingDestination } from './http-harness.ts';

let gw: TestGateway;
let origin: RecordingDestination;
let o: string;

beforeAll(async () => {
  // Declines every upgrade: a 200 with a body, then its FIN (the gateway ends the relay there).
  origin = await startRecordingDestination((s, soFar) => {
    if (soFar.includes('\r\n\r\n') && s.writable) s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  });
  o = `127.0.0.1:${origin.port}`;
  gw = await startTestGateway();
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** A request with `Upgrade: h2c` and the given extra fields (each `Name: value`). */
function upgradeRequest(method: string, path: string, fields: readonly string[]): string {
  return `${method} http://${o}${path} HTTP/1.1\r\nHost: ${o}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`;
}

// Regression: on the Upgrade path Max-Forwards was never read: an OPTIONS or TRACE with
// `Max-Forwards: 0` went to the origin as sent (its 200 `ok` relayed, bytesIn 2), `3` went on as 3,
// and `0` then `5` went on as both, where the absolute-URI paths answer 0 themselves, pass 2, and
// refuse two fields 400.
describe('Max-Forwards on a TRACE or OPTIONS carrying Upgrade', () => {
  it('at 0 is answered by the gateway (TRACE reflected, less secrets), nothing dialled, the flow closed with no bytes', async () => {
    const before = origin.received.length;
    const recordsBefore = gw.closed.length;
    const options = await rawExchange(gw.httpPort, upgradeRequest('OPTIONS', '/mf-options', ['Max-Forwards: 0']), 5_000);
    expect(options.response).toMatch(/^HTTP\/1\.1 200 OK\r\n(?:[^\r]+\r\n)*content-length: 0\r\n/i);
    expect(options.response).toMatch(/\r\nconnection: close\r\n/i);
    expect(options.response.endsWith('\r\n\r\n')).toBe(true);
    const trace = await rawExchange(gw.httpPort, upgradeRequest('TRACE', '/mf-trace', ['Max-Forwards: 0', 'Cookie: session=s3cr3t', 'X-Trace-Me: yes']), 5_000);
    const split = trace.response.indexOf('\r\n\r\n');
    const head = trace.response.slice(0, split);
    expect(head).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(head).toMatch(/\r\ncontent-type: message\/http\r\n/i);
    const echoed = trace.response.slice(split + 4);
    expect(Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1])).toBe(Buffer.byteLength(echoed, 'latin1'));
    expect(echoed).toMatch(new RegExp(`^TRACE http://${o}/mf-trace HTTP/1\\.1\r\n`));
    expect(echoed).toMatch(/\r\nX-Trace-Me: yes\r\n/);
    expect(echoed).not.toMatch(/cookie|s3cr3t/i);
    const recs = gw.closed.slice(recordsBefore);
    // Nothing was dialled: no connection to the destination, no TCP flow for a Community ID to name.
    expect(recs.map((f) => [f.protocol, f.verdict, f.closeReason, f.bytesOut, f.bytesIn, f.connected, f.communityId])).toEqual([
      ['http', 'allow', 'closed', 0, 0, false, null],
      ['http', 'allow', 'closed', 0, 0, false, null],
    ]);
    expect(origin.received.length).toBe(before);
  });

  it('above 0 is passed on one less', async () => {
    const before = origin.received.length;
    const got = await rawExchange(gw.httpPort, upgradeRequest('TRACE', '/mf-3', ['Max-Forwards: 3']), 5_000);
    expect(got.response).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
    const sent = origin.received.slice(before);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatch(/^TRACE \/mf-3 HTTP\/1\.1\r\n/);
    expect(sent[0]?.match(/^max-forwards: [^\r]*/gim)).toEqual(['max-forwards: 2']);
  });

  it('twice is 400 before admission: no flow, nothing dialled', async () => {
    const before = origin.received.length;
    const recordsBefore = gw.closed.length;
    const got = await rawExchange(gw.httpPort, upgradeRequest('OPTIONS', '/mf-dup', ['Max-Forwards: 0', 'Max-Forwards: 5']), 5_000);
    expect(got.response).toMatch(/^HTTP\/1\.1 400 /);
    expect(jsonBody(got.response)).toMatchObject({ reason: 'bad-request', flowId: null });
    expect(gw.logs.some((l) => l['why'] === 'duplicate-max-forwards')).toBe(true);
    expect(gw.closed.length).toBe(recordsBefore);
    expect(origin.received.length).toBe(before);
  });
});
