/**
 * Incremental HTTP/1.1 response parser for the load generator: content-length, chunked and
 * close-delimited bodies. Counts body bytes, never copies them.
 */
const CRLF2 = Buffer.from('\r\n\r\n');

/** States: 0 headers, 1 fixed body, 2 chunk-size line, 3 chunk data, 4 CRLF after chunk, 5 until EOF. */
export class ResponseParser {
  state = 0;
  status = 0;
  bodyBytes = 0;
  isClose = false;
  hasPartialHead = false;
  private head: Buffer | null = null;
  private left = 0;
  private line = '';
  private inTrailer = false;

  reset(): void {
    this.state = 0;
    this.status = 0;
    this.bodyBytes = 0;
    this.isClose = false;
    this.hasPartialHead = false;
    this.head = null;
    this.left = 0;
    this.line = '';
    this.inTrailer = false;
  }

  /** Feeds bytes; returns how many were consumed when the response completed, or -1 if more are needed. */
  feed(d: Buffer): number {
    let i = 0;
    while (i < d.length) {
      if (this.state === 0) {
        const b = this.head ? Buffer.concat([this.head, d.subarray(i)]) : d.subarray(i);
        const k = b.indexOf(CRLF2);
        if (k < 0) {
          this.head = Buffer.from(b);
          this.hasPartialHead = true;
          return -1;
        }
        const prevLen = this.head ? this.head.length : 0;
        const h = b.toString('latin1', 0, k).toLowerCase();
        this.head = null;
        i += k + 4 - prevLen;
        this.status = Number(h.slice(9, 12));
        const v10 = h.startsWith('http/1.0');
        this.isClose =
          /\r\n(proxy-)?connection:[^\r]*close/.test(h) || (v10 && !/\r\n(proxy-)?connection:[^\r]*keep-alive/.test(h));
        const cl = /\r\ncontent-length:\s*(\d+)/.exec(h);
        if (/\r\ntransfer-encoding:[^\r]*chunked/.test(h)) {
          this.state = 2;
          this.line = '';
        } else if (cl) {
          this.left = Number(cl[1]);
          this.state = 1;
          if (!this.left) return i;
        } else if (this.status === 204 || this.status === 304) {
          return i;
        } else {
          this.state = 5;
          this.isClose = true;
        }
      } else if (this.state === 1 || this.state === 3) {
        const n = Math.min(this.left, d.length - i);
        this.left -= n;
        this.bodyBytes += n;
        i += n;
        if (!this.left) {
          if (this.state === 1) return i;
          this.state = 4;
          this.line = '';
        }
      } else if (this.state === 2 || this.state === 4) {
        const c = d[i++];
        if (c === 10) {
          const line = this.line.trim();
          this.line = '';
          if (this.state === 4) {
            this.state = 2;
            continue;
          }
          if (this.inTrailer) {
            if (line === '') {
              this.inTrailer = false;
              return i;
            }
            continue;
          }
          const n = Number.parseInt(line, 16);
          if (n === 0) {
            this.inTrailer = true;
            continue;
          }
          this.left = n;
          this.state = 3;
        } else if (c !== 13 && c !== undefined) {
          this.line += String.fromCharCode(c);
        }
      } else {
        this.bodyBytes += d.length - i;
        i = d.length;
      }
    }
    return -1;
  }
}
