/**
 * The one owner of live flows. It creates, updates and closes every Flow, keeps the recently
 * closed ones for the admin API, writes each closed flow exactly once to the flow log (and interim
 * records for long flows), enforces per-identity limits, and runs the periodic sweep the detectors
 * hang off. Everything else holds a Flow reference handed out here or reads `list()`/`get()`.
 *
 * Events: 'open' (flow), 'close' (flow), 'redecide' (flow, before a detector changes its verdict),
 * 'sweep' (now: number, active: ReadonlyMap<string, Flow>),
 * 'attributed' (flow).
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Decision, MatchedRule, ProcessInfo, Protocol } from '../../policy/types.ts';
import { Flow, type FlowInit, type FlowLeg, type FlowRecord, KILLED_WHILE_DIALLING, type KnownDestination, type RoutedFlow, type SocketEnd, withProcess } from './flow.ts';
import type { FlowSink } from './flow-log.ts';
import { normaliseHost } from '../protocol/authority.ts';
import { hostKey } from '../../policy/host-pattern.ts';
import { LiveFlows } from './live-flows.ts';
import { processBytes } from '../pending-reports.ts';
import { normalizeIp } from '../../agent/attribution.ts';
import { clientReached, type LocalEndpoint } from '../admission/types.ts';

/**
 * Legs (per-destination counters of SOCKS5 UDP associations) the gateway keeps at most; beyond, a new
 * destination shares its association's newest leg. Well under the detectors' 500,000 tracked flows.
 */
export const MAX_LIVE_LEGS = 100_000;
/** Identities whose new-flow bucket is kept at most (withinLimits); past it, the least recently used goes. */
export const MAX_RATE_KEYS = 100_000;

export interface FlowTableOptions {
  sink: FlowSink;
  /** How many closed flows to keep for the admin API. */
  keepClosed?: number;
  /** Interim records for flows older than this; 0 = never. */
  interimSec?: number;
  sampleIntervalMs?: number;
  /** Injected clock (tests, replay). */
  now?: () => number;
  /** Bound on live legs (default MAX_LIVE_LEGS; tests set it low). */
  maxLiveLegs?: number;
  /** Bound on the identities whose new-flow rate is tracked (default MAX_RATE_KEYS; tests set it low). */
  maxRateKeys?: number;
}

export interface FlowFilter {
  state?: 'active' | 'closed';
  user?: string;
  host?: string;
  process?: string;
  destination?: string;
  verdict?: string;
  limit?: number;
  offset?: number;
}

/** A page of GET /v1/flows: a filter, and where a walk through the pages stands (`after`). */
export interface FlowPageQuery extends FlowFilter {
  /** The `next` of the walk's page before (an opaque cursor); absent: the walk's first page. */
  after?: string;
}

/** A page's flows, and the cursor of the page after it (null: no flow follows). */
export type FlowPage = { ok: true; flows: FlowRecord[]; next: string | null } | { ok: false; message: string };

/**
 * Where a walk through GET /v1/flows stands. It lists the flows opened before `opened`, each once,
 * with the state it has when its page is taken: the live part (flows live then, newest opened
 * first), then the closed part (flows closed before the walk's first page, `closed` being the
 * table's closeSeq then; newest closed first). A flow not yet listed that closes meanwhile is listed
 * on the next page, after that page's live flows, with its closed record: the flows of a page whose
 * closeSeq is `handled` or above and whose openSeq is below `live` (the live part had not reached
 * them), in the order they closed. So a page never lists a closed flow before a live one, and no flow
 * is listed twice or, but a closed one evicted (keepClosed) before its page, skipped. Flows opened
 * since are not listed. `live` is the openSeq of the last flow the live part passed (0 once it has
 * passed them all), `at` the closeSeq of the last flow the closed part listed (`closed` before it starts).
 */
interface Walk {
  opened: number;
  closed: number;
  handled: number;
  live: number;
  at: number;
}

/** A cursor (FlowTable.cursorOf): the table's id prefix, then opened, closed, handled, live and at in base 36. */
const CURSOR = /^([0-9a-f]{6})((?:\.[0-9a-z]{1,10}){5})$/;

/**
 * An identity's new-flow bucket, kept as its level (a token bucket seen from the other side): the
 * flows it took, draining at the rate a second. Full at the rate. A level rather than tokens left, so
 * a reload that lowers the rate counts the flows already taken against the new one.
 */
interface RateBucket {
  /** Flows taken and not yet drained at `atMs` (fractional: drains continuously). */
  level: number;
  /** When `level` was last brought up to date. */
  atMs: number;
  /** When the bucket last went to the end of the table's order (at most once a second: see withinLimits). */
  movedAtMs: number;
}

