/**
 * Step 4 of a SOCKS5 UDP association (socks5-udp.ts): each new destination is admitted once and the
 * answer cached for the association. Up to MAX_ADMITTING destinations are admitted at once, the
 * others queue in order: each name is looked up (needsLookUp, lookUp) side by side with the others,
 * so one whose DNS never answers holds up no other destination; then, as its answer comes, the first
 * destination admitted goes through `admit` (opens the flow; one at a time while no flow is open),
 * later ones through `admitDestination` (a refusal leaves its own refused record). At most
 * MAX_PENDING destinations wait at once; after MAX_REFUSED refused ones the association ends. A
 * destination whose name did not resolve is looked up again for a datagram to it once
 * lookUpAgainAt has passed; failing again, it leaves no second record.
 *
 * One per association, made when it starts; the datagram path calls it only for a datagram to a
 * destination not yet known (newDestination) or refused (judgeAgain).
 */
import { isRefusedByPolicy } from '../../policy/detectors/state.ts';
import type { Identity, MatchedRule, ReasonCode, Verdict } from '../../policy/types.ts';
import { admit, admitDestination, type DestinationAdmission, type LookedUp, lookUp, needsLookUp, type Refused } from '../admission.ts';
import type { GatewayContext } from '../context.ts';
import type { Flow, RoutedFlow } from '../flow/flow.ts';
import { unmapIPv4 } from '../../policy/address.ts';
import { formatAuthority, normaliseHost } from '../protocol/authority.ts';
import { type UdpHeader, udpHeaderHost } from '../protocol/socks5-codec.ts';
import { parentName } from '../upstream/parent-label.ts';
import { loginStands } from '../identity/login-standing.ts';
import type { Downstream, HandshakeResult } from './socks5-handshake.ts';
import type { Destination, DestinationTable } from './socks5-udp-destinations.ts';
import type { HeldShare } from './socks5-udp-ledger.ts';
import type { DropCounts } from './socks5-udp-records.ts';

/** Distinct destinations one association may name; more are dropped (bounded memory). */
const MAX_DESTINATIONS = 4096;
/**
 * Destinations one association may have refused (each leaves its refused record) before it is ended
 * (`refused-destinations`): a sweep of destinations the policy refuses, one datagram each, is a
 * record per datagram, which this bounds; far past what a scan detector needs to see it.
 */
const MAX_REFUSED = 64;
/**
 * Destinations one association may have waiting for admission (MAX_ADMITTING being admitted, the rest
 * queued); past this many the client's own retransmission outlasts the wait, and it may retry later.
 */
const MAX_PENDING = 64;
/**
 * DNS lookups one association's admissions make at once. Each may never answer and hold
 * a resolver waiter with its timer for the resolver's timeout (5 s); the resolver runs one client's
 * lookups a few at a time anyway (a quarter of its slots) and queues the rest, at most 256 per client,
 * so more at once would not answer sooner but would let one association fill its client's share of
 * that queue. 8 lets up to 7 dead names wait out their timeout while the next name is looked up at
 * once. A destination that needs no lookup (an IP literal, a `resolver.hosts` name, a name enforce
 * mode refuses unlooked-up) takes no slot: it is admitted at once whatever names are pending.
 */
const MAX_ADMITTING = 8;
/**
 * The least wait before a name whose lookup failed (`dns-failed`) is looked up again for a later
 * datagram to it; the wait is the resolver's memory of failed names (resolver.negativeCacheTtlSec)
 * when longer, as a lookup sooner would be answered from it. One SERVFAIL or timeout must not make
 * a name unreachable for an association's life (a TCP flow looks its name up on each CONNECT), nor
 * may each datagram to a dead name cost a lookup.
 */
const LOOK_UP_AGAIN_MIN_MS = 1000;

