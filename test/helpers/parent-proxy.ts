/**
 * Parent proxies for the chaining tests, written here so a test decides what the parent does: a
 * SOCKS5 server (RFC 1928 CONNECT, optional RFC 1929 login) and an HTTP CONNECT proxy. Each
 * records what it was asked and relays to the address it was given (allowHalfOpen both ways), or
 * refuses with a chosen reply, or says nothing at all.
 */
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';

/**
 * What the parent does with the next request: relay, refuse with this SOCKS reply / HTTP status (an
 * http parent's refusal with `fields` in its head too), or stay silent. A relaying http parent
 * answers `HTTP/1.1 <answer>` (default `200 Connection established`); with `withFirstBytes` either
 * parent holds its answer until the destination's first bytes and sends both in one write (one
 * segment), as a parent that answers late may. An http
 * parent's `interim` heads (`100 Continue`, …) go first, each in a write of its own, or with
 * `interimInOneWrite` all together with the final head. `drip`: an http parent that sends an interim
 * head (`102 Processing`) every `everyMs` and never a final answer.
 */
export type ParentMode =
  | { kind: 'relay'; answer?: string; withFirstBytes?: boolean; interim?: string[]; interimInOneWrite?: boolean }
  | { kind: 'refuse'; code: number; fields?: string[] }
  | { kind: 'silent' }
  | { kind: 'drip'; everyMs: number };

export interface ParentProxy {
  port: number;
  url(login?: string): string;
  mode: ParentMode;
  /** Per request: the target asked for (`host:port`, IP literals as received) and the login it carried. */
  seen: Array<{ target: string; login: string | null; head?: string }>;
  /** The login each connection still open carried (null: none, or not asked yet), in accept order. */
  openLogins(): Array<string | null>;
  close(): Promise<void>;
}

/** A parent not yet listening: `listen` gives it its port, URL and close. */
function unstarted(): ParentProxy {
  return { port: 0, url: () => '', mode: { kind: 'relay' }, seen: [], openLogins: () => [], close: async () => {} };
}

/** The login each parent connection carried, once its request was read. */
const logins = new WeakMap<Socket, string | null>();

/**
 * Listen on a port of `host` (loopback: 127.0.0.0/8 or ::1) and fill in `p`'s port, URL
 * (`scheme://[login@]<host>:port`, an IPv6 host in brackets), openLogins and close.
 */
async function listen(p: ParentProxy, scheme: string, server: Server, sockets: Set<Socket>, host: string, port = 0): Promise<void> {
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(port, host);
  await once(server, 'listening');
  p.port = (server.address() as AddressInfo).port;
  const authority = host.includes(':') ? `[${host}]` : host;
  p.url = (l) => `${scheme}://${l ? `${l}@` : ''}${authority}:${p.port}`;
  p.openLogins = () => [...sockets].map((s) => logins.get(s) ?? null);
  p.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
}

/** Connect to host:port, send the client `answer` (alone, or with the destination's first bytes), then relay both ways. */
function relay(client: Socket, host: string, port: number, answer: Buffer, withFirstBytes: boolean, onUp: () => void): void {
  const up = connect({ host, port, allowHalfOpen: true }, () => {
    let pending: Buffer | null = answer;
    if (!withFirstBytes) {
      client.write(answer);
      pending = null;
    }
    onUp();
    client.pipe(up);
    up.on('data', (d: Buffer) => {
      const out = pending ? Buffer.concat([pending, d]) : d;
      pending = null;
      if (!client.write(out)) up.pause();
    });
    client.on('drain', () => up.resume());
    up.on('end', () => {
      if (pending) client.end(pending);
      else client.end();
    });
  });
  up.on('error', () => client.destroy());
  client.on('close', () => up.destroy());
}

/**
 * A SOCKS5 parent; with `login` it demands RFC 1929 username/password `user:pass` (`*`: any,
 * recorded). It listens on `host` (another loopback address than 127.0.0.1 if asked).
 */