/**
 * The transport of a flow's client socket. TCP and UDP have separate port spaces: 127.0.0.1:40000
 * over TCP and over UDP can be two sockets of two processes, so a client address is only ever
 * looked up together with its transport.
 */
export type ClientTransport = 'tcp' | 'udp';

/** The transport of the client socket a flow of this protocol is known by (a UDP association: its datagram socket). */
export function clientTransport(protocol: Protocol): ClientTransport {
  return protocol === 'socks5-udp' ? 'udp' : 'tcp';
}

function clientKey(transport: ClientTransport, ip: string, port: number): string {
  return `${transport}|${ip}:${port}`;
}

/** Whether a client socket to `endpoint` is the one seen connected to `remote` (`::ffff:127.0.0.1` is 127.0.0.1). */
function reaches(endpoint: LocalEndpoint | null | undefined, remote: SocketEnd): boolean {
  if (endpoint === null || endpoint === undefined) return false;
  const end = clientReached(endpoint);
  return end.port === remote.port && (end.ip === remote.ip || normalizeIp(end.ip) === normalizeIp(remote.ip));
}

/** Key under which limits are counted: the user if known, else the host, else the client address. */
export function identityKey(flow: Pick<Flow, 'identity' | 'client'>): string {
  return flow.identity.user ? `u:${flow.identity.user}` : flow.identity.host ? `h:${flow.identity.host}` : `a:${flow.client.ip}`;
}

/**
 * The test `GET /v1/flows?destination=` applies to a flow's destination host and dialled address.
 * The value is read as the data plane reads a destination (authority.ts): an address in any
 * spelling (`[::1]`, `0:0:0:0:0:0:0:1`, `::FFFF:127.0.0.3`, `0x7f.1`) is its canonical text, and an
 * IPv4-mapped address and its IPv4 address are one key (hostKey, as for host entries), matched
 * against host and address alike; a name is lower case, punycode, without a trailing dot, and
 * matches the host the client named, never an address. A value no destination could carry is
 * compared as given.
 */
function destinationMatcher(value: string): (host: string | null, ip: string | null) => boolean {
  const parsed = normaliseHost(value);
  if (parsed === null) return (host, ip) => host === value || ip === value;
  if (!parsed.isIp) return (host) => host === parsed.host;
  const key = hostKey(parsed.host);
  // A refused SOCKS5 login named no destination (host and ip null): no address finds it.
  return (host, ip) => (host !== null && hostKey(host) === key) || (ip !== null && hostKey(ip) === key);
}

/**
 * An agent report kept for a flow not yet open. `stillValid` says whether its reporter still speaks
 * for the address under the running policy (a reload may have taken the address out of its agent's
 * sources); null when nothing a reload changes binds it.
 */
export interface PendingReport {
  readonly process: ProcessInfo;
  readonly stillValid: (() => boolean) | null;
  /** When it arrived (Date.now(), as kAcceptedAt: real time, whatever clock the table was given). */
  readonly at: number;
}

/**
 * How long after a report's arrival a connection it names may have been taken by a listener (ms).
 * A report is made while its socket lives, so its connection was accepted before it arrived; the
 * grace covers the admin request overtaking the listener's accept in the event loop, and a PROXY
 * protocol header read before the connection reaches its listener.
 */
export const REPORT_BEFORE_CONNECTION_GRACE_MS = 2_000;

