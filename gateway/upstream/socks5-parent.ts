/**
 * The client side of a SOCKS5 parent proxy (RFC 1928 CONNECT, RFC 1929 login), driven on a socket
 * gateway/upstream/dial.ts has already connected to the parent. That socket is ours, made with
 * allowHalfOpen: a destination's FIN relayed by the parent ends only that direction, and what the
 * client still sends reaches the destination (the `socks` package's own socket closed both).
 *
 *  1. greeting: no-auth, plus username/password when the parent's URL carries credentials
 *  2. RFC 1929 login if the parent picks it
 *  3. CONNECT to the IP literal admission checked (never a name: the parent resolves nothing for us)
 *  4. the reply; bytes after it belong to the destination and are put back on the socket
 *
 * The encoders and the reply reader are pure; socks5ParentHandshake() drives the socket.
 */
import type { Socket } from 'node:net';
import { GatewayError, type GatewayErrorCode } from '../errors.ts';
import { type HandshakeWords, readHandshake } from './handshake.ts';
import { AUTH_VERSION, encodeAddress, METHOD, SOCKS_VERSION } from '../protocol/socks5-codec.ts';

export interface ParentLogin {
  username: string;
  password: string;
}

/** VER NMETHODS METHODS: no-auth, and username/password when we have a login to offer. */
export function encodeParentGreeting(login: ParentLogin | null): Buffer {
  return login ? Buffer.from([SOCKS_VERSION, 2, METHOD.noAuth, METHOD.userPass]) : Buffer.from([SOCKS_VERSION, 1, METHOD.noAuth]);
}

/** RFC 1929: VER ULEN UNAME PLEN PASSWD (each at most 255 bytes, UTF-8). */
export function encodeParentLogin(login: ParentLogin): Buffer {
  const user = Buffer.from(login.username, 'utf8');
  const pass = Buffer.from(login.password, 'utf8');
  if (user.length > 255 || pass.length > 255) throw new GatewayError('EGW_UPSTREAM_PROXY', 'parent SOCKS proxy credentials longer than 255 bytes');
  return Buffer.concat([Buffer.from([AUTH_VERSION, user.length]), user, Buffer.from([pass.length]), pass]);
}

/** VER CMD(CONNECT) RSV ATYP ADDR PORT for an IP literal. */
export function encodeParentConnect(ip: string, port: number): Buffer {
  return Buffer.concat([Buffer.from([SOCKS_VERSION, 0x01, 0x00]), encodeAddress(ip, port)]);
}

/** The length of the CONNECT reply at the start of `buf`, or 0 while more bytes are needed; -1 if malformed. */
export function parentReplyLength(buf: Buffer): number {
  if (buf.length < 5) return 0;
  if (buf[0] !== SOCKS_VERSION) return -1;
  const atyp = buf[3];
  const addr = atyp === 0x01 ? 4 : atyp === 0x04 ? 16 : atyp === 0x03 ? 1 + (buf[4] as number) : -1;
  if (addr < 0) return -1;
  const total = 4 + addr + 2;
  return buf.length >= total ? total : 0;
}

/**
 * What a parent's refusal means for the client (SPEC §4): the parent's word on the destination keeps
 * its meaning (refused 0x05, unreachable 0x03/0x04, TTL expired 0x06 as a timeout: 502 / SOCKS 0x05 /
 * 0x04, 504 / 0x06); the parent's own failures and its ruleset (0x01, 0x02, 0x07, 0x08) are
 * `upstream-proxy`: our policy did not refuse, so the client never sees 0x02 for them.
 */
export function parentReplyCode(rep: number): GatewayErrorCode {
  switch (rep) {
    case 0x03:
    case 0x04:
      return 'EGW_DIAL_UNREACHABLE';
    case 0x05:
      return 'EGW_DIAL_REFUSED';
    case 0x06:
      return 'EGW_DIAL_TIMEOUT';
    default:
      return 'EGW_UPSTREAM_PROXY';
  }
}

