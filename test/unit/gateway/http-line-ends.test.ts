import { describe, expect, it } from 'vitest';
import { bareLineFeedAt } from '../../../gateway/protocol/http-line-ends.ts';

const at = (text: string, from = 0, to = text.length): number => bareLineFeedAt(Buffer.from(text, 'latin1'), from, to);

describe('bareLineFeedAt', () => {
  it.each([
    ['HTTP/1.1 200 OK\r\nX: y\r\n\r\n', -1],
    ['HTTP/1.1 200 OK\nX: y\r\n\r\n', 15],
    ['HTTP/1.1 200 OK\r\nX: y\n\n', 21],
    ['\nHTTP/1.1 200 OK\r\n', 0],
    ['HTTP/1.1 200 OK\r\r\n\n', 18],
    ['no line end at all', -1],
  ])('%j: %i', (text, want) => expect(at(text)).toBe(want));

  it('looks at the byte before `from`: a CRLF cut between two reads is whole', () => {
    expect(at('HTTP/1.1 200 OK\r\n', 16)).toBe(-1);
    expect(at('HTTP/1.1 200 OK\n\n', 16)).toBe(16);
  });

  it('never looks past `to` (the bytes after a head are not the head)', () => {
    expect(at('HTTP/1.1 200 OK\r\n\r\nbody\nmore', 0, 19)).toBe(-1);
    expect(at('HTTP/1.1 200 OK\r\n\r\nbody\nmore')).toBe(23);
  });
});
