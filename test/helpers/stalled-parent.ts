/**
 * A parent proxy whose TCP accept stalls, on loopback and without nftables: it listens with a
 * backlog of 1 from a worker thread whose event loop is held in Atomics.wait, so nothing accepts;
 * two filler connections fill the kernel's accept queue, and Linux then drops every further SYN.
 * A dialler's connect hangs (SYN_SENT in /proc/net/tcp, its SYN retransmitted after 1 s, then
 * again) until `release()` lets the worker run: the next retransmitted SYN gets in, and the worker
 * serves as a parent. An http parent answers each CONNECT with `answer` (a status line, the blank
 * line, then the destination's "first bytes"), a socks5 parent picks no-auth at once and answers
 * the CONNECT request with a success reply followed by `answer`; both `answerDelayMs` after the
 * request. `answer` null: the request is never answered.
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';

export interface StalledParent {
  port: number;
  url: string;
  /** Resolves once a connection to the parent is in SYN_SENT with its SYN retransmitted `n` times. */
  waitSynRetransmits(n: number, timeoutMs?: number): Promise<void>;
  /** Let the worker accept: the queued fillers, then whatever SYN comes next. */
  release(): void;
  close(): Promise<void>;
}

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const gate = new Int32Array(workerData.gate);
const sockets = new Set();
const timers = new Set();
const server = net.createServer((c) => {
  sockets.add(c);
  c.on('error', () => {});
  c.on('close', () => sockets.delete(c));
  let got = Buffer.alloc(0);
  let isGreeted = false;
  const onData = (d) => {
    got = Buffer.concat([got, d]);
    let reply = Buffer.from(workerData.answer ?? '', 'latin1');
    if (workerData.protocol === 'socks5') {
      if (!isGreeted) {
        if (got.length < 2 || got.length < 2 + got[1]) return;
        got = got.subarray(2 + got[1]);
        isGreeted = true;
        c.write(Buffer.from([5, 0]));
      }
      if (got.length < 10) return;
      reply = Buffer.concat([Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 80]), reply]);
    } else if (!got.includes('\\r\\n\\r\\n')) return;
    c.removeListener('data', onData);
    if (workerData.answer === null) return;
    const timer = setTimeout(() => {
      timers.delete(timer);
      c.write(reply);
    }, workerData.answerDelayMs);
    timers.add(timer);
  };
  c.on('data', onData);
});
parentPort.on('message', () => {
  // An answer not yet due is dropped: the worker (and close()) need not wait for it.
  for (const t of timers) clearTimeout(t);
  for (const s of sockets) s.destroy();
  server.close(() => parentPort.close());
});
server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
  parentPort.postMessage(server.address().port);
  // Hold the event loop (no accept) until release() or close(); at most 60 s.
  Atomics.wait(gate, 0, 0, 60000);
});
`;

/** The most retransmissions of a SYN to 127.0.0.1:`port` still in SYN_SENT (/proc/net/tcp), -1 if none. */
export function synRetransmits(port: number): number {
  const rem = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  let most = -1;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[2]?.endsWith(rem) && f[3] === '02') most = Math.max(most, Number.parseInt(f[6] ?? '0', 16));
  }
  return most;
}

export async function startStalledParent(opts: { protocol: 'http' | 'socks5'; answer: string | null; answerDelayMs?: number }): Promise<StalledParent> {
  const gate = new SharedArrayBuffer(4);
  const workerData = { gate, protocol: opts.protocol, answer: opts.answer, answerDelayMs: opts.answerDelayMs ?? 0 };
  const worker = new Worker(WORKER, { eval: true, workerData });
  const [port] = (await once(worker, 'message')) as [number];
  const fillers: Socket[] = [];
  for (let i = 0; i < 2; i++) {
    const s = connect({ host: '127.0.0.1', port });
    s.on('error', () => {});
    await once(s, 'connect');
    fillers.push(s);
  }
  const release = (): void => {
    Atomics.store(new Int32Array(gate), 0, 1);
    Atomics.notify(new Int32Array(gate), 0);
  };
  return {
    port,
    url: `${opts.protocol}://127.0.0.1:${port}`,
    async waitSynRetransmits(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (synRetransmits(port) < n) {
        if (Date.now() > deadline) throw new Error(`no SYN to port ${port} retransmitted ${n} times within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    release,
    async close() {
      for (const s of fillers) s.destroy();
      release();
      worker.postMessage('close');
      await once(worker, 'exit');
    },
  };
}
