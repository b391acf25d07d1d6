/**
 * DetectionState: the per-identity sliding windows and the destination baselines the detectors
 * read. It is stateful (the gateway owns one instance, the replay one per run) but never reads a
 * clock: every call takes `now`. Memory is bounded by least-recently-used maps sized from
 * `detection.maxTrackedIdentities` / `maxTrackedDestinations`. Baselines (destination first-seen,
 * hourly upload volumes) serialise to JSON so the gateway can persist them to `state.path`.
 *
 * Keys (research §3): identity = `host|user|process`; per destination = identity + registrable
 * domain. `observe()` turns flow snapshots into window updates with per-flow delta accounting, so
 * a flow may be passed on every sweep (live) and once more when it closes.
 */
import { isIP } from 'node:net';
import { classifyAddress } from '../address.ts';
import type { Config } from '../config.ts';
import type { Identity, ReasonCode, Verdict } from '../types.ts';
import { MODIFIER_DEFAULTS } from './defaults.ts';
import { addressKey, identityKeyOf, registrableDomain, viewKey } from './match.ts';
import type { BehaviourDetector, Finding, FlowDestinationView, FlowView } from './types.ts';
import { BoundedMap, CountedWindow, DistinctWindow, evictionBatch, evictOldest, WindowSum, intervalJitter } from './windows.ts';

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const BUCKET_MS = 5_000;
const MAX_DESTS_PER_IDENTITY = 4096;
const MAX_FAILED_KEYS = 100_000;
/** Distinct connected address:port pairs per identity in the port fan-out hour: every port of one host. */
const MAX_PORT_KEYS = 65_536;
const HOURLY_KEEP = 336;
const NONE: readonly BehaviourDetector[] = Object.freeze([]); // 14 days of hourly buckets (Sentinel / research §3)

export interface DestWindows {
  /** Bytes to the domain's hosts that are not approved upload destinations (what split-upload sums). */
  out: WindowSum;
  in: WindowSum;
  /** Flows that began sending to those hosts, counted when their first byte out is folded. */
  uploads: WindowSum;
  /** Recent connection start times (beacon regularity). */
  starts: number[];
  /** Distinct hours (epoch hour numbers) with a connection start, most recent 48. */
  hours: number[];
  /**
   * The flows that sent bytes here, each with when it last did, oldest first (the most recent
   * MAX_UPLOADERS_PER_DEST): what `an0080.split-upload` names when the window crosses.
   */
  uploaders: Array<{ id: string; atMs: number }>;
}

/** Flow ids kept per destination for the split-upload alert (a window of more names the latest). */
const MAX_UPLOADERS_PER_DEST = 64;

/** Flow ids that sent bytes to `d` since `sinceMs`, oldest first. */
export function uploadersSince(d: DestWindows, sinceMs: number): string[] {
  const ids: string[] = [];
  for (const u of d.uploaders) if (u.atMs >= sinceMs) ids.push(u.id);
  return ids;
}

/**
 * Flow ids that sent bytes to any non-approved destination of the identity since `sinceMs`, the
 * latest `max` of them, oldest first (what the 24 h upload total names).
 */
export function identityUploadersSince(w: IdentityWindows, sinceMs: number, max = MAX_UPLOADERS_PER_DEST): string[] {
  const all: Array<{ id: string; atMs: number }> = [];
  for (const d of w.perDest.values()) for (const u of d.uploaders) if (u.atMs >= sinceMs) all.push(u);
  all.sort((a, b) => a.atMs - b.atMs);
  const ids: string[] = [];
  const seen = new Set<string>();
  for (let i = all.length - 1; i >= 0 && ids.length < max; i--) {
    const id = all[i]!.id;
    if (!seen.has(id)) {
      seen.add(id);
      ids.push(id);
    }
  }
  return ids.reverse();
}

/**
 * Note that flow `id` sent bytes to `d` at `atMs`. `isNew`: its first bytes there (most flows send
 * once, when they end), so it is not in the list and no search is needed.
 */
function noteUploader(d: DestWindows, id: string, atMs: number, isNew: boolean): void {
  const list = d.uploaders;
  const i = isNew ? -1 : list.findLastIndex((u) => u.id === id);
  if (i === list.length - 1 && i >= 0) {
    (list[i] as { atMs: number }).atMs = atMs;
    return;
  }
  if (i >= 0) list.splice(i, 1);
  else if (list.length >= MAX_UPLOADERS_PER_DEST) list.shift();
  // The first entry makes the list at its size (a push would grow it to V8's 17 slots at once).
  if (list.length === 0) d.uploaders = [{ id, atMs }];
  else list.push({ id, atMs });
}

