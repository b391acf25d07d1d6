import { describe, expect, it } from 'vitest';
import { ChunkedEnd } from '../../../gateway/listeners/http-chunked-end.ts';

const BODY = '5;name=v\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n';

/** Feed `text` in pieces of `size` bytes: the offset of the body's end within the whole, or -1. */
function endIn(text: string, size: number): number {
  const scan = new ChunkedEnd();
  const bytes = Buffer.from(text, 'latin1');
  for (let at = 0; at < bytes.length; at += size) {
    const end = scan.scan(bytes.subarray(at, at + size));
    if (end >= 0) return at + end;
  }
  return -1;
}

describe('ChunkedEnd', () => {
  it('finds the end after the last chunk and its trailers, in one piece or any split', () => {
    for (const size of [1, 2, 3, 7, 1000]) expect(endIn(`${BODY}EXTRA`, size), String(size)).toBe(BODY.length);
    expect(endIn('0\r\n\r\nEXTRA', 1000)).toBe(5);
  });

  it('does not end before the body does', () => {
    expect(endIn(BODY.slice(0, -1), 1)).toBe(-1);
    // A "0\r\n\r\n" inside chunk data is data.
    expect(endIn('5\r\n0\r\n\r\n\r\nX', 1000)).toBe(-1);
  });

  it('gives up (never ends) on framing it cannot follow', () => {
    for (const bad of ['zz\r\nab\r\n0\r\n\r\n', '2\r\nokX0\r\n\r\n', 'fffffffffffffffffff\r\n0\r\n\r\n', '\r\n0\r\n\r\n']) expect(endIn(bad, 1000), bad).toBe(-1);
  });

  it('hands over the chunk data alone, in order, however the body is split (an HTTP/1.0 client\'s answer)', () => {
    for (const size of [1, 2, 3, 7, 1000]) {
      const scan = new ChunkedEnd();
      const data: string[] = [];
      const bytes = Buffer.from(`${BODY}EXTRA`, 'latin1');
      for (let at = 0; at < bytes.length; at += size) {
        if (scan.scan(bytes.subarray(at, at + size), (d) => data.push(d.toString('latin1'))) >= 0) break;
      }
      expect(data.join(''), String(size)).toBe('helloabcdefghijklmnopqrstuvwxyz');
    }
    const lost = new ChunkedEnd();
    expect(lost.scan(Buffer.from('2\r\nokX0\r\n\r\n'), () => undefined)).toBe(-1);
    expect(lost.isLost).toBe(true);
  });
});
