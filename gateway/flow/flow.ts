/**
 * A live or closed flow and its canonical record (SPEC §5). Only the FlowTable creates, mutates
 * identity/verdict/state of a Flow and closes it; the tunnel that carries a flow adds to its byte
 * counters (one addition per chunk) and registers `abort`.
 */
import { communityId } from './community-id.ts';
import type { Decision, DetectorName, Identity, MatchedRule, ProcessInfo, Protocol, ReasonCode, Verdict } from '../../policy/types.ts';
import type { LocalEndpoint } from '../admission/types.ts';

export type FlowState = 'active' | 'closed';

/** The error a dial under way fails with when its flow is killed (one object for every such dial). */
export const KILLED_WHILE_DIALLING = new Error('flow killed while dialling');

/** What a kill needs of a dialling socket (node's net.Socket). */
export interface DiallingSocket {
  destroy(err?: Error): unknown;
  listenerCount(event: 'error'): number;
  /** True for a wait on a parent proxy's name (upstream/dial.ts lookUpWhileDialling): nothing sent yet. */
  readonly isLookup?: true;
}

/** Where a flow goes: the name or address the client asked for, and the address dialled (null until resolved). */
export interface KnownDestination {
  host: string;
  ip: string | null;
  port: number;
}

/**
 * No destination was ever named: a SOCKS5 connection refused at its RFC 1929 login, which comes
 * before its request (admission/refusals.ts, refuseLogin). Such a flow is closed as it is opened; the
 * detectors never see it (it went nowhere) and replay skips it (verdict block).
 */
export interface UnknownDestination {
  host: null;
  ip: null;
  port: null;
}

export type FlowDestination = KnownDestination | UnknownDestination;

/** A flow that named a destination: every flow admission judged (all but refused logins). */
export type RoutedFlow = Flow & { destination: KnownDestination };

/** Does this flow have a destination (false only for a SOCKS5 login refused before its request)? */
export function isRouted(flow: Flow): flow is RoutedFlow {
  return flow.destination.host !== null;
}

/**
 * One destination of a flow that relays to several (a SOCKS5 UDP association): the bytes each way
 * to and from it, and its own byte budget, so the detectors judge it as they would a flow to it
 * alone. The flow's `bytesOut` / `bytesIn` stay the totals its one record carries; the relay adds
 * each datagram to both (two additions, nothing allocated).
 */
export interface FlowLeg {
  /** Unique among the views the detectors fold (the flow's id and the leg's number). */
  readonly key: string;
  readonly destination: KnownDestination;
  /** When the destination was first relayed to. */
  readonly startedAt: number;
  bytesOut: number;
  bytesIn: number;
  /** As Flow.budgetOut, for this destination's bytes. */
  budgetOut: number;
  /** As Flow.onBudget: true = the datagram that would cross the budget ends the flow. */
  onBudget: ((leg: FlowLeg) => boolean) | null;
  /** bytesOut + bytesIn when the detectors' sweep last looked: an idle destination is not looked at again. */
  sweptBytes: number;
  /**
   * The allow entry its destination was admitted by (the first destination's is the flow's own): a
   * detector's kill or would-kill for this destination's bytes names it (FlowRecord.matchedRule).
   */
  readonly matchedRule: MatchedRule | null;
  /**
   * Relayed in monitor mode as would-block by policy (not-allowlisted, deny-range): enforce mode
   * refuses it, so the detectors counted it as that refusal and never judge its bytes (set by the
   * detection engine's onRelayed).
   */
  isRefusedByPolicy: boolean;
}

export interface FlowInit {
  protocol: Protocol;
  listener: 'http' | 'https' | 'socks';
  client: { ip: string; port: number };
  identity: Identity;
  destination: FlowDestination;
  /** When the flow began, if earlier than its opening in the table (a UDP association recorded at its end). */
  startedAt?: number;
  /**
   * false: a record written beside a live flow of the same client address (a UDP association's
   * refused destination): it is never the flow found by that address, so it neither takes over nor
   * removes the live flow's entry (agent attribution keeps going to the live flow). Default true.
   */
  isAddressIndexed?: boolean;
  /**
   * A SOCKS5 UDP association: its TCP control connection's client port. An agent report about that
   * connection names the association while no report about its datagram socket has.
   */
  controlPort?: number | undefined;
  /**
   * When the listener took the client's connection (ms; a UDP association's: its control
   * connection's), if known: a report kept for a flow not yet open that arrived before it, less a
   * grace, was about an earlier connection from the same port and names nothing.
   */
  connectedAt?: number | undefined;
  /**
   * The client's socket to us (a UDP association's: its relay), and its control connection's, if
   * known: where it is connected to (the listener's end, or the balancer's front a PROXY header
   * names) tells two live flows from one client address and port apart (FlowTable.attribute). Kept,
   * not read: each first read of a socket's local address is a getsockname() system call, and only a
   * report about a shared client address needs it.
   */
  endpoint?: LocalEndpoint | undefined;
  controlEndpoint?: LocalEndpoint | undefined;
}

