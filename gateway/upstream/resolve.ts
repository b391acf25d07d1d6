/**
 * Name resolution for the data plane: IP literals as they are, then `resolver.hosts` static answers
 * (checked by the caller through the snapshot), then DNS through the OS resolver with a timeout and a
 * small cache. The address returned here is the one that is classified AND dialled: there is never a
 * second lookup (SPEC §4).
 *
 * The OS resolver (getaddrinfo, so /etc/hosts, nsswitch and search domains behave as on the host)
 * runs on libuv's thread pool, and libuv lets DNS use at most half of its threads. A lookup of a name
 * whose servers do not answer holds its thread for the OS resolver's whole timeout (resolv.conf's
 * `timeout` × `attempts`, 10 s and more), whatever our own timeout says. So lookups are not handed to
 * the pool as they come, or a handful of slow names (one client asking for random names under a dead
 * domain, or a popular domain whose servers went away) would queue every other client's lookups
 * behind them until they time out:
 *  - at most `slots` lookups are in the pool at once (its DNS share), each slot freed only when the OS
 *    resolver returns, and one requester (a client address) holds at most a quarter of them (at least
 *    one), so the others always have free slots whatever one client asks for;
 *  - the rest wait here, one queue per requester; a free slot goes to the requester served longest
 *    ago (round-robin), so one client's backlog never keeps another's lookup waiting for long;
 *  - lookups of the same name in flight are shared; answers are remembered for `cacheTtlMs` and
 *    failures for `negativeTtlMs` (the policy's `resolver.cacheTtlSec` / `negativeCacheTtlSec`,
 *    read at each lookup: 0 remembers nothing). A lifetime lowered since the last lookup empties
 *    its cache first, so no answer outlives the new setting; a raised one keeps what is there
 *    (stored for the shorter lifetime);
 *  - a lookup still waiting, or still running, at `timeoutMs` fails (EGW_DNS_FAILED) for its caller;
 *  - a lookup the OS resolver fails while the process is out of file descriptors is the gateway's
 *    failure, not the name's: getaddrinfo then can open neither /etc/hosts nor a socket to the
 *    servers and says "not found" (ENOTFOUND, no errno to tell it by). So a failed lookup is
 *    followed by one open of the null device: EMFILE or ENFILE there makes it
 *    EGW_OUT_OF_DESCRIPTORS (503 `out-of-descriptors`), not remembered as a failed name.
 *
 * A name under `localhost` (`app.localhost`) is the loopback addresses, answered here and never
 * asked of the OS resolver (RFC 6761 §6.3): glibc sends it to the DNS servers, which would learn the
 * name and could answer any address for it. `localhost` itself goes to the OS resolver as before
 * (/etc/hosts answers it, and a lookup there tells a descriptor shortage apart).
 */
import { lookup as osLookup } from 'node:dns/promises';
import { close as closeFd, open as openFd } from 'node:fs';
import { devNull } from 'node:os';
import { isIP, isIPv4 } from 'node:net';
import { LRUCache } from 'lru-cache';
import { canonicalIPv6 } from '../../policy/address.ts';
import { GatewayError } from '../errors.ts';
import type { Resolver } from '../context.ts';

export interface DnsResolverOptions {
  /** How long a caller waits for an answer: a number, or read at each lookup (the policy's `resolver.timeoutMs`). */
  timeoutMs?: number | (() => number);
  /** How long an answer is remembered (default 30 s; 0: not at all): a number, or read at each lookup (`resolver.cacheTtlSec`). */
  cacheTtlMs?: number | (() => number);
  cacheMax?: number;
  /** How long a failed name is answered from memory (default 5 s; 0: not at all): as `cacheTtlMs` (`resolver.negativeCacheTtlSec`). */
  negativeTtlMs?: number | (() => number);
  /** Lookups in the thread pool at once (default: libuv's DNS share, half of UV_THREADPOOL_SIZE). */
  slots?: number;
  /** Slots one requester may hold at once (default: a quarter of `slots`, at least 1). */
  perRequester?: number;
  /** The OS lookup (tests give a slow one); node's dns.lookup by default. */
  lookup?: (host: string) => Promise<string[]>;
  /** After a failed lookup: the errno (EMFILE, ENFILE) if the process has no descriptor free, else null. */
  descriptorShortage?: () => Promise<string | null>;
}