/**
 * An identity's failed attempts (the `an0081.scan` windows), made at its first failed attempt: most
 * identities never have one, and these seven structures were a sixth of each identity's memory.
 */
export class FailedAttempts {
  /** Fast scan window: failed `ip:port` → attempt time; `perIp` counts distinct ports per ip. */
  readonly fastFailed = new CountedWindow(MAX_FAILED_KEYS);
  readonly perIp = this.fastFailed.counts;
  /** The keys of `fastFailed` the gateway refused by policy (outcome `denied`), for the evidence. */
  readonly fastDenied = new DistinctWindow<undefined>(MAX_FAILED_KEYS);
  /** Slow scan sets: reset after `slowResetSec` without a failed attempt. */
  slowExternal = new Set<string>();
  slowInternal = new Set<string>();
  slowLastMs = Number.NEGATIVE_INFINITY;
  /** When the current slow run began (the first failed attempt after a `slowResetSec` pause). */
  slowSinceMs = Number.NEGATIVE_INFINITY;
  failedPorts = new Set<number>();
  /** The latest failed attempts (flow id, when it was made), oldest first, for the alert's flowIds. */
  recentFailed: Array<{ id: string; atMs: number }> = [];
}

/** Windows of one `host|user|process` identity. */
export class IdentityWindows {
  identity: Identity;
  clientIp: string | undefined;
  /** The key it is tracked under (the identities' and hourly volumes' maps share this one string). */
  readonly key: string;
  /** The scan detector's failed-attempt windows, null until the identity's first failed attempt. */
  failed: FailedAttempts | null = null;
  /** Distinct successful destinations (host or ip) in the last hour (D3c). */
  readonly distinctHour = new DistinctWindow<undefined>(100_000);
  /**
   * Port fan-out (D3c's second rule): connected `ip port` → start time over the last hour (at most
   * MAX_PORT_KEYS, the oldest dropped first); `portsPerIp` counts its distinct ports per address.
   */
  readonly connectedPorts = new CountedWindow(MAX_PORT_KEYS);
  readonly portsPerIp = this.connectedPorts.counts;
  /**
   * Addresses that got a new port since the sweep last looked: only these can have crossed. null
   * when none (the sweep drops the set it looked at, as clearing it would replace its table).
   */
  portsGrown: Set<string> | null = null;
  /** Distinct registrable domains over the proxyjack window, with their first contact in it. */
  readonly domains = new DistinctWindow<number>(100_000);
  readonly out = new WindowSum(BUCKET_MS, HOUR_MS);
  readonly in = new WindowSum(BUCKET_MS, HOUR_MS);
  readonly dayOutUnapproved = new WindowSum(60_000, DAY_MS);
  readonly perDest = new Map<string, DestWindows>();

  constructor(key: string, identity: Identity, clientIp: string | undefined) {
    this.key = key;
    this.identity = identity;
    this.clientIp = clientIp;
  }

  /** The failed-attempt windows, made at the first failed attempt. */
  failedAttempts(): FailedAttempts {
    this.failed ??= new FailedAttempts();
    return this.failed;
  }

  dest(domain: string): DestWindows {
    let d = this.perDest.get(domain);
    if (!d) {
      // The oldest destinations go a batch at a time (see evictionBatch in windows.ts).
      if (this.perDest.size >= MAX_DESTS_PER_IDENTITY) evictOldest(this.perDest, evictionBatch(MAX_DESTS_PER_IDENTITY), null);
      d = { out: new WindowSum(BUCKET_MS, HOUR_MS), in: new WindowSum(BUCKET_MS, HOUR_MS), uploads: new WindowSum(BUCKET_MS, HOUR_MS), starts: [], hours: [], uploaders: [] };
      this.perDest.set(domain, d);
    }
    return d;
  }
}

/**
 * How a flow the gateway refused at admission is folded: `denied` — a failed attempt at that address
 * for `an0081.scan`, as a refused dial is — when policy refused the address itself: `deny-range`
 * (decided on the address that would have been dialled: an internal sweep, the metadata address)
 * or `not-allowlisted` for an address the client named (an IP literal). Else `blocked`, counted
 * nowhere: a name the allowlist refused before any lookup has no address, and a browser under a
 * tight allowlist asks for dozens of names a page; the gateway's refusals of the identity itself
 * (detector, quarantine, rate limit, authentication) would count a quarantined scanner's retries
 * or a client over its rate again and again.
 */
export function outcomeOfRefusal(reason: ReasonCode | null, destination: FlowDestinationView): 'denied' | 'blocked' {
  if (destination.ip === null) return 'blocked';
  if (reason === 'deny-range') return 'denied';
  return reason === 'not-allowlisted' && destination.host === destination.ip ? 'denied' : 'blocked';
}

