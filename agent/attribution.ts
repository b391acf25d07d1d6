/**
 * Connection → process attribution, shared by the endpoint agent and the gateway's local
 * attribution (SPEC §7, `identity.localAttribution`).
 *
 * Steps (order matters: ports are reused, so the 4-tuple is always looked up fresh):
 * 1. Read /proc/net/tcp[6] (or udp[6]) and find the socket whose local/remote 4-tuple is exact.
 *    On the gateway's host a downstream client's socket has local = client, remote = listener.
 *    A UDP socket that sends datagrams is rarely connected and often bound to the wildcard address,
 *    so a UDP tuple also matches those (`udpCandidates`, most specific first).
 * 2. Its inode → holder PID from a cache, re-checked with one readlink of /proc/PID/fd/N.
 * 3. On a miss, one scan of /proc/*\/fd (stopping once every wanted inode is found) refreshes the cache;
 *    it reads the processes of the sockets' owners (the table's `uid`) with small fd tables first.
 * 4. Read the holder's exe, name, cmdline, uid → user, loginuid and its parent.
 */

import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import { LRUCache } from 'lru-cache';
import type { ProcessInfo } from '../policy/types.ts';
import { type ProcNetFile, type SocketProto, encodeProcEndpoint, readProcNet } from './proc-net.ts';
import {
  type ProcessDetails,
  type SocketHolder,
  UserDirectory,
  describeProcess,
  holderStillValid,
  scanSocketInodes,
} from './proc-process.ts';

/**
 * Who owns a tuple's socket (`socketOwners`): the socket table's uid, null when none is listed, or
 * `{ shared }` (the uids, ascending) when sockets of more than one uid could be it.
 */
export type SocketOwner = number | null | { readonly shared: readonly number[] };

export interface ConnectionTuple {
  readonly proto: SocketProto;
  readonly localIp: string;
  readonly localPort: number;
  readonly remoteIp: string;
  readonly remotePort: number;
}

/**
 * Canonical text of an address as /proc/net parsing produces it: IPv4 dotted, IPv4-mapped IPv6
 * unwrapped to IPv4, other IPv6 compressed lower-case, zone id dropped. Returns the input when it
 * is not an IP.
 */