/**
 * Whether the process is out of file descriptors now: one open (and close) of the null device, in
 * the thread pool. The errno (EMFILE, ENFILE) if so, else null (any other failure says nothing).
 */
export function descriptorShortage(): Promise<string | null> {
  return new Promise((resolve) => {
    openFd(devNull, 'r', (err, fd) => {
      if (err) resolve(err.code === 'EMFILE' || err.code === 'ENFILE' ? err.code : null);
      else closeFd(fd, () => resolve(null));
    });
  });
}

/** libuv's thread pool size for this process, and the share of it DNS may use. */
export function dnsSlots(env: NodeJS.ProcessEnv = process.env): number {
  const size = Math.min(1024, Math.max(1, Number(env['UV_THREADPOOL_SIZE']) || 4));
  return Math.max(1, Math.floor((size + 1) / 2));
}

async function addressesOf(host: string): Promise<string[]> {
  const answers = await osLookup(host, { all: true, verbatim: true });
  // inet_ntop writes an IPv4-compatible answer (::/96) with a dotted tail too: every IPv6 address
  // with one is rewritten to the form the records give every other path (withMappedTail).
  return answers.map((a) => (a.family === 6 && a.address.includes('.') ? canonicalIPv6(a.address) : a.address));
}

interface Waiting {
  resolve: (ips: string[]) => void;
  reject: (err: unknown) => void;
  isDone: boolean;
}

/**
 * A cache whose entries' lifetime is a setting read at each use: each entry is stored for the value
 * at its `set`; a value lowered since the last use empties the cache, so nothing stored under the
 * longer one is answered past the new one. 0 stores nothing.
 */
class TtlCache<V extends {}> {
  private readonly cache: LRUCache<string, V>;
  /** The options of every `set`, one object reused (lru-cache reads, never keeps them). */
  private readonly setOpts = { ttl: 0 };
  private ttlMs: number;

  constructor(
    private readonly ttlOf: number | (() => number),
    max: number,
  ) {
    this.ttlMs = this.read();
    this.cache = new LRUCache<string, V>({ max, ttl: this.ttlMs });
  }

  private read(): number {
    return typeof this.ttlOf === 'number' ? this.ttlOf : this.ttlOf();
  }

  /** The lifetime now, the cache emptied first when it went down since the last use. */
  private current(): number {
    const ttl = this.read();
    if (ttl < this.ttlMs && this.cache.size > 0) this.cache.clear();
    this.ttlMs = ttl;
    return ttl;
  }

  get(key: string): V | undefined {
    if (this.current() === 0) return undefined;
    return this.cache.get(key);
  }

  set(key: string, value: V): void {
    const ttl = this.current();
    if (ttl === 0) return;
    this.setOpts.ttl = ttl;
    this.cache.set(key, value, this.setOpts);
  }
}

/**
 * The answer for a name under `localhost` (RFC 6761 §6.3: "the IP loopback address"), IPv4 first as
 * /etc/hosts gives `localhost`'s. One array, shared as a cached answer is: read only.
 */
const LOOPBACK_ANSWER: string[] = ['127.0.0.1', '::1'];

/**
 * The address admission judges a name under `localhost` on (the answer's first IPv4: lookUp), for
 * the dry runs that look nothing up (control-evaluate.ts addressWithoutDns).
 */
export const LOCALHOST_NAME_ADDRESS = LOOPBACK_ANSWER[0] as string;

/** Whether `host` (lower case, no trailing dot: gateway/protocol/authority.ts) is a name under `localhost`. */
export function isUnderLocalhost(host: string): boolean {
  return host.length > 10 && host.endsWith('.localhost');
}

/** Names one requester may have waiting for the pool; past it, its lookups fail at once. */
const MAX_WAITING_PER_REQUESTER = 256;

