/**
 * Which allow entry the record of a SOCKS5 UDP association names when a detector kills it for a
 * later destination's bytes (an0080.bulk-upload on that destination alone). The association's first
 * destination, `backup.corp.test`, is admitted by allow[0] (`host=backup.corp.test`); the upload goes
 * to 127.0.0.1, admitted by allow[1] (`cidr=127.0.0.1/32`): the kill is that destination's, and so is
 * its `matchedRule`, as a connect-time refusal of a later destination names that destination's entry
 * (docs/spec-notes.md, Records). Through the real listener with the `socks` client.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { adminPut, runningConfig, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type Cleanups, associate, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const BUDGET = 64 * 1024;
const DATAGRAM = 4000;
const FIRST = 'backup.corp.test';
const FIRST_RULE = { role: 'any', index: 0, entry: `host=${FIRST}` };
const LATER_RULE = { role: 'any', index: 1, entry: 'cidr=127.0.0.1/32' };

let gw: TestGateway | null = null;
const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
  await gw?.stop();
  gw = null;
});

function start(mode: Mode, action: 'kill' | 'flag'): Promise<TestGateway> {
  return startTestGateway({
    mode,
    roles: { any: { allow: [{ host: FIRST }, { cidr: '127.0.0.1/32' }] } },
    resolver: { hosts: { [FIRST]: '127.0.0.1' } },
    detection: { sampleIntervalMs: 50, detectors: { 'an0080.bulk-upload': { action, bytesOut: BUDGET, minRatio: 10, storageBytesOut: BUDGET } } },
  });
}

/** A destination that answers nothing and counts the bytes that arrive. */
async function silentSink(): Promise<{ port: number; arrived: () => number }> {
  const s = await udpSocket(cleanups);
  let arrived = 0;
  s.on('message', (m: Buffer) => {
    arrived += m.length;
  });
  return { port: s.address().port, arrived: () => arrived };
}

/**
 * An association: 100 bytes to FIRST (proven arrived), then `before` datagrams to the upload sink at
 * 127.0.0.1; `between` runs; then up to 40 more datagrams while the association lasts. Its record.
 */
async function uploadThrough(g: TestGateway, before: number, between: () => Promise<void>) {
  const first = await silentSink();
  const sink = await silentSink();
  const client = await udpSocket(cleanups);
  const a = await associate(g, client, cleanups);
  let isEnded = false;
  a.control.once('close', () => {
    isEnded = true;
  });
  await sendTo(client, udpFrame(FIRST, first.port, Buffer.alloc(100, 1)), a.relay);
  await until('the first destination got its 100 bytes', () => first.arrived() === 100);
  let sent = 0;
  const send = async (n: number): Promise<void> => {
    for (let i = 0; i < n && !isEnded; i++) {
      await sendTo(client, udpFrame('127.0.0.1', sink.port, Buffer.alloc(DATAGRAM, 2)), a.relay);
      sent++;
      await until(`datagram ${sent} at the sink, or the association's end`, () => sink.arrived() === sent * DATAGRAM || isEnded);
    }
  };
  await send(before);
  await between();
  await send(40);
  if (!isEnded) a.control.destroy();
  return g.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
}

// Regression: the kill was recorded with the association's rule (its first destination's,
// `host=backup.corp.test`), an entry that cannot admit 127.0.0.1.
describe("a detector's kill of a UDP association for a later destination's upload names that destination's allow entry", () => {
  it('enforce, at the byte budget', async () => {
    gw = await start('enforce', 'kill');
    const rec = await uploadThrough(gw, 0, async () => {});
    expect([rec.verdict, rec.detector, rec.closeReason, rec.destination.host]).toEqual(['block', 'an0080.bulk-upload', 'an0080.bulk-upload', FIRST]);
    expect(rec.matchedRule).toEqual(LATER_RULE);
  });

  it('enforce, found by the sweep (the detector set to kill by a reload after the destination was admitted)', async () => {
    gw = await start('enforce', 'flag');
    const g = gw;
    const rec = await uploadThrough(g, 2, async () => {
      const config = await runningConfig(g);
      const detection = config['detection'] as { detectors: Record<string, Record<string, unknown>> };
      detection.detectors['an0080.bulk-upload'] = { ...detection.detectors['an0080.bulk-upload'], action: 'kill' };
      expect(await adminPut(g, '/v1/policy', config)).toBe(200);
    });
    expect([rec.verdict, rec.detector, rec.closeReason]).toEqual(['block', 'an0080.bulk-upload', 'an0080.bulk-upload']);
    // The sweep found it: past the budget, where the budget would have cut it.
    expect(rec.bytesOut).toBeGreaterThan(100 + BUDGET);
    expect(rec.matchedRule).toEqual(LATER_RULE);
  });

  it('monitor: the would-kill names it too', async () => {
    gw = await start('monitor', 'kill');
    const rec = await uploadThrough(gw, 0, async () => {});
    expect([rec.verdict, rec.detector, rec.closeReason]).toEqual(['would-block', 'an0080.bulk-upload', 'closed']);
    expect(rec.matchedRule).toEqual(LATER_RULE);
  });

  it('the association killed for its first destination still names that one', async () => {
    gw = await start('enforce', 'kill');
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const sink = await silentSink();
    let isEnded = false;
    a.control.once('close', () => {
      isEnded = true;
    });
    for (let i = 1; i <= 40 && !isEnded; i++) {
      await sendTo(client, udpFrame(FIRST, sink.port, Buffer.alloc(DATAGRAM, 2)), a.relay);
      await until(`datagram ${i} at the sink, or the association's end`, () => sink.arrived() === i * DATAGRAM || isEnded);
    }
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.client.port === client.address().port);
    expect([rec.verdict, rec.closeReason, rec.matchedRule]).toEqual(['block', 'an0080.bulk-upload', FIRST_RULE]);
  });
});
