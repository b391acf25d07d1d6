/**
 * Whether this node reports a TCP reset that arrives behind unread data as a reset (ECONNRESET)
 * rather than as an end. libuv before libuv/libuv#4997 (node 20's 1.46) reads the queued data and
 * then reports EOF (libuv/libuv#2319): a destination's reset mid-download is then, to the gateway,
 * a clean end. Asked of the running node with real loopback sockets: a paused socket whose peer
 * sends one byte and resets, then read.
 */
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

export async function reportsResetBehindData(): Promise<boolean> {
  const server = createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const peer = connect((server.address() as { port: number }).port, '127.0.0.1');
  peer.on('error', () => undefined);
  try {
    await once(peer, 'connect');
    const [s] = await accepted;
    // On loopback the byte and the reset are queued at `s` before the peer's close returns.
    peer.write('x', () => peer.resetAndDestroy());
    await once(peer, 'close');
    const ending = await new Promise<string>((resolve) => {
      s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
      s.on('end', () => resolve('end'));
      s.resume();
    });
    s.destroy();
    return ending === 'ECONNRESET';
  } finally {
    peer.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }
}
