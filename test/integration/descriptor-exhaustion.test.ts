/**
 * `egressgate serve` under a low descriptor limit (`ulimit -n`), filled with connections until it
 * has none left. A dial that finds no descriptor (EMFILE) is the gateway's own failure: the client
 * gets 503 `out-of-descriptors` (SOCKS5 0x01), the flow is recorded so, the log says it once, not per
 * flow, and the scan detector does not count it. Before, each was 502 `unreachable` (SOCKS5 0x04)
 * with a warning per flow, and a host whose connections failed on 15 ports of one address while the
 * process was full was taken for a port scan and quarantined after the descriptors came back.
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import type { Served } from '../helpers/serve-process.ts';
import { readUntil } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';
import { connectFrom, fillDescriptors, NOFILE, openDescriptors, socksPort, serveUnderLimit } from '../helpers/descriptor-limit.ts';

const TOKEN = 'descriptor-exhaustion-token-0123456789';
/**
 * Low enough to fill in about a second; node and the listeners take about 25, and node's loader opens
 * the gateway's modules concurrently at start: dist/cli.js exited EMFILE under 96 (listened at 128),
 * and a start through tsx on a loaded machine took more than 128 at once.
 */
/** One more than the scan detector's default failedPortsOnOneHost (15). */
const PORTS = 16;
/** A client of its own, so its records and its identity are told apart. */
const VICTIM = '127.0.0.2';

const fx = serveEchoFixture('egw-descriptors-');
const held: Socket[] = [];

afterEach(() => {
  for (const s of held) s.destroy();
  held.length = 0;
});

/** A CONNECT from `from` to 127.0.0.1:`port`; the whole answer until the gateway closes ('' = closed unanswered). */
async function connectAnswer(s: Served, port: number, from: string): Promise<string> {
  const c = await connectFrom(s.http.port, from);
  c.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  return (await readToEnd(c)).data.toString('latin1');
}

/**
 * Retries (bounded) while the connection is closed unanswered: the previous refusal's descriptor
 * not yet released, libuv's accept of a full process closes it.
 */
async function answered(ask: () => Promise<string>): Promise<string> {
  for (let i = 0; i < 50; i++) {
    const a = await ask().catch(() => '');
    if (a !== '') return a;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('never answered');
}

/** A CONNECT tunnel from `from` to the echo origin, or null when refused or closed unanswered. */
async function tunnelFrom(s: Served, from: string): Promise<Socket | null> {
  const c = await connectFrom(s.http.port, from);
  c.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
  const head = await new Promise<string>((resolve) => {
    let got = '';
    const onData = (b: Buffer): void => {
      got += b.toString('latin1');
      if (got.includes('\r\n\r\n')) done();
    };
    const done = (): void => {
      c.off('data', onData);
      resolve(got);
    };
    c.on('data', onData);
    c.once('close', done);
  });
  if (head.startsWith('HTTP/1.1 200 ') && !c.destroyed) return c;
  c.destroy();
  return null;
}

async function alerts(s: Served): Promise<string[]> {
  const r = await fetch(`http://${s.admin}/v1/alerts`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(r.status).toBe(200);
  const body = (await r.json()) as { alerts: Array<{ detector: string }> };
  expect(Array.isArray(body.alerts)).toBe(true);
  return body.alerts.map((a) => a.detector);
}

describe('serve with every descriptor taken', () => {
  it('a dial with no descriptor is 503 out-of-descriptors (SOCKS5 0x01), recorded, logged once, not a scan; served again once connections close', async () => {
    const flowLog = join(fx.dir, 'flows.jsonl');
    const s = await serveUnderLimit(fx.dir, flowLog, TOKEN, 'detection: { sampleIntervalMs: 50 }\n');
    fx.killAfterTest(s);

    // Take every descriptor but one: greetings the gateway answered, one descriptor each.
    const pid = s.child.pid as number;
    await fillDescriptors(s, held, NOFILE - 1);
    expect(openDescriptors(pid)).toBe(NOFILE - 1);
    expect(held.length).toBeGreaterThan(NOFILE / 2);

    const answers: string[] = [];
    // Ports after the echo's, none of them the gateway's own (a CONNECT to one is refused 403 self-dial).
    const own = new Set([s.http.port, socksPort(s), Number(s.admin.slice(s.admin.lastIndexOf(':') + 1))]);
    const ports: number[] = [];
    for (let p = fx.echo.port + 1; ports.length < PORTS; p++) if (!own.has(p)) ports.push(p);
    for (const port of ports) answers.push(await answered(() => connectAnswer(s, port, VICTIM)));
    for (const a of answers) {
      expect(a.split('\r\n')[0]).toBe('HTTP/1.1 503 Service Unavailable');
      expect(JSON.parse(a.slice(a.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'gateway out of file descriptors', reason: 'out-of-descriptors' });
    }
    const socksReply = await answered(async () => {
      const c = await connectFrom(socksPort(s));
      c.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
      return (await readToEnd(c)).data.toString('hex');
    });
    expect(socksReply.slice(0, 8)).toBe('05000501'); // no-auth, then general failure (not 0x04 host unreachable)

    // The holders go: the same client is served again, its failures were no port scan.
    for (const c of held) c.destroy();
    held.length = 0;
    let tunnel: Socket | null = null;
    for (let i = 0; i < 50 && tunnel === null; i++) {
      tunnel = await tunnelFrom(s, VICTIM);
      if (tunnel === null) await new Promise((r) => setTimeout(r, 50));
    }
    expect(tunnel).not.toBeNull();
    (tunnel as Socket).write('still here');
    await readUntil(tunnel as Socket, 'still here');
    (tunnel as Socket).destroy();
    // Several detection sweeps (50 ms each) later: no scan alert, and the client is still served.
    for (let i = 0; i < 5; i++) {
      expect(await alerts(s)).not.toContain('an0081.scan');
      await new Promise((r) => setTimeout(r, 100));
    }
    const last = await tunnelFrom(s, VICTIM);
    expect(last).not.toBeNull();
    last?.destroy();

    s.child.kill('SIGTERM');
    await once(s.child, 'exit');
    const records = parseRecords(await readFile(flowLog, 'utf8'));
    const out = records.filter((r) => r.closeReason === 'out-of-descriptors');
    // Every refused dial is recorded, each with its destination; none as a dead destination.
    expect(out.filter((r) => r.client.ip === VICTIM).map((r) => r.destination.port ?? 0).sort((a, b) => a - b)).toEqual(ports);
    expect(out.filter((r) => r.protocol === 'socks5')).toHaveLength(1);
    expect(records.filter((r) => r.closeReason === 'unreachable')).toEqual([]);
    // Said once (one line per ten seconds), not per flow.
    const lines = s.stderr().split('\n');
    expect(lines.filter((l) => l.includes('out of file descriptors')).length).toBeGreaterThanOrEqual(1);
    expect(lines.filter((l) => l.includes('out of file descriptors')).length).toBeLessThan(PORTS);
    expect(lines.filter((l) => l.includes('CONNECT dial failed'))).toEqual([]);
  });
});