/**
 * The closeReasons that are the destination's answer to a dial (or the parent proxy's word about it:
 * SOCKS5 0x03-0x06): the only ends of a flow that never connected which `an0081.scan` counts as a
 * failed attempt. `connection-refused` is the destination refusing; the others a dial that got no answer.
 * A destination's reset before any payload is one too (`upstream-reset`, see `isResetBeforeData`).
 */
const DIAL_FAILURES: ReadonlyMap<string, 'refused' | 'failed'> = new Map([
  ['connection-refused', 'refused'],
  ['unreachable', 'failed'],
  ['connect-timeout', 'failed'],
]);

/** What a flow that never connected says about its destination, read from its record's fields. */
export interface UnconnectedFlow {
  readonly verdict: Verdict;
  readonly reason: ReasonCode | null;
  readonly closeReason: string | null;
  readonly destination: FlowDestinationView;
  /** Payload bytes either way (absent: none, as for any flow that never connected). */
  readonly bytesOut?: number;
  readonly bytesIn?: number;
}

/**
 * The destination reset the connection before any data went either way, during the dial or after it
 * connected (research D3: "reset before any data" is a failed attempt): a port that accepts and
 * resets at once answers a scan as a closed one does. A reset after payload moved ends a connection
 * (an upload cut short is still judged as one).
 */
export function isResetBeforeData(flow: Pick<UnconnectedFlow, 'closeReason' | 'bytesOut' | 'bytesIn'>): boolean {
  return flow.closeReason === 'upstream-reset' && (flow.bytesOut ?? 0) === 0 && (flow.bytesIn ?? 0) === 0;
}

/**
 * How a flow that ended without connecting is folded, the one rule the gateway's detection engine and
 * the replay (`egressgate replay`, flow logs and scenarios) share:
 * - refused (verdict block) by policy, quarantine or a detector, or in monitor mode relayed as
 *   would-block for one of these: as enforce mode refuses it (`outcomeOfRefusal`), so monitor mode
 *   counts what enforce mode counts and no more (a failed dial to a name enforce mode refuses is none);
 * - else a dial the destination failed (`DIAL_FAILURES`, or its reset before any payload:
 *   `isResetBeforeData`): `refused` / `failed`, a failed attempt;
 * - else `blocked`, counted nowhere: the gateway or the client ended it before the destination
 *   answered (drain, admin DELETE, the client leaving, a fatal error, the flow log failing, a parent
 *   proxy's own failure, no descriptor left, a Via loop), or there was no address (DNS failed:
 *   `destination.ip` null, which `outcomeOfRefusal` and the scan windows also skip).
 */
export function outcomeOfUnconnected(flow: UnconnectedFlow): 'refused' | 'failed' | 'denied' | 'blocked' {
  if (flow.verdict !== 'allow') return outcomeOfRefusal(flow.reason, flow.destination);
  if (flow.destination.ip === null || flow.closeReason === null) return 'blocked';
  if (isResetBeforeData(flow)) return 'failed';
  return DIAL_FAILURES.get(flow.closeReason) ?? 'blocked';
}

/**
 * A flow monitor mode relays as `would-block` because policy refuses it (`not-allowlisted`; deny-range
 * is refused in every mode): enforce mode refuses it at admission, before any dial or detector.
 */
export function isRefusedByPolicy(flow: { readonly verdict: Verdict; readonly reason: ReasonCode | null }): boolean {
  return flow.verdict === 'would-block' && (flow.reason === 'not-allowlisted' || flow.reason === 'deny-range');
}

/**
 * How a flow to one destination is folded once it ended, the rule the engine and the replay share: a
 * flow policy refuses (`isRefusedByPolicy`) is enforce mode's refusal of it, connected or not
 * (`outcomeOfRefusal`: an IP literal is a failed attempt at that address, a name counts nowhere), so
 * monitor mode counts what enforce mode counts; else a connected flow is `closed` (`failed` when the
 * destination reset it before any payload: `isResetBeforeData`), and one that never connected
 * `outcomeOfUnconnected`.
 */
export function outcomeOfEnded(flow: UnconnectedFlow, isConnected: boolean): 'closed' | 'refused' | 'failed' | 'denied' | 'blocked' {
  if (isRefusedByPolicy(flow)) return outcomeOfRefusal(flow.reason, flow.destination);
  if (!isConnected) return outcomeOfUnconnected(flow);
  return flow.verdict === 'allow' && flow.destination.ip !== null && isResetBeforeData(flow) ? 'failed' : 'closed';
}