/** What the association gives its admissions: what they read of it, and what they do to it. */
export interface AdmissionHost {
  readonly ctx: GatewayContext;
  readonly down: Downstream;
  readonly hs: HandshakeResult;
  /** The control connection's client address, IPv4-mapped unwrapped. */
  readonly clientIp: string;
  readonly localIp: string;
  readonly dests: DestinationTable;
  readonly held: HeldShare;
  readonly drops: DropCounts;
  /** 0 until known: the request's DST.PORT or the first datagram's source port. */
  clientPort(): number;
  /** The relay's port, 0 before it is bound. */
  relayPort(): number;
  flow(): RoutedFlow | null;
  isEnded(): boolean;
  /** Why the association ended (the record's closeReason), once it has. */
  endReason(): string;
  /** The first destination admitted opened `f`: the association's flow from now on. */
  opened(f: RoutedFlow): void;
  end(reason: string): void;
  forward(dest: Destination, payload: Buffer, offset: number): void;
  releaseHeld(dest: Destination): void;
  dropHeld(): void;
  noteReasons(f: Flow): void;
  /** The association ended with no flow open: write its one record (what end() writes then). */
  recordEnded(): void;
  /** Hold the association's place in its identity's limit again while it has no flow (FlowTable.holdPlace). */
  holdPlace(): void;
  /** Give that place back: the first destination's flow counts instead, from its opening. */
  releasePlace(): void;
}

export class UdpAdmissions {
  /** Destinations waiting for admission (being admitted or queued). */
  pending = 0;
  admitted = 0;
  refusedDestinations = 0;
  /**
   * True while the first destination's `admit` runs: it has opened the association's flow, so an
   * end meanwhile leaves the record to that flow (closed when admit returns), not an empty one.
   */
  isOpening = false;
  /**
   * The first destination's refusal ended the association (endsAssociation): that refusal's record,
   * written by `admit` or the kill, is the association's one record (spec-notes), so end() writes none.
   */
  isRecordedByRefusal = false;
  /** Destinations waiting for their turn to be admitted, in the order they came. */
  private readonly queued: Destination[] = [];
  /** DNS lookups running for admissions now (at most MAX_ADMITTING). */
  private admitting = 0;
  /** The admissions that came while no flow was open, one after another: only one `admit` opens the flow. */
  private opening: Promise<void> = Promise.resolve();

  constructor(private readonly host: AdmissionHost) {}

  /** A datagram to a destination not seen before (its header parsed into `hdr`): kept and admitted, or dropped. */
  newDestination(msg: Buffer, hdr: UdpHeader): void {
    const { dests, held, drops } = this.host;
    if (dests.size >= MAX_DESTINATIONS) {
      drops.overflow++;
      return;
    }
    // Not kept at all when it cannot wait: a later datagram to it is a new destination again.
    if (this.pending >= MAX_PENDING || !held.take(msg.length)) {
      this.host.dropHeld();
      return;
    }
    let host = udpHeaderHost(msg, hdr);
    if (host !== null && hdr.atyp === 0x03) host = normaliseHost(host)?.host ?? null;
    if (host === null) {
      held.release(msg.length);
      drops.malformed++;
      return;
    }
    this.pending++;
    this.queued.push(dests.add(msg, hdr, host));
    this.startAdmissions();
  }

  /**
   * A datagram to a refused destination: judged again when the policy or the runtime mode has
   * changed since it was refused (a new TCP connection would be judged under them: `PUT /v1/mode
   * monitor` must let it through), else dropped (false). Queued as a new destination's first datagram is.
   */
  judgeAgain(dest: Destination, msg: Buffer, hdr: UdpHeader): boolean {
    const { ctx, held } = this.host;
    const isSameJudge = this.isJudgedUnderRunning(dest);
    // Under the same policy, only a name whose lookup failed, and only once its wait is over.
    if (isSameJudge && (dest.lookUpAgainAt === 0 || ctx.flows.now() < dest.lookUpAgainAt)) return false;
    if (this.pending >= MAX_PENDING || !held.take(msg.length)) {
      this.host.dropHeld();
      return true;
    }
    dest.isLookUpRetry = isSameJudge;
    dest.lookUpAgainAt = 0;
    dest.state = 'pending';
    dest.heldBytes = msg.length;
    dest.queue = [msg.subarray(hdr.dataOffset)];
    this.pending++;
    this.queued.push(dest);
    this.startAdmissions();
    return true;
  }

  /** The association ended: admissions not started never will be; those running see it and stop. */
  close(): void {
    this.queued.length = 0;
  }