export class FlowTable extends EventEmitter {
  private readonly active = new LiveFlows();
  private readonly closed: Flow[] = [];
  private closedStart = 0;
  /** Client address "transport|ip:port" → id of its newest flow (ids, not flows: see live-flows.ts). */
  private readonly byClient = new Map<string, string>();
  /** A live SOCKS5 UDP association's control connection "tcp|ip:port" → the association's id. */
  private readonly byControl = new Map<string, string>();
  /**
   * Client address → ids of older live flows byClient no longer names, oldest first: Linux gives
   * connect() one ephemeral port for sockets to different ends (only the 4-tuple is unique), so a
   * tunnel to the HTTP listener and a SOCKS5 connection may share one. Empty but for such overlaps.
   */
  private readonly sharedClient = new Map<string, string[]>();
  private readonly perIdentity = new Map<string, number>();
  /**
   * Limit key → its new-flow bucket, in the order the buckets were last used (a key used again is
   * moved to the end), so the first entry is always the least recently used: a full one (unused for
   * a second or more, as good as forgotten) while there is any, else the oldest live one.
   */
  private readonly rate = new Map<string, RateBucket>();
  private readonly maxRateKeys: number;
  /** Attributions that arrived before their flow (agent reports race the connection). */
  // Bounded by bytes too (control-port.ts clips what it hands in and budgets it per agent), and
  // purged of expired entries every sweep: lru-cache frees a stale entry only when it is read or evicted.
  private readonly pendingProcess = new LRUCache<string, PendingReport>({
    max: 50_000,
    ttl: 30_000,
    maxSize: 64 * 1024 * 1024,
    sizeCalculation: (r) => processBytes(r.process),
  });
  private readonly keepClosed: number;
  private interimMs: number;
  private sampleIntervalMs: number;
  private timer: NodeJS.Timeout | null = null;
  private readonly idPrefix = randomBytes(3).toString('hex');
  private seq = 0;
  /** The next flow's closeSeq: flows closed so far. */
  private closeSeq = 0;
  /** Legs of live flows (addLeg), bounded by maxLiveLegs. */
  private liveLegs = 0;
  private readonly maxLiveLegs: number;
  readonly now: () => number;
  readonly sink: FlowSink;
  totalOpened = 0;
  totalClosed = 0;
  /** Records not written by design: refusals while the flow log failed with a full enough backlog. */
  skippedRecords = 0;

  constructor(opts: FlowTableOptions) {
    super();
    this.sink = opts.sink;
    this.keepClosed = opts.keepClosed ?? 10_000;
    this.maxLiveLegs = opts.maxLiveLegs ?? MAX_LIVE_LEGS;
    this.maxRateKeys = opts.maxRateKeys ?? MAX_RATE_KEYS;
    this.interimMs = (opts.interimSec ?? 60) * 1000;
    this.sampleIntervalMs = opts.sampleIntervalMs ?? 1000;
    this.now = opts.now ?? Date.now;
  }

  /** Open a flow. The caller must eventually `close()` it (or `kill()`). */
  open(init: FlowInit & { destination: KnownDestination }): RoutedFlow;
  open(init: FlowInit): Flow;
  open(init: FlowInit): Flow {
    const id = `${this.idPrefix}${(this.seq++).toString(36).padStart(6, '0')}`;
    const flow = new Flow(id, init, this.now());
    flow.openSeq = this.seq - 1;
    this.active.add(flow);
    const ck = clientKey(clientTransport(init.protocol), init.client.ip, init.client.port);
    flow.clientKey = ck;
    if (init.isAddressIndexed !== false) {
      const older = this.byClient.get(ck);
      if (older !== undefined && this.active.get(older)?.state === 'active') {
        const shared = this.sharedClient.get(ck);
        if (shared === undefined) this.sharedClient.set(ck, [older]);
        else shared.push(older);
      }
      this.byClient.set(ck, id);
      if (init.controlPort !== undefined) {
        flow.controlKey = clientKey('tcp', init.client.ip, init.controlPort);
        this.byControl.set(flow.controlKey, id);
      }
    }
    if (this.pendingProcess.size > 0) {
      // A report that came before its flow names that flow only: consumed, never inherited by a
      // later connection from the same port (another socket, maybe another process and user).
      // A UDP association's datagram socket first; else its control connection (opened before it).
      const own = this.takePending(ck, init.connectedAt);
      const pending = own ?? (flow.controlKey === '' ? undefined : this.takePending(flow.controlKey, init.connectedAt));
      if (pending && !flow.identity.process) {
        flow.identity = withProcess(flow.identity, pending);
        flow.isNamedByControl = own === undefined;
      }
    }
    const key = identityKey(flow);
    flow.limitKey = key;
    this.perIdentity.set(key, (this.perIdentity.get(key) ?? 0) + 1);
    this.totalOpened++;
    this.emit('open', flow);
    return flow;
  }

