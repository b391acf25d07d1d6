/**
 * Dial the upstream side of a flow: directly to the exact address admission checked, or through a
 * parent proxy (`upstream: http://h:p` → CONNECT, `socks5://h:p` → SOCKS5 CONNECT). Node errnos are
 * turned into EGW_* codes here, once.
 */
import { connect, isIP, isIPv4, type Socket } from 'node:net';
import type { GatewayContext } from '../context.ts';
import { dialErrorCode, errorText, GatewayError, type GatewayErrorCode, isOwnShortage } from '../errors.ts';
import { formatAuthority } from '../../policy/address.ts';
import { type ParentEndpoint, type ParentLogin, parseParentUrl } from '../../policy/upstream-url.ts';
import { bareLineFeedAt } from '../protocol/http-line-ends.ts';
import { type HandshakeWords, readHandshake } from './handshake.ts';
import { httpParentRefusal, shownStatusLine } from './http-parent-refusal.ts';
import { socks5ParentHandshake } from './socks5-parent.ts';
import { type DiallingSocket, type Flow, KILLED_WHILE_DIALLING } from '../flow/flow.ts';
import type { UnansweredAddresses } from './unanswered.ts';
import { isOwnListener } from '../admission/self-dial.ts';

export interface DialTarget {
  /** The checked address; never re-resolved. */
  ip: string;
  port: number;
  /** Parent proxy URL or null for a direct connection. */
  upstream: string | null;
  timeoutMs: number;
  /**
   * The flow dialled for: its `dialling` names the socket while the dial is under way, so a kill
   * meanwhile destroys it (FlowTable.kill) and the dial fails with KILLED_WHILE_DIALLING; a flow
   * already closed is not dialled. Absent: a dial for no flow.
   */
  flow?: Pick<Flow, 'dialling' | 'state'> | undefined;
  /**
   * The Via an http parent's CONNECT carries: the gateway's own entry (GatewayContext.via), after the
   * request's received entries for a CONNECT or Upgrade (via.ts viaOnward). Unused for a direct dial
   * and a socks5 parent, which has no such field.
   */
  via: string;
  /**
   * Where a staggered dial (a name with several addresses) notes the addresses that did not answer
   * and clears the one that did (unanswered.ts). Absent: nothing remembered.
   */
  unanswered?: UnansweredAddresses | undefined;
  /**
   * Where a parent named by host name gets its address (parentAddress): the gateway's. Absent (a
   * dial for no gateway): net.connect's own lookup, the OS resolver's.
   */
  names?: ParentNames | undefined;
}

/**
 * What a parent's name is looked up with: the running policy (its `resolver.hosts`) and the gateway's
 * resolver; and the gateway's own listeners, which a parent's address must not be (isOwnListener).
 */
export type ParentNames = Pick<GatewayContext, 'policy' | 'resolver' | 'selfAddresses'>;

/** Open a TCP connection to the target. Resolves once the upstream is ready for payload bytes. */
export function dial(target: DialTarget): Promise<Socket> {
  if (target.flow?.state === 'closed') return Promise.reject(KILLED_WHILE_DIALLING);
  if (!target.upstream) return dialDirect(target.ip, target.port, target.timeoutMs, target.flow);
  const parent = parentOf(target.upstream);
  if ('error' in parent) return Promise.reject(new GatewayError('EGW_UPSTREAM_PROXY', `unusable upstream: ${parent.error}`));
  if (parent.protocol === 'http:') return dialViaHttp(parent, target);
  return dialViaSocks(parent, target);
}

/** Addresses one flow dials at most: its first, then this many less one of its name's others. */
export const MAX_ADDRESSES_DIALLED = 4;

/**
 * How long an address may go unanswered before the name's next address is dialled beside it
 * (RFC 8305's Connection Attempt Delay; node's autoSelectFamilyAttemptTimeout is 250 ms too).
 */
export const ATTEMPT_DELAY_MS = 250;

/**
 * Whether the flow may go on to `ip`, another address of its name: checked before it is dialled
 * (admitAlternate), and then named in the flow's record. With `isOutcome`, `ip` is the address the
 * dial ends with (the one that answered, or the failure the flow takes): only named, not judged.
 */
export type AdmitAddress = (ip: string, isOutcome?: boolean) => boolean;