/** One end of a socket as the flow table compares it with an agent report's remote end. */
export interface SocketEnd {
  readonly ip: string;
  readonly port: number;
}

/** The JSON record written to the flow log and served by the admin API (SPEC §5). */
export interface FlowRecord {
  id: string;
  protocol: Protocol;
  client: { ip: string; port: number };
  identity: Identity;
  destination: FlowDestination;
  startedAt: string;
  lastActivityAt: string;
  endedAt: string | null;
  durationMs: number;
  bytesOut: number;
  bytesIn: number;
  verdict: Verdict;
  enforced: boolean;
  reason: ReasonCode | null;
  detector: DetectorName | null;
  state: FlowState;
  closeReason: string | null;
  /**
   * Whether the flow reached its destination (the dial, or a parent's, succeeded; or the gateway
   * answered as the final recipient): what tells a flow ended before its dial was answered (`admin`,
   * `shutdown`, `client-reset`, …) from one ended after (SPEC §5 extension; docs/spec-notes.md).
   */
  connected: boolean;
  communityId: string | null;
  matchedRule: MatchedRule | null;
  reasons: readonly string[];
  /**
   * The parent proxy the flow was sent through (`http://10.0.0.5:3128`, `socks5://…`: scheme, host
   * and the port dialled, never credentials); absent for a direct flow.
   */
  upstream?: string;
  /** Set when the client's host has an agent but no agent ever attributed the flow. */
  unattributed?: true;
  /** Set when local attribution named the process only after admission had stopped waiting for it. */
  attributedLate?: true;
  intermediate?: true;
}