  /**
   * Per-identity limits for a flow just opened: concurrency (counting this flow) and the new-flow
   * rate, a token bucket holding `maxNewPerSec` tokens and refilled at `maxNewPerSec` a second (kept
   * as its level, RateBucket). So a burst gets at most the rate, wherever it falls against the clock's
   * seconds, and any span of T seconds at most rate × (1 + T). Returns true when the flow is within both.
   */
  withinLimits(flow: Flow, maxFlows: number, maxNewPerSec: number): boolean {
    const key = flow.limitKey;
    const now = flow.startedAt;
    let b = this.rate.get(key);
    if (!b) {
      // Over the bound: forget the least recently used bucket (rate's order), a full one while there
      // is any. One eviction per new key keeps this O(1); clearing the table whole would let anyone
      // able to make that many identities reset everybody's count.
      if (this.rate.size >= this.maxRateKeys) this.rate.delete(this.rate.keys().next().value as string);
      b = { level: 0, atMs: now, movedAtMs: now };
      this.rate.set(key, b);
    } else {
      // To the end of the order, at most once a second (a Map delete and set per flow otherwise): the
      // order is least recently used to the second, as the fixed windows' was. A clock stepped back
      // drains nothing.
      if (now - b.movedAtMs >= 1000) {
        this.rate.delete(key);
        this.rate.set(key, b);
        b.movedAtMs = now;
      }
      b.level = Math.max(0, b.level - (Math.max(0, now - b.atMs) * maxNewPerSec) / 1000);
      b.atMs = now;
    }
    // An attempt takes a token when there is one, an attempt refused for concurrency too: a client
    // hammering the limit stays limited. One that finds none takes nothing (no debt): a client over
    // the rate still gets the rate.
    if (b.level + 1 > maxNewPerSec) return false;
    b.level += 1;
    return (this.perIdentity.get(key) ?? 0) <= maxFlows;
  }

  /**
   * A limit refusal's `Retry-After` for `flow` (just refused by withinLimits): the whole seconds until
   * its identity's bucket holds a token again at `maxNewPerSec`, at least 1. Within a second unless a
   * reload lowered the rate below what the identity had taken: the level then drains at the new rate
   * (at 5/s then 1/s, 5 flows taken wait 5 s). Only on a refusal: nothing per admitted flow.
   */
  retryAfterSec(flow: Flow, maxNewPerSec: number): number {
    const b = this.rate.get(flow.limitKey);
    return b === undefined ? 1 : Math.max(1, Math.ceil((b.level + 1 - maxNewPerSec) / maxNewPerSec));
  }

  /**
   * Hold a place in identity `key`'s concurrency (limits.maxFlowsPerIdentity) for what holds the
   * gateway's resources for it before it is a flow: a SOCKS5 UDP association before its first
   * datagram (its relay socket, maybe a port of limits.udpRelayPorts). False, nothing held, when the
   * identity's flows and places already number `maxFlows`. The holder gives it back (releasePlace)
   * exactly once: before its flow opens, which then counts instead, or when it ends.
   */
  holdPlace(key: string, maxFlows: number): boolean {
    const n = this.perIdentity.get(key) ?? 0;
    if (n >= maxFlows) return false;
    this.perIdentity.set(key, n + 1);
    return true;
  }

  /** Give back a place holdPlace gave. */
  releasePlace(key: string): void {
    const n = (this.perIdentity.get(key) ?? 1) - 1;
    if (n <= 0) this.perIdentity.delete(key);
    else this.perIdentity.set(key, n);
  }

  /** Record the admission decision and whether it was enforced. */
  decide(flow: Flow, decision: Decision, enforced: boolean): void {
    flow.applyDecision(decision, enforced);
  }

  /**
   * Replace a flow's explanation lines and judge nothing (a SOCKS5 UDP association's counts at its
   * end): its verdict, reason, detector and rule stay what they were, null for a flow never judged.
   */
  explain(flow: Flow, reasons: readonly string[]): void {
    flow.reasons = reasons;
  }

  /**
   * Change a live flow's verdict after its admission (a detector's would-block or kill): its record
   * says so. 'redecide' (flow) comes first, while the flow still carries its admission verdict.
   */
  redecide(flow: Flow, decision: Decision, enforced: boolean): void {
    this.emit('redecide', flow);
    flow.applyDecision(decision, enforced);
  }

  /** The address actually dialled; computes the Community ID. */
  setDestinationIp(flow: RoutedFlow, ip: string): void {
    flow.destination = { ...flow.destination, ip };
    flow.resetCommunityId();
  }

  /**
   * One more destination relayed to by a flow that relays to several (a SOCKS5 UDP association):
   * its own counters and budget, which the detectors judge (flow.ts, FlowLeg). Returns the flow's
   * newest leg instead when the gateway holds MAX_LIVE_LEGS (its `destination` then is another's).
   */
  addLeg(flow: RoutedFlow, destination: KnownDestination, matchedRule: MatchedRule | null): FlowLeg {
    flow.legs ??= [];
    const legs = flow.legs;
    // Past MAX_LIVE_LEGS gateway-wide, a new destination shares its association's newest leg (judged
    // on their bytes together, never fewer): each leg is an entry in the detectors' tracked flows, and
    // unbounded legs would push other identities' live flows out of it (their bytes then counted twice).
    const newest = legs[legs.length - 1];
    if (newest !== undefined && this.liveLegs >= this.maxLiveLegs) return newest;
    this.liveLegs++;
    const leg: FlowLeg = {
      key: `${flow.id}#${legs.length}`,
      destination,
      startedAt: this.now(),
      bytesOut: 0,
      bytesIn: 0,
      budgetOut: Number.POSITIVE_INFINITY,
      onBudget: null,
      sweptBytes: 0,
      matchedRule,
      isRefusedByPolicy: false,
    };
    legs.push(leg);
    return leg;
  }