/**
 * Dial the target, and when its name has other addresses (not through a parent proxy, which dials
 * only the address it is given), those too, staggered (RFC 8305 §5): each next address is dialled
 * ATTEMPT_DELAY_MS after the one before it while that one is still connecting, or at once when it
 * refuses or cannot be reached, each only if `admit` lets the flow go on to it. The first to connect
 * is the flow's and every other attempt is destroyed then; at most MAX_ADDRESSES_DIALLED in all,
 * within the one `timeoutMs`. When none connects, the flow takes the failure of the last to fail.
 * What each address did is noted in `target.unanswered`: the ones dialled before the one that
 * answered, refused, unreachable or timed out are marked, the one that answered is cleared.
 */
export function dialFirstReachable(target: DialTarget, alternates: readonly string[], admit: AdmitAddress): Promise<Socket> {
  // Most flows have one address: their dial is the plain one, no timer, no extra frame per connection.
  if (alternates.length === 0 || target.upstream !== null) return dial(target);
  if (target.flow?.state === 'closed') return Promise.reject(KILLED_WHILE_DIALLING);
  return new Promise((resolve, reject) => {
    new StaggeredDial(target, alternates, admit, resolve, reject).start();
  });
}

/**
 * One flow's connection attempts to its name's addresses. While they are under way it is the flow's
 * `dialling` (a kill destroys every attempt at once, FlowTable.kill); once one connects, that
 * socket is, as after a plain dial.
 */
class StaggeredDial implements DiallingSocket {
  /** The attempts still connecting, and their addresses (same index). */
  private readonly sockets: Socket[] = [];
  private readonly ips: string[] = [];
  private next = 0;
  private dialled = 0;
  private isSettled = false;
  private staggerTimer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  /** The last fallback failure (refused, unreachable), taken when no other attempt connects. */
  private lastError: GatewayError | null = null;
  private lastErrorIp = '';

  constructor(
    private readonly target: DialTarget,
    private readonly alternates: readonly string[],
    private readonly admit: AdmitAddress,
    private readonly resolve: (socket: Socket) => void,
    private readonly reject: (err: Error) => void,
  ) {}

  start(): void {
    if (this.target.flow !== undefined) this.target.flow.dialling = this;
    this.deadlineTimer = setTimeout(() => this.onDeadline(), this.target.timeoutMs);
    // The first address was checked by admission itself.
    this.attempt(this.target.ip);
  }

  /** A kill (FlowTable.kill): every attempt destroyed, the dial fails with the kill's error. */
  destroy(err?: Error): void {
    if (this.isSettled) return;
    this.settle();
    this.reject(err ?? KILLED_WHILE_DIALLING);
  }

  listenerCount(_event: 'error'): number {
    return this.isSettled ? 0 : 1;
  }