export class Flow {
  readonly id: string;
  readonly protocol: Protocol;
  readonly listener: FlowInit['listener'];
  readonly client: { readonly ip: string; readonly port: number };
  identity: Identity;
  destination: FlowDestination;
  readonly startedAt: number;
  lastActivityAt: number;
  endedAt: number | null = null;
  /** Payload bytes sent to the destination / received from it (no proxy handshake). */
  bytesOut = 0;
  bytesIn = 0;
  verdict: Verdict = 'allow';
  enforced = false;
  reason: ReasonCode | null = null;
  detector: DetectorName | null = null;
  matchedRule: MatchedRule | null = null;
  reasons: readonly string[] = [];
  state: FlowState = 'active';
  closeReason: string | null = null;
  /** The parent proxy admission sent the flow through (FlowRecord.upstream); null: direct. */
  upstream: string | null = null;
  /** Community ID, computed the first time a record needs it (a SHA-1 per flow is not free). */
  private cid: string | null | undefined = undefined;
  /**
   * Did the upstream dial (or a parent's) succeed? false = no connection was made: a failed or refused
   * connect, or none tried (the scan detectors read it with the closeReason: outcomeOfEnded).
   */
  isConnected = false;
  /**
   * Answered by the gateway itself as the request's final recipient (TRACE/OPTIONS with Max-Forwards
   * 0, http-max-forwards.ts): nothing was dialled, so the flow is not connected and has no Community ID.
   */
  isAnsweredHere = false;
  /** Byte budget towards the destination (an0080.bulk-upload kill); Infinity = none. The tunnel enforces it. */
  budgetOut = Number.POSITIVE_INFINITY;
  /**
   * Asked by the tunnel when the next chunk would cross `budgetOut`: true = cut the flow at exactly
   * the budget; false = carry on, having moved `budgetOut` further (to where the ratio rule could
   * hold next, or to Infinity once monitor mode has recorded would-kill). The caller checks the
   * rest of the chunk against the moved budget.
   */
  onBudget: ((flow: Flow) => boolean) | null = null;
  /**
   * The destinations of a flow that relays to several (SOCKS5 UDP), each judged on its own bytes by
   * the detectors instead of the flow's totals; null for a flow to one destination.
   */
  legs: FlowLeg[] | null = null;
  /**
   * Registered by whoever holds the sockets: tears both sides down at once (TCP reset). While
   * admission awaits the flow's DNS lookup, its own: a kill ends that wait (admission/lookup.ts lookUpUntilKilled).
   */
  abort: ((reason: string) => void) | null = null;
  /**
   * Called once by FlowTable.close just before the record is written, whoever closes the flow (a
   * kill closes it before `abort` runs): a SOCKS5 UDP association's counts of destinations and
   * dropped datagrams go into its reasons then. Null for every other flow.
   */
  explainAtClose: ((flow: Flow) => void) | null = null;
  /**
   * The socket of the dial under way for this flow (gateway/upstream/dial.ts sets it as it connects),
   * until the tunnel or exchange registers `abort`: a kill meanwhile destroys it (FlowTable.kill), so
   * nothing more reaches the destination. A field, not a closure per flow.
   */
  dialling: DiallingSocket | null = null;
  /**
   * Closed while its dial was under way (a kill, a policy change refusing it): a SYN went out, so the
   * flow keeps its Community ID whatever its verdict, as a failed dial's does. Set by FlowTable.close.
   */
  wasDialling = false;
  /** Admission awaits its name's lookup, `abort` its wait's (a reload wakes it: admission/lookup.ts refuseLookupsAfterChange). */
  isLookingUp = false;
  /** The client's host has an agent, yet no agent attributed this live flow in time (a signal in itself). */
  isUnattributed = false;
  /** Local attribution outlasted admission's wait and named the process of the flow already admitted. */
  isAttributedLate = false;
  /**
   * A SOCKS5 UDP association's process came from its control connection's report: its datagram
   * socket's own report may still replace it (FlowTable.attribute). No other report replaces a process.
   */
  isNamedByControl = false;
  /** Sweep bookkeeping (owned by FlowTable). */
  lastSampleBytes = 0;
  lastInterimAt: number;
  /**
   * Keys the FlowTable counted this flow under at open ("transport|ip:port" of the client; the per-identity
   * limit key): close releases exactly these, even if the identity changed meanwhile.
   */
  clientKey = '';
  /** A SOCKS5 UDP association's control connection, "tcp|ip:port" (FlowInit.controlPort); else ''. */
  controlKey = '';
  /** FlowInit.endpoint and .controlEndpoint while the flow lives (the flow table lets go at its close); null when not known. */
  endpoint: LocalEndpoint | null;
  controlEndpoint: LocalEndpoint | null;
  /**
   * True: the flow table closes it without writing its record, and counts it instead (a refusal
   * while the flow log cannot be written and its backlog already holds many; admission.ts).
   */
  isRecordSkipped = false;
  limitKey = '';
  /** Its place in the flow table's opening order (FlowTable.open): GET /v1/flows walks key on it. */
  openSeq = 0;
  /** Its place in the flow table's closing order (FlowTable.close); -1 while it is live. */
  closeSeq = -1;

  constructor(id: string, init: FlowInit, now: number) {
    this.id = id;
    this.protocol = init.protocol;
    this.listener = init.listener;
    this.client = init.client;
    this.identity = init.identity;
    this.destination = init.destination;
    this.startedAt = init.startedAt ?? now;
    this.lastActivityAt = this.startedAt;
    this.lastInterimAt = now;
    this.endpoint = init.endpoint ?? null;
    this.controlEndpoint = init.controlEndpoint ?? null;
  }

  /** Apply a decision's fields (FlowTable calls this). */
  applyDecision(decision: Decision, enforced: boolean): void {
    this.verdict = decision.verdict;
    this.reason = decision.reason;
    this.detector = decision.detector;
    this.matchedRule = decision.matchedRule;
    this.reasons = decision.reasons;
    this.enforced = enforced;
  }

  /**
   * Community ID v1 of the flow: null until the dialled address is known, and for a flow refused
   * before any dial or answered by the gateway itself (no packet ever went to that address, so there
   * is no flow on the wire to join); one refused while it was dialled keeps it (its SYN went out).
   */
  get communityId(): string | null {
    if (this.isAnsweredHere || (this.verdict === 'block' && !this.isConnected && !this.wasDialling)) return null;
    if (this.cid === undefined) {
      const { ip, port } = this.destination;
      if (ip === null || port === null) this.cid = null;
      else if (this.protocol === 'http' && this.clientKey !== '') this.cid = keepAliveCommunityId(this.clientKey, this.client.ip, this.client.port, ip, port);
      else this.cid = communityId(this.protocol === 'socks5-udp' ? 'udp' : 'tcp', this.client.ip, this.client.port, ip, port);
    }
    return this.cid;
  }

