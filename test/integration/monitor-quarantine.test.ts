/**
 * Monitor mode records the quarantine enforce mode would have opened (SPEC §1: every decision
 * enforce mode would have taken is recorded would-block). The same scenario runs in both modes
 * through the real listeners: a connect-time detector refuses one destination (an0081.proxyware, a
 * provider domain), then the same client asks for an allowed one, over absolute-URI HTTP, CONNECT,
 * SOCKS5 and SOCKS5 UDP. Enforced, the second is refused `quarantine`; monitored, it is relayed and
 * recorded would-block `quarantine`. Before, monitor recorded it `allow`: a rollout's records
 * showed one refusal where enforce mode would refuse the identity's every connection for
 * `quarantineSec`.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import type { Mode } from '../../policy/types.ts';
import { httpConnect, type TcpOrigin, tcpOrigin, waitForAlert } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho } from './socks5-harness.ts';

const PROVIDER = 'pw.example.test';
const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function start(mode: Mode, overrides: Record<string, unknown> = {}, now?: () => number): Promise<TestGateway> {
  const gw = await startTestGateway(
    {
      mode,
      resolver: { hosts: { [PROVIDER]: '127.0.0.1' } },
      detection: { sampleIntervalMs: 50, quarantineSec: 600, lists: { proxywareDomains: [PROVIDER] } },
      ...overrides,
    },
    now ? { now } : {},
  );
  cleanups.push(() => gw.stop());
  return gw;
}

/** Echoes what a tunnel sends; answers an absolute-URI request (its head and 5-byte body) with 200. */
async function origin(): Promise<TcpOrigin> {
  const o = await tcpOrigin('127.0.0.1', (s) => {
    let head = '';
    s.on('data', (c: Buffer) => {
      head += c.toString('latin1');
      if (!head.startsWith('GET ')) s.write(c);
      else if (head.endsWith('hello')) s.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
    });
  });
  cleanups.push(() => o.close());
  return o;
}

/** What a client sees and the origin got for one attempt: `answer` and bytes the origin read. */
type Attempt = (gw: TestGateway, host: string, port: number) => Promise<string>;

/** A GET on its own connection from `from`: the status line. */
function httpGet(from: string): Attempt {
  return async (gw, host, port) => {
    const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: from });
    s.on('error', () => undefined);
    await once(s, 'connect');
    s.write(`GET http://${host}:${port}/ HTTP/1.1\r\nHost: ${host}:${port}\r\nContent-Length: 5\r\n\r\nhello`);
    const [chunk] = (await once(s, 'data')) as [Buffer];
    s.destroy();
    return chunk.toString('latin1').split('\r\n')[0]!.split(' ')[1]!;
  };
}

function tunnel(from: string): Attempt {
  return async (gw, host, port) => {
    const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `${host}:${port}`, { localAddress: from });
    if (a.status === 200) await roundTrip(a.socket);
    a.socket.destroy();
    return String(a.status);
  };
}

function socks(from: string): Attempt {
  return async (gw, host, port) => {
    const s = connect({ host: gw.socksHost, port: gw.socksPort, localAddress: from });
    s.on('error', () => undefined);
    await once(s, 'connect');
    try {
      await SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host, port }, existing_socket: s, timeout: 5000 });
    } catch (err) {
      s.destroy();
      return (err as Error).message.includes('NotAllowed') ? '0x02' : (err as Error).message;
    }
    await roundTrip(s);
    s.destroy();
    return '0x00';
  };
}

async function roundTrip(s: import('node:net').Socket): Promise<void> {
  s.resume();
  const back = once(s, 'data');
  s.write('hello');
  await back;
}

async function firstLines(gw: TestGateway, n: number): Promise<FlowRecord[]> {
  await until(`${n} records`, () => gw.closed.length >= n);
  return gw.closed.slice(0, n);
}

const shape = (r: FlowRecord): unknown[] => [r.destination.host, r.verdict, r.enforced, r.reason, r.detector];