export async function startSocksParent(login?: string, host = '127.0.0.1'): Promise<ParentProxy> {
  const sockets = new Set<Socket>();
  const p = unstarted();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    let buf = Buffer.alloc(0);
    let step: 'greeting' | 'login' | 'request' = 'greeting';
    let who: string | null = null;
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      if (step === 'greeting') {
        if (buf.length < 2 || buf.length < 2 + (buf[1] as number)) return;
        const methods = [...buf.subarray(2, 2 + (buf[1] as number))];
        buf = buf.subarray(2 + (buf[1] as number));
        const want = login ? 0x02 : 0x00;
        if (!methods.includes(want)) {
          c.end(Buffer.from([5, 0xff]));
          return;
        }
        c.write(Buffer.from([5, want]));
        step = login ? 'login' : 'request';
      }
      if (step === 'login') {
        const ul = buf[1];
        if (ul === undefined || buf.length < 3 + ul) return;
        const pl = buf[2 + ul] as number;
        if (buf.length < 3 + ul + pl) return;
        who = `${buf.subarray(2, 2 + ul).toString()}:${buf.subarray(3 + ul, 3 + ul + pl).toString()}`;
        buf = buf.subarray(3 + ul + pl);
        if (login !== '*' && who !== login) {
          c.end(Buffer.from([1, 1]));
          return;
        }
        c.write(Buffer.from([1, 0]));
        step = 'request';
      }
      if (buf.length < 5) return;
      const atyp = buf[3];
      const len = atyp === 1 ? 4 : atyp === 4 ? 16 : 1 + (buf[4] as number);
      if (buf.length < 4 + len + 2) return;
      const addr = buf.subarray(4, 4 + len);
      const host = atyp === 1 ? [...addr].join('.') : atyp === 4 ? (addr.toString('hex').match(/.{4}/g) as string[]).join(':') : addr.subarray(1).toString();
      const port = buf.readUInt16BE(4 + len);
      const rest = buf.subarray(4 + len + 2);
      c.removeListener('data', onData);
      c.pause();
      p.seen.push({ target: `${host}:${port}`, login: who });
      logins.set(c, who);
      const mode = p.mode;
      if (mode.kind === 'silent' || mode.kind === 'drip') return;
      if (mode.kind === 'refuse') {
        c.end(Buffer.from([5, mode.code, 0, 1, 0, 0, 0, 0, 0, 0]));
        return;
      }
      relay(c, host, port, Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]), mode.withFirstBytes === true, () => {
        if (rest.length > 0) c.unshift(rest);
      });
    };
    c.on('data', onData);
  });
  await listen(p, 'socks5', server, sockets, host);
  return p;
}

/** An HTTP CONNECT parent on `host` (`port`: 0, any); records each CONNECT head and its Proxy-Authorization (decoded). */
export async function startHttpParent(host = '127.0.0.1', port = 0): Promise<ParentProxy> {
  const sockets = new Set<Socket>();
  const p = unstarted();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    c.on('error', () => {});
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end === -1) return;
      c.removeListener('data', onData);
      c.pause();
      const head = buf.subarray(0, end).toString('latin1');
      const rest = buf.subarray(end + 4);
      const target = head.split(' ')[1] as string;
      const auth = /^proxy-authorization: basic (\S+)$/im.exec(head)?.[1];
      p.seen.push({ target, login: auth ? Buffer.from(auth, 'base64').toString() : null, head });
      logins.set(c, auth ? Buffer.from(auth, 'base64').toString() : null);
      const mode = p.mode;
      if (mode.kind === 'silent') return;
      if (mode.kind === 'drip') {
        const timer = setInterval(() => c.write('HTTP/1.1 102 Processing\r\n\r\n'), mode.everyMs);
        c.once('close', () => clearInterval(timer));
        return;
      }
      if (mode.kind === 'refuse') {
        c.end(`HTTP/1.1 ${mode.code} Refused\r\n${(mode.fields ?? []).map((f) => `${f}\r\n`).join('')}Content-Length: 0\r\n\r\n`);
        return;
      }
      const i = target.lastIndexOf(':');
      const interim = (mode.interim ?? []).map((h) => `HTTP/1.1 ${h}\r\n\r\n`);
      const final = `HTTP/1.1 ${mode.answer ?? '200 Connection established'}\r\n\r\n`;
      if (!mode.interimInOneWrite) for (const h of interim) c.write(h);
      const answer = Buffer.from(mode.interimInOneWrite ? interim.join('') + final : final, 'latin1');
      relay(c, target.slice(0, i).replace(/^\[|\]$/g, ''), Number(target.slice(i + 1)), answer, mode.withFirstBytes === true, () => {
        if (rest.length > 0) c.unshift(rest);
      });
    };
    c.on('data', onData);
  });
  await listen(p, 'http', server, sockets, host, port);
  return p;
}
