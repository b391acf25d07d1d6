/**
 * `an0080.bulk-upload` with `action: kill, corroborate: true` (SPEC §4): the kill waits for a
 * modifier or a second detector, and out-of-hours alone is neither. The destination is 127.0.0.55:443
 * (a standard port: no `unusual port` modifier) reached through a parent proxy written here, which
 * relays every CONNECT to an unprivileged loopback sink; business hours have no days, so every
 * minute is out of hours.
 *
 * Regression: the budget was decided at the connect only. Corroborated after it (an an0081.scan
 * finding for the same identity), the upload ran on until the next sweep killed it: 32,769,000 bytes
 * reached the destination against a 65,536-byte budget.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpConnect, waitForAlert, waitForSweeps } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

const BUDGET = 65_536;
const UPLOAD = 256 * 1024;

let gw: TestGateway | null = null;
const servers: Server[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  await gw?.stop();
  gw = null;
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((r) => s.close(() => r()))));
});

async function listen(server: Server): Promise<number> {
  servers.push(server);
  server.on('connection', (s: Socket) => {
    sockets.push(s);
    s.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
}

/** A sink counting what each connection delivers, and a parent relaying every CONNECT to it. */
async function start(): Promise<{ gw: TestGateway; received: number[]; asked: string[] }> {
  const received: number[] = [];
  const sinkPort = await listen(
    createServer((s) => {
      const i = received.push(0) - 1;
      s.on('data', (d: Buffer) => {
        received[i] = (received[i] as number) + d.length;
      });
      s.on('end', () => s.end());
    }),
  );
  const asked: string[] = [];
  const parentPort = await listen(
    createServer({ allowHalfOpen: true }, (c) => {
      c.once('data', (d: Buffer) => {
        const head = d.toString('latin1');
        asked.push(head.split(' ')[1] as string);
        const rest = d.subarray(head.indexOf('\r\n\r\n') + 4);
        const up = connect({ host: '127.0.0.1', port: sinkPort, allowHalfOpen: true }, () => {
          c.write('HTTP/1.1 200 Connection established\r\n\r\n');
          if (rest.length > 0) up.write(rest);
          c.pipe(up);
          up.pipe(c);
        });
        sockets.push(up);
        up.on('error', () => c.destroy());
        c.on('close', () => up.destroy());
      });
    }),
  );
  const g = await startTestGateway({
    mode: 'enforce',
    upstream: `http://127.0.0.1:${parentPort}`,
    deny: { privateRanges: true },
    schedule: { timezone: 'UTC', businessHours: { days: [], start: '08:00', end: '18:00' } },
    detection: {
      sampleIntervalMs: 1000,
      detectors: {
        'an0080.bulk-upload': { action: 'kill', corroborate: true, bytesOut: BUDGET, minRatio: 10 },
        'an0081.scan': { action: 'flag', failedPortsOnOneHost: 3 },
      },
    },
  });
  gw = g;
  return { gw: g, received, asked };
}

/** CONNECT 127.0.0.55:443: the tunnel, and `send(total)`: write with backpressure, half-close, wait for the close. */
async function tunnel(g: TestGateway): Promise<{ send(total: number): Promise<{ isCut: boolean }> }> {
  const t = await httpConnect({ host: g.httpHost, port: g.httpPort }, '127.0.0.55:443');
  expect(t.status).toBe(200);
  const s = t.socket;
  sockets.push(s);
  let isCut = false;
  s.on('error', () => {
    isCut = true;
  });
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  s.resume();
  return {
    async send(total) {
      const chunk = Buffer.alloc(16 * 1024, 0x5a);
      for (let n = 0; n < total && !s.destroyed; n += chunk.length) {
        if (!s.write(chunk)) await Promise.race([once(s, 'drain'), closed]);
      }
      if (!s.destroyed) s.end();
      await closed;
      return { isCut };
    },
  };
}

describe('an0080.bulk-upload kill budget with corroborate: true', () => {
  it('uncorroborated (out of hours only): the upload goes on whole; the sweep only flags it', async () => {
    const { gw: g, received, asked } = await start();
    const res = await (await tunnel(g)).send(UPLOAD);
    expect(res.isCut).toBe(false);
    expect(asked).toEqual(['127.0.0.55:443']);
    const rec = await g.waitForClosed((r) => r.destination.port === 443);
    expect([rec.closeReason, rec.verdict, rec.bytesOut]).toEqual(['closed', 'allow', UPLOAD]);
    expect(received).toEqual([UPLOAD]);
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect([alert.action, alert.enforced]).toEqual(['flag', false]);
    expect(alert.reasons).toContain('+1 outside business hours');
    expect(alert.reasons.join('\n')).toMatch(/kill held back: corroboration required/);
  });

  it('corroborated after the connect by an0081.scan: cut at exactly the budget, not at the next sweep', async () => {
    const { gw: g, received } = await start();
    // The tunnel opens uncorroborated (no modifier but out of hours, no other detector).
    const t = await tunnel(g);
    // Four deny-range refusals on one host: an0081.scan (flag) for this identity, a second detector.
    for (const port of [1, 2, 3, 4]) {
      const r = await httpConnect({ host: g.httpHost, port: g.httpPort }, `10.255.0.1:${port}`);
      expect(r.status).toBe(403);
    }
    const scan = await waitForAlert(g.alerts, (a) => a.detector === 'an0081.scan');
    expect(scan.action).toBe('flag');
    const res = await t.send(UPLOAD);
    expect(res.isCut).toBe(true);
    const rec = await g.waitForClosed((r) => r.destination.port === 443);
    expect([rec.closeReason, rec.verdict, rec.detector, rec.enforced]).toEqual(['an0080.bulk-upload', 'block', 'an0080.bulk-upload', true]);
    expect(rec.bytesOut).toBe(BUDGET);
    // Not one byte past the budget reaches the destination.
    await waitForSweeps(g.flows, 1);
    expect(received).toEqual([BUDGET]);
    const alert = await waitForAlert(g.alerts, (a) => a.detector === 'an0080.bulk-upload');
    expect(alert).toMatchObject({ analytic: 'AN0080', action: 'kill', enforced: true, flowIds: [rec.id] });
    expect(alert.evidence).toMatchObject({ bytesOut: BUDGET, thresholdBytesOut: BUDGET });
  });
});
