/**
 * A raw HTTP/1.1 origin scripted per path: a `net` server on 127.0.0.1 that reads each request head
 * on a connection (keep-alive: one head after another) and answers it with exactly the bytes given
 * for its target's path, so a test can have an origin send what no HTTP library would. It closes a
 * connection only when an answer says so; `close()` ends them all.
 */
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';

/**
 * What the origin answers a request for one path:
 * - a string: written at once;
 * - pieces: written PIECE_GAP_MS apart (the first on the next turn), a `null` piece ends the
 *   connection (FIN);
 * - a function: called with the connection, to answer as it will.
 */
export type ScriptedAnswer = string | ReadonlyArray<string | null> | ((s: Socket) => void);

/** How far apart an answer's pieces are written. */
export const PIECE_GAP_MS = 20;

/** The answer to a path the script does not name. */
const NOT_FOUND = 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n';

export interface ScriptedOrigin {
  port: number;
  /** `127.0.0.1:<port>`, for request targets and Host fields. */
  authority: string;
  /**
   * Per path, what its latest connection read after the request head and did not take as another
   * head: the bytes of a tunnel the answer opened, if any.
   */
  afterHead: ReadonlyMap<string, string>;
  /** Destroy every open connection and stop listening. */
  close(): Promise<void>;
}

function answer(s: Socket, reply: ScriptedAnswer): void {
  if (typeof reply === 'string') {
    s.write(reply, 'latin1');
    return;
  }
  if (typeof reply === 'function') {
    reply(s);
    return;
  }
  reply.forEach((piece, i) => {
    setTimeout(() => s.destroyed || (piece === null ? s.end() : s.write(piece, 'latin1')), PIECE_GAP_MS * i);
  });
}

/** Start an origin answering each path in `answers` (any other with a 404 and no body). */
export async function scriptedOrigin(answers: Readonly<Record<string, ScriptedAnswer>>): Promise<ScriptedOrigin> {
  const sockets = new Set<Socket>();
  const afterHead = new Map<string, string>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    let path: string | null = null;
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
        path = buf.slice(0, end).split(' ')[1] ?? '';
        buf = buf.slice(end + 4);
        answer(s, answers[path] ?? NOT_FOUND);
      }
      if (path !== null) afterHead.set(path, buf);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    port,
    authority: `127.0.0.1:${port}`,
    afterHead,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