  /**
   * Start the queued admissions there is room for, oldest first: every one that needs no DNS lookup,
   * and those that do while fewer than MAX_ADMITTING lookups run (queued holds at most MAX_PENDING).
   */
  private startAdmissions(): void {
    const { ctx, hs } = this.host;
    for (let i = 0; i < this.queued.length && !this.host.isEnded(); ) {
      const dest = this.queued[i] as Destination;
      // A login the running policy no longer admits is refused before any lookup (admit, admitDestination).
      const isLookUp = loginStands(hs.username, hs.snapshot, ctx.policy.current()) && needsLookUp(ctx, hs.identity, 'socks5-udp', dest.host, dest.port, { clientIp: this.host.clientIp, since: hs.snapshot });
      if (isLookUp && this.admitting >= MAX_ADMITTING) {
        i++;
        continue;
      }
      this.queued.splice(i, 1);
      dest.judgedUnder = ctx.policy.current();
      dest.judgedOverride = ctx.policy.modeOverride();
      if (isLookUp) this.admitting++;
      this.admitOne(dest, isLookUp)
        .catch((err: unknown) => this.refuseDest(dest, `admission failed: ${String(err)}`))
        .finally(() => {
          if (!isLookUp) return;
          this.admitting--;
          this.startAdmissions();
        });
    }
  }

  /** Look the destination up beside the others (`isLookUp`: needsLookUp), then judge it as its answer comes. */
  private async admitOne(dest: Destination, isLookUp: boolean): Promise<void> {
    const isRetry = dest.isLookUpRetry;
    dest.isLookUpRetry = false;
    const found = isLookUp ? await lookUp(this.host.ctx, dest.host, this.host.clientIp) : undefined;
    if (this.host.isEnded()) return;
    if (isRetry && found?.ip === null && found.dnsError === 'EGW_DNS_FAILED' && this.isJudgedUnderRunning(dest)) {
      // Looked up again and failed again, under the policy that refused it: the same refusal, whose
      // record is written (recordRefusal, admit). Its datagrams dropped and counted; the next wait starts.
      this.dropDest(dest, true);
      return;
    }
    const flow = this.host.flow();
    if (flow !== null) return this.admitLater(flow, dest, found);
    const turn = this.opening.then(() => {
      const f = this.host.flow();
      return f === null ? this.openWith(dest, found) : this.admitLater(f, dest, found);
    });
    this.opening = turn.then(noop, noop);
    return turn;
  }

  /** The first destination admitted: `admit` opens the association's flow (a refusal is its own record). */
  private async openWith(dest: Destination, found: LookedUp | undefined): Promise<void> {
    const { ctx, down, hs } = this.host;
    if (this.host.isEnded()) return;
    this.isOpening = true;
    // Synchronously before `admit` opens the flow, which counts in the identity's limit instead.
    this.host.releasePlace();
    const r = await admit(ctx, {
      protocol: 'socks5-udp',
      listener: 'socks',
      claims: { clientIp: down.clientIp, clientPort: this.host.clientPort(), username: hs.username },
      destHost: dest.host,
      destPort: dest.port,
      server: { localAddress: this.host.localIp, localPort: this.host.relayPort() },
      // Local attribution names the datagram socket's process, else the control connection's.
      control: { clientPort: down.clientPort, server: down.socket },
      identity: hs.identity,
      loginSince: hs.snapshot,
      ...(found === undefined ? {} : { lookedUp: found }),
    });
    this.isOpening = false;
    if (!r.ok) {
      this.refuseDest(dest, `${r.reject.reason}: ${r.flow.reasons.join('; ')}`);
      // Over the identity's limits, its identity quarantined or a connect-time detector refusing it,
      // or killed while it was admitted (its record written by `admit` or the kill): the
      // association's last answer, as a CONNECT gets 0x02 (403) and the close. A destination kept
      // refused would drop every later datagram to it for the association's life, however soon the
      // limit cleared, and UDP cannot tell the client why; each new destination would meet the
      // quarantine again, one refused record each; ending the control connection does neither.
      if (r.reject.reason === 'dns-failed') this.lookUpLater(dest);
      if (endsAssociation(r)) {
        this.isRecordedByRefusal = true;
        this.host.end(r.reject.reason);
      } else this.afterFirstRefused();
      return;
    }
    if (r.upstream !== null) {
      ctx.flows.close(r.flow, 'udp-upstream-unsupported');
      this.refuseForParent(dest, r.upstream);
      this.afterFirstRefused();
      return;
    }
    if (this.host.isEnded()) {
      // The association ended while this ran (end() wrote no record for it): this flow is its one
      // record, closed as the association was (a drain may have closed it already: idempotent).
      if (r.flow.state === 'active') {
        this.host.noteReasons(r.flow);
        ctx.flows.close(r.flow, this.host.endReason());
      }
      return;
    }
    this.host.opened(r.flow);
    this.allowDest(r.flow, dest, r.ip, r.flow);
  }

