/**
 * Where a chunked body ends (RFC 9112 §7.1), for a body relayed byte for byte with its framing (a
 * declined Upgrade's answer: http-upgrade.ts). The relay passes every byte on unchanged; this only
 * follows the framing, so the relay can stop at the body's end instead of waiting for the origin to
 * close a connection it keeps alive. Chunk data is skipped in one step; only size lines, extensions
 * and trailer lines are read byte by byte. For an HTTP/1.0 client, which cannot read chunked, the
 * scan also hands over the chunk data (`onData`), so the relay can pass on the body without framing.
 */

// Where the scan is in the framing (ChunkedEnd.at):
/** The chunk-size's hex digits. */
const AT_SIZE = 0;
/** After the size: chunk extensions, up to the line's LF. */
const AT_SIZE_LINE = 1;
/** Chunk data still owed (`left`). */
const AT_DATA = 2;
/** The CR after a chunk's data. */
const AT_DATA_CR = 3;
/** The LF after a chunk's data. */
const AT_DATA_LF = 4;
/** The start of a trailer line (or of the final empty line) after the last chunk. */
const AT_TRAILER_START = 5;
/** Inside a trailer line, up to its LF. */
const AT_TRAILER_LINE = 6;
/** The LF of the final empty line. */
const AT_FINAL_LF = 7;
/** The framing broke (or the size is too large to follow): the end cannot be told. */
const AT_LOST = 8;

/** The most hex digits a chunk size may have here: 13 (2^52) is within a safe integer. */
const MAX_SIZE_DIGITS = 13;

export class ChunkedEnd {
  private at = AT_SIZE;
  private size = 0;
  private digits = 0;
  private left = 0;

  /** The framing broke: the body's end, and its data, can no longer be told. */
  get isLost(): boolean {
    return this.at === AT_LOST;
  }

  /**
   * Follow `chunk`, the next bytes of the body: the offset just past the body's end when it ends
   * within `chunk`, else -1 (more to come, or the framing is lost: then it never ends here).
   * `onData` gets each run of chunk data in `chunk` (a view of it), in order.
   */
  scan(chunk: Buffer, onData?: (data: Buffer) => void): number {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.at === AT_LOST) return -1;
      if (this.at === AT_DATA) {
        const take = Math.min(this.left, n - i);
        if (onData !== undefined) onData(chunk.subarray(i, i + take));
        this.left -= take;
        i += take;
        if (this.left === 0) this.at = AT_DATA_CR;
        continue;
      }
      const byte = chunk[i] as number;
      i++;
      switch (this.at) {
        case AT_SIZE: {
          const digit = hexValue(byte);
          if (digit >= 0 && this.digits < MAX_SIZE_DIGITS) {
            this.size = this.size * 16 + digit;
            this.digits++;
          } else if (this.digits > 0 && (byte === 0x3b || byte === 0x20 || byte === 0x09 || byte === 0x0d)) {
            this.at = AT_SIZE_LINE;
          } else if (this.digits > 0 && byte === 0x0a) {
            this.endSizeLine();
          } else {
            this.at = AT_LOST;
          }
          break;
        }
        case AT_SIZE_LINE:
          if (byte === 0x0a) this.endSizeLine();
          break;
        case AT_DATA_CR:
          this.at = byte === 0x0d ? AT_DATA_LF : AT_LOST;
          break;
        case AT_DATA_LF:
          this.at = byte === 0x0a ? AT_SIZE : AT_LOST;
          break;
        case AT_TRAILER_START:
          if (byte === 0x0d) this.at = AT_FINAL_LF;
          else if (byte === 0x0a) return i;
          else this.at = AT_TRAILER_LINE;
          break;
        case AT_TRAILER_LINE:
          if (byte === 0x0a) this.at = AT_TRAILER_START;
          break;
        case AT_FINAL_LF:
          if (byte === 0x0a) return i;
          this.at = AT_LOST;
          break;
      }
    }
    return -1;
  }

  private endSizeLine(): void {
    this.at = this.size === 0 ? AT_TRAILER_START : AT_DATA;
    this.left = this.size;
    this.size = 0;
    this.digits = 0;
  }
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}