  /** Mark the upstream dial as successful. */
  markConnected(flow: Flow): void {
    flow.isConnected = true;
  }

  /**
   * Mark a flow the gateway answered itself as the final recipient (Max-Forwards 0): not connected,
   * no Community ID (nothing dialled). Its record then reads `closed`, `connected: false`.
   */
  markAnsweredHere(flow: Flow): void {
    flow.isAnsweredHere = true;
  }

  /** Replace the authenticated identity of a live flow (user/host/roles); keeps the process. */
  setIdentity(flow: Flow, identity: Flow['identity']): void {
    flow.identity = identity.process ? identity : { ...identity, process: flow.identity.process };
  }

  /**
   * Attach a process to the live flow whose client socket is ip:port over `transport`, or remember
   * it briefly for a flow that has not opened yet (`stillValid`, if given, is asked when that flow
   * opens: a report its reporter no longer speaks for names nothing). Returns the live flow at the
   * address, if any: its process is this one unless it had one already, which is kept (SPEC §7: the
   * first to name a flow's own socket, agent report or local attribution, stands; the caller compares
   * and tells of a disagreement). Only a UDP association named by its control connection takes its
   * datagram socket's report over it.
   */
  attribute(ip: string, port: number, transport: ClientTransport, process: ProcessInfo, stillValid: (() => boolean) | null = null, remote: SocketEnd | null = null): Flow | null {
    const ck = clientKey(transport, ip, port);
    // The TCP control connection of a SOCKS5 UDP association (RFC 1928 §7: open for the
    // association's life, in practice held by the process that sends its datagrams). Agents
    // rarely see the datagram socket itself: an unconnected one has no remote address to tell
    // it is the gateway's. The datagram socket's own report, when it comes, is the one the bytes
    // come from: never replaced by the control connection's.
    const controlled = transport === 'tcp' && this.byControl.size > 0 ? this.liveAt(this.byControl, ck) : undefined;
    let flow = this.liveAt(this.byClient, ck);
    let association = flow === undefined ? controlled : undefined;
    // Several live sockets at the client address (each to another end): the one connected to the
    // report's remote end, if any is; else the newest, as when the address is translated.
    if (remote !== null && (this.sharedClient.has(ck) || (flow !== undefined && controlled !== undefined)) && !reaches(flow?.endpoint, remote)) {
      const other = this.sharedClient.get(ck)?.findLast((id) => reaches(this.active.get(id)?.endpoint, remote));
      const shared = other === undefined ? undefined : this.active.get(other);
      if (shared?.state === 'active') flow = shared;
      else if (controlled !== undefined && reaches(controlled.controlEndpoint, remote)) [flow, association] = [undefined, controlled];
    }
    if (flow === undefined) {
      if (association !== undefined) {
        if (association.identity.process) return association;
        association.identity = withProcess(association.identity, process);
        association.isNamedByControl = true;
        this.emit('attributed', association);
        return association;
      }
      this.pendingProcess.set(ck, { process, stillValid, at: Date.now() });
      return null;
    }
    if (flow.identity.process && !flow.isNamedByControl) return flow;
    flow.identity = withProcess(flow.identity, process);
    flow.isNamedByControl = false;
    // Not remembered for later flows of this address: the next one may be another connection from a
    // reused port. Later requests of the same HTTP keep-alive connection take it from the
    // connection's earlier flow (http-proxy.ts).
    this.emit('attributed', flow);
    return flow;
  }

  /**
   * A flow at client address `ck` closed: `id` out of the older ones, or (null) the one byClient
   * named, whose place the newest older one still live takes.
   */
  private unshare(ck: string, id: string | null): void {
    const shared = this.sharedClient.get(ck);
    if (shared === undefined) return;
    if (id !== null) {
      const at = shared.indexOf(id);
      if (at >= 0) shared.splice(at, 1);
    } else {
      // Newest first; every id left is live (a flow's close takes it out), the check is a guard.
      for (let next = shared.pop(); next !== undefined; next = shared.pop()) {
        if (this.active.get(next)?.state !== 'active') continue;
        this.byClient.set(ck, next);
        break;
      }
    }
    if (shared.length === 0) this.sharedClient.delete(ck);
  }