interface TrackedFlow {
  out: number;
  in: number;
  started: boolean;
  failed: boolean;
  /** Its first byte out to a non-approved host is counted in its destination's `uploads`. */
  uploaded: boolean;
  /**
   * The identity key the flow was folded under. An agent's report names a live flow's process (and
   * so its user) after it opened; from then on the flow counts wholly for the identity it names.
   */
  idKey: string | null;
}

/** What changed in one `observe()` call: only these keys can have crossed a threshold. */
/** How `observe` reads the policy: the scan detector's idle reset, and the approved upload destinations. */
export interface ObserveOptions {
  readonly slowResetMs: number;
  readonly isApproved: (host: string) => boolean;
}

/** A result with nothing changed yet. */
export function emptyObserveResult(): ObserveResult {
  return { active: new Set(), dests: new Set(), failed: new Set(), started: new Set() };
}

export interface ObserveResult {
  /** Identities with new bytes or new destinations. */
  readonly active: Set<string>;
  /** `idKey\0domain` pairs with new bytes. */
  readonly dests: Set<string>;
  /** Identities with new failed attempts. */
  readonly failed: Set<string>;
  /** Identities with newly connected flows (new destinations possible). */
  readonly started: Set<string>;
}

/**
 * What the connect-time detectors and the scoring modifiers read of the state: a DetectionState,
 * or its `readOnly()` view.
 */
export interface DetectionReader {
  recentDetectors(idKey: string, now: number): readonly BehaviourDetector[];
  isRare(host: string, now: number, withinDays: number): boolean;
  isLongKnown(host: string, now: number): boolean;
  isBeacon(idKey: string, host: string): boolean;
}

/** DetectionState.footprint(): counts of the per-identity structures. */
export interface StateFootprint {
  identities: number;
  /** Identities holding failed-attempt windows (made at an identity's first failed attempt). */
  failedAttempts: number;
  /** Destination domains tracked, over all identities. */
  destinations: number;
  /** Buckets of every byte and upload window, identities' and destinations'. */
  buckets: number;
  /** Entries of the destinations' start, hour and uploader lists. */
  listEntries: number;
  /** Identities with addresses grown a port since the last sweep. */
  portsGrown: number;
  /** Identities with hourly upload volumes (the persisted baseline). */
  hourlyIdentities: number;
}

export interface DetectionStateOptions {
  maxTrackedIdentities?: number;
  maxTrackedDestinations?: number;
  /** When learning began: rare-destination modifiers stay silent until a full rarity window passed. */
  learningStartedAtMs: number;
}

/** Persisted baselines (SPEC §3 `state.path`). */
export interface BaselineJson {
  version: 1;
  learningStartedAtMs: number;
  firstSeen: Array<[string, number]>;
  hourlyOut: Array<[string, Array<[number, number]>]>;
}

/**
 * Why `json` is not baselines this build can restore (`BaselineJson`, version 1), or null when it is:
 * what the gateway logs about a `state.path` file it starts fresh from.
 */
export function baselineJsonProblem(json: unknown): string | null {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return 'not a JSON object';
  const j = json as Partial<BaselineJson>;
  if (j.version !== 1) return `version ${JSON.stringify(j.version) ?? 'missing'}, this build reads version 1`;
  if (typeof j.learningStartedAtMs !== 'number') return 'learningStartedAtMs is not a number';
  return null;
}

export class DetectionState {
  readonly learningStartedAtMs: number;
  // A bounded map, like the per-identity maps below: its `get` skips the reordering for the key it
  // handed out last (a busy identity is looked up once per flow).
  private readonly identities: BoundedMap<string, IdentityWindows>;
  private readonly firstSeen: BoundedMap<string, number>;
  private readonly hourlyOut: BoundedMap<string, Map<number, number>>;
  // Plain bounded maps: these empty often, which costs O(max) per emptying in lru-cache.
  private readonly tracked = new BoundedMap<string, TrackedFlow>(500_000);
  private readonly done = new BoundedMap<string, true>(200_000);
  private readonly emitted = new BoundedMap<string, { level: number; rank: number; atMs: number; ids: Set<string> }>(200_000);
  private readonly recent: BoundedMap<string, Map<BehaviourDetector, number>>;
  private reader: DetectionReader | null = null;

  constructor(opts: DetectionStateOptions) {
    this.learningStartedAtMs = opts.learningStartedAtMs;
    const maxIds = Math.max(16, opts.maxTrackedIdentities ?? 100_000);
    this.identities = new BoundedMap(maxIds);
    this.firstSeen = new BoundedMap(Math.max(16, opts.maxTrackedDestinations ?? 1_000_000));
    this.hourlyOut = new BoundedMap(maxIds);
    this.recent = new BoundedMap(maxIds);
  }

