/**
 * Reference point only: "what plain Node piping achieves" (port of ../shared/bench/naive-node-proxy.mjs).
 * HTTP proxy (CONNECT via socket.pipe, absolute-URI via http.request + keep-alive agent) and a bare
 * SOCKS5 CONNECT server (no auth, IPv4/domain). No logging, no limits, no ACLs. Loopback only.
 *   node --import tsx bench/naive-proxy.ts [--http-port P] [--socks-port P] [--client undici]
 *   → prints {"event":"listening","http":"127.0.0.1:P","socks":"127.0.0.1:P"}
 *
 * `--connect raw` (bench target naive-relay): the HTTP port is a plain `net` server that takes a CONNECT
 * head from the first packet, dials, answers 200 and pipes: no node:http at all, the least a Node
 * CONNECT relay can do per setup. It serves nothing else.
 *
 * `--client undici` (bench target naive-undici): absolute-URI requests go out through an undici
 * Agent's `dispatch`, as egressgate's do (node:http in, undici out, hop-by-hop headers dropped, Via
 * added), with nothing else: the ceiling of egressgate's absolute-URI architecture on this machine.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { Agent, type Dispatcher } from 'undici';

const agent = new http.Agent({ keepAlive: true, maxSockets: 1024 });
/** The value after `flag` on the command line, or null. */
const flagValue = (flag: string): string | null => {
  const i = process.argv.indexOf(flag);
  return i > 0 ? (process.argv[i + 1] ?? null) : null;
};
const viaUndici = flagValue('--client') === 'undici';
const undiciAgent = new Agent({ keepAliveTimeout: 4000, pipelining: 1, connect: { noDelay: true } });
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

function withoutHopByHop(raw: readonly (string | Buffer)[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = String(raw[i]);
    if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, String(raw[i + 1]));
  }
  return out;
}

function forwardWithUndici(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? '';
  const slash = url.indexOf('/', url.indexOf('//') + 2);
  if (!url.startsWith('http://') || slash < 0) {
    res.writeHead(400).end();
    return;
  }
  const headers = withoutHopByHop(req.rawHeaders);
  headers.push('via', '1.1 naive');
  const hasBody = req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0';
  const handler: Dispatcher.DispatchHandler = {
    onConnect: () => {},
    onHeaders: (status, raw, _resume, statusText) => {
      res.writeHead(status, statusText, withoutHopByHop(raw));
      return true;
    },
    onData: (chunk) => res.write(chunk),
    onComplete: () => res.end(),
    onError: () => {
      if (res.headersSent) res.destroy();
      else res.writeHead(502).end();
    },
  };
  const body = hasBody ? req : null;
  undiciAgent.dispatch({ origin: url.slice(0, slash), path: url.slice(slash), method: req.method as Dispatcher.HttpMethod, headers, body }, handler);
}

const server = http.createServer((req, res) => {
  if (viaUndici) {
    forwardWithUndici(req, res);
    return;
  }
  let u: URL;
  try {
    u = new URL(req.url ?? '');
  } catch {
    res.writeHead(400).end();
    return;
  }
  const up = http.request(
    { host: u.hostname, port: u.port || 80, path: u.pathname + u.search, method: req.method, headers: req.headers, agent },
    (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    },
  );
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(up);
});
server.keepAliveTimeout = 60_000;
/** CONNECT `authority` ("host:port", IPv6 in brackets): dial, answer 200, pipe both ways. */
const OK_200 = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n');
function relay(cs: net.Socket, authority: string, head: Buffer): void {
  const i = authority.lastIndexOf(':');
  const host = authority.slice(0, i).replace(/^\[|\]$/g, '');
  const us = net.connect({ host, port: Number(authority.slice(i + 1)), noDelay: true }, () => {
    cs.write(OK_200);
    if (head.length) us.write(head);
    us.pipe(cs);
    cs.pipe(us);
  });
  const kill = (): void => {
    us.destroy();
    cs.destroy();
  };
  us.on('error', kill);
  cs.on('error', kill);
  us.on('close', kill);
  cs.on('close', kill);
}
server.on('connect', (req: http.IncomingMessage, cs: net.Socket, head: Buffer) => relay(cs, req.url ?? '', head));

const socks = net.createServer({ noDelay: true }, (cs) => {
  cs.on('error', () => cs.destroy());
  cs.once('data', (g: Buffer) => {
    if (g[0] !== 5) {
      cs.destroy();
      return;
    }
    cs.write(Buffer.from([5, 0]));
    cs.once('data', (r: Buffer) => {
      const ipv4 = r[3] === 1;
      const host = ipv4 ? r.subarray(4, 8).join('.') : r.subarray(5, 5 + (r[4] ?? 0)).toString();
      const port = r.readUInt16BE(ipv4 ? 8 : 5 + (r[4] ?? 0));
      const us = net.connect({ host, port, noDelay: true }, () => {
        cs.write(Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 0]));
        us.pipe(cs);
        cs.pipe(us);
      });
      const kill = (): void => {
        us.destroy();
        cs.destroy();
      };
      us.on('error', () => {
        cs.end(Buffer.from([5, 5, 0, 1, 0, 0, 0, 0, 0, 0]));
        us.destroy();
      });
      cs.on('close', kill);
      us.on('close', kill);
    });
  });
});

function listen(s: net.Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => resolve((s.address() as AddressInfo).port));
  });
}
// --http-port P --socks-port P (bench/run.ts picks them); 0 = any.
const portArg = (flag: string): number => Number(flagValue(flag)) || 0;
/** `--connect raw`: CONNECT only, parsed from the first packet (the bench's clients send it whole). */
const rawRelay = net.createServer({ noDelay: true }, (cs) => {
  cs.on('error', () => cs.destroy());
  cs.once('data', (d: Buffer) => {
    const head = d.toString('latin1');
    const end = head.indexOf('\r\n\r\n');
    const sp = head.indexOf(' ');
    if (!head.startsWith('CONNECT ') || end < 0) {
      cs.destroy();
      return;
    }
    relay(cs, head.slice(sp + 1, head.indexOf(' ', sp + 1)), d.subarray(end + 4));
  });
});
const hp = await listen(flagValue('--connect') === 'raw' ? rawRelay : server, portArg('--http-port'));
const sp = await listen(socks, portArg('--socks-port'));
console.log(JSON.stringify({ event: 'listening', http: `127.0.0.1:${hp}`, socks: `127.0.0.1:${sp}`, pid: process.pid }));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