  /** The live flow `index` holds under `key`, if any. */
  private liveAt(index: ReadonlyMap<string, string>, key: string): Flow | undefined {
    const id = index.get(key);
    const flow = id === undefined ? undefined : this.active.get(id);
    return flow?.state === 'active' ? flow : undefined;
  }

  /**
   * The report kept for a flow not yet open at `key`, removed (consumed), if any, if its reporter
   * still speaks for the address, and if it did not arrive before the flow's connection was taken
   * (`connectedAt`, less a grace): such a one was about an earlier connection from the port, which
   * ended before the report came. Either is dropped unused.
   */
  private takePending(key: string, connectedAt: number | undefined): ProcessInfo | undefined {
    const p = this.pendingProcess.get(key);
    if (p === undefined) return undefined;
    this.pendingProcess.delete(key);
    if (connectedAt !== undefined && connectedAt > p.at + REPORT_BEFORE_CONNECTION_GRACE_MS) return undefined;
    return p.stillValid === null || p.stillValid() ? p.process : undefined;
  }

  /**
   * Attach the process a local lookup found after admission stopped waiting for it to the flow it
   * was made for, if that flow is still live and no one has named its process meanwhile (its record
   * says `attributedLate`). The detectors judge it then ('attributed'). Never remembered for a later
   * flow of the address: the lookup was about this flow's socket. Returns whether it was attached.
   */
  attributeLate(flow: Flow, process: ProcessInfo): boolean {
    if (flow.state !== 'active' || flow.identity.process) return false;
    flow.identity = withProcess(flow.identity, process);
    flow.isAttributedLate = true;
    this.emit('attributed', flow);
    return true;
  }

  /** Close a flow once, write its record, keep it for the admin API. Idempotent. */
  close(flow: Flow, reason: string): void {
    if (flow.state === 'closed') return;
    flow.state = 'closed';
    flow.closeReason = reason;
    const explainAtClose = flow.explainAtClose;
    flow.explainAtClose = null;
    explainAtClose?.(flow);
    flow.closeSeq = this.closeSeq++;
    // The closed flow stays in the admin API's ring; it must not keep its sockets and handlers alive.
    flow.abort = null;
    if (flow.dialling !== null && flow.dialling.isLookup !== true) flow.wasDialling = true;
    flow.dialling = null;
    flow.onBudget = null;
    flow.endedAt = this.now();
    if (flow.bytesOut + flow.bytesIn !== flow.lastSampleBytes) flow.lastActivityAt = flow.endedAt;
    this.active.delete(flow);
    // Its sockets are not kept past its life (a closed flow may stay listed).
    flow.endpoint = null;
    flow.controlEndpoint = null;
    const ck = flow.clientKey;
    if (this.byClient.get(ck) === flow.id) {
      this.byClient.delete(ck);
      if (this.sharedClient.size > 0) this.unshare(ck, null);
    } else if (this.sharedClient.size > 0) this.unshare(ck, flow.id);
    if (flow.controlKey !== '' && this.byControl.get(flow.controlKey) === flow.id) this.byControl.delete(flow.controlKey);
    const key = flow.limitKey;
    const n = (this.perIdentity.get(key) ?? 1) - 1;
    if (n <= 0) this.perIdentity.delete(key);
    else this.perIdentity.set(key, n);
    this.remember(flow);
    this.totalClosed++;
    if (flow.isRecordSkipped) this.skippedRecords++;
    else if (!this.sink.isDiscarding) this.record(flow, flow.endedAt, false);
    this.emit('close', flow);
    // The detectors have folded each destination's bytes ('close'); the admin API's ring keeps the
    // record's totals, not up to 4,096 destinations' counters and budget closures.
    if (flow.legs !== null) this.liveLegs -= flow.legs.length;
    flow.legs = null;
  }

  /**
   * Tear a live flow down now (detector kill, admin DELETE, the drain's end). Returns false if it is
   * not live. A flow still dialling has its connecting socket destroyed (its dial fails with
   * KILLED_WHILE_DIALLING; the listener answers the client what the kill means, reject.ts mapKill).
   */
  kill(id: string, reason: string): boolean {
    const flow = this.active.get(id);
    if (!flow) return false;
    const abort = flow.abort;
    const dialling = flow.dialling;
    this.close(flow, reason);
    abort?.(reason);
    // Connecting, or a parent's handshake: its dial listens for the error and fails. Dialled, its
    // tunnel not started: nobody listens yet, a plain destroy (the listener finds the flow closed).
    // A tunnel's abort has reset its socket already: destroying it again does nothing.
    if (dialling !== null) dialling.destroy(dialling.listenerCount('error') > 0 ? KILLED_WHILE_DIALLING : undefined);
    return true;
  }