  private attempt(ip: string): void {
    this.dialled++;
    const socket = connect({ host: ip, port: this.target.port, allowHalfOpen: true, noDelay: true });
    this.sockets.push(socket);
    this.ips.push(ip);
    const onError = (err: Error): void => this.onAttemptFailed(socket, ip, err);
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.removeListener('error', onError);
      this.onConnected(socket, ip);
    });
    if (this.dialled < MAX_ADDRESSES_DIALLED && this.next < this.alternates.length) {
      this.staggerTimer = setTimeout(() => {
        this.staggerTimer = null;
        this.dialNext();
      }, ATTEMPT_DELAY_MS);
    }
  }

  /** Dial the next address the flow may go on to, if any is left: true when one is dialled. */
  private dialNext(): boolean {
    if (this.staggerTimer !== null) clearTimeout(this.staggerTimer);
    this.staggerTimer = null;
    if (this.dialled >= MAX_ADDRESSES_DIALLED) return false;
    while (this.next < this.alternates.length) {
      const ip = this.alternates[this.next++] as string;
      if (this.admit(ip)) {
        this.attempt(ip);
        return true;
      }
    }
    return false;
  }

  private onConnected(socket: Socket, ip: string): void {
    if (this.isSettled) {
      socket.destroy();
      return;
    }
    const unanswered = this.target.unanswered;
    if (unanswered !== undefined) {
      // Attempts still connecting that were dialled before this one have gone unanswered for at
      // least one attempt delay: dialled last next time. Those dialled after it are not judged.
      const at = this.sockets.indexOf(socket);
      for (let i = 0; i < at; i++) unanswered.note(this.ips[i] as string, this.target.port);
      unanswered.clear(ip, this.target.port);
    }
    this.settle(socket);
    this.admit(ip, true);
    // As after a plain dial: a kill before the tunnel starts destroys the connected socket.
    if (this.target.flow !== undefined) this.target.flow.dialling = socket;
    this.resolve(socket);
  }

  private onAttemptFailed(socket: Socket, ip: string, err: Error): void {
    if (this.isSettled) return;
    const i = this.sockets.indexOf(socket);
    this.sockets.splice(i, 1);
    this.ips.splice(i, 1);
    const failure = connectFailed(ip, this.target.port, err);
    // Out of descriptors, or another failure no other address would mend: the flow's failure now.
    if (!isFallbackCode(failure.code)) {
      this.fail(failure, ip);
      return;
    }
    this.target.unanswered?.note(ip, this.target.port);
    this.lastError = failure;
    this.lastErrorIp = ip;
    if (!this.dialNext() && this.sockets.length === 0) this.fail(failure, ip);
  }

  /** connectTimeoutMs is over: the attempts still connecting fail; the one dialled last names the failure. */
  private onDeadline(): void {
    this.deadlineTimer = null;
    if (this.isSettled) return;
    const ip = this.ips[this.ips.length - 1] ?? this.lastErrorIp;
    for (const unansweredIp of this.ips) this.target.unanswered?.note(unansweredIp, this.target.port);
    this.fail(this.sockets.length > 0 ? connectTimedOut(ip, this.target.port) : (this.lastError as GatewayError), ip);
  }

  private fail(err: GatewayError, ip: string): void {
    this.settle();
    this.admit(ip, true);
    this.reject(err);
  }

  /** Stop: timers cleared, every attempt but `keep` destroyed. */
  private settle(keep?: Socket): void {
    this.isSettled = true;
    if (this.staggerTimer !== null) clearTimeout(this.staggerTimer);
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.staggerTimer = null;
    this.deadlineTimer = null;
    for (const s of this.sockets) if (s !== keep) s.destroy();
    this.sockets.length = 0;
    this.ips.length = 0;
  }
}

/** A failure another address of the same name may not have: refused, or no route to it. */
export function isFallbackCode(code: GatewayErrorCode | null): boolean {
  return code === 'EGW_DIAL_REFUSED' || code === 'EGW_DIAL_UNREACHABLE';
}

/**
 * A parent as a dial uses it: its endpoint, the URL whose credentials the handshake sends, and how
 * the errors name it (`label`: scheme, host and the port dialled, never the credentials), so an
 * operator reading a failure's log line knows which parent failed, not only that one did.
 */
interface Parent extends ParentEndpoint {
  /** Whether `host` is an IP literal, dialled as it is (no lookup). */
  isAddress: boolean;
  label: string;
  words: HandshakeWords;
  /** The Proxy-Authorization line an http parent gets ('' without credentials). */
  authorization: string;
}

/**
 * Parsed parent URLs: a config names a few, and every flow through a parent dials one, so none is
 * parsed per dial. Read only.
 */
const parents = new Map<string, Parent | { error: string }>();
function parentOf(upstream: string): Parent | { error: string } {
  let p = parents.get(upstream);
  if (p === undefined) {
    if (parents.size >= 256) parents.clear();
    const endpoint = parseParentUrl(upstream);
    if ('error' in endpoint) p = endpoint;
    else {
      const label = `parent proxy ${endpoint.protocol}//${formatAuthority(endpoint.host, endpoint.port)}`;
      const words: HandshakeWords =
        endpoint.protocol === 'http:'
          ? { timeout: `${label} did not answer CONNECT`, ended: `${label} closed during CONNECT`, prefix: `${label}: ` }
          : { timeout: `${label} did not answer in time`, ended: `${label} closed during its SOCKS5 handshake`, prefix: `${label}: ` };
      p = { ...endpoint, isAddress: isIP(endpoint.host) !== 0, label, words, authorization: parentAuthorization(endpoint.login) };
    }
    parents.set(upstream, p);
  }
  return p;
}

