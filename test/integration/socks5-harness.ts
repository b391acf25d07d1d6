/**
 * Test plumbing for the SOCKS5 integration tests: the real gateway (test/helpers/gateway.ts) seen
 * from its SOCKS5 listener, a bare listener-only wiring for tests that need the server object, and
 * small loopback origins that count the bytes they actually saw on the wire.
 */
import { newViaName } from '../../gateway/via.ts';
import { once } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { DetectionHooks, GatewayContext, IdentityResolver, Logger, Resolver } from '../../gateway/context.ts';
import { GatewayError } from '../../gateway/errors.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import type { FlowSink } from '../../gateway/flow/flow-log.ts';
import { FlowTable } from '../../gateway/flow/flow-table.ts';
import { createSocksServer, type SocksServer } from '../../gateway/listeners/socks5.ts';
import { UdpRelayAddresses } from '../../gateway/udp-relay-addresses.ts';
import { compilePolicy } from '../../policy/compile.ts';
import type { Config } from '../../policy/config.ts';
import { type DeepPartial, startTestGateway, testConfig } from '../helpers/gateway.ts';

export interface SocksGateway {
  socksHost: string;
  socksPort: number;
  flows: FlowTable;
  ctx: GatewayContext;
  closed: FlowRecord[];
  logs: Array<{ level: string; msg?: string } & Record<string, unknown>>;
  waitForClosed(pred?: (r: FlowRecord) => boolean, timeoutMs?: number): Promise<FlowRecord>;
  stop(): Promise<void>;
}

const plainIdentity: IdentityResolver = {
  async resolve(claims, snapshot) {
    const cfg = snapshot.config.identity;
    if (claims.username) {
      const user = cfg.users.find((u) => u.name === claims.username);
      if (!user || user.password !== claims.password) return { ok: false, reason: 'bad-credentials' };
      return { ok: true, identity: { user: user.name, host: null, roles: snapshot.rolesFor(user.name, null), process: null } };
    }
    if (cfg.requireAuth) return { ok: false, reason: 'auth-required' };
    return { ok: true, identity: { user: null, host: null, roles: snapshot.rolesFor(null, null), process: null } };
  },
  strippedHeaders: () => [],
  trustsHeadersFrom: () => false,
  hostOf: () => null,
  reusableUntilMs: () => Number.POSITIVE_INFINITY,
  now: Date.now,
};

/** No DNS in tests: names resolve only through resolver.hosts; anything else fails like NXDOMAIN. */
const noDns: Resolver = {
  async lookup(host) {
    throw new GatewayError('EGW_DNS_FAILED', `no DNS in tests: ${host}`);
  },
};

/**
 * The real gateway (main.ts startGateway via test/helpers/gateway.ts: real identity resolver,
 * policy store, detection engine) with the shared test config, seen from its SOCKS5 listener.
 */
export async function startSocksGateway(overrides: DeepPartial<Config> = {}, listenHost = '127.0.0.1'): Promise<SocksGateway> {
  const socks = listenHost.includes(':') ? `[${listenHost}]:0` : `${listenHost}:0`;
  const gw = await startTestGateway({ ...overrides, listen: { socks } } as Parameters<typeof startTestGateway>[0], { resolver: noDns });
  return {
    socksHost: gw.socksHost,
    socksPort: gw.socksPort,
    flows: gw.flows,
    ctx: gw.ctx,
    closed: gw.closed,
    logs: gw.logs,
    waitForClosed: gw.waitForClosed,
    stop: gw.stop,
  };
}

/**
 * Only the SOCKS5 listener, wired here with a real FlowTable and compiled policy and a tiny
 * plain-password identity resolver: for tests that need the listener object itself (close()).
 */
