/**
 * The Linux endpoint agent (SPEC §7): finds this host's sockets whose remote end is the gateway,
 * attributes the new ones to processes, and posts them in batches to `POST /v1/agents/reports`.
 *
 * One pass:
 * 1. Read /proc/net/{tcp,tcp6,udp,udp6} once.
 * 2. Keep sockets whose remote address is the gateway (TCP: on a gateway port; UDP: on a port of
 *    the relay range, `udpRelayPorts`: a SOCKS5 UDP relay's port is chosen per association from
 *    the gateway's limits.udpRelayPorts, which its report answers name, else from its host's
 *    ephemeral range, while a DNS or NTP socket to the same address names no association and
 *    would only wait out its 30 s at the gateway).
 * 3. Drop the ones already reported (keyed by 4-tuple + inode, forgotten when the socket goes).
 * 4. Attribute the rest with the same resolver the gateway uses (one fd scan at most).
 * 5. Queue the reports; send in batches; on failure keep them and back off exponentially.
 *    A queued report whose socket is gone is dropped (step 3 of a later pass): sent late, after
 *    its flow ended, it would name the next connection from that port, maybe another process's.
 */

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ProcessResolver, normalizeIp } from './attribution.ts';
import { ALL_PROC_NET_FILES, type ProcNetFile, type SocketEntry, TcpState, encodeProcEndpoint, readProcNet } from './proc-net.ts';
import { type AgentReport, makeReport } from './report.ts';

export interface AgentOptions {
  /** Base URL of the gateway's admin API, e.g. `http://10.0.0.5:9180`. */
  readonly gatewayUrl: string;
  readonly token: string;
  /** Name this host reports as. */
  readonly host: string;
  readonly intervalMs: number;
  /** Gateway listener ports (HTTP proxy, SOCKS5). */
  readonly gatewayPorts: readonly number[];
  /**
   * The ports the gateway's SOCKS5 UDP relays may be on (inclusive): a UDP socket to the gateway is
   * reported only on one of them. Given, it is kept (a gateway announcing another range is logged);
   * absent, the range the gateway's report answer names (its limits.udpRelayPorts) is used from the
   * next pass on, DEFAULT_UDP_RELAY_PORTS (Linux's ephemeral range) until then or when it names none.
   */
  readonly udpRelayPorts?: readonly [number, number];
  /**
   * Where the proxy listeners are, when not on the admin URL's host (e.g. admin behind a different
   * name). Names are resolved each `addressRefreshMs`.
   */
  readonly gatewayHosts?: readonly string[];
  readonly procRoot?: string;
  readonly resolver?: ProcessResolver;
  /** Structured log sink (one object per event); default: JSON line on stderr. */
  readonly log?: (event: Record<string, unknown>) => void;
  readonly batchSize?: number;
  /** Reports kept while the gateway is unreachable; beyond it the oldest are dropped. */
  readonly maxQueued?: number;
  readonly requestTimeoutMs?: number;
  readonly maxBackoffMs?: number;
  /** Passes a socket is retried when no visible process holds it (e.g. another PID namespace). */
  readonly maxAttempts?: number;
}

export interface PassResult {
  /** Sockets to the gateway seen in this pass. */
  readonly sockets: number;
  /** New reports queued by this pass. */
  readonly queued: number;
  /** Sockets no visible process held (given up after `maxAttempts` passes). */
  readonly unattributed: number;
}

/**
 * Where a SOCKS5 UDP relay's port lies by default: without limits.udpRelayPorts the gateway binds
 * each relay to port 0, so it gets one from its host's `net.ipv4.ip_local_port_range`, 32768-60999
 * unless tuned (then give the agent that range, `--udp-relay-ports`). DNS (53), NTP (123), syslog
 * (514) … lie below it.
 */
export const DEFAULT_UDP_RELAY_PORTS: readonly [number, number] = [32768, 60999];