function dialDirect(ip: string, port: number, timeoutMs: number, flow?: Pick<Flow, 'dialling'>): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: ip, port, allowHalfOpen: true, noDelay: true });
    if (flow !== undefined) flow.dialling = socket;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(connectTimedOut(ip, port));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      // Killed: no other address is tried, whatever the kill's error would map to.
      if (err === KILLED_WHILE_DIALLING) reject(err);
      else reject(connectFailed(ip, port, err));
    };
    socket.once('error', onError);
  });
}

/** A TCP connect's failure as the gateway names it (its errno mapped once, dialErrorCode), for every dial. */
function connectFailed(ip: string, port: number, err: Error): GatewayError {
  return new GatewayError(dialErrorCode(err), `connect to ${formatAuthority(ip, port)}: ${errorText(err)}`, { cause: err });
}

/** A dial that did not connect within its limit, as every direct dial names it (the absolute-URI path's too). */
export function connectTimedOut(ip: string, port: number): GatewayError {
  return new GatewayError('EGW_DIAL_TIMEOUT', `connect to ${formatAuthority(ip, port)} timed out`);
}

/**
 * The parent proxy's own credentials, from its URL (`http://user:pass@parent:3128`), as a
 * Proxy-Authorization line; none without them. Only these are ever sent: a client's are never
 * forwarded.
 */
function parentAuthorization(login: ParentLogin | null): string {
  if (login === null) return '';
  const basic = Buffer.from(`${login.username}:${login.password}`, 'utf8').toString('base64');
  return `Proxy-Authorization: Basic ${basic}\r\n`;
}

/**
 * The parent's TCP connection, or an error naming the parent (its errno in the message):
 * EGW_UPSTREAM_PROXY_TIMEOUT when it did not accept in time (504, SPEC §4's upstream timeout; the
 * parent's own failure, not the destination's), EGW_UPSTREAM_PROXY otherwise.
 */
async function dialParent(parent: Parent, target: DialTarget): Promise<Socket> {
  try {
    if (target.names === undefined) return await dialDirect(parent.host, parent.port, target.timeoutMs, target.flow);
    if (parent.isAddress) {
      refuseOwnListener(parent, parent.host, target.names);
      return await dialDirect(parent.host, parent.port, target.timeoutMs, target.flow);
    }
    const started = performance.now();
    const address = parentAddress(parent.host, target.names);
    const ip = typeof address === 'string' ? address : await (target.flow === undefined ? address : lookUpWhileDialling(address, target.flow));
    if (target.flow?.state === 'closed') throw KILLED_WHILE_DIALLING;
    refuseOwnListener(parent, ip, target.names);
    // The lookup (a cache hit nearly always) and the connect share the one budget.
    return await dialDirect(ip, parent.port, remainingMs(started + target.timeoutMs), target.flow);
  } catch (err) {
    if (err === KILLED_WHILE_DIALLING || err instanceof OwnListenerError) throw err;
    const code = err instanceof GatewayError ? err.code : null;
    if (isOwnShortage(code)) throw err;
    throw new GatewayError(code === 'EGW_DIAL_TIMEOUT' ? 'EGW_UPSTREAM_PROXY_TIMEOUT' : 'EGW_UPSTREAM_PROXY', `${parent.label} unreachable: ${(err as Error).message}`, { cause: err });
  }
}

/** A parent whose address is one of the gateway's own listeners: refused as it is, nothing dialled. */
class OwnListenerError extends GatewayError {}

/**
 * A parent at `ip` (its port the URL's) that is one of the gateway's own listeners is refused before
 * it is dialled, `upstream-proxy` (502 / SOCKS 0x01): SPEC §4, the gateway never dials its own
 * listeners. Before, a `socks5://` parent on the gateway's own SOCKS listener took each CONNECT
 * back as a new flow until the identity's new-flow rate refused one (225 flows for one client
 * CONNECT); an `http://` one was stopped at its second arrival by Via (508), one flow too many.
 * One port lookup per parent dial (isOwnListener).
 */
function refuseOwnListener(parent: Parent, ip: string, names: ParentNames): void {
  if (isOwnListener(names, ip, parent.port)) {
    const at = parent.isAddress ? '' : ` (${formatAuthority(ip, parent.port)})`;
    throw new OwnListenerError('EGW_UPSTREAM_PROXY', `${parent.label}${at} is a listener of this gateway`);
  }
}