describe('after a connect-time refusal, the identity\'s next connection in both modes', () => {
  for (const [name, attemptFrom] of [['absolute-URI HTTP', httpGet], ['CONNECT', tunnel], ['SOCKS5', socks]] as const) {
    it(`${name}: enforce refuses it quarantine; monitor relays it and records would-block quarantine; another client is not touched`, async () => {
      const seen: Record<Mode, { answers: string[]; records: unknown[][]; originBytes: number; alert: unknown }> = {} as never;
      for (const mode of ['enforce', 'monitor'] as const) {
        const o = await origin();
        const gw = await start(mode);
        const attempt = attemptFrom('127.0.0.21');
        const answers = [await attempt(gw, PROVIDER, o.port), await attempt(gw, '127.0.0.1', o.port), await attemptFrom('127.0.0.22')(gw, '127.0.0.1', o.port)];
        const records = (await firstLines(gw, 3)).map(shape);
        const alert = await waitForAlert(gw.alerts, (a) => a.detector === 'an0081.proxyware');
        // Bytes the origin read: 5 of payload each relayed connection (the HTTP head aside).
        let originBytes = 0;
        for (const c of o.conns) originBytes += name === 'absolute-URI HTTP' ? 5 : c.bytesRead;
        seen[mode] = { answers, records, originBytes, alert: { action: alert.action, enforced: alert.enforced, reasons: alert.reasons, evidence: alert.evidence } };
      }
      const refused = name === 'SOCKS5' ? '0x02' : '403';
      const passed = name === 'SOCKS5' ? '0x00' : '200';
      expect(seen.enforce.answers).toEqual([refused, refused, passed]);
      expect(seen.monitor.answers).toEqual([passed, passed, passed]);
      expect(seen.enforce.records).toEqual([
        [PROVIDER, 'block', true, 'detector', 'an0081.proxyware'],
        ['127.0.0.1', 'block', true, 'quarantine', 'quarantine'],
        ['127.0.0.1', 'allow', false, 'allowed', null],
      ]);
      expect(seen.monitor.records).toEqual([
        [PROVIDER, 'would-block', false, 'detector', 'an0081.proxyware'],
        ['127.0.0.1', 'would-block', false, 'quarantine', 'quarantine'],
        ['127.0.0.1', 'allow', false, 'allowed', null],
      ]);
      // Monitor relayed all three (5 bytes each); enforce only the other client's.
      expect(seen.enforce.originBytes).toBe(5);
      expect(seen.monitor.originBytes).toBe(15);
      expect(seen.enforce.alert).toMatchObject({ action: 'block', enforced: true });
      expect(seen.monitor.alert).toMatchObject({ action: 'would-block', enforced: false });
      // The same finding: its evidence and first reason (the modifiers name each run's origin port).
      const [enforced, monitored] = [seen.enforce.alert, seen.monitor.alert] as Array<{ reasons: string[]; evidence: unknown }>;
      expect(monitored!.evidence).toEqual(enforced!.evidence);
      expect(monitored!.reasons[0]).toBe(enforced!.reasons[0]);
    });
  }

  it('SOCKS5 UDP: a later association of the same client; enforce refuses its destination quarantine, monitor relays it would-block quarantine', async () => {
    const results: Record<string, unknown> = {};
    for (const mode of ['enforce', 'monitor'] as const) {
      const echo = await startUdpEcho('udp4');
      cleanups.push(() => echo.close());
      const gw = await start(mode);
      for (const host of [PROVIDER, '127.0.0.1']) {
        const client = await udpSocket(cleanups);
        const a = await associate(gw, client, cleanups);
        await sendTo(client, udpFrame(host, echo.port, Buffer.from(host)), a.relay);
        await until('the destination judged', () => gw.closed.some((r) => r.destination.host === host) || echo.received.some((r) => r.data.toString() === host));
        a.control.destroy();
        await gw.waitForClosed((r) => r.destination.host === host);
      }
      results[mode] = { received: echo.received.map((r) => r.data.toString()), records: gw.closed.map(shape) };
    }
    expect(results).toEqual({
      enforce: {
        received: [],
        records: [
          [PROVIDER, 'block', true, 'detector', 'an0081.proxyware'],
          ['127.0.0.1', 'block', true, 'quarantine', 'quarantine'],
        ],
      },
      monitor: {
        received: [PROVIDER, '127.0.0.1'],
        records: [
          [PROVIDER, 'would-block', false, 'detector', 'an0081.proxyware'],
          ['127.0.0.1', 'would-block', false, 'quarantine', 'quarantine'],
        ],
      },
    });
  });

  it('a kill at a byte budget: enforce refuses the next tunnel quarantine, monitor records it would-block quarantine', async () => {
    const results: Record<string, unknown> = {};
    for (const mode of ['enforce', 'monitor'] as const) {
      const o = await origin();
      const gw = await start(mode, { detection: { sampleIntervalMs: 50, quarantineSec: 600, detectors: { 'an0080.bulk-upload': { bytesOut: 65_536, minRatio: 0 } } } });
      const a = await httpConnect({ host: gw.httpHost, port: gw.httpPort }, `127.0.0.1:${o.port}`, { localAddress: '127.0.0.23' });
      a.socket.on('error', () => undefined);
      a.socket.write(Buffer.alloc(100_000));
      await waitForAlert(gw.alerts, (x) => x.detector === 'an0080.bulk-upload');
      a.socket.destroy();
      const next = await tunnel('127.0.0.23')(gw, '127.0.0.1', o.port);
      // The dry run answers what admission did.
      const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
        method: 'POST',
        headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ dest: `127.0.0.1:${o.port}`, source: '127.0.0.23' }),
      });
      const evaluated = (await res.json()) as { verdict: string; reason: string };
      results[mode] = { next, evaluated: [evaluated.verdict, evaluated.reason], records: (await firstLines(gw, 2)).map((r) => [...shape(r), r.bytesOut]) };
    }
    expect(results).toEqual({
      enforce: {
        next: '403',
        evaluated: ['block', 'quarantine'],
        records: [
          ['127.0.0.1', 'block', true, 'detector', 'an0080.bulk-upload', 65_536],
          ['127.0.0.1', 'block', true, 'quarantine', 'quarantine', 0],
        ],
      },
      monitor: {
        next: '200',
        evaluated: ['would-block', 'quarantine'],
        records: [
          ['127.0.0.1', 'would-block', false, 'detector', 'an0080.bulk-upload', 100_000],
          ['127.0.0.1', 'would-block', false, 'quarantine', 'quarantine', 5],
        ],
      },
    });
  });

  it('a quarantine monitor mode only noted is not enforced after PUT /v1/mode enforce (nothing was refused)', async () => {
    const o = await origin();
    const gw = await start('monitor');
    const attempt = tunnel('127.0.0.24');
    expect(await attempt(gw, PROVIDER, o.port)).toBe('200');
    const res = await fetch(`${gw.adminUrl}/v1/mode`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'enforce' }),
    });
    expect(res.status).toBe(200);
    expect(await attempt(gw, '127.0.0.1', o.port)).toBe('200');
    const records = (await firstLines(gw, 2)).map(shape);
    expect(records).toEqual([
      [PROVIDER, 'would-block', false, 'detector', 'an0081.proxyware'],
      ['127.0.0.1', 'allow', false, 'allowed', null],
    ]);
  });

  it('the same refusal after the quarantine ran out: enforce quarantines again with a new alert, monitor alerts would-block again', async () => {
    const results: Record<string, unknown> = {};
    for (const mode of ['enforce', 'monitor'] as const) {
      let offsetMs = 0;
      const o = await origin();
      const gw = await start(mode, {}, () => Date.now() + offsetMs);
      const attempt = tunnel('127.0.0.25');
      const answers = [await attempt(gw, PROVIDER, o.port), await attempt(gw, '127.0.0.1', o.port)];
      // 11 minutes on: the 600 s quarantine (or the one monitor mode noted) has run out.
      offsetMs = 11 * 60_000;
      answers.push(await attempt(gw, '127.0.0.1', o.port), await attempt(gw, PROVIDER, o.port), await attempt(gw, '127.0.0.1', o.port));
      await until('the records', () => gw.closed.length >= 5);
      const alerts = gw.alerts.list({ limit: 100 }).filter((a) => a.detector === 'an0081.proxyware');
      // Records close in their own order (a tunnel's after its origin's close): compared as a set.
      results[mode] = { answers, reasons: gw.closed.map((r) => r.reason).sort(), alerts: alerts.map((a) => a.action) };
    }
    expect(results).toEqual({
      enforce: { answers: ['403', '403', '200', '403', '403'], reasons: ['allowed', 'detector', 'detector', 'quarantine', 'quarantine'], alerts: ['block', 'block'] },
      monitor: { answers: ['200', '200', '200', '200', '200'], reasons: ['allowed', 'detector', 'detector', 'quarantine', 'quarantine'], alerts: ['would-block', 'would-block'] },
    });
  });
});
