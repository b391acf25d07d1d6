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