  /**
   * The first destination was refused as that destination's refusal only: the association goes on
   * without a flow, holding its place again; one that ended while it was admitted (end() left its
   * record to the flow `admit` had opened, now a refusal's) leaves its own record now.
   */
  private afterFirstRefused(): void {
    if (this.host.isEnded()) this.host.recordEnded();
    else this.host.holdPlace();
  }

  /** A destination of the open association: judged as a new flow's would be, under that flow. */
  private async admitLater(f: RoutedFlow, dest: Destination, found: LookedUp | undefined): Promise<void> {
    const { ctx } = this.host;
    if (this.host.isEnded()) return;
    const { hs } = this.host;
    const r = await admitDestination(ctx, f, dest.host, dest.port, found, { username: hs.username, since: hs.snapshot });
    if (this.host.isEnded()) return;
    if (!r.ok) {
      this.recordRefusal(f, dest, r);
      this.refuseDest(dest, `${r.reject.reason}: ${r.reason}`);
      if (r.reject.reason === 'dns-failed') this.lookUpLater(dest);
      return;
    }
    if (r.upstream !== null) {
      // A reload put this identity's egress through a parent since the association opened.
      const refused = this.refusalRecord(f, dest, r.ip, r.identity);
      ctx.flows.decide(refused, r.decision, false);
      ctx.flows.close(refused, 'udp-upstream-unsupported');
      this.refuseForParent(dest, r.upstream);
      return;
    }
    if (r.decision.verdict === 'would-block' && f.verdict === 'allow') ctx.flows.decide(f, r.decision, false);
    this.allowDest(f, dest, r.ip, r.decision);
  }

  /**
   * Relay to an admitted destination from now on: its own counters and budget (the flow's leg to it),
   * those of the destination already admitted under another spelling of its name (counted towards
   * fan-out only, as a shared leg is: onRelayed). `judged`: its admission's verdict and reason; one
   * monitor mode relays as would-block by policy has a leg of its own, which no other spelling shares
   * (the detectors count it as enforce mode's refusal, and judge no bytes on it). `ip` is the
   * admitted address as the records give it (`::ffff:127.0.0.3` for a mapped one, as on TCP): the
   * leg's destination, which the detectors' findings and alerts name; the relay sends to, and takes
   * replies from, its IPv4 form (unmapIPv4). A new leg keeps the allow entry `judged` names, which a
   * detector's kill for this destination's bytes then records.
   */
  private allowDest(f: RoutedFlow, dest: Destination, ip: string, judged: { readonly verdict: Verdict; readonly reason: ReasonCode | null; readonly matchedRule: MatchedRule | null }): void {
    const { ctx, dests } = this.host;
    this.pending--;
    const destination = { host: dest.host, ip, port: dest.port };
    const isRefused = isRefusedByPolicy(judged);
    const leg = (isRefused ? undefined : dests.legNamed(dest.host, dest.port)) ?? ctx.flows.addLeg(f, destination, judged.matchedRule);
    ctx.detection?.onRelayed(f, leg, ctx.policy.current(), destination, judged);
    dests.allow(dest, unmapIPv4(ip), leg, !isRefused);
    this.admitted++;
    const queued = dest.queue ?? [];
    this.host.releaseHeld(dest);
    for (const payload of queued) {
      if (this.host.isEnded()) return;
      // Re-wrap the queued payload view: forward() reads from an offset into the same datagram.
      this.host.forward(dest, payload, 0);
    }
  }