  /** The dialled address changed: the Community ID is recomputed on next use. */
  resetCommunityId(): void {
    this.cid = undefined;
  }

  /** The canonical record. */
  toRecord(now: number, intermediate = false): FlowRecord {
    const end = this.endedAt ?? now;
    const rec: FlowRecord = {
      id: this.id,
      protocol: this.protocol,
      client: { ip: this.client.ip, port: this.client.port },
      identity: this.identity,
      destination: { ...this.destination },
      startedAt: new Date(this.startedAt).toISOString(),
      lastActivityAt: new Date(this.lastActivityAt).toISOString(),
      endedAt: this.endedAt === null ? null : new Date(this.endedAt).toISOString(),
      durationMs: end - this.startedAt,
      bytesOut: this.bytesOut,
      bytesIn: this.bytesIn,
      verdict: this.verdict,
      enforced: this.enforced,
      reason: this.reason,
      detector: this.detector,
      state: this.state,
      closeReason: this.closeReason,
      connected: this.isConnected,
      communityId: this.communityId,
      matchedRule: this.matchedRule,
      reasons: this.reasons,
    };
    if (this.upstream !== null) rec.upstream = this.upstream;
    if (this.isUnattributed && !this.identity.process) rec.unattributed = true;
    if (this.isAttributedLate) rec.attributedLate = true;
    if (intermediate) rec.intermediate = true;
    return rec;
  }

  /**
   * The canonical record as one JSON text, exactly `JSON.stringify(this.toRecord(now, intermediate))`
   * (test/unit/gateway/flow-json.test.ts), without building the record object first: the flow log
   * writes one per flow.
   */
  toJsonLine(now: number, intermediate = false): string {
    const end = this.endedAt ?? now;
    let line =
      `{"id":${JSON.stringify(this.id)},"protocol":${jsonText(this.protocol)}` +
      `,"client":{"ip":${jsonText(this.client.ip)},"port":${jsonNumber(this.client.port)}}` +
      `,"identity":${identityJson(this.identity)},"destination":${destinationJson(this.destination)}` +
      `,"startedAt":"${isoString(this.startedAt)}","lastActivityAt":"${isoString(this.lastActivityAt)}"` +
      `,"endedAt":${this.endedAt === null ? 'null' : `"${isoString(this.endedAt)}"`},"durationMs":${jsonNumber(end - this.startedAt)}` +
      `,"bytesOut":${jsonNumber(this.bytesOut)},"bytesIn":${jsonNumber(this.bytesIn)},"verdict":${jsonText(this.verdict)}` +
      `,"enforced":${this.enforced},"reason":${jsonTextOrNull(this.reason)},"detector":${jsonTextOrNull(this.detector)}` +
      `,"state":${jsonText(this.state)},"closeReason":${jsonTextOrNull(this.closeReason)},"connected":${this.isConnected},"communityId":${jsonOrNull(this.communityId)}` +
      `,"matchedRule":${this.matchedRule === null ? 'null' : jsonOfShared(this.matchedRule)},"reasons":${jsonOfShared(this.reasons)}`;
    // A direct flow pays one comparison; a parent's name is one of a few strings, its JSON kept.
    if (this.upstream !== null) line += `,"upstream":${jsonText(this.upstream)}`;
    if (this.isUnattributed && !this.identity.process) line += ',"unattributed":true';
    if (this.isAttributedLate) line += ',"attributedLate":true';
    if (intermediate) line += ',"intermediate":true';
    return `${line}}`;
  }
}

// The absolute-URI requests of one keep-alive client connection mostly go to one origin address, so
// they share their TCP 5-tuple and Community ID: the last one computed per client address (the
// table's clientKey, "tcp|ip:port") is kept and reused while the destination is the same.
const keepAliveCids = new Map<string, { ip: string; port: number; cid: string | null }>();
function keepAliveCommunityId(clientKey: string, clientIp: string, clientPort: number, ip: string, port: number): string | null {
  const last = keepAliveCids.get(clientKey);
  if (last !== undefined && last.ip === ip && last.port === port) return last.cid;
  const cid = communityId('tcp', clientIp, clientPort, ip, port);
  if (keepAliveCids.size >= 4096) keepAliveCids.clear();
  keepAliveCids.set(clientKey, { ip, port, cid });
  return cid;
}