  /** A state sized from the config (`detection.maxTrackedIdentities` / `maxTrackedDestinations`). */
  static forConfig(config: Config, now: number): DetectionState {
    return new DetectionState({
      maxTrackedIdentities: config.detection.maxTrackedIdentities,
      maxTrackedDestinations: config.detection.maxTrackedDestinations,
      learningStartedAtMs: now,
    });
  }

  /**
   * What the per-identity windows hold, counted by walking them (O(identities + their entries): for
   * tests and diagnostics, never a hot path). Each count is one kind of structure the memory scales
   * with: an identity with no failed attempt holds no `failedAttempts`, an idle window no buckets.
   */
  footprint(): StateFootprint {
    const fp: StateFootprint = { identities: 0, failedAttempts: 0, destinations: 0, buckets: 0, listEntries: 0, portsGrown: 0, hourlyIdentities: this.hourlyOut.size };
    for (const [, w] of this.identities.entries()) {
      fp.identities++;
      if (w.failed !== null) fp.failedAttempts++;
      if (w.portsGrown !== null) fp.portsGrown++;
      fp.buckets += w.out.bucketCount + w.in.bucketCount + w.dayOutUnapproved.bucketCount;
      for (const d of w.perDest.values()) {
        fp.destinations++;
        fp.buckets += d.out.bucketCount + d.in.bucketCount + d.uploads.bucketCount;
        fp.listEntries += d.starts.length + d.hours.length + d.uploaders.length;
      }
    }
    return fp;
  }

  /** Windows of an identity key, if tracked. */
  windows(idKey: string): IdentityWindows | undefined {
    return this.identities.get(idKey);
  }

  private windowsFor(flow: FlowView, idKey: string): IdentityWindows {
    let w = this.identities.get(idKey);
    if (!w) {
      w = new IdentityWindows(idKey, flow.identity, flow.clientIp);
      this.identities.set(idKey, w);
    } else w.identity = flow.identity;
    return w;
  }

  /**
   * Folds flow snapshots into the windows. Byte counts are deltas against the last observation of
   * the same flow id, so live flows may be passed on every sweep. `slowResetMs` is the scan
   * detector's idle reset; `isApproved` tells which destinations the daily upload total ignores.
   * What changed is added to `into` when given (a caller folding flows one at a time between sweeps
   * collects them there), else to a new result.
   */
  observe(
    flows: Iterable<FlowView>,
    now: number,
    opts: ObserveOptions,
    into: ObserveResult = emptyObserveResult(),
  ): ObserveResult {
    for (const f of flows) this.fold(f, now, opts, into, true);
    return into;
  }

  /**
   * Folds one flow that has ended, for a caller that passes each ended flow exactly once (the
   * gateway folds a flow when the flow table closes it, and never again). Unlike `observe`, it
   * keeps no record of finished flows to guard against a second pass.
   */
  observeEnded(f: FlowView, now: number, opts: ObserveOptions, into: ObserveResult): void {
    this.fold(f, now, opts, into, false);
  }

  /**
   * One more destination of a flow that relays to several (a SOCKS5 UDP association), as it is
   * first relayed to: it counts as a new connection would for fan-out, the identity's domains and
   * first-seen, at `f.startedAtMs`. `f` is that destination's view (its `partKey` set): its bytes
   * are folded from its later views, as a live flow's are, and its start is not counted again.
   */
  observeDestination(f: FlowView, into: ObserveResult): void {
    const idKey = identityKeyOf(f.identity, f.clientIp);
    this.noteStart(this.windowsFor(f, idKey), f, registrableDomain(f.destination.host));
    if (f.partKey !== undefined) this.tracked.set(f.partKey, { out: 0, in: 0, started: true, failed: false, uploaded: false, idKey });
    into.active.add(idKey);
    into.started.add(idKey);
  }