  /**
   * The client left (a reset, or its socket closed) while its flow was admitted or dialled, before
   * any tunnel: the flow ends `client-reset` now, as a kill does (a connecting socket destroyed, so
   * nothing reaches the destination; a lookup's late answer unused, admission's killedMeanwhile).
   * The client gave up, not the destination: no failed attempt (outcomeOfUnconnected). A flow
   * already closed is left as it is.
   */
  clientLeft(flow: Flow): void {
    if (flow.state !== 'closed') this.kill(flow.id, 'client-reset');
  }

  get(id: string): Flow | undefined {
    return this.active.get(id) ?? this.closed.find((f) => f.id === id);
  }

  get activeCount(): number {
    return this.active.size;
  }

  /** Read-only view of the live flows (the detectors' input). */
  activeFlows(): ReadonlyMap<string, Flow> {
    return this.active;
  }

  /** Records matching a filter, newest first (live flows first): the first page of a walk (page). */
  list(filter: FlowFilter = {}): FlowRecord[] {
    return this.walk(filter, this.walkStart()).flows;
  }

  /**
   * One page of GET /v1/flows: the first page of a walk without `after`, else the page after the one
   * whose `next` it is (Walk). Refused when `after` is no cursor this table gave. O(kept flows), as
   * list() was: the live flows are copied to walk them newest first; the flows closed since the page
   * before are collected from the ring (keepClosed bounds them).
   */
  page(query: FlowPageQuery): FlowPage {
    const start: Walk | null = query.after === undefined ? this.walkStart() : this.parseCursor(query.after);
    if (start === null) return { ok: false, message: "after must be a page's next from this gateway (a restart ends a walk)" };
    return { ok: true, ...this.walk(query, start) };
  }

  private walkStart(): Walk {
    return { opened: this.seq, closed: this.closeSeq, handled: this.closeSeq, live: this.seq, at: this.closeSeq };
  }

  /**
   * The page after `from` (Walk), in three steps:
   * 1. the flows not yet listed that closed since the page before (closeSeq `handled` or above,
   *    openSeq below `live`), oldest closed first: they go at the page's end, and take room first;
   * 2. the live part: live flows below `live`, newest opened first, in the room the first step left;
   * 3. once the live part is through (or skipped: state=closed), the closed part below `at`.
   * A state filter selects by the state each flow has now.
   */
  private walk(filter: FlowFilter, from: Walk): { flows: FlowRecord[]; next: string | null } {
    const now = this.now();
    const out: FlowRecord[] = [];
    const limit = filter.limit ?? 100;
    let skip = filter.offset ?? 0;
    let isMore = false;
    const destination = filter.destination ? destinationMatcher(filter.destination) : null;
    const match = (f: Flow): boolean =>
      (!filter.user || f.identity.user === filter.user) &&
      (!filter.host || f.identity.host === filter.host) &&
      (!filter.process || f.identity.process?.name === filter.process) &&
      (destination === null || destination(f.destination.host, f.destination.ip)) &&
      (!filter.verdict || f.verdict === filter.verdict);
    // False when the page already holds `room` flows and this one matches (it is the next page's).
    const take = (f: Flow, room: number): boolean => {
      if (!match(f)) return true;
      if (skip > 0) {
        skip--;
        return true;
      }
      if (out.length >= room) return false;
      out.push(f.toRecord(now));
      return true;
    };
    const next: Walk = { ...from };
    const size = this.closed.length;
    const ringAt = (i: number): Flow => this.closed[(this.closedStart + i) % size] as Flow;
    // 1. Closed since the page before and not reached by the live part: listed after the live flows.
    const closedSince: Flow[] = [];
    for (let i = size - 1; i >= 0; i--) {
      const f = ringAt(i);
      if (f.closeSeq < from.handled) break;
      if (f.openSeq < from.live && match(f)) closedSince.push(f);
    }
    next.handled = this.closeSeq;
    const isClosedListed = filter.state !== 'active';
    const liveRoom = isClosedListed ? Math.max(0, limit - closedSince.length) : limit;
    // 2. The live part.
    let isLiveThrough = from.live === 0;
    if (!isLiveThrough && filter.state !== 'closed') {
      const live = [...this.active.values()];
      let i = live.length - 1;
      while (i >= 0 && (live[i] as Flow).openSeq >= from.live) i--;
      for (; i >= 0; i--) {
        const f = live[i] as Flow;
        // No room: the live part stays where it was (the flows closed since are judged against it).
        if (liveRoom === 0 ? match(f) : !take(f, liveRoom)) break;
        if (liveRoom > 0) next.live = f.openSeq;
      }
      if (i < 0) {
        isLiveThrough = true;
        next.live = 0;
      } else isMore = true;
    }
    if (isClosedListed) {
      for (let j = closedSince.length - 1; j >= 0; j--) {
        const f = closedSince[j] as Flow;
        if (!take(f, limit)) {
          isMore = true;
          // The rest of them are the next page's: it starts at this one's closeSeq, and the live part
          // where it was (it took no room: liveRoom 0), which the rest are judged against again.
          next.handled = f.closeSeq;
          next.live = from.live;
          break;
        }
      }
      // 3. The closed part.
      if (isLiveThrough || filter.state === 'closed') {
        for (let i = size - 1; i >= 0; i--) {
          const f = ringAt(i);
          if (f.closeSeq >= from.at) continue;
          if (!take(f, limit)) {
            isMore = true;
            break;
          }
          next.at = f.closeSeq;
        }
      }
    }
    return { flows: out, next: isMore && limit > 0 ? this.cursorOf(next) : null };
  }

