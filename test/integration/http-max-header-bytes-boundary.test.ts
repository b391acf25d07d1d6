/**
 * Where `limits.maxHeaderBytes` cuts, to the byte, on both absolute-URI paths: a head sent whole
 * (the fast path's if it fits: it takes whole heads of at most maxHeaderBytes bytes and hands any
 * other to node:http) and split over two packets (node:http's). The limit counts what node's parser
 * counts (docs/spec-notes.md): the target, the field names and the field values (trailing
 * whitespace included), not the method, version, separators or line ends; a head is refused 431
 * once that count reaches the limit. So heads of up to ~25 bytes over the limit are served when
 * counted whole, the same way on both paths. Raw sockets through the real listener.
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, type Origin, startOrigin } from './http-harness.ts';

const LIMIT = 8192;
let gw: TestGateway;
let origin: Origin;
let url: string;

beforeAll(async () => {
  origin = await startOrigin();
  url = `http://127.0.0.1:${origin.port}/x`;
  gw = await startTestGateway({ limits: { maxHeaderBytes: LIMIT } });
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
});

/** A head whose counted bytes (target, names, values) are `counted`; `ows`: trailing spaces in X-Pad's value. */
function headCounting(counted: number, ows = 0): string {
  const pad = counted - url.length - 'X-Pad'.length - 'Connection'.length - 'close'.length - ows;
  return `GET ${url} HTTP/1.1\r\nX-Pad: ${'a'.repeat(pad)}${' '.repeat(ows)}\r\nConnection: close\r\n\r\n`;
}

/** The status of the answer to `head`, sent whole or in two packets 100 ms apart (10 s at most). */
async function statusOf(head: string, isSplit: boolean): Promise<string> {
  const s = await rawConnect(gw.httpPort);
  s.on('error', () => undefined);
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  const closed = once(s, 'close');
  const timer = setTimeout(() => s.destroy(), 10_000);
  if (isSplit) {
    s.write(head.slice(0, 40), 'latin1');
    await new Promise((r) => setTimeout(r, 100));
    s.write(head.slice(40), 'latin1');
  } else s.write(head, 'latin1');
  await closed;
  clearTimeout(timer);
  return Buffer.concat(chunks).toString('latin1').slice(9, 12);
}

describe('limits.maxHeaderBytes at its boundary', () => {
  it.each([false, true])('split: %s — counted limit − 1 served, limit 431, whatever the whole head', async (isSplit) => {
    for (const ows of [0, 3]) {
      const served = headCounting(LIMIT - 1, ows);
      const refused = headCounting(LIMIT, ows);
      expect(served.length).toBeGreaterThan(LIMIT);
      expect(await statusOf(served, isSplit), `${served.length} bytes whole, ows ${ows}`).toBe('200');
      expect(await statusOf(refused, isSplit), `${refused.length} bytes whole, ows ${ows}`).toBe('431');
    }
  });

  it('a whole head of exactly the limit is served on both paths', async () => {
    const head = headCounting(LIMIT - 25);
    expect(head.length).toBe(LIMIT);
    expect(await statusOf(head, false)).toBe('200');
    expect(await statusOf(head, true)).toBe('200');
  });
});