export async function startBareSocksGateway(
  overrides: DeepPartial<Config> = {},
  listenHost = '127.0.0.1',
  detection: DetectionHooks | null = null,
  seams: { resolver?: Resolver; udpHeldBytes?: number } = {},
): Promise<SocksGateway & { server: SocksServer }> {
  const config = testConfig(overrides);
  const snapshot = compilePolicy(config);
  const closed: FlowRecord[] = [];
  const logs: SocksGateway['logs'] = [];
  const sink: FlowSink = { write: () => {}, flush: async () => {} };
  const flows = new FlowTable({ sink, keepClosed: 1000, interimSec: 0 });
  const log: Logger = {
    info: () => {},
    warn: (obj, msg) => logs.push({ level: 'warn', msg, ...obj }),
    error: (obj, msg) => logs.push({ level: 'error', msg, ...obj }),
  };
  const selfAddresses = new Set<string>();
  const ctx: GatewayContext = {
    flows,
    policy: { current: () => snapshot, modeOverride: () => null },
    identity: plainIdentity,
    attributor: null,
    resolver: seams.resolver ?? noDns,
    detection,
    log,
    selfAddresses,
    via: newViaName(),
    udpRelays: new UdpRelayAddresses(),
    isDraining: () => false,
  };
  flows.on('close', (flow: { toRecord(now: number): FlowRecord; endedAt: number | null }) => {
    closed.push(flow.toRecord(flow.endedAt ?? Date.now()));
  });
  const server = createSocksServer(ctx, seams.udpHeldBytes === undefined ? {} : { udpHeldBytes: seams.udpHeldBytes });
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, listenHost);
  await once(server, 'listening');
  const addr = server.address() as AddressInfo;
  selfAddresses.add(addr.family === 'IPv6' ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`);
  const waitForClosed = async (pred: (r: FlowRecord) => boolean = () => true, timeoutMs = 8000): Promise<FlowRecord> => {
    const found = closed.find(pred);
    if (found) return found;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        await once(flows, 'close', { signal: ac.signal });
        const hit = closed.find(pred);
        if (hit) return hit;
      }
    } catch {
      throw new Error(`no closed flow matched within ${timeoutMs} ms; closed: ${JSON.stringify(closed.map((r) => [r.protocol, r.destination, r.closeReason]))}`);
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    socksHost: addr.address,
    socksPort: addr.port,
    flows,
    ctx,
    server,
    closed,
    logs,
    waitForClosed,
    async stop() {
      for (const s of sockets) s.destroy();
      for (const f of [...flows.activeFlows().values()]) flows.kill(f.id, 'test-stop');
      if (server.listening) await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** What an origin saw on one connection, counted by the kernel-facing socket. */
export interface OriginConn {
  bytesRead: number;
  bytesWritten: number;
}

export interface TcpOrigin {
  port: number;
  host: string;
  /** Connections closed so far, with their exact byte counts. */
  done: OriginConn[];
  /** Resolves when `n` connections have closed. */
  waitDone(n: number): Promise<OriginConn[]>;
  close(): Promise<void>;
}

/**
 * A TCP origin that greets each connection with `greeting`, echoes everything, and closes its side
 * when the client half-closes. So a client sending N bytes receives greeting.length + N.
 */
export async function startTcpOrigin(host = '127.0.0.1', greeting = Buffer.alloc(0)): Promise<TcpOrigin> {
  const done: OriginConn[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('error', () => {});
    if (greeting.length > 0) s.write(greeting);
    s.pipe(s);
    s.once('close', () => {
      sockets.delete(s);
      done.push({ bytesRead: s.bytesRead, bytesWritten: s.bytesWritten });
      server.emit('conn-done');
    });
  });
  server.listen(0, host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    host,
    done,
    async waitDone(n) {
      while (done.length < n) await once(server, 'conn-done');
      return done;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

export interface UdpEcho {
  port: number;
  socket: UdpSocket;
  /** Payloads received, in order, with their source. */
  received: Array<{ data: Buffer; from: string }>;
  close(): Promise<void>;
}

/** A UDP origin that answers each datagram with `prefix` + the datagram. */
export async function startUdpEcho(type: 'udp4' | 'udp6' = 'udp4', prefix = Buffer.from('echo:')): Promise<UdpEcho> {
  const socket = createSocket(type);
  const received: UdpEcho['received'] = [];
  socket.on('message', (msg, rinfo) => {
    received.push({ data: msg, from: `${rinfo.address}:${rinfo.port}` });
    socket.send(Buffer.concat([prefix, msg]), rinfo.port, rinfo.address);
  });
  socket.bind(0, type === 'udp4' ? '127.0.0.1' : '::1');
  await once(socket, 'listening');
  return {
    port: socket.address().port,
    socket,
    received,
    close: () => new Promise<void>((r) => socket.close(() => r())),
  };
}

/**
 * Read from a socket until `n` bytes have arrived, or it ends. Uses 'data' events, not read():
 * the socks client re-emits bytes that came with its handshake reply as a 'data' event.
 */
export function readBytes(socket: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let have = 0;
    const finish = (): void => {
      socket.removeListener('data', onData);
      socket.removeListener('end', finish);
      socket.removeListener('close', finish);
      resolve(Buffer.concat(parts));
    };
    const onData = (c: Buffer): void => {
      parts.push(c);
      have += c.length;
      if (have >= n) finish();
    };
    socket.on('data', onData);
    socket.once('end', finish);
    socket.once('close', finish);
    socket.on('error', () => {});
  });
}

/** Everything a socket sends until it closes (its end or a reset), and whether it was reset. */
export async function readToEnd(socket: Socket): Promise<{ data: Buffer; error: string | null }> {
  const parts: Buffer[] = [];
  let error: string | null = null;
  socket.on('data', (c: Buffer) => parts.push(c));
  socket.on('error', (e: NodeJS.ErrnoException) => {
    error = e.code ?? e.message;
  });
  // Not events.once(): it rejects on 'error', and a reset is an answer here, not a failure.
  if (!socket.destroyed) await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { data: Buffer.concat(parts), error };
}
