/**
 * Origin / sink servers for the benchmark, run as their own process (`node --import tsx bench/origin.ts`).
 * Loopback only; ports are chosen by the kernel and announced as one JSON line on stdout
 * (`{"event":"origin","echo":P,"data":P,"http":P,"pid":N}`) and, when forked with IPC, as a message.
 *
 * - echo : pure TCP echo (setup-rate and idle tests). `echoPorts` lists ECHO_LISTENERS ports of the same
 *          echo: the driver gives each target run a port of its own, so no target inherits the
 *          TIME_WAIT sockets an earlier one left towards the echo (they make connect() dearer).
 * - data : throughput. Client sends 'U' + uint64be N: server swallows N bytes then replies 'K';
 *          'D' + uint64be N: server streams N bytes to the client.
 * - http : minimal raw-socket HTTP/1.1 origin (keep-alive, pipelining-safe): /1k, /1m, /0.
 *          Deliberately not node:http, so the origin costs far less than any proxy in front of it.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({ options: { host: { type: 'string', default: '127.0.0.1' }, 'base-port': { type: 'string', default: '0' } } });
/** Listen from this port upwards, skipping ports in use (0 = kernel-chosen ports). */
let nextPort = Number(opts['base-port']) || 0;
const host = opts.host ?? '127.0.0.1';
if (!/^(127\.\d+\.\d+\.\d+|::1)$/.test(host)) {
  console.error('origin: loopback only');
  process.exit(2);
}

const CHUNK = Buffer.alloc(256 * 1024, 0x61);
const CRLF2 = Buffer.from('\r\n\r\n');
const ignore = (): void => {};

function pump(sock: net.Socket, total: number): void {
  let left = total;
  const go = (): void => {
    while (left > 0 && !sock.destroyed) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!sock.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        sock.once('drain', go);
        return;
      }
    }
  };
  go();
}

/** Echo listeners: one per target run (the driver wraps around past this many). */
const ECHO_LISTENERS = 32;
const onEcho = (s: net.Socket): void => {
  s.on('error', ignore);
  s.pipe(s);
};
const echoes = Array.from({ length: ECHO_LISTENERS }, () => net.createServer({ noDelay: true }, onEcho));

const data = net.createServer({ noDelay: true }, (s) => {
  s.on('error', ignore);
  let header: Buffer | null = null;
  let mode = 0;
  let left = 0;
  s.on('data', (chunk: Buffer) => {
    let d = chunk;
    if (mode === 0) {
      header = header ? Buffer.concat([header, d]) : d;
      if (header.length < 9) return;
      mode = header[0] ?? 0;
      left = Number(header.readBigUInt64BE(1));
      d = header.subarray(9);
      header = null;
      if (mode === 0x44 /* D */) {
        pump(s, left);
        return;
      }
    }
    if (mode === 0x55 /* U */) {
      left -= d.length;
      if (left <= 0) {
        s.write('K');
        mode = 1;
      }
    }
  });
});

function response(n: number, status = '200 OK'): Buffer {
  return Buffer.concat([
    Buffer.from(
      `HTTP/1.1 ${status}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${n}\r\n` +
        `Cache-Control: no-store\r\nDate: ${new Date().toUTCString()}\r\n\r\n`,
      'latin1',
    ),
    Buffer.alloc(n, 0x62),
  ]);
}
const RESPONSES = new Map<string, Buffer>([
  ['/1k', response(1024)],
  ['/1m', response(1 << 20)],
  ['/0', response(0)],
]);
const NOT_FOUND = response(0, '404 Not Found');

const httpServer = net.createServer({ noDelay: true }, (s) => {
  s.on('error', ignore);
  let buf: Buffer | null = null;
  let skip = 0;
  s.on('data', (chunk: Buffer) => {
    let d = chunk;
    if (skip) {
      const k = Math.min(skip, d.length);
      skip -= k;
      d = d.subarray(k);
      if (!d.length) return;
    }
    buf = buf ? Buffer.concat([buf, d]) : d;
    for (let i = 0; i < 10_000; i++) {
      if (skip) {
        const k = Math.min(skip, buf.length);
        skip -= k;
        buf = buf.subarray(k);
      }
      const end = buf.indexOf(CRLF2);
      if (end < 0) {
        if (buf.length > 65536) s.destroy();
        return;
      }
      const head = buf.toString('latin1', 0, end);
      buf = buf.subarray(end + 4);
      const eol = head.indexOf('\r\n');
      const parts = (eol < 0 ? head : head.slice(0, eol)).split(' ');
      let target = parts[1] ?? '';
      const version = parts[2] ?? 'HTTP/1.1';
      if (target[0] !== '/') {
        try {
          target = new URL(target).pathname;
        } catch {
          target = '';
        }
      }
      const q = target.indexOf('?');
      if (q >= 0) target = target.slice(0, q);
      const lower = head.toLowerCase();
      const cl = /\r\ncontent-length:\s*(\d+)/.exec(lower);
      if (cl) skip = Number(cl[1]);
      const close =
        /\r\nconnection:[^\r]*close/.test(lower) || (version === 'HTTP/1.0' && !/\r\nconnection:[^\r]*keep-alive/.test(lower));
      s.write(RESPONSES.get(target) ?? NOT_FOUND);
      if (close) {
        s.end();
        return;
      }
      if (!buf.length) {
        buf = null;
        return;
      }
    }
  });
});

function listenOn(server: net.Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, backlog: 4096 }, () => {
      server.removeListener('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

async function listen(server: net.Server): Promise<number> {
  if (nextPort === 0) return listenOn(server, 0);
  for (let tries = 0; tries < 1000; tries++) {
    const port = nextPort++;
    try {
      return await listenOn(server, port);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
  }
  throw new Error(`origin: no free port from ${opts['base-port']}`);
}

const echoPorts: number[] = [];
for (const e of echoes) echoPorts.push(await listen(e));
const ports = { echo: echoPorts[0] as number, echoPorts, data: await listen(data), http: await listen(httpServer) };
const ready = { event: 'origin', host, ...ports, pid: process.pid };
console.log(JSON.stringify(ready));
process.send?.(ready);
// Forked with IPC: exit when the driver goes away, so an origin is never left behind.
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
