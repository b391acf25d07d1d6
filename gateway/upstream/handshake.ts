/**
 * The one way a parent proxy's handshake is read (dial.ts's HTTP CONNECT, socks5-parent.ts's RFC 1928
 * exchange): `step` is given everything received so far and returns how many of those bytes the
 * handshake took once it is complete (null while it needs more), or throws a GatewayError to refuse.
 * Bounded by `timeoutMs`, what is left of the dial's one budget once the TCP connect to the parent
 * is made (dial.ts); an end or error before the handshake completes fails it, the socket
 * destroyed. Resolves with the socket paused and the bytes after the handshake put back for the tunnel.
 */
import type { Socket } from 'node:net';
import { GatewayError } from '../errors.ts';

export interface HandshakeWords {
  /** The error when the parent says nothing in time (EGW_DIAL_TIMEOUT). */
  timeout: string;
  /** The error when the parent closes during the handshake (EGW_UPSTREAM_PROXY). */
  ended: string;
  /** Prefix for a socket error's message. */
  prefix: string;
}

export function readHandshake(socket: Socket, timeoutMs: number, words: HandshakeWords, step: (received: Buffer) => number | null): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let received: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new GatewayError('EGW_DIAL_TIMEOUT', words.timeout)), timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', fail);
      socket.removeListener('end', onEnd);
    };
    function fail(err: Error): void {
      cleanup();
      socket.destroy();
      reject(err instanceof GatewayError ? err : new GatewayError('EGW_UPSTREAM_PROXY', `${words.prefix}${err.message}`, { cause: err }));
    }
    const onEnd = (): void => fail(new GatewayError('EGW_UPSTREAM_PROXY', words.ended));
    function onData(chunk: Buffer): void {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      let taken: number | null;
      try {
        taken = step(received);
      } catch (err) {
        fail(err as Error);
        return;
      }
      if (taken === null) return;
      cleanup();
      socket.pause();
      if (received.length > taken) socket.unshift(received.subarray(taken));
      resolve(socket);
    }
    socket.on('data', onData);
    socket.once('error', fail);
    socket.once('end', onEnd);
  });
}
