/**
 * The dial errno → gateway code mapping (gateway/errors.ts) on real socket errors: a dial the
 * gateway's own shortage failed is not the destination's failure. EADDRNOTAVAIL is what the kernel
 * says when no local port is left towards a destination; a dial from a local address the host does
 * not have gives the same errno without exhausting anything (192.0.2.1, TEST-NET-1).
 */
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { dialErrorCode, isOwnShortage } from '../../../gateway/errors.ts';
import { mapError } from '../../../gateway/reject.ts';

/** The error of a real dial to 127.0.0.1:port with these socket options. */
async function dialError(port: number, opts: { localAddress?: string } = {}): Promise<NodeJS.ErrnoException> {
  const socket = connect({ host: '127.0.0.1', port, ...opts });
  const [err] = (await once(socket, 'error')) as [NodeJS.ErrnoException];
  socket.destroy();
  return err;
}

describe('dialErrorCode on real dial errors', () => {
  it('EADDRNOTAVAIL (no such local address / no local port left) is the gateway\'s shortage: 503 out-of-sockets', async () => {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    try {
      const err = await dialError(port, { localAddress: '192.0.2.1' });
      expect(err.code).toBe('EADDRNOTAVAIL');
      const code = dialErrorCode(err);
      expect(code).toBe('EGW_OUT_OF_SOCKETS');
      expect(isOwnShortage(code)).toBe(true);
      const m = mapError(code);
      expect([m.status, m.socks, m.reason]).toEqual([503, 0x01, 'out-of-sockets']);
    } finally {
      server.close();
    }
  });

  it('ENOBUFS and ENOMEM are the gateway\'s too; EMFILE/ENFILE stay out-of-descriptors', () => {
    const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(code), { code });
    expect(dialErrorCode(errno('ENOBUFS'))).toBe('EGW_OUT_OF_SOCKETS');
    expect(dialErrorCode(errno('ENOMEM'))).toBe('EGW_OUT_OF_SOCKETS');
    expect(dialErrorCode(errno('EMFILE'))).toBe('EGW_OUT_OF_DESCRIPTORS');
    expect(isOwnShortage(dialErrorCode(errno('ENFILE')))).toBe(true);
  });

  it('control: a refused dial is the destination\'s (connection-refused), no shortage', async () => {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    server.close();
    await once(server, 'close');
    const code = dialErrorCode(await dialError(port));
    expect(code).toBe('EGW_DIAL_REFUSED');
    expect(isOwnShortage(code)).toBe(false);
  });
});