/** `JSON.stringify` of a string or null. */
function jsonOrNull(v: string | null): string {
  return v === null ? 'null' : JSON.stringify(v);
}

// Most strings of a record repeat from flow to flow (protocol, verdict, state, reasons codes, client
// addresses, destination names): their JSON text is kept, for up to 4,096 distinct strings at a time.
const jsonTexts = new Map<string, string>();
/** `JSON.stringify` of a string that is likely to repeat. */
function jsonText(v: string): string {
  let text = jsonTexts.get(v);
  if (text === undefined) {
    text = JSON.stringify(v);
    if (jsonTexts.size >= 4096) jsonTexts.clear();
    jsonTexts.set(v, text);
  }
  return text;
}
function jsonTextOrNull(v: string | null): string {
  return v === null ? 'null' : jsonText(v);
}

// A decision's matchedRule and reasons are shared by every flow it allowed: the compiled policy keeps
// one frozen allow decision per rule and mode. The JSON of a frozen object is kept per object; any
// other (a refusal's own reasons, made per flow) is written as it is, and adds no weak-map entry.
const sharedTexts = new WeakMap<object, string>();
/** `JSON.stringify`, kept per object for frozen objects (their JSON cannot change). */
function jsonOfShared(v: object): string {
  if (!Object.isFrozen(v)) return JSON.stringify(v);
  let text = sharedTexts.get(v);
  if (text === undefined) {
    text = JSON.stringify(v);
    sharedTexts.set(v, text);
  }
  return text;
}

/** `JSON.stringify` of a number (non-finite numbers become null, as there). */
function jsonNumber(n: number): string {
  return Number.isFinite(n) ? String(n) : 'null';
}

// Timestamps of flows that end close together share their second: the text up to the millisecond
// is kept for the last two seconds seen (start and end of most flows), so most conversions are a
// string concatenation instead of a Date.
const isoSeconds = [Number.NaN, Number.NaN];
const isoPrefixes = ['', ''];
let isoNext = 0;
const MS_TEXT = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(3, '0')}Z`);
function isoString(ms: number): string {
  const sec = Math.floor(ms / 1000);
  const rest = ms - sec * 1000;
  if (!Number.isInteger(rest)) return new Date(ms).toISOString();
  const slot = sec === isoSeconds[0] ? 0 : sec === isoSeconds[1] ? 1 : -1;
  if (slot >= 0) return (isoPrefixes[slot] as string) + (MS_TEXT[rest] as string);
  const text = new Date(ms).toISOString();
  isoSeconds[isoNext] = sec;
  isoPrefixes[isoNext] = text.slice(0, text.length - 4);
  isoNext ^= 1;
  return text;
}

// Identity JSON: most flows carry a user/host/roles identity without a process, and the roles array
// comes from the policy snapshot (shared). One text per roles array — for the last user and host
// seen with it — saves a JSON.stringify per flow.
const identityTexts = new Map<readonly string[], { user: string | null; host: string | null; text: string }>();
function identityJson(identity: Identity): string {
  if (identity.process !== null) return JSON.stringify(identity);
  const memo = identityTexts.get(identity.roles);
  if (memo !== undefined && memo.user === identity.user && memo.host === identity.host) return memo.text;
  const text = JSON.stringify(identity);
  if (identityTexts.size >= 256) identityTexts.clear();
  identityTexts.set(identity.roles, { user: identity.user, host: identity.host, text });
  return text;
}

/** `JSON.stringify(destination)` for the { host, ip, port } it always is; `ip` is an IP literal or null. */
function destinationJson(d: FlowDestination): string {
  if (d.host === null) return '{"host":null,"ip":null,"port":null}';
  return `{"host":${jsonText(d.host)},"ip":${d.ip === null ? 'null' : `"${d.ip}"`},"port":${jsonNumber(d.port)}}`;
}

/** Identity with a process attached (attribution never changes user/host/roles). */
export function withProcess(identity: Identity, process: ProcessInfo): Identity {
  return { ...identity, process };
}
