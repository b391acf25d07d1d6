/**
 * A TCP reset of a connection (SPEC §4: a killed flow is closed with a reset on both sides), on
 * plain sockets and on the HTTPS listener's TLS sockets alike.
 *
 * node's `resetAndDestroy()` throws ERR_INVALID_HANDLE_TYPE on a TLS socket: its handle is a TLSWrap
 * over the TCP handle. Its `destroy()` closes that TCP handle as a plain close (a FIN, and no TLS
 * close_notify), which a client reads as an ordinary end. node's TLS server wraps the net.Socket it
 * accepted (the TLS socket's `_parent`), and that socket still owns the TCP handle: resetting it
 * first (SO_LINGER 0, then close) sends the RST; the TLS socket's destroy after it finds the handle
 * gone and only frees its TLS state. Resetting it after the TLS socket's destroy does nothing: the
 * handle is closed already.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * The accepted TCP socket a TLS server socket was made over, while it still owns its handle; null
 * for a plain socket (its `_parent` is null) or a TLS socket over a JS stream.
 */
function tcpUnder(s: Socket): Socket | null {
  const parent = (s as Socket & { _parent?: unknown })._parent;
  return parent instanceof Socket && !parent.destroyed && !parent.connecting ? parent : null;
}

/**
 * Reset `s` and destroy it: a RST where node can (plain TCP, or TLS over an accepted TCP socket),
 * else a plain destroy. Safe on a socket already destroyed.
 */
export function resetSocket(s: Socket): void {
  const tcp = tcpUnder(s);
  try {
    if (tcp !== null) {
      tcp.resetAndDestroy();
      s.destroy();
      return;
    }
    s.resetAndDestroy();
  } catch {
    s.destroy();
  }
}

const NO_BYTES = Buffer.alloc(0);

/**
 * Ask whether `s`'s peer has reset it, where the gateway cannot have read the reset: a socket it
 * stopped reading for backpressure (node reads nothing from it, and libuv does not watch it) when its
 * idle timer fires. A zero-length write puts no segment on the wire of a live connection (one
 * syscall); on a reset one the kernel refuses it (ECONNRESET or EPIPE) and node fails the write.
 * `answer` gets the result on the next tick. A TLS socket is asked through the TCP socket under it
 * (a zero-length write to the TLS socket itself never reaches the kernel: measured, no error after a
 * reset); after a failed write that TCP socket is destroyed, so the caller closes `s` either way. A
 * socket that cannot be asked that way answers false at once: our FIN already sent, writes still
 * queued (a reset fails them already: libuv watches such a socket), corked, or destroyed.
 */
export function askIfReset(s: Duplex, answer: (isReset: boolean) => void): void {
  const tcp = s instanceof Socket ? (tcpUnder(s) ?? s) : s;
  if (!s.writable || s.writableLength > 0 || s.writableCorked > 0 || !tcp.writable || tcp.writableLength > 0) {
    answer(false);
    return;
  }
  tcp.write(NO_BYTES, (err) => answer(err !== null && err !== undefined));
}