  /** The opaque text of a walk's place (CURSOR). */
  private cursorOf(w: Walk): string {
    return [this.idPrefix, w.opened, w.closed, w.handled, w.live, w.at].map((v) => (typeof v === 'number' ? v.toString(36) : v)).join('.');
  }

  /** The walk a cursor names, or null when this table gave no such cursor (another run's, or made up). */
  private parseCursor(text: string): Walk | null {
    const m = CURSOR.exec(text);
    if (m === null || m[1] !== this.idPrefix) return null;
    const [opened, closed, handled, live, at] = (m[2] as string).slice(1).split('.').map((v) => Number.parseInt(v, 36)) as [number, number, number, number, number];
    const isValid = opened <= this.seq && closed <= opened && closed <= handled && handled <= this.closeSeq && live <= opened && at <= closed;
    return isValid ? { opened, closed, handled, live, at } : null;
  }

  /** Start the periodic sweep (activity sampling, interim records, 'sweep' event). */
  start(sampleIntervalMs = this.sampleIntervalMs, interimSec?: number): void {
    this.sampleIntervalMs = sampleIntervalMs;
    if (interimSec !== undefined) this.interimMs = interimSec * 1000;
    this.stop();
    this.timer = setInterval(() => this.sweep(), this.sampleIntervalMs);
    this.timer.unref();
  }

  /**
   * A reload's sweep timing (detection.sampleIntervalMs, flowLog.interimSec): interim records follow
   * the new interval from the next sweep; a running sweep is restarted only if its interval changed.
   */
  retime(sampleIntervalMs: number, interimSec: number): void {
    this.interimMs = interimSec * 1000;
    if (this.timer !== null && sampleIntervalMs !== this.sampleIntervalMs) this.start(sampleIntervalMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One sweep: O(active flows). Public so replay and tests can drive it with a virtual clock. */
  sweep(now = this.now()): void {
    for (const flow of this.active.values()) {
      const bytes = flow.bytesOut + flow.bytesIn;
      if (bytes !== flow.lastSampleBytes) {
        flow.lastSampleBytes = bytes;
        flow.lastActivityAt = now;
      }
      if (this.interimMs > 0 && now - flow.lastInterimAt >= this.interimMs && !this.sink.isDiscarding) {
        flow.lastInterimAt = now;
        this.record(flow, now, true);
      }
    }
    if (this.pendingProcess.size > 0) this.pendingProcess.purgeStale();
    this.emit('sweep', now, this.active);
  }

  /** Hand a record to the sink, as a Flow if it takes one (no record object built). */
  private record(flow: Flow, now: number, intermediate: boolean): void {
    if (this.sink.writeFlow) this.sink.writeFlow(flow, now, intermediate);
    else this.sink.write(flow.toRecord(now, intermediate));
  }

  private remember(flow: Flow): void {
    if (this.keepClosed <= 0) return;
    if (this.closed.length < this.keepClosed) {
      this.closed.push(flow);
      return;
    }
    this.closed[this.closedStart] = flow;
    this.closedStart = (this.closedStart + 1) % this.keepClosed;
  }
}