export function normalizeIp(ip: string): string {
  const bare = ip.replace(/%.*$/, '');
  const kind = isIP(bare);
  if (kind === 4) return bare;
  if (kind !== 6) return ip;
  const host = new URL(`http://[${bare}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (mapped) {
    const hi = Number.parseInt(mapped[1] ?? '0', 16);
    const lo = Number.parseInt(mapped[2] ?? '0', 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return host;
}

/** Which tables can hold a socket for this address: a v4 peer may sit on a dual-stack v6 socket. */
function tablesFor(proto: SocketProto, ip: string): ProcNetFile[] {
  const v4 = isIP(ip) === 4;
  if (proto === 'tcp') return v4 ? ['tcp', 'tcp6'] : ['tcp6'];
  return v4 ? ['udp', 'udp6'] : ['udp6'];
}

function tupleKey(t: ConnectionTuple): string {
  return `${t.proto}|${t.localIp}|${t.localPort}|${t.remoteIp}|${t.remotePort}`;
}

/**
 * The table entries that can be the socket a UDP datagram from localIp:localPort to
 * remoteIp:remotePort left by, most specific first: connected to that remote, then unconnected
 * (remote all zeros, port 0), each bound to the address itself, then to the wildcard (0.0.0.0 in
 * udp, :: in udp6: a dual-stack socket sends IPv4 too). The kernel picks the source port from the
 * socket's bound port, so no socket on another port can have sent it. Several sockets can share the
 * port (a SO_REUSEPORT group, of one uid; sockets that all set SO_REUSEADDR, of any uids): the most
 * specific is taken, the first listed among equals (`socketOwners` names them all: udpPortOwners).
 */
function udpCandidates(t: ConnectionTuple, isV6Table: boolean): ConnectionTuple[] {
  const any = isV6Table ? '::' : '0.0.0.0';
  const out: ConnectionTuple[] = [];
  for (const localIp of [t.localIp, any]) {
    out.push({ ...t, localIp }, { ...t, localIp, remoteIp: any, remotePort: 0 });
  }
  return out;
}

function normalizeTuple(t: ConnectionTuple): ConnectionTuple {
  return { ...t, localIp: normalizeIp(t.localIp), remoteIp: normalizeIp(t.remoteIp) };
}

export interface ResolverOptions {
  readonly procRoot?: string;
  /** PIDs read in parallel during an fd scan. */
  readonly scanConcurrency?: number;
  /** Max cached inode → holder entries. */
  readonly maxCachedInodes?: number;
  readonly users?: UserDirectory;
  /** PIDs the fd scan never reads (see `ScanOptions.skipPids`). */
  readonly skipPids?: readonly number[];
}

/**
 * Socket inodes → `ProcessDetails`, with a validated inode → PID cache and at most one /proc fd scan
 * in flight (a second caller waits for it and re-checks the cache before scanning again).
 */
export class ProcessResolver {
  readonly procRoot: string;
  private readonly scanConcurrency: number;
  private readonly users: UserDirectory;
  private readonly holders: LRUCache<number, SocketHolder[]>;
  private readonly skipPids: ReadonlySet<number> | undefined;
  private scanChain: Promise<unknown> = Promise.resolve();
  /** Most recent holders first (at most 32): scanned before the rest of /proc. */
  private recentPids: number[] = [];
  /** Number of /proc fd scans run so far (exposed for tests and the benchmark). */
  scans = 0;

  constructor(opts: ResolverOptions = {}) {
    this.procRoot = opts.procRoot ?? '/proc';
    this.scanConcurrency = opts.scanConcurrency ?? 16;
    this.users = opts.users ?? new UserDirectory();
    this.holders = new LRUCache({ max: opts.maxCachedInodes ?? 65_536 });
    this.skipPids = opts.skipPids ? new Set(opts.skipPids) : undefined;
  }

  /**
   * Resolve each inode to the process holding it; inodes nobody visible holds are absent from the
   * result. `owners` (inode → the socket table's `uid`), when known, lets a scan read those users'
   * processes first.
   */
  async resolveInodes(inodes: readonly number[], owners?: ReadonlyMap<number, number>): Promise<Map<number, ProcessDetails>> {
    const wanted = [...new Set(inodes.filter((i) => i > 0))];
    const found = new Map<number, SocketHolder[]>();
    let misses = await this.fromCache(wanted, found);
    if (misses.length > 0) {
      await this.scanFor(misses, owners);
      misses = await this.fromCache(misses, found);
    }
    // Many sockets often share one process (a browser, the benchmark's client): describe each PID once.
    const described = new Map<number, Promise<ProcessDetails | null>>();
    const describe = (pid: number): Promise<ProcessDetails | null> => {
      let p = described.get(pid);
      if (!p) {
        p = describeProcess(pid, this.users, this.procRoot);
        described.set(pid, p);
      }
      return p;
    };
    const out = new Map<number, ProcessDetails>();
    await Promise.all(
      [...found].map(async ([inode, holders]) => {
        const p = await this.pickHolder(holders, describe);
        if (p) out.set(inode, p);
      }),
    );
    return out;
  }

  private async fromCache(inodes: readonly number[], found: Map<number, SocketHolder[]>): Promise<number[]> {
    const misses: number[] = [];
    await Promise.all(
      inodes.map(async (inode) => {
        const cached = this.holders.get(inode);
        if (cached) {
          const valid = (
            await Promise.all(cached.map(async (h) => ((await holderStillValid(h, inode, this.procRoot)) ? h : null)))
          ).filter((h): h is SocketHolder => h !== null);
          if (valid.length > 0) {
            found.set(inode, valid);
            return;
          }
          this.holders.delete(inode);
        }
        misses.push(inode);
      }),
    );
    return misses;
  }

  private scanFor(inodes: readonly number[], owners: ReadonlyMap<number, number> | undefined): Promise<void> {
    const run = this.scanChain.then(async () => {
      // Another caller's scan may have found these while we waited.
      const still = inodes.filter((i) => !this.holders.has(i));
      if (still.length === 0) return;
      this.scans++;
      // Every wanted socket's owner, or none known: a scan without owners reads every uid alike.
      const uids = still.map((i) => owners?.get(i));
      const ownerUids = uids.every((u) => u !== undefined) ? new Set(uids) : undefined;
      const map = await scanSocketInodes({
        procRoot: this.procRoot,
        concurrency: this.scanConcurrency,
        wanted: new Set(still),
        ...(this.skipPids ? { skipPids: this.skipPids } : {}),
        priorityPids: this.recentPids,
        ...(ownerUids ? { ownerUids } : {}),
      });
      for (const [inode, hs] of map) this.holders.set(inode, hs);
      for (const inode of still) for (const h of map.get(inode) ?? []) this.noteRecent(h.pid);
    });
    this.scanChain = run.catch(() => undefined);
    return run;
  }

  private noteRecent(pid: number): void {
    this.recentPids = [pid, ...this.recentPids.filter((p) => p !== pid)].slice(0, 32);
  }

  /**
   * A socket inherited across fork has several holders; the one doing the talking is normally the
   * descendant (shell → curl, server → worker), so prefer a holder whose parent is another holder.
   */
  private async pickHolder(
    holders: readonly SocketHolder[],
    describe: (pid: number) => Promise<ProcessDetails | null>,
  ): Promise<ProcessDetails | null> {
    const procs = (await Promise.all(holders.map((h) => describe(h.pid)))).filter(
      (p): p is ProcessDetails => p !== null,
    );
    if (procs.length <= 1) return procs[0] ?? null;
    const pids = new Set(procs.map((p) => p.pid));
    return procs.find((p) => p.ppid !== null && pids.has(p.ppid)) ?? procs[0] ?? null;
  }

  /**
   * Attribute many connections with one read of the socket tables and at most one fd scan.
   * Result is keyed by the normalized tuple key (`tupleKey`).
   */
  async attributeMany(tuples: readonly ConnectionTuple[]): Promise<Map<string, ProcessDetails | null>> {
    const norm = tuples.map(normalizeTuple);
    const { inodeOf, ownerOf } = await this.findSockets(norm);
    const procs = await this.resolveInodes([...inodeOf.values()], ownerOf);
    const out = new Map<string, ProcessDetails | null>();
    for (const t of norm) {
      const inode = inodeOf.get(tupleKey(t));
      out.set(tupleKey(t), inode === undefined ? null : (procs.get(inode) ?? null));
    }
    return out;
  }

  /**
   * The owner (the socket table's `uid`: who created the socket) of each tuple's socket, keyed as
   * `attributeMany`'s answer, null when the tables list none. A UDP tuple's answer is the owner of
   * every socket that can have sent from its port (udpPortOwners), `{ shared }` when there is more
   * than one: nothing tells which of them sent. Reads the socket tables only: no fd scan, no
   * process read.
   */
  async socketOwners(tuples: readonly ConnectionTuple[]): Promise<Map<string, SocketOwner>> {
    const norm = tuples.map(normalizeTuple);
    const udp = norm.filter((t) => t.proto === 'udp');
    const [{ inodeOf, ownerOf }, udpOwners] = await Promise.all([this.findSockets(norm.filter((t) => t.proto !== 'udp')), this.udpPortOwners(udp)]);
    const out = new Map<string, SocketOwner>();
    for (const t of norm) {
      const key = tupleKey(t);
      if (t.proto === 'udp') {
        const uids = [...(udpOwners.get(key) ?? [])].sort((a, b) => a - b);
        out.set(key, uids.length === 0 ? null : uids.length === 1 ? (uids[0] as number) : { shared: uids });
        continue;
      }
      const inode = inodeOf.get(key);
      out.set(key, inode === undefined ? null : (ownerOf.get(inode) ?? null));
    }
    return out;
  }

  /**
   * The owners of the sockets that can send a UDP datagram from each tuple's address and port (tuple
   * key → uids): every socket in its tables (udp and udp6 for IPv4: a dual-stack socket sends IPv4
   * too) bound to that port on that address or the wildcard, connected anywhere or not (sendto
   * overrides the peer). A socket on another address of the port can send from this one too
   * (IP_PKTINFO, unprivileged): not counted, or every socket on the port's number anywhere on the
   * host (thousands on a busy one) would make it shared (docs/spec-notes.md, Not yet built). One read of the tables; read again once
   * when a port is found on no socket (a read races with sockets opening and closing elsewhere).
   */
  private async udpPortOwners(norm: readonly ConnectionTuple[]): Promise<Map<string, Set<number>>> {
    const out = new Map<string, Set<number>>();
    for (let attempt = 0; attempt < 2; attempt++) {
      // Table → port → the tuples asking about it (key, address).
      const wanted = new Map<ProcNetFile, Map<number, Array<[string, string]>>>();
      for (const t of norm) {
        const key = tupleKey(t);
        if (out.has(key)) continue;
        for (const f of tablesFor('udp', t.localIp)) {
          const byPort = wanted.get(f) ?? new Map<number, Array<[string, string]>>();
          wanted.set(f, byPort);
          const asking = byPort.get(t.localPort) ?? [];
          byPort.set(t.localPort, asking);
          asking.push([key, t.localIp]);
        }
      }
      if (wanted.size === 0) break;
      // The port as the tables write it, followed by the column's end (it may match the peer's port too).
      const needles = (f: ProcNetFile): string[] => [...(wanted.get(f)?.keys() ?? [])].map((p) => `:${p.toString(16).toUpperCase().padStart(4, '0')} `);
      // Each table on its own, so an entry is matched with the tuples that asked that table.
      const files = [...wanted.keys()];
      const read = await Promise.all(files.map((f) => readProcNet([f], this.procRoot, needles)));
      files.forEach((f, i) => {
        for (const e of read[i] ?? []) {
          if (e.inode <= 0) continue;
          for (const [key, ip] of wanted.get(f)?.get(e.localPort) ?? []) {
            // The address itself (::ffff: unwrapped) or the wildcard of either table.
            if (e.localIp !== ip && e.localIp !== '0.0.0.0' && e.localIp !== '::') continue;
            const uids = out.get(key);
            if (uids === undefined) out.set(key, new Set([e.uid]));
            else uids.add(e.uid);
          }
        }
      });
    }
    return out;
  }

  /** Each normalized tuple's socket in the tables (tuple key → inode) and each inode's owner uid. */
  private async findSockets(norm: readonly ConnectionTuple[]): Promise<{ inodeOf: Map<string, number>; ownerOf: Map<number, number> }> {
    const inodeOf = new Map<string, number>();
    const ownerOf = new Map<number, number>();
    // Phase 0 reads each tuple's own family table (tcp for IPv4); phase 1 the dual-stack table
    // (tcp6 with ::ffff: addresses) only for what phase 0 did not find: one table read, usually.
    // Phases 2-3 read both once more for what is still missing: a table read races with sockets
    // opening and closing elsewhere on the host and can miss an entry that exists.
    for (const phase of [0, 1, 2, 3]) {
      // The exact "local remote" text of each tuple in the table: only those lines get parsed.
      const needles = new Map<ProcNetFile, string[]>();
      // Entry key → [tuple key, rank] of the tuples that entry would answer (rank 0 = exact).
      const wanted = new Map<string, Array<[string, number]>>();
      for (const t of norm) {
        const f = tablesFor(t.proto, t.localIp)[phase % 2];
        const key = tupleKey(t);
        if (f === undefined || inodeOf.has(key)) continue;
        const isV6 = f.endsWith('6');
        const candidates = t.proto === 'udp' ? udpCandidates(t, isV6) : [t];
        candidates.forEach((c, rank) => {
          const l = encodeProcEndpoint(c.localIp, c.localPort, isV6);
          const r = encodeProcEndpoint(c.remoteIp, c.remotePort, isV6);
          if (l === null || r === null) return;
          const list = needles.get(f) ?? [];
          list.push(`${l} ${r}`);
          needles.set(f, list);
          const ck = tupleKey(c);
          const answers = wanted.get(ck);
          if (answers) answers.push([key, rank]);
          else wanted.set(ck, [[key, rank]]);
        });
      }
      if (needles.size === 0) continue;
      const entries = await readProcNet([...needles.keys()], this.procRoot, (f) => needles.get(f) ?? []);
      const bestRank = new Map<string, number>();
      for (const e of entries) {
        if (e.inode <= 0) continue;
        for (const [key, rank] of wanted.get(tupleKey(e)) ?? []) {
          if (rank >= (bestRank.get(key) ?? Number.POSITIVE_INFINITY)) continue;
          bestRank.set(key, rank);
          inodeOf.set(key, e.inode);
          ownerOf.set(e.inode, e.uid);
        }
      }
    }
    return { inodeOf, ownerOf };
  }
}

let defaultResolver: ProcessResolver | null = null;

/**
 * The process owning the socket with exactly this 4-tuple (local = that socket's own end), or null
 * when no visible process holds it. Never throws. Uses a shared resolver (and so a shared cache).
 */
export async function findProcessForConnection(
  tuple: ConnectionTuple,
  resolver?: ProcessResolver,
): Promise<ProcessDetails | null> {
  try {
    if (!resolver) {
      defaultResolver ??= new ProcessResolver();
      resolver = defaultResolver;
    }
    const res = await resolver.attributeMany([tuple]);
    return res.get(tupleKey(normalizeTuple(tuple))) ?? null;
  } catch {
    return null;
  }
}

export { tupleKey as connectionKey };

export interface LocalAttributorOptions extends ResolverOptions {
  /**
   * A lookup that takes longer answers null (the data plane must not wait on /proc), and goes on:
   * its own answer reaches `attribute`'s `eventually` when it ends. Default 2000.
   */
  readonly timeoutMs?: number;
  /** Lookups queued beyond this answer null at once (back-pressure under a connection storm). */
  readonly maxPending?: number;
  /** Batches (each one /proc/net read + at most one fd scan) running at once. Default 1. */
  readonly maxConcurrentScans?: number;
  /** Skip clients whose address is not one of this host's (they cannot be in our /proc). Default true. */
  readonly onlyLocalClients?: boolean;
  readonly resolver?: ProcessResolver;
}

/** A client socket and the gateway's socket it talks to (`LocalAttributor.socketOwners`). */
export interface SocketEnds {
  readonly proto: SocketProto;
  readonly clientIp: string;
  readonly clientPort: number;
  readonly serverIp: string;
  readonly serverPort: number;
}

interface Waiter {
  readonly tuple: ConnectionTuple;
  readonly resolve: (p: ProcessInfo | null) => void;
  readonly eventually: ((p: ProcessInfo | null) => void) | undefined;
}

/**
 * The gateway's local attribution. `attribute` never throws; it coalesces lookups: every request
 * that arrives while a batch is running is served by the next batch, so N simultaneous connects
 * cost one socket-table read and at most one fd scan, not N.
 */
export class LocalAttributor {
  private readonly resolver: ProcessResolver;
  private readonly timeoutMs: number;
  private readonly maxPending: number;
  private readonly maxConcurrent: number;
  private readonly onlyLocal: boolean;
  private pending: Waiter[] = [];
  private running = 0;
  private isPumpScheduled = false;
  private localAddrs: { at: number; set: Set<string> } | null = null;
  /** Batches run so far (each served one or more waiters). */
  batches = 0;

  constructor(opts: LocalAttributorOptions = {}) {
    // The gateway never attributes a client to itself, and its own fd table is the largest on the host.
    this.resolver = opts.resolver ?? new ProcessResolver({ skipPids: [process.pid], ...opts });
    this.timeoutMs = opts.timeoutMs ?? 2000;
    this.maxPending = opts.maxPending ?? 4096;
    this.maxConcurrent = Math.max(1, opts.maxConcurrentScans ?? 1);
    this.onlyLocal = opts.onlyLocalClients ?? true;
  }

  /**
   * The process behind a downstream client socket at clientIp:clientPort talking to our socket at
   * serverIp:serverPort, or null (remote client, process gone, timeout, any error). `proto` 'tcp'
   * (default): a connection to a listener; 'udp': the socket a SOCKS5 UDP association's datagrams
   * come from, connected to the relay or not, bound to the client address or the wildcard.
   * `eventually`, when given, is called once with the lookup's own answer, also when that comes
   * after the timeout has answered null: a /proc made slow to scan (thousands of descriptors held
   * open) must not make a process unknown, only known late.
   */
  attribute(
    clientIp: string,
    clientPort: number,
    serverIp: string,
    serverPort: number,
    proto: SocketProto = 'tcp',
    eventually?: (p: ProcessInfo | null) => void,
  ): Promise<ProcessInfo | null> {
    try {
      const localIp = normalizeIp(clientIp);
      if ((this.onlyLocal && !this.isLocalAddress(localIp)) || this.pending.length >= this.maxPending) {
        eventually?.(null);
        return Promise.resolve(null);
      }
      const tuple: ConnectionTuple = {
        proto,
        localIp,
        localPort: clientPort,
        remoteIp: normalizeIp(serverIp),
        remotePort: serverPort,
      };
      return new Promise<ProcessInfo | null>((resolve) => {
        let settled = false;
        const done = (p: ProcessInfo | null): void => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          resolve(p);
        };
        const timer = setTimeout(() => done(null), this.timeoutMs);
        timer.unref();
        this.pending.push({ tuple, resolve: done, eventually });
        // Pump on a microtask so lookups made in the same tick share the first batch.
        if (!this.isPumpScheduled) {
          this.isPumpScheduled = true;
          queueMicrotask(() => {
            this.isPumpScheduled = false;
            this.pump();
          });
        }
      });
    } catch {
      eventually?.(null);
      return Promise.resolve(null);
    }
  }

  /**
   * The owner uid of each socket (see `ProcessResolver.socketOwners`), null where none is listed,
   * `{ shared }` where sockets of several uids could be it; null for all when the client address is not this host's or the lookup failed. Not bounded by
   * the attributor's wait: the caller bounds its own (a SOCKS5 UDP association drops its held
   * datagrams when that runs out and takes this answer when it comes), and not batched with
   * `attribute`: one read of the tables, which the caller bounds (an association: one at a time).
   */
  socketOwners(sockets: readonly SocketEnds[]): Promise<SocketOwner[] | null> {
    try {
      if (sockets.length === 0) return Promise.resolve([]);
      if (this.onlyLocal && !sockets.every((s) => this.isLocalAddress(normalizeIp(s.clientIp)))) return Promise.resolve(null);
      const tuples: ConnectionTuple[] = sockets.map((s) => ({ proto: s.proto, localIp: s.clientIp, localPort: s.clientPort, remoteIp: s.serverIp, remotePort: s.serverPort }));
      return this.resolver.socketOwners(tuples).then(
        (m) => tuples.map((t) => m.get(tupleKey(normalizeTuple(t))) ?? null),
        () => null,
      );
    } catch {
      return Promise.resolve(null);
    }
  }

  private pump(): void {
    while (this.running < this.maxConcurrent && this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      this.running++;
      this.batches++;
      void this.runBatch(batch).finally(() => {
        this.running--;
        this.pump();
      });
    }
  }

  private async runBatch(batch: readonly Waiter[]): Promise<void> {
    let results: Map<string, ProcessDetails | null> | null = null;
    try {
      results = await this.resolver.attributeMany(batch.map((w) => w.tuple));
    } catch {
      results = null;
    }
    for (const w of batch) {
      const found = results?.get(tupleKey(w.tuple)) ?? null;
      const p: ProcessInfo | null = found ? { ...found, source: 'local' } : null;
      w.resolve(p);
      w.eventually?.(p);
    }
  }

  private isLocalAddress(ip: string): boolean {
    if (ip.startsWith('127.') || ip === '::1') return true;
    const now = Date.now();
    if (!this.localAddrs || now - this.localAddrs.at > 10_000) {
      const set = new Set<string>();
      for (const list of Object.values(networkInterfaces())) {
        for (const a of list ?? []) set.add(normalizeIp(a.address));
      }
      this.localAddrs = { at: now, set };
    }
    return this.localAddrs.set.has(ip);
  }
}
