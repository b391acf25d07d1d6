/**
 * Real processes, real loopback sockets, real /proc: a child (curl, node) holds a connection to a
 * test server and attribution must name that child.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { readFile, realpath } from 'node:fs/promises';
import { type AddressInfo, type Server, type Socket, createServer } from 'node:net';
import { userInfo } from 'node:os';
import { basename } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LocalAttributor, ProcessResolver, findProcessForConnection } from '../../agent/attribution.ts';
import { ATTRIBUTION_GUARD_MS } from '../helpers/detection-live.ts';
import { killIfRunning } from '../helpers/serve-process.ts';

const children: ChildProcess[] = [];
const servers: Server[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) await killIfRunning(c);
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r()))));
});

async function listen(host: string): Promise<Server> {
  const server = createServer((s) => {
    sockets.push(s);
  });
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  return server;
}

/** Spawn a client and wait for the server to accept `count` connections from it (fails if the child exits first). */
function spawnAndAccept(server: Server, cmd: string, args: string[], count = 1): Promise<{ child: ChildProcess; conns: Socket[] }> {
  const child = spawn(cmd, args, { stdio: ['pipe', 'ignore', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    const conns: Socket[] = [];
    const onConn = (s: Socket): void => {
      conns.push(s);
      if (conns.length === count) {
        server.off('connection', onConn);
        resolve({ child, conns });
      }
    };
    server.on('connection', onConn);
    child.once('exit', (code) => reject(new Error(`${cmd} exited (${code}) before connecting`)));
    child.once('error', reject);
  });
}

function port(server: Server): number {
  return (server.address() as AddressInfo).port;
}

const selfLoginuid = async (): Promise<number> => Number((await readFile('/proc/self/loginuid', 'utf8')).trim());

describe('findProcessForConnection', () => {
  it('names curl holding an IPv4 connection: pid, name, uid, user, loginuid, ppid, parent', async () => {
    const server = await listen('127.0.0.1');
    const { child, conns } = await spawnAndAccept(server, 'curl', ['-s', `http://127.0.0.1:${port(server)}/`]);
    const c = conns[0]!;
    const p = await findProcessForConnection({
      proto: 'tcp',
      localIp: c.remoteAddress!,
      localPort: c.remotePort!,
      remoteIp: c.localAddress!,
      remotePort: c.localPort!,
    });
    expect(p).not.toBeNull();
    expect(p?.pid).toBe(child.pid);
    expect(p?.name).toBe('curl');
    expect(p?.exe).toMatch(/curl$/);
    expect(p?.cmdline).toBe(`curl -s http://127.0.0.1:${port(server)}/`);
    expect(p?.uid).toBe(process.getuid?.());
    expect(p?.user).toBe(userInfo().username);
    expect(p?.loginuid).toBe(await selfLoginuid());
    expect(p?.ppid).toBe(process.pid);
    expect(p?.parentExe).toBe(process.execPath);
    expect(p?.startedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('the reversed tuple (the server side) is our own process, not the client', async () => {
    const server = await listen('127.0.0.1');
    const { child, conns } = await spawnAndAccept(server, 'curl', ['-s', `http://127.0.0.1:${port(server)}/`]);
    const c = conns[0]!;
    const p = await findProcessForConnection({
      proto: 'tcp',
      localIp: c.localAddress!,
      localPort: c.localPort!,
      remoteIp: c.remoteAddress!,
      remotePort: c.remotePort!,
    });
    expect(p?.pid).toBe(process.pid);
    expect(p?.pid).not.toBe(child.pid);
  });

  it('names a node client over IPv6 ::1', async () => {
    const server = await listen('::1');
    const script = `require('net').connect(${port(server)}, '::1'); process.stdin.resume();`;
    const { child, conns } = await spawnAndAccept(server, process.execPath, ['-e', script]);
    const c = conns[0]!;
    expect(c.remoteAddress).toBe('::1');
    const p = await findProcessForConnection({
      proto: 'tcp',
      localIp: c.remoteAddress!,
      localPort: c.remotePort!,
      remoteIp: c.localAddress!,
      remotePort: c.localPort!,
    });
    expect(p?.pid).toBe(child.pid);
    // The name is the kernel's comm (node 24 renames its main thread "MainThread"); the executable
    // is the node binary either way, and the detectors match on both.
    expect(p?.exe).toBe(await realpath(process.execPath));
    expect([p?.name, basename(p?.exe ?? '')]).toContain(basename(process.execPath));
    expect(p?.ppid).toBe(process.pid);
  });

  // A SOCKS5 UDP client's datagram socket is rarely connected and often bound to 0.0.0.0: the
  // association's local attribution looked for an exact 4-tuple (and in the TCP table) and missed it.
  it('names an unconnected UDP socket bound to the wildcard, by the address its datagrams come from', async () => {
    const script = `const s=require('dgram').createSocket('udp4');s.bind(0,'0.0.0.0',()=>{console.log(s.address().port)});process.stdin.resume();`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(child);
    const clientPort = await new Promise<number>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      child.once('exit', () => reject(new Error('udp client exited')));
    });
    const tuple = { proto: 'udp' as const, localIp: '127.0.0.1', localPort: clientPort, remoteIp: '127.0.0.1', remotePort: 9 };
    expect((await findProcessForConnection(tuple))?.pid).toBe(child.pid);
    // The port alone is not enough: the TCP table has no such socket.
    expect(await findProcessForConnection({ ...tuple, proto: 'tcp' })).toBeNull();
  });

  it('names a connected UDP socket', async () => {
    const sink = createSocket('udp4');
    await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
    try {
      const sinkPort = sink.address().port;
      const script = `const s=require('dgram').createSocket('udp4');s.connect(${sinkPort},'127.0.0.1',()=>{console.log(s.address().port)});process.stdin.resume();`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
      children.push(child);
      const clientPort = await new Promise<number>((resolve, reject) => {
        child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
        child.once('exit', () => reject(new Error('udp client exited')));
      });
      const p = await findProcessForConnection({
        proto: 'udp',
        localIp: '127.0.0.1',
        localPort: clientPort,
        remoteIp: '127.0.0.1',
        remotePort: sinkPort,
      });
      expect(p?.pid).toBe(child.pid);
    } finally {
      sink.close();
    }
  });

  it('answers null for a tuple nobody holds and for a client that has exited', async () => {
    const server = await listen('127.0.0.1');
    expect(
      await findProcessForConnection({ proto: 'tcp', localIp: '127.0.0.1', localPort: 1, remoteIp: '127.0.0.1', remotePort: port(server) }),
    ).toBeNull();
    const { child, conns } = await spawnAndAccept(server, 'curl', ['-s', `http://127.0.0.1:${port(server)}/`]);
    const c = conns[0]!;
    const tuple = { proto: 'tcp' as const, localIp: c.remoteAddress!, localPort: c.remotePort!, remoteIp: c.localAddress!, remotePort: c.localPort! };
    const resolver = new ProcessResolver();
    expect((await findProcessForConnection(tuple, resolver))?.pid).toBe(child.pid);
    await killIfRunning(child);
    // The cached inode → pid must not outlive the process.
    expect(await findProcessForConnection(tuple, resolver)).toBeNull();
  });

  it('never throws: an unreadable /proc gives null', async () => {
    const resolver = new ProcessResolver({ procRoot: '/nonexistent-proc' });
    expect(
      await findProcessForConnection({ proto: 'tcp', localIp: '127.0.0.1', localPort: 5, remoteIp: '127.0.0.1', remotePort: 6 }, resolver),
    ).toBeNull();
  });
});

describe('LocalAttributor', () => {
  it('coalesces simultaneous lookups into one batch and one fd scan, each answered with its own PID', async () => {
    const server = await listen('127.0.0.1');
    const n = 5;
    // One at a time: each helper call owns the next accepted connection.
    const accepted: Array<{ child: ChildProcess; conns: Socket[] }> = [];
    for (let i = 0; i < n; i++) accepted.push(await spawnAndAccept(server, 'curl', ['-s', `http://127.0.0.1:${port(server)}/`]));
    const resolver = new ProcessResolver();
    // The default 2 s wait answers null when a loaded machine scans /proc slower than that: these
    // cases check whom a lookup names, so they wait for its answer (the wait is tested elsewhere).
    const attributor = new LocalAttributor({ resolver, timeoutMs: ATTRIBUTION_GUARD_MS });
    const conns = accepted.flatMap((a) => a.conns);
    const results = await Promise.all(
      conns.map((c) => attributor.attribute(c.remoteAddress!, c.remotePort!, c.localAddress!, c.localPort!)),
    );
    expect(attributor.batches).toBe(1);
    expect(resolver.scans).toBe(1);
    expect(results.map((r) => r?.pid)).toEqual(accepted.map((a) => a.child.pid));
    for (const r of results) {
      expect(r?.name).toBe('curl');
      expect(r?.source).toBe('local');
    }
    // A second lookup of a known connection is served from the cache: no new scan.
    await attributor.attribute(conns[0]!.remoteAddress!, conns[0]!.remotePort!, conns[0]!.localAddress!, conns[0]!.localPort!);
    expect(resolver.scans).toBe(1);
  });

  it('handles an IPv4-mapped server address (dual-stack listener) and skips non-local clients', async () => {
    const server = await listen('::');
    const { child, conns } = await spawnAndAccept(server, 'curl', ['-s', `http://127.0.0.1:${port(server)}/`]);
    const c = conns[0]!;
    expect(c.remoteAddress).toBe('::ffff:127.0.0.1');
    const attributor = new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS });
    const p = await attributor.attribute(c.remoteAddress!, c.remotePort!, c.localAddress!, c.localPort!);
    expect(p?.pid).toBe(child.pid);
    const before = attributor.batches;
    expect(await attributor.attribute('192.0.2.10', 40000, '127.0.0.1', port(server))).toBeNull();
    expect(attributor.batches).toBe(before);
  });
});