  /**
   * A later destination refused: its own refused record, as a refused TCP flow leaves (the first
   * destination's refusal is recorded by `admit`). The association goes on, and stays the flow its
   * client address finds (agent reports for that port attribute the association, not this record).
   */
  private recordRefusal(association: Flow, dest: Destination, r: Extract<DestinationAdmission, { ok: false }>): void {
    const f = this.refusalRecord(association, dest, r.ip, r.identity);
    if (r.decision !== null) this.host.ctx.flows.decide(f, r.decision, r.decision.verdict === 'block');
    this.host.ctx.flows.close(f, r.reject.reason);
  }

  /** The record of a later destination refused (`identity`: the one it was judged as), for the caller to close with its reason. */
  private refusalRecord(association: Flow, dest: Destination, ip: string | null, identity: Identity): Flow {
    return this.host.ctx.flows.open({
      protocol: 'socks5-udp',
      listener: 'socks',
      client: association.client,
      identity: { ...identity, process: association.identity.process },
      destination: { host: dest.host, ip, port: dest.port },
      isAddressIndexed: false,
    });
  }

  /**
   * A parent proxy carries TCP only: UDP must not go around it, so the destination is refused. The
   * parent is named as a record names it (parentName: the port dialled, never the credentials).
   */
  private refuseForParent(dest: Destination, upstream: string): void {
    this.refuseDest(dest, `egress for this identity goes through ${parentName(upstream)}, which cannot carry UDP`);
  }

  /** Refused: its waiting datagrams dropped and counted; `lookUpLater`: a name that failed its lookup again. */
  private dropDest(dest: Destination, lookUpLater: boolean): void {
    if (dest.state === 'pending') this.pending--;
    dest.state = 'refused';
    this.host.drops.refused += dest.queue?.length ?? 0;
    this.host.releaseHeld(dest);
    if (lookUpLater) this.lookUpLater(dest);
  }

  /** Its name did not resolve: a datagram to it after the wait has the name looked up again (judgeAgain). */
  private lookUpLater(dest: Destination): void {
    if (dest.state !== 'refused') return;
    const { ctx } = this.host;
    dest.lookUpAgainAt = ctx.flows.now() + Math.max(LOOK_UP_AGAIN_MIN_MS, ctx.policy.current().config.resolver.negativeCacheTtlSec * 1000);
  }

  /** Whether its admission started under the policy and mode running now. */
  private isJudgedUnderRunning(dest: Destination): boolean {
    const { ctx } = this.host;
    return dest.judgedUnder === ctx.policy.current() && dest.judgedOverride === ctx.policy.modeOverride();
  }

  private refuseDest(dest: Destination, why: string): void {
    const { ctx, clientIp } = this.host;
    this.dropDest(dest, false);
    this.refusedDestinations++;
    const flowId = this.host.flow()?.id;
    const client = formatAuthority(clientIp, this.host.clientPort());
    ctx.log.warn({ listener: 'socks', flowId, client, destination: formatAuthority(dest.host, dest.port), reason: why }, 'socks5 udp destination refused');
    // Each refusal is a record (the first destination's by `admit`, a later one's by recordRefusal):
    // one datagram each to new destinations must not write the flow log a record apiece for the
    // association's life.
    if (this.refusedDestinations >= MAX_REFUSED) {
      ctx.log.warn({ listener: 'socks', flowId, client, refused: this.refusedDestinations }, 'socks5 udp association ended: too many refused destinations');
      this.host.end('refused-destinations');
    }
  }
}

/**
 * Whether the first destination's refusal ends the association (as a refused CONNECT is closed):
 * over the identity's limits, quarantine or a connect-time detector (which quarantines the identity:
 * every later destination would be refused the same), or killed while it was admitted. A destination
 * the policy refuses (not-allowlisted, deny-range), one that did not resolve or a parent proxy in the
 * way is that destination's refusal only: its datagrams are dropped, the association goes on.
 */
function endsAssociation(r: Refused): boolean {
  if (r.isKilled === true) return true;
  const reason = r.flow.verdict === 'block' ? r.flow.reason : null;
  // `auth-required`: its login no longer stands (a reload), so no destination of it would be admitted.
  return reason === 'rate-limit' || reason === 'quarantine' || reason === 'detector' || reason === 'auth-required';
}

function noop(): void {}