  private fold(f: FlowView, now: number, opts: ObserveOptions, result: ObserveResult, isGuarded: boolean): void {
    if (f.outcome === 'blocked') return;
    // One flow's destinations are folded apart (a SOCKS5 UDP association: one view per destination).
    const key = viewKey(f);
    let t = this.tracked.peek(key);
    const isTracked = t !== undefined;
    if (!t) {
      if (isGuarded && this.done.has(key)) return;
      t = { out: 0, in: 0, started: false, failed: false, uploaded: false, idKey: null };
      // A flow seen for the first time as it ends (most short flows) is folded in this one call.
      if (f.endedAtMs === null) this.tracked.set(key, t);
    }
    const idKey = identityKeyOf(f.identity, f.clientIp);
    if (t.idKey !== idKey) {
      // First fold, or a process named since the last one (a late agent report): the new identity
      // gets the flow from its start — its destination, and its bytes so far, now — as it would
      // have had the report come first. The old key keeps what it counted while it was all that
      // was known (bytes sent before the report must not escape the process's windows).
      if (t.idKey !== null) {
        t.out = 0;
        t.in = 0;
        t.started = false;
        t.failed = false;
        t.uploaded = false;
      }
      t.idKey = idKey;
    }
    const domain = registrableDomain(f.destination.host);
    const w = this.windowsFor(f, idKey);
    const connected = f.outcome === 'open' || f.outcome === 'closed';
    if (connected && !t.started) {
      t.started = true;
      this.noteStart(w, f, domain);
      result.active.add(idKey);
      result.started.add(idKey);
    }
    const isFailed = f.outcome === 'failed' || f.outcome === 'refused' || f.outcome === 'denied';
    if (isFailed && !t.failed && f.destination.ip !== null) {
      // DNS failures (no ip) are typos, not scans (research D3). A `denied` attempt counts here and
      // nowhere else: it never connected and carries no bytes.
      t.failed = true;
      this.noteFailed(w, f, opts.slowResetMs);
      result.failed.add(idKey);
    }
    const dOut = f.bytesOut - t.out;
    const dIn = f.bytesIn - t.in;
    if (dOut > 0 || dIn > 0) {
      t.out = f.bytesOut;
      t.in = f.bytesIn;
      // A domain is in the proxyjack window while its flows carry bytes, not only after their connect:
      // a relay keeping its connections to the sites it fetches from open would age out of it. The
      // first contact (`v`, what D4c's new domains count) stays.
      const seen = w.domains.map.get(domain);
      w.domains.touch(domain, now, seen === undefined ? now : seen.v);
      // An approved upload destination's bytes count for the identity (proxyjack, volumes), not in its
      // domain's upload window: other hosts of that domain are not approved with it.
      const isApproved = opts.isApproved(f.destination.host);
      const d = isApproved ? null : w.dest(domain);
      if (dOut > 0) {
        w.out.add(now, dOut);
        if (d) {
          d.out.add(now, dOut);
          noteUploader(d, f.id, now, !t.uploaded);
          if (!t.uploaded) d.uploads.add(now, 1);
          t.uploaded = true;
          w.dayOutUnapproved.add(now, dOut);
        }
        this.addHourly(w.key, now, dOut);
      }
      if (dIn > 0) {
        w.in.add(now, dIn);
        d?.in.add(now, dIn);
      }
      result.active.add(idKey);
      if (d) result.dests.add(`${idKey}\0${domain}`);
    }
    if (f.endedAtMs !== null) {
      if (isTracked) this.tracked.delete(key);
      if (isGuarded) this.done.set(key, true);
    }
  }

  private noteStart(w: IdentityWindows, f: FlowView, domain: string): void {
    const at = f.startedAtMs;
    // Names, not addresses: CDN-hosted sites share addresses, and IP literals are their own name.
    w.distinctHour.touch(isIP(f.destination.host) === 0 ? f.destination.host : addressKey(f.destination.host), at, undefined);
    if (f.destination.ip !== null) {
      // Ports per address, however the client spelt it (a name counts on the address it reached).
      const ip = addressKey(f.destination.ip);
      if (w.connectedPorts.touch(`${ip} ${f.destination.port}`, at, ip)) {
        w.portsPerIp.set(ip, (w.portsPerIp.get(ip) ?? 0) + 1);
        w.portsGrown ??= new Set();
        w.portsGrown.add(ip);
      }
    }
    if (!w.domains.map.has(domain)) w.domains.touch(domain, at, at);
    else w.domains.touch(domain, at, w.domains.map.get(domain)!.v);
    if (!this.firstSeen.has(domain)) this.firstSeen.set(domain, at);
    else this.firstSeen.get(domain); // refresh recency: a destination in use is never evicted first
    const d = w.dest(domain);
    // A list's first entry makes it at its size (a push would grow it to V8's 17 slots at once).
    if (d.starts.length === 0) d.starts = [at];
    else {
      d.starts.push(at);
      if (d.starts.length > 32) d.starts.shift();
    }
    const hour = Math.floor(at / HOUR_MS);
    if (d.hours.length === 0) d.hours = [hour];
    else if (d.hours[d.hours.length - 1] !== hour) {
      d.hours.push(hour);
      if (d.hours.length > 48) d.hours.shift();
    }
  }