/**
 * The resolver queue a parent's lookups wait in (resolve.ts's fairness is per requester): one of
 * their own, so no client's backlog of slow names holds up the parent every client goes through.
 */
const PARENT_REQUESTER = 'parent proxy';

/**
 * The address of a parent named by host name, as a destination's is found: the running policy's
 * `resolver.hosts`, then the gateway's resolver (its cache; the OS resolver behind it), IPv4 first
 * as admission prefers it. Never classified: the parent is the operator's, often on a private
 * address `deny-range` refuses to clients, and it is asked for destinations already judged. Looked
 * up at each new connection to the parent (a reload moving the name is followed), never stored with
 * the parsed URL. A failed lookup is the parent's failure (`upstream-proxy`, dialParent).
 */
function parentAddress(host: string, names: ParentNames): Promise<string> | string {
  const known = names.policy.current().staticAddress(host);
  if (known !== null) return known;
  return names.resolver.lookup(host, PARENT_REQUESTER).then((ips) => ips.find((ip) => isIPv4(ip)) ?? (ips[0] as string));
}

/**
 * A parent's lookup as the first step of the flow's dial: the flow is `dialling` while it waits (a
 * wait of its own stands in for the socket), so a kill meanwhile (a reload or mode switch that now
 * refuses it: admission.ts refuseDialsAfterChange; the client leaving; an admin DELETE) ends the
 * wait at once with KILLED_WHILE_DIALLING, the late address unused. Before, the flow was not marked
 * dialling until the address came: a switch to enforce during the lookup let it through. Only for a
 * parent named by host name and looked up: one object per such dial, nothing otherwise.
 */
function lookUpWhileDialling(lookup: Promise<string>, flow: Pick<Flow, 'dialling'>): Promise<string> {
  return new Promise((resolve, reject) => {
    let isWaiting = true;
    const wait: DiallingSocket = {
      destroy(err?: Error): void {
        if (!isWaiting) return;
        isWaiting = false;
        reject(err ?? KILLED_WHILE_DIALLING);
      },
      listenerCount: () => (isWaiting ? 1 : 0),
      isLookup: true,
    };
    flow.dialling = wait;
    const settle = (): boolean => {
      if (!isWaiting) return false;
      isWaiting = false;
      if (flow.dialling === wait) flow.dialling = null;
      return true;
    };
    lookup.then(
      (ip) => {
        if (settle()) resolve(ip);
      },
      (err: unknown) => {
        if (settle()) reject(err);
      },
    );
  });
}

/**
 * What is left of a parent dial's one budget: `limits.connectTimeoutMs` covers the TCP connect to
 * the parent and its handshake together (not each in full), as it covers a direct dial.
 */
function remainingMs(deadline: number): number {
  return Math.max(0, deadline - performance.now());
}

/**
 * An HTTP/1.0 or HTTP/1.1 status line's three-digit code (a `2e2` or a missing code is no status).
 * Another minor version (`HTTP/1.2`, `HTTP/1.9`) is none either: llhttp refuses it from an origin
 * ("Invalid HTTP version") and the Upgrade path's reader too; before, a parent's `HTTP/1.9 200`
 * opened the tunnel.
 */
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: |$)/;

const HTTP_1 = Buffer.from('HTTP/1.', 'latin1');

/**
 * Whether the start of a head read so far (from `at`, its end not yet received) can still be an
 * HTTP/1.x status line: its first bytes are `HTTP/1.` (or the start of it), and its first line, once
 * complete, is one. Runs per segment of the parent's answer only, never on the tunnel.
 */
function mayBeStatusLine(received: Buffer, at: number): boolean {
  const n = Math.min(received.length - at, HTTP_1.length);
  if (received.compare(HTTP_1, 0, n, at, at + n) !== 0) return false;
  const eol = received.indexOf('\r\n', at);
  return eol === -1 || STATUS_LINE.test(received.toString('latin1', at, eol));
}

/** The most an http parent's answer to CONNECT may take before its final head ends, 1xx heads included. */
const MAX_PARENT_HEAD_BYTES = 16_384;