/**
 * Run steps 1-4 on a connected socket; resolves with it paused, ready for payload bytes. `label`
 * names the parent in every error (`parent proxy socks5://h:p`), `words` are its handshake errors.
 * No answer within `timeoutMs` is EGW_UPSTREAM_PROXY_TIMEOUT before the CONNECT request was sent,
 * EGW_DIAL_TIMEOUT after it (the parent may be waiting on the destination).
 */
export function socks5ParentHandshake(
  socket: Socket,
  ip: string,
  port: number,
  login: ParentLogin | null,
  timeoutMs: number,
  label: string,
  words: HandshakeWords,
): Promise<Socket> {
  let step: 'method' | 'login' | 'reply' = 'method';
  // Bytes of the received ones the method choice and the login answer took.
  let at = 0;
  const done = readHandshake(socket, timeoutMs, words, (received) => {
    // Each answer's VER is judged at its first byte: a parent that sent fewer bytes than an answer
    // takes, none of them SOCKS5, and then said nothing was waited on until the deadline. After the
    // CONNECT request that made it the destination's 504 `connect-timeout` ("did not answer in
    // time"), a failed attempt for an0081.scan, though the parent had answered, in another protocol.
    if (step === 'method') {
      if (received.length < at + 1) return null;
      if (received[at] !== SOCKS_VERSION) throw new GatewayError('EGW_UPSTREAM_PROXY', `${label} answered with another protocol`);
      if (received.length < at + 2) return null;
      const method = received[at + 1];
      at += 2;
      if (method === METHOD.userPass && login) {
        socket.write(encodeParentLogin(login));
        step = 'login';
      } else if (method === METHOD.noAuth) {
        socket.write(encodeParentConnect(ip, port));
        step = 'reply';
      } else if (method === METHOD.noAcceptable || method === METHOD.userPass) {
        throw new GatewayError('EGW_UPSTREAM_PROXY', login ? `${label} accepts none of our login methods` : `${label} wants credentials and its URL has none`);
      } else {
        // A method we did not offer (GSSAPI 0x01, a private one): RFC 1928 §3 lets a parent pick
        // only among ours. Before, it was logged as wanting credentials (or none of ours), which
        // sent an operator to add or change the URL's login for a parent that would take neither.
        throw new GatewayError('EGW_UPSTREAM_PROXY', `${label} chose method 0x${(method as number).toString(16).padStart(2, '0')}, which we did not offer`);
      }
    }
    if (step === 'login') {
      // Only STATUS is read. RFC 1929 §2 makes the answer's VER 0x01, but servers answering 0x05
      // are common enough that curl ignores VER and tinyproxy, proxychains-ng and microsocks accept
      // both (dante's client refuses a mismatch). STATUS is the parent's word on the login, and the
      // CONNECT reply after it is read in full.
      if (received.length < at + 2) return null;
      if (received[at + 1] !== 0x00) throw new GatewayError('EGW_UPSTREAM_PROXY', `${label} refused our credentials`);
      at += 2;
      socket.write(encodeParentConnect(ip, port));
      step = 'reply';
    }
    const reply = received.subarray(at);
    if (reply.length === 0) return null;
    if (reply[0] !== SOCKS_VERSION) throw new GatewayError('EGW_UPSTREAM_PROXY', `${label} sent a malformed reply`);
    if (reply.length < 2) return null;
    const rep = reply[1] as number;
    if (rep !== 0x00) throw new GatewayError(parentReplyCode(rep), `${label} answered 0x${rep.toString(16).padStart(2, '0')}`);
    const n = parentReplyLength(reply);
    if (n < 0) throw new GatewayError('EGW_UPSTREAM_PROXY', `${label} sent a malformed reply`);
    return n === 0 ? null : at + n;
  });
  socket.write(encodeParentGreeting(login));
  // Silent before it was asked for the destination (no answer to the greeting or the login): the
  // parent's own timeout, not a word on the destination (which its silence after CONNECT may be).
  return done.catch((err: unknown) => {
    if (step === 'reply' || !(err instanceof GatewayError) || err.code !== 'EGW_DIAL_TIMEOUT') throw err;
    throw new GatewayError('EGW_UPSTREAM_PROXY_TIMEOUT', `${label} did not answer its SOCKS5 ${step === 'method' ? 'greeting' : 'login'} in time`);
  });
}
