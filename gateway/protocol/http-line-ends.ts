/**
 * Line ends in the response heads the gateway reads itself (an origin's answer to an Upgrade, an
 * http parent's answer to CONNECT). RFC 9112 §2.2 lets a recipient take a lone LF as a line end or
 * refuse it; the absolute-URI paths' parser (llhttp) refuses, so these readers refuse too, as soon as
 * one is seen, instead of waiting for a CRLFCRLF that never comes.
 */

const CR = 0x0d;
const LF = 0x0a;

/**
 * The offset of the first LF in `buf[from, to)` that no CR precedes (the byte before `from` counts,
 * so a CRLF cut between two reads is whole), or -1. Native searches for LF only: no allocation.
 */
export function bareLineFeedAt(buf: Buffer, from: number, to: number): number {
  for (let i = buf.indexOf(LF, from); i !== -1 && i < to; i = buf.indexOf(LF, i + 1)) {
    if (i === 0 || buf[i - 1] !== CR) return i;
  }
  return -1;
}