  private noteFailed(w: IdentityWindows, f: FlowView, slowResetMs: number): void {
    const a = w.failedAttempts();
    // One host however the client spelt it: `::ffff:7f00:1` and `127.0.0.1` are one host's ports.
    const ip = addressKey(f.destination.ip!);
    const key = `${ip}:${f.destination.port}`;
    const at = f.startedAtMs;
    if (!a.fastFailed.map.has(key)) a.perIp.set(ip, (a.perIp.get(ip) ?? 0) + 1);
    a.fastFailed.touch(key, at, ip);
    if (f.outcome === 'denied') a.fastDenied.touch(key, at, undefined);
    if (at - a.slowLastMs > slowResetMs) {
      a.slowSinceMs = at;
      a.slowExternal = new Set();
      a.slowInternal = new Set();
      a.failedPorts = new Set();
    }
    a.slowLastMs = Math.max(a.slowLastMs, at);
    const internal = classifyAddress(ip) !== null;
    const set = internal ? a.slowInternal : a.slowExternal;
    if (set.size < MAX_FAILED_KEYS) set.add(key);
    if (a.failedPorts.size < 1024) a.failedPorts.add(f.destination.port);
    a.recentFailed.push({ id: f.id, atMs: at });
    if (a.recentFailed.length > 32) a.recentFailed.shift();
  }

  private addHourly(idKey: string, now: number, bytes: number): void {
    let m = this.hourlyOut.get(idKey);
    if (!m) {
      m = new Map();
      this.hourlyOut.set(idKey, m);
    }
    const h = Math.floor(now / HOUR_MS);
    m.set(h, (m.get(h) ?? 0) + bytes);
    if (m.size > HOURLY_KEEP) {
      for (const k of m.keys()) {
        if (k > h - HOURLY_KEEP) break;
        m.delete(k);
      }
    }
  }

  /** First time any identity reached `host`'s registrable domain, or null if never. */
  firstSeenMs(host: string): number | null {
    return this.firstSeenOf(host, false);
  }

  /** `firstSeenMs`; `isPeek` leaves the entry's recency as it was (the read-only view). */
  private firstSeenOf(host: string, isPeek: boolean): number | null {
    const domain = registrableDomain(host);
    return (isPeek ? this.firstSeen.peek(domain) : this.firstSeen.get(domain)) ?? null;
  }

  /** Seeds the baseline (replay, tests, import): `host` known since `atMs` unless known earlier. */
  seedFirstSeen(host: string, atMs: number): void {
    const d = registrableDomain(host);
    const cur = this.firstSeen.get(d);
    if (cur === undefined || atMs < cur) this.firstSeen.set(d, atMs);
  }

  /**
   * Rare destination (D8): first seen within `withinDays`, or never. Silent during the learning
   * period (a fresh gateway would call everything rare).
   */
  isRare(host: string, now: number, withinDays: number): boolean {
    return this.isRareAt(host, now, withinDays, false);
  }

  private isRareAt(host: string, now: number, withinDays: number, isPeek: boolean): boolean {
    if (now - this.learningStartedAtMs < withinDays * DAY_MS) return false;
    const fs = this.firstSeenOf(host, isPeek);
    return fs === null || now - fs <= withinDays * DAY_MS;
  }

  /** Long-known destination: first seen at least `knownAfterDays` ago. */
  isLongKnown(host: string, now: number): boolean {
    return this.isLongKnownAt(host, now, false);
  }

  private isLongKnownAt(host: string, now: number, isPeek: boolean): boolean {
    const fs = this.firstSeenOf(host, isPeek);
    return fs !== null && now - fs >= MODIFIER_DEFAULTS.knownAfterDays * DAY_MS;
  }

  /**
   * D14: regular connection starts from this identity to this destination's domain, seen in at
   * least `beaconMinHours` distinct hours (RITA: a beacon is judged over hours, not minutes).
   */
  isBeacon(idKey: string, host: string): boolean {
    return this.isBeaconAt(idKey, host, false);
  }

  private isBeaconAt(idKey: string, host: string, isPeek: boolean): boolean {
    const d = (isPeek ? this.identities.peek(idKey) : this.identities.get(idKey))?.perDest.get(registrableDomain(host));
    if (!d || d.starts.length < MODIFIER_DEFAULTS.beaconMinConnections) return false;
    if (d.hours.length < MODIFIER_DEFAULTS.beaconMinHours) return false;
    const j = intervalJitter(d.starts.slice(-MODIFIER_DEFAULTS.beaconMinConnections * 2));
    return j !== null && j.meanMs >= MODIFIER_DEFAULTS.beaconMinIntervalSec * 1000 && j.cv <= MODIFIER_DEFAULTS.beaconMaxJitter;
  }

  /** Hourly bytes out of an identity (the D7 baseline), oldest first. */
  hourlyVolumes(idKey: string): Array<[number, number]> {
    return [...(this.hourlyOut.get(idKey) ?? new Map<number, number>()).entries()];
  }