/** A Resolver on the OS resolver (getaddrinfo), cached briefly so hot destinations skip the thread pool. */
export function createDnsResolver(opts: DnsResolverOptions = {}): Resolver {
  const timeoutOf = opts.timeoutMs ?? 5000;
  const slots = opts.slots ?? dnsSlots();
  const perRequester = opts.perRequester ?? Math.max(1, Math.floor(slots / 4));
  const osResolve = opts.lookup ?? addressesOf;
  const isShort = opts.descriptorShortage ?? descriptorShortage;
  const cache = new TtlCache<string[]>(opts.cacheTtlMs ?? 30_000, opts.cacheMax ?? 10_000);
  const failed = new TtlCache<GatewayError>(opts.negativeTtlMs ?? 5000, 10_000);
  /** Names in the pool now, everyone waiting for each, and whose slot it takes. */
  const running = new Map<string, { waiters: Waiting[]; requester: string }>();
  /** Slots held per requester. */
  const held = new Map<string, number>();
  /** When each requester with something held or waiting was last given a slot (a turn number). */
  const served = new Map<string, number>();
  let turn = 0;
  /** Names waiting for the pool, and everyone waiting for each: a second asker joins, not queues. */
  const waiting = new Map<string, Waiting[]>();
  /** Per requester, its waiting names in order; the Map's order is the round-robin order. */
  const queues = new Map<string, string[]>();

  const isLive = (host: string): boolean => waiting.get(host)?.some((w) => !w.isDone) === true;

  function settle(list: Waiting[], ips: string[] | null, err: unknown): void {
    for (const w of list) {
      if (w.isDone) continue;
      w.isDone = true;
      if (ips) w.resolve(ips);
      else w.reject(err);
    }
  }

  const canStart = (requester: string): boolean => running.size < slots && (held.get(requester) ?? 0) < perRequester;

  function start(host: string, waiters: Waiting[], requester: string): void {
    running.set(host, { waiters, requester });
    held.set(requester, (held.get(requester) ?? 0) + 1);
    served.set(requester, ++turn);
    osResolve(host).then(
      (ips) => (ips.length > 0 ? answered(host, ips) : lookupFailed(host, new GatewayError('EGW_DNS_FAILED', `no address for ${host}`))),
      (cause: unknown) => lookupFailed(host, new GatewayError('EGW_DNS_FAILED', `lookup of ${host} failed`, { cause })),
    );
  }

  /**
   * A failed lookup: its slot is free at once (the OS resolver returned); its askers hear the name's
   * failure, or the gateway's own if it has no descriptor free now (one open, in the pool's file
   * share, not a DNS slot).
   */
  function lookupFailed(host: string, err: GatewayError): void {
    const waiters = release(host);
    pump();
    isShort().then(
      (errno) => conclude(host, waiters, null, errno === null ? err : new GatewayError('EGW_OUT_OF_DESCRIPTORS', `lookup of ${host} failed: the gateway is out of file descriptors`, { cause: Object.assign(new Error(errno), { code: errno }) })),
      () => conclude(host, waiters, null, err),
    );
  }

  function answered(host: string, ips: string[]): void {
    const waiters = release(host);
    conclude(host, waiters, ips, null);
    pump();
  }

  /** The name's slot given back; its askers, for conclude(). */
  function release(host: string): Waiting[] {
    const entry = running.get(host);
    running.delete(host);
    if (entry) {
      const n = (held.get(entry.requester) ?? 1) - 1;
      if (n > 0) held.set(entry.requester, n);
      else {
        held.delete(entry.requester);
        if (!queues.has(entry.requester)) served.delete(entry.requester);
      }
    }
    return entry?.waiters ?? [];
  }

  function conclude(host: string, waiters: Waiting[], ips: string[] | null, err: GatewayError | null): void {
    if (ips) cache.set(host, ips);
    // The gateway's own shortage says nothing of the name: the next lookup asks again.
    else if (err && err.code !== 'EGW_OUT_OF_DESCRIPTORS') failed.set(host, err);
    settle(waiters, ips, err);
  }

  /** Hand waiting names to the pool while it has room: the requester served longest ago first. */
  function pump(): void {
    let isProgress = true;
    while (isProgress && running.size < slots && queues.size > 0) {
      isProgress = false;
      const order = [...queues.keys()].sort((a, b) => (served.get(a) ?? 0) - (served.get(b) ?? 0));
      for (const who of order) {
        if (running.size >= slots) break;
        const q = queues.get(who);
        if (q === undefined || !canStart(who)) continue;
        // Names whose askers all gave up (timed out) lose their turn to the next one.
        let host = q.shift();
        while (host !== undefined && !isLive(host)) {
          waiting.delete(host);
          host = q.shift();
        }
        if (q.length === 0) queues.delete(who);
        if (host === undefined) {
          if (!held.has(who)) served.delete(who);
          continue;
        }
        const live = (waiting.get(host) ?? []).filter((w) => !w.isDone);
        waiting.delete(host);
        start(host, live, who);
        isProgress = true;
      }
    }
  }

  /** Room in a requester's queue: names nobody waits for any more are dropped first. */
  function hasRoom(q: string[]): boolean {
    if (q.length < MAX_WAITING_PER_REQUESTER) return true;
    const kept = q.filter((h) => {
      if (isLive(h)) return true;
      waiting.delete(h);
      return false;
    });
    q.length = 0;
    q.push(...kept);
    return q.length < MAX_WAITING_PER_REQUESTER;
  }

  return {
    lookup(host: string, requester = ''): Promise<string[]> {
      if (isIP(host)) return Promise.resolve([host]);
      if (isUnderLocalhost(host)) return Promise.resolve(LOOPBACK_ANSWER);
      const hit = cache.get(host);
      if (hit) return Promise.resolve(hit);
      const bad = failed.get(host);
      if (bad) return Promise.reject(bad);
      return new Promise<string[]>((resolve, reject) => {
        const timer = setTimeout(() => {
          if (w.isDone) return;
          w.isDone = true;
          reject(new GatewayError('EGW_DNS_FAILED', `lookup of ${host} timed out`));
        }, typeof timeoutOf === 'number' ? timeoutOf : timeoutOf());
        const w: Waiting = {
          isDone: false,
          resolve: (ips) => {
            clearTimeout(timer);
            resolve(ips);
          },
          reject: (err) => {
            clearTimeout(timer);
            reject(err);
          },
        };
        const inPool = running.get(host)?.waiters ?? waiting.get(host);
        if (inPool) {
          inPool.push(w);
          return;
        }
        if (canStart(requester) && !queues.has(requester)) {
          start(host, [w], requester);
          return;
        }
        let q = queues.get(requester);
        if (q && !hasRoom(q)) {
          w.reject(new GatewayError('EGW_DNS_FAILED', `lookup of ${host} refused: ${MAX_WAITING_PER_REQUESTER} lookups from this client already waiting`));
          w.isDone = true;
          return;
        }
        if (!q) {
          q = [];
          queues.set(requester, q);
        }
        q.push(host);
        waiting.set(host, [w]);
        pump();
      });
    },
  };
}

/**
 * A name's other addresses in the order a flow dials them after `first` (RFC 8305 §4): the two
 * families interleaved, the family `first` is not of first, each family in the resolver's order,
 * `first` and repeats left out. A dual-stack name whose IPv4 route is dead then has its IPv6
 * address dialled one attempt delay after the IPv4 one, not after the other IPv4 addresses.
 */
export function dialOrder(ips: readonly string[], first: string): string[] {
  const isFirstV4 = isIPv4(first);
  const same: string[] = [];
  const other: string[] = [];
  for (const ip of ips) {
    if (ip === first || same.includes(ip) || other.includes(ip)) continue;
    (isIPv4(ip) === isFirstV4 ? same : other).push(ip);
  }
  const order: string[] = [];
  for (let i = 0; i < Math.max(same.length, other.length); i++) {
    if (i < other.length) order.push(other[i] as string);
    if (i < same.length) order.push(same[i] as string);
  }
  return order;
}
