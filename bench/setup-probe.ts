/**
 * Proxy CPU per tunnel setup of an already running proxy, for A/B comparisons of two builds side by
 * side (alternate the two, several rounds, after a warm-up round each):
 *
 *   node --import tsx bench/setup-probe.ts --pid PID --port PORT --kind http|socks [--count 5000] [--conc 50]
 *
 * Starts an echo server on a fresh loopback port, then runs `count` setups with `conc` workers:
 * connect → CONNECT (or SOCKS5 no-auth CONNECT) → 8 B echoed → close. Prints one JSON line: setups/s and
 * the proxy process's user and system CPU (from /proc/PID/stat) per setup, in µs. Loopback only.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    pid: { type: 'string' },
    port: { type: 'string' },
    kind: { type: 'string', default: 'http' },
    count: { type: 'string', default: '5000' },
    conc: { type: 'string', default: '50' },
  },
});
const pid = Number(values.pid);
const port = Number(values.port);
const kind = values.kind === 'socks' ? 'socks' : 'http';
const count = Math.min(200_000, Math.max(1, Number(values.count)));
const conc = Math.min(500, Math.max(1, Number(values.conc)));
if (!(pid > 0) || !(port > 0)) {
  console.error('usage: setup-probe.ts --pid PID --port PORT --kind http|socks [--count N] [--conc C]');
  process.exit(2);
}

const echo = net.createServer({ noDelay: true }, (s) => {
  s.on('error', () => undefined);
  s.pipe(s);
});
await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
const echoPort = (echo.address() as net.AddressInfo).port;

/** Proxy user and system CPU so far, µs (clock ticks of 10 ms). */
function cpu(): { user: number; sys: number } {
  const fields = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
  return { user: Number(fields[11]) * 10_000, sys: Number(fields[12]) * 10_000 };
}

function open(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
    let buf = Buffer.alloc(0);
    let stage = 0;
    const timer = setTimeout(() => s.destroy(new Error('setup timed out')), 10_000);
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.once('connect', () => {
      if (kind === 'http') s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
      else s.write(Buffer.from([5, 1, 0]));
    });
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      let done = false;
      if (kind === 'http') done = buf.includes('\r\n\r\n');
      else {
        if (stage === 0 && buf.length >= 2) {
          stage = 1;
          buf = buf.subarray(2);
          s.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, echoPort >> 8, echoPort & 255]));
        }
        done = stage === 1 && buf.length >= 10;
      }
      if (done) {
        clearTimeout(timer);
        s.off('data', onData);
        resolve(s);
      }
    };
    s.on('data', onData);
  });
}

let started = 0;
let ok = 0;
async function worker(): Promise<void> {
  while (started < count) {
    started++;
    const s = await open();
    s.write('pingpong');
    await new Promise<void>((resolve) => {
      let n = 0;
      s.on('data', (d: Buffer) => {
        n += d.length;
        if (n >= 8) resolve();
      });
    });
    s.destroy();
    ok++;
  }
}

const c0 = cpu();
const t0 = performance.now();
await Promise.all(Array.from({ length: conc }, worker));
const secs = (performance.now() - t0) / 1000;
const c1 = cpu();
console.log(
  JSON.stringify({ kind, ok, per_s: Math.round(ok / secs), user_us: Math.round((c1.user - c0.user) / ok), sys_us: Math.round((c1.sys - c0.sys) / ok) }),
);
echo.close();
process.exit(0);