  /** Records that `detector` fired for `idKey` (corroboration of other detectors). */
  noteDetector(idKey: string, detector: BehaviourDetector, now: number): void {
    let m = this.recent.get(idKey);
    if (!m) {
      m = new Map();
      this.recent.set(idKey, m);
    }
    m.set(detector, now);
  }

  /**
   * The reads of the connect-time detectors and their scoring, changing nothing, not even which
   * entries count as recently used (a dry run, `POST /v1/policy/evaluate`, must leave no trace).
   */
  readOnly(): DetectionReader {
    this.reader ??= {
      recentDetectors: (idKey, now) => this.recentDetectors(idKey, now),
      isRare: (host, now, withinDays) => this.isRareAt(host, now, withinDays, true),
      isLongKnown: (host, now) => this.isLongKnownAt(host, now, true),
      isBeacon: (idKey, host) => this.isBeaconAt(idKey, host, true),
    };
    return this.reader;
  }

  /** Detectors that fired for `idKey` within the corroboration window. */
  recentDetectors(idKey: string, now: number): readonly BehaviourDetector[] {
    const m = this.recent.peek(idKey);
    if (!m) return NONE;
    const since = now - MODIFIER_DEFAULTS.corroborationWindowSec * 1000;
    const out: BehaviourDetector[] = [];
    for (const [d, t] of m) if (t >= since) out.push(d);
    return out;
  }

  /**
   * Grouping: true when this finding is new, escalated (higher severity or a stronger action),
   * its last emission is older than the grouping window, or — for block / kill — it names flows
   * not acted on yet (grouping must never spare a new relay flow from its kill). Records it.
   */
  shouldEmit(finding: Finding, level: number, now: number): boolean {
    const rank = { flag: 0, block: 1, kill: 2 }[finding.action];
    const prev = this.emitted.get(finding.key);
    const windowMs = MODIFIER_DEFAULTS.corroborationWindowSec * 1000;
    const hasNewFlows = rank > 0 && prev !== undefined && finding.flowIds.some((id) => !prev.ids.has(id));
    if (prev && !hasNewFlows && now - prev.atMs < windowMs && prev.level >= level && prev.rank >= rank) return false;
    const ids = prev && now - prev.atMs < windowMs ? prev.ids : new Set<string>();
    for (const id of finding.flowIds) if (ids.size < 4096) ids.add(id);
    this.emitted.set(finding.key, { level: Math.max(level, prev?.level ?? 0), rank: Math.max(rank, prev?.rank ?? 0), atMs: now, ids });
    return true;
  }

  /**
   * Forget that the finding `key` acted on `flowId`: its next emission naming the flow is new again.
   * For a flow monitor mode only let run (a would-kill or would-block) whose identity is in enforce
   * mode now (gateway/detection/would-acts.ts): the grouping must not spare it enforce mode's act.
   */
  handBack(key: string, flowId: string): void {
    this.emitted.peek(key)?.ids.delete(flowId);
  }

  /** Baselines as JSON (first-seen destinations, hourly volumes). */
  toJSON(): BaselineJson {
    const hourly: Array<[string, Array<[number, number]>]> = [];
    for (const [k, m] of this.hourlyOut.entries()) hourly.push([k, [...m.entries()]]);
    return {
      version: 1,
      learningStartedAtMs: this.learningStartedAtMs,
      firstSeen: [...this.firstSeen.entries()],
      hourlyOut: hourly,
    };
  }

  /** A state restored from `toJSON()` output; malformed input yields a fresh state. */
  static fromJSON(json: unknown, opts: Omit<DetectionStateOptions, 'learningStartedAtMs'> & { now: number }): DetectionState {
    if (baselineJsonProblem(json) !== null) return new DetectionState({ ...opts, learningStartedAtMs: opts.now });
    const j = json as Partial<BaselineJson> & { learningStartedAtMs: number };
    const state = new DetectionState({ ...opts, learningStartedAtMs: j.learningStartedAtMs });
    for (const e of Array.isArray(j.firstSeen) ? j.firstSeen : []) {
      if (Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number') state.firstSeen.set(e[0], e[1]);
    }
    for (const e of Array.isArray(j.hourlyOut) ? j.hourlyOut : []) {
      if (!Array.isArray(e) || typeof e[0] !== 'string' || !Array.isArray(e[1])) continue;
      const m = new Map<number, number>();
      for (const p of e[1]) if (Array.isArray(p) && typeof p[0] === 'number' && typeof p[1] === 'number') m.set(p[0], p[1]);
      state.hourlyOut.set(e[0], m);
    }
    return state;
  }
}