async function dialViaHttp(parent: Parent, target: DialTarget): Promise<Socket> {
  const deadline = performance.now() + target.timeoutMs;
  const socket = await dialParent(parent, target);
  const auth = formatAuthority(target.ip, target.port);
  // Via names us (and whoever the request came through): a parent that is this gateway again, on
  // another listener or round a ring of gateways, refuses the loop 508 instead of dialling on.
  socket.write(`CONNECT ${auth} HTTP/1.1\r\nHost: ${auth}\r\nVia: ${target.via}\r\n${parent.authorization}\r\n`);
  // Where the head being read starts: after the interim (1xx) heads already skipped.
  let at = 0;
  /** Bytes of the answer already checked for a bare LF (each once, however it is cut). */
  let checked = 0;
  return readHandshake(socket, remainingMs(deadline), parent.words, (received) => {
    for (;;) {
      const end = received.indexOf('\r\n\r\n', at);
      // Not HTTP at all (another service on the parent's port: an SSH or SMTP banner, a Redis
      // error line, TLS): refused as soon as its first bytes or first line say so. Waiting for a
      // head that never ends made it the destination's 504 connect-timeout at the deadline. Also
      // when a CRLFCRLF came with it: that was read as a refusal quoting the first line raw (up to
      // 16 KiB of whatever the service sent, control bytes and all) as if it were a status line.
      if (!mayBeStatusLine(received, at)) throw new GatewayError('EGW_UPSTREAM_PROXY', `${parent.label} answered with another protocol than HTTP/1.x`);
      // A bare LF in a head (RFC 9112 §2.2 lets us refuse it, as llhttp does on the absolute-URI
      // paths): its CRLFCRLF never comes (504 at the deadline), or a CRLFCRLF later made a 200 of
      // `HTTP/1.1 200 OK\nX: y\r\n\r\n`. Never looked for past the final head: those are the destination's.
      const headEnd = end === -1 ? received.length : end + 4;
      if (bareLineFeedAt(received, Math.max(at, checked), headEnd) !== -1) throw new GatewayError('EGW_UPSTREAM_PROXY', `${parent.label} answered with a bare LF line end`);
      checked = headEnd;
      if (end === -1) {
        // Interim heads count towards the one limit: a parent dripping 1xx is cut by the bytes it
        // sent here, or by the dial's deadline (readHandshake's one timer, never re-armed).
        if (received.length > MAX_PARENT_HEAD_BYTES) throw new GatewayError('EGW_UPSTREAM_PROXY', `${parent.label}: response head too large`);
        return null;
      }
      // The same limit however the answer was cut into segments: a head (1xx ones before it
      // included) that ends past it in the segment that brought it is as large as one unfinished.
      if (end + 4 > MAX_PARENT_HEAD_BYTES) throw new GatewayError('EGW_UPSTREAM_PROXY', `${parent.label}: response head too large`);
      const statusLine = received.subarray(at, received.indexOf('\r\n', at)).toString('latin1');
      const status = Number(STATUS_LINE.exec(statusLine)?.[1] ?? Number.NaN);
      // An interim answer (RFC 9110 §15.2: any number may come before the final one) is skipped;
      // 101 is no interim answer to CONNECT (there is no protocol to switch to) and is refused below.
      if (status >= 100 && status < 200 && status !== 101) {
        at = end + 4;
        continue;
      }
      // Any 2xx establishes the tunnel (RFC 9110 §9.3.6), and what follows its head is the
      // destination's; 101, 3xx, 4xx and 5xx do not (504, squid's ERR_CONNECT_FAIL: the parent's
      // word on the destination, http-parent-refusal.ts).
      if (!(status >= 200 && status < 300)) {
        const refusal = httpParentRefusal(status, received.toString('latin1', at, end + 2));
        throw new GatewayError(refusal.code, `${parent.label} answered ${shownStatusLine(statusLine)}${refusal.detail === '' ? '' : ` (${refusal.detail})`}`);
      }
      return end + 4;
    }
  });
}

async function dialViaSocks(parent: Parent, target: DialTarget): Promise<Socket> {
  const deadline = performance.now() + target.timeoutMs;
  const socket = await dialParent(parent, target);
  return socks5ParentHandshake(socket, target.ip, target.port, parent.login, remainingMs(deadline), parent.label, parent.words);
}