/** The `message` of an admin API error answer (`{error, message}`), or null. */
function errorMessage(answer: string): string | null {
  try {
    const m = (JSON.parse(answer) as { message?: unknown } | null)?.message;
    return typeof m === 'string' ? m.slice(0, 200) : null;
  } catch {
    return null;
  }
}

/** "LO-HI" or one port, as limits.udpRelayPorts is written; null when it is neither. */
function parseRelayRange(text: string): [number, number] | null {
  const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(text);
  if (!m) return null;
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  return lo >= 1 && hi <= 65535 && lo <= hi ? [lo, hi] : null;
}

export type SendResult = 'sent' | 'empty' | 'retry' | 'dropped';

interface Seen {
  attempts: number;
  isDone: boolean;
}

/** Linux agent state: what was reported, what waits to be sent, and the backoff clock. */
export class Agent {
  private readonly resolver: ProcessResolver;
  private readonly log: (event: Record<string, unknown>) => void;
  private readonly batchSize: number;
  private readonly maxQueued: number;
  private readonly requestTimeoutMs: number;
  private readonly maxBackoffMs: number;
  private readonly maxAttempts: number;
  private readonly reportsUrl: string;
  private readonly ports: ReadonlySet<number>;
  private udpLow: number;
  private udpHigh: number;
  /** The range the gateway last announced (limits.udpRelayPorts; null: ephemeral), undefined before any answer. */
  private announcedRelayPorts: string | null | undefined = undefined;
  private readonly seen = new Map<string, Seen>();
  /** Reports waiting to be sent, each with the key of its socket (see collect). */
  private queue: Array<{ readonly key: string; readonly report: AgentReport }> = [];
  private failures = 0;
  private nextSendAt = 0;
  private gatewayIps: { at: number; set: Set<string> } | null = null;
  /** Totals since start, for logs and tests. */
  readonly totals = { passes: 0, sent: 0, dropped: 0, stale: 0, posts: 0, failedPosts: 0 };

