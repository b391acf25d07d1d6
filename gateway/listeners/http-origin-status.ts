/**
 * An origin's reason phrase reaches the client whole when its status line came in two reads.
 *
 * llhttp hands a parser's status text over in pieces, one per read the status line spans (its
 * span callbacks flush at the end of every buffer; nodejs/llhttp#118: the caller concatenates).
 * undici (7.30.2, dispatcher/client-h1.js Parser.onStatus) assigns each piece instead, so only the
 * last one was kept: an origin whose `HTTP/1.1 200 Everything Is Fine` was read as `HTTP/1.1 200
 * Everything ` and then `Is Fine` was relayed as `HTTP/1.1 200 Is Fine`, on both absolute-URI paths
 * and for 1xx heads too, read buffers on or off. docs/spec-notes.md says the phrase is relayed.
 *
 * Mended once per process, on undici's parser prototype, taken from the first origin connection
 * handed to undici (its connector callback attaches the parser before it returns): onStatus appends
 * a piece to what the status line has given so far. The text is '' at the start of every status
 * line (the parser's constructor, onMessageComplete, also after a 1xx, and onUpgrade reset it). An
 * undici whose parser lacks what this relies on is left as it is.
 */
import type { Socket } from 'node:net';

/** What the mend relies on of undici's HTTP/1.1 parser (dispatcher/client-h1.js). */
interface StatusParser {
  statusText: string;
  onStatus(buf: Buffer): number;
}

let isMended = false;
/** Connections looked at for the parser, at most: an undici that keeps it elsewhere is left alone. */
let looksLeft = 8;

function isStatusParser(value: unknown): value is StatusParser {
  const p = value as Partial<StatusParser> | null | undefined;
  return typeof p === 'object' && p !== null && typeof p.statusText === 'string' && typeof p.onStatus === 'function';
}

/**
 * Called with each origin socket just handed to undici: the first one's parser gets its prototype's
 * onStatus mended; after that, one boolean test per connection.
 */
export function mendReasonPhrases(socket: Socket): void {
  if (isMended || looksLeft === 0) return;
  looksLeft--;
  const fields = socket as unknown as Record<symbol, unknown>;
  for (const key of Object.getOwnPropertySymbols(socket)) {
    const parser = fields[key];
    if (key.description !== 'parser' || !isStatusParser(parser)) continue;
    const proto = Object.getPrototypeOf(parser) as StatusParser | null;
    if (proto === null || !Object.hasOwn(proto, 'onStatus') || proto.onStatus.length !== 1) return;
    const assign = proto.onStatus;
    proto.onStatus = function onStatus(this: StatusParser, buf: Buffer): number {
      const before = this.statusText;
      const ret = assign.call(this, buf);
      if (before !== '') this.statusText = before + this.statusText;
      return ret;
    };
    isMended = true;
    return;
  }
}