  constructor(private readonly opts: AgentOptions) {
    this.resolver = opts.resolver ?? new ProcessResolver(opts.procRoot ? { procRoot: opts.procRoot } : {});
    this.log = opts.log ?? ((e) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`));
    this.batchSize = opts.batchSize ?? 500;
    this.maxQueued = opts.maxQueued ?? 20_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.maxBackoffMs = opts.maxBackoffMs ?? 60_000;
    this.maxAttempts = opts.maxAttempts ?? 3;
    this.reportsUrl = new URL('/v1/agents/reports', opts.gatewayUrl).toString();
    this.ports = new Set(opts.gatewayPorts);
    [this.udpLow, this.udpHigh] = opts.udpRelayPorts ?? DEFAULT_UDP_RELAY_PORTS;
  }

  /** The relay range UDP sockets are reported on now (given, learnt from the gateway, or the default). */
  get udpRelayRange(): readonly [number, number] {
    return [this.udpLow, this.udpHigh];
  }

  /** Reports waiting to be sent. */
  get queued(): number {
    return this.queue.length;
  }

  private async gatewayAddresses(): Promise<Set<string>> {
    const now = Date.now();
    if (this.gatewayIps && now - this.gatewayIps.at < 60_000) return this.gatewayIps.set;
    const names = this.opts.gatewayHosts ?? [new URL(this.opts.gatewayUrl).hostname.replace(/^\[|\]$/g, '')];
    const set = new Set<string>();
    for (const name of names) {
      if (isIP(name)) set.add(normalizeIp(name));
      else {
        try {
          for (const a of await lookup(name, { all: true })) set.add(normalizeIp(a.address));
        } catch (err) {
          this.log({ event: 'agent-resolve-failed', host: name, error: (err as Error).message });
        }
      }
    }
    // Keep the old answer if DNS failed this time.
    if (set.size > 0 || !this.gatewayIps) this.gatewayIps = { at: now, set };
    return this.gatewayIps.set;
  }

  private isToGateway(e: SocketEntry, ips: ReadonlySet<string>): boolean {
    if (e.inode === 0 || !ips.has(e.remoteIp)) return false;
    if (e.proto === 'udp') return e.remotePort >= this.udpLow && e.remotePort <= this.udpHigh;
    if (e.state === TcpState.LISTEN || e.state === TcpState.TIME_WAIT || e.state === TcpState.CLOSE) return false;
    return this.ports.has(e.remotePort);
  }

  /** One collection pass: find new sockets to the gateway, attribute them, queue their reports. */
  async collect(): Promise<PassResult> {
    this.totals.passes++;
    const ips = await this.gatewayAddresses();
    // Only lines mentioning a gateway endpoint are parsed; `isToGateway` then checks the remote column.
    const needlesFor = (file: ProcNetFile): string[] => {
      const isV6 = file.endsWith('6');
      const out: string[] = [];
      for (const ip of ips) {
        if (file.startsWith('udp')) {
          const n = encodeProcEndpoint(ip, null, isV6);
          if (n !== null) out.push(n);
        } else {
          for (const port of this.ports) {
            const n = encodeProcEndpoint(ip, port, isV6);
            if (n !== null) out.push(` ${n} `);
          }
        }
      }
      return out;
    };
    const entries = (await readProcNet(ALL_PROC_NET_FILES, this.resolver.procRoot, needlesFor)).filter((e) => this.isToGateway(e, ips));
    const live = new Set<string>();
    const fresh: Array<{ key: string; entry: SocketEntry }> = [];
    for (const entry of entries) {
      const key = `${entry.proto}|${entry.localIp}|${entry.localPort}|${entry.remoteIp}|${entry.remotePort}|${entry.inode}`;
      if (live.has(key)) continue;
      live.add(key);
      const s = this.seen.get(key);
      if (!s?.isDone) fresh.push({ key, entry });
    }
    // Forget sockets that are gone, so the map is bounded by the live socket count.
    for (const key of this.seen.keys()) if (!live.has(key)) this.seen.delete(key);
    this.dropGone(live);

    let queued = 0;
    let unattributed = 0;
    if (fresh.length > 0) {
      const procs = await this.resolver.resolveInodes(
        fresh.map((f) => f.entry.inode),
        new Map(fresh.map((f) => [f.entry.inode, f.entry.uid])),
      );
      for (const { key, entry } of fresh) {
        const p = procs.get(entry.inode);
        const s = this.seen.get(key) ?? { attempts: 0, isDone: false };
        s.attempts++;
        this.seen.set(key, s);
        if (p) {
          s.isDone = true;
          this.enqueue(key, makeReport(entry, p));
          queued++;
        } else if (s.attempts >= this.maxAttempts) {
          s.isDone = true;
          unattributed++;
        }
      }
    }
    if (unattributed > 0) this.log({ event: 'agent-unattributed', sockets: unattributed });
    return { sockets: live.size, queued, unattributed };
  }

  /**
   * Drop the queued reports whose socket is gone (not in `live`, this pass's socket keys). The
   * gateway joins a report to the live flow at its client address, or keeps it 30 s for a flow
   * not yet open: a report held back (gateway unreachable, backing off) and sent after its
   * connection closed would name the next connection from the same port, which may be another
   * process's (reproduced: a closed `nmap` tunnel's report, sent once the gateway was back, got
   * the python3 tunnel that reused its port killed as an0081.scanner-tool). A socket gone is not
   * reported at all: its flow has ended and no report can attribute it any more.
   */
  private dropGone(live: ReadonlySet<string>): void {
    if (this.queue.length === 0) return;
    const kept = this.queue.filter((q) => live.has(q.key));
    const gone = this.queue.length - kept.length;
    if (gone === 0) return;
    this.queue = kept;
    this.totals.stale += gone;
    this.log({ event: 'agent-reports-stale', reports: gone, queued: kept.length });
  }

  private enqueue(key: string, report: AgentReport): void {
    this.queue.push({ key, report });
    if (this.queue.length > this.maxQueued) {
      const over = this.queue.length - this.maxQueued;
      this.queue.splice(0, over);
      this.totals.dropped += over;
    }
  }

  /** Post one batch from the queue. `retry` = kept for later (network error, 408/429/5xx). */
  /**
   * Ask the gateway whether it takes this agent's reports, without reporting anything (an empty
   * batch): the HTTP status, or 0 and the error when it could not be reached. `--once` uses it when
   * a pass found nothing to send, so a wrong token or URL is not taken for a delivery.
   */
  check(): Promise<{ status: number; error: string | null }> {
    return this.post([]);
  }

  /**
   * POST one batch of reports: the HTTP status and the answer's text, or 0 and the error when the
   * gateway was not reached.
   */
  private async post(reports: readonly AgentReport[]): Promise<{ status: number; error: string | null; answer: string }> {
    try {
      const res = await fetch(this.reportsUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${this.opts.token}` },
        body: JSON.stringify({ host: this.opts.host, reports }),
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
      const text = await res.text().catch(() => '');
      if (res.ok) this.learnRelayPorts(text);
      return { status: res.status, error: null, answer: text };
    } catch (err) {
      return { status: 0, error: (err as Error).message, answer: '' };
    }
  }

  /**
   * The report answer's `udpRelayPorts` (the gateway's limits.udpRelayPorts, null for ephemeral
   * ports; absent from an older gateway): taken as the relay range unless --udp-relay-ports was
   * given, which is kept and the difference logged, once per range announced.
   */
  private learnRelayPorts(answer: string): void {
    let announced: unknown;
    try {
      announced = (JSON.parse(answer) as { udpRelayPorts?: unknown }).udpRelayPorts;
    } catch {
      return;
    }
    if (announced !== null && typeof announced !== 'string') return;
    if (announced === this.announcedRelayPorts) return;
    this.announcedRelayPorts = announced;
    const range = announced === null ? null : parseRelayRange(announced);
    if (announced !== null && range === null) return;
    const given = this.opts.udpRelayPorts;
    if (given !== undefined) {
      if (range !== null && (range[0] !== given[0] || range[1] !== given[1])) {
        this.log({ event: 'agent-udp-relay-ports-mismatch', udpRelayPorts: `${given[0]}-${given[1]}`, gateway: announced });
      }
      return;
    }
    [this.udpLow, this.udpHigh] = range ?? DEFAULT_UDP_RELAY_PORTS;
    this.log({ event: 'agent-udp-relay-ports', udpRelayPorts: `${this.udpLow}-${this.udpHigh}`, gateway: announced });
  }

  async sendBatch(): Promise<SendResult> {
    if (this.queue.length === 0) return 'empty';
    const batch = this.queue.slice(0, this.batchSize).map((q) => q.report);
    this.totals.posts++;
    const { status, error, answer } = await this.post(batch);
    if (status >= 200 && status < 300) {
      this.queue.splice(0, batch.length);
      this.totals.sent += batch.length;
      this.failures = 0;
      this.nextSendAt = 0;
      return 'sent';
    }
    const isRetryable = status === 0 || status === 408 || status === 429 || status >= 500;
    if (status === 403 && this.dropRefusedAddresses(batch.length, answer)) return 'dropped';
    if (!isRetryable) {
      // The gateway refused the content or the token: sending it again cannot succeed.
      this.queue.splice(0, batch.length);
      this.totals.dropped += batch.length;
      this.log({ event: 'agent-report-refused', status, reports: batch.length, message: errorMessage(answer) });
      return 'dropped';
    }
    this.totals.failedPosts++;
    this.failures++;
    const backoff = Math.min(this.maxBackoffMs, Math.max(250, this.opts.intervalMs) * 2 ** Math.min(this.failures - 1, 16));
    // Jitter so a fleet of agents does not come back in lock-step after a gateway restart.
    const delay = Math.round(backoff * (0.5 + Math.random() / 2));
    this.nextSendAt = Date.now() + delay;
    this.log({ event: 'agent-report-failed', status, error, retryInMs: delay, queued: this.queue.length });
    return 'retry';
  }

  /**
   * The gateway refuses a whole batch (403) when one report is about an address outside this agent's
   * sources, and lists the refused ones (`details.refused`, at most 100). Any local process can hold
   * a connection to the gateway from such an address (127.0.0.2, another address of the host), so
   * dropping the whole batch let it blind the agent: every other process's report sent with it was
   * lost, a proxyware tunnel's among them. Drops the reports about the refused addresses from the
   * head `size` of the queue and keeps the others there, to be sent next; true when it dropped any.
   * Each call drops at least one report, so a batch is resent at most once per address refused.
   */
  private dropRefusedAddresses(size: number, answer: string): boolean {
    let refused: unknown;
    try {
      refused = (JSON.parse(answer) as { details?: { refused?: unknown } }).details?.refused;
    } catch {
      return false;
    }
    if (!Array.isArray(refused)) return false;
    const addresses = new Set<string>();
    for (const r of refused) {
      const ip = (r as { localIp?: unknown } | null)?.localIp;
      if (typeof ip === 'string') addresses.add(ip);
    }
    const batch = this.queue.slice(0, size);
    const kept = batch.filter((q) => !addresses.has(q.report.localIp));
    if (kept.length === batch.length) return false;
    this.queue.splice(0, size, ...kept);
    this.totals.dropped += size - kept.length;
    this.log({ event: 'agent-reports-refused-addresses', addresses: [...addresses].slice(0, 10), reports: size - kept.length, resending: kept.length });
    return true;
  }

  /** Send everything queued, batch by batch, unless backing off; stops at the first failure. */
  async flush(): Promise<boolean> {
    if (Date.now() < this.nextSendAt) return false;
    for (let i = 0; i < 1000 && this.queue.length > 0; i++) {
      const r = await this.sendBatch();
      if (r === 'retry') return false;
    }
    return this.queue.length === 0;
  }

  /** Milliseconds until the next send attempt is allowed (0 = now). */
  backoffRemainingMs(): number {
    return Math.max(0, this.nextSendAt - Date.now());
  }

  /**
   * Ask the gateway once whether it takes this agent's reports (an empty batch, as `--once` does) and
   * log what is wrong: a refused token (401, 403) as `agent-token-refused` with the gateway's
   * message, an unreachable gateway as `agent-gateway-unreachable`. Without it a daemon with a wrong
   * token logged nothing until its first report, then only that one was refused, status 401.
   * The agent runs on either way: the token may be added to the gateway's policy, or the gateway come
   * up, later. Returns the status (0: not reached).
   */
  async checkAtStart(): Promise<number> {
    const { status, error, answer } = await this.post([]);
    if (status === 401 || status === 403) {
      this.log({ event: 'agent-token-refused', status, message: errorMessage(answer), gateway: this.reportsUrl, hint: 'the gateway takes no report with this token: check --token, --token-file or EGRESSGATE_AGENT_TOKEN against its identity.agents (or an agent-scope admin.tokens entry)' });
    } else if (status === 0) {
      this.log({ event: 'agent-gateway-unreachable', error, gateway: this.reportsUrl });
    } else if (status < 200 || status >= 300) {
      this.log({ event: 'agent-gateway-check-failed', status, message: errorMessage(answer), gateway: this.reportsUrl });
    }
    return status;
  }

  /** Run passes every `intervalMs` until `signal` aborts; a last flush is tried on the way out. */
  async run(signal: AbortSignal): Promise<void> {
    await this.checkAtStart();
    while (!signal.aborted) {
      try {
        const r = await this.collect();
        if (r.queued > 0) this.log({ event: 'agent-pass', ...r });
        await this.flush();
      } catch (err) {
        this.log({ event: 'agent-pass-failed', error: (err as Error).message });
      }
      try {
        await sleep(this.opts.intervalMs, undefined, { signal });
      } catch {
        break; // aborted
      }
    }
    if (this.queue.length > 0) {
      this.nextSendAt = 0;
      await this.sendBatch();
    }
  }
}
