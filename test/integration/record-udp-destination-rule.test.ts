/**
 * SPEC §5 `matchedRule` for the later destinations of a SOCKS5 UDP association: each is admitted by
 * the policy on its own (its own allow entry), then judged by the quarantine and the connect-time
 * detectors as a new flow's would be. A decision they make for it names that destination's entry:
 * enforced, the destination's refused record; in monitor mode, the association's record, which takes
 * that destination's would-block whole (as a policy would-block of a later destination makes it
 * `not-allowlisted` with no rule).
 *
 * Regression: the detectors and the quarantine judged a later destination with the association's
 * own rule (its first destination's). After `ok.example.test` (web allow[0]), a datagram to
 * `api.honeygain.com` (allow[1]) was refused an0081.proxyware with `host=ok.example.test`, an entry
 * that cannot match it; the quarantine it opened refused `127.0.0.1` (allow[2]) with that entry too.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Mode } from '../../policy/types.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

const RULES = [
  { role: 'web', index: 0, entry: 'host=ok.example.test' },
  { role: 'web', index: 1, entry: 'host=api.honeygain.com' },
  { role: 'web', index: 2, entry: 'cidr=127.0.0.1/32' },
];

let echo: UdpSocket;
let echoPort: number;
let gw: TestGateway | null = null;
const cleanups: Cleanups = [];

beforeAll(async () => {
  echo = createSocket('udp4');
  echo.on('message', (m, from) => echo.send(m, from.port, from.address));
  echo.bind(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = echo.address().port;
});
afterAll(() => {
  echo.close();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await gw?.stop();
  gw = null;
});

function start(mode: Mode): Promise<TestGateway> {
  return startTestGateway({
    mode,
    roles: { web: { allow: [{ host: 'ok.example.test' }, { host: 'api.honeygain.com' }, { cidr: '127.0.0.1/32' }] } },
    defaultRoles: ['web'],
    resolver: { hosts: { 'ok.example.test': '127.0.0.1', 'api.honeygain.com': '127.0.0.1' } },
    detection: { sampleIntervalMs: 50, quarantineSec: 600 },
  });
}

describe.each(['enforce', 'monitor'] as const)('%s: a UDP association later destination judged after the policy', (mode) => {
  it("names that destination's own allow entry", async () => {
    const g = await start(mode);
    gw = g;
    const client = await udpSocket(cleanups);
    const a = await associate(g, client, cleanups);
    const port = client.address().port;
    // The association's first destination, allowed by allow[0].
    let reply = nextReply(client);
    await sendTo(client, udpFrame('ok.example.test', echoPort, Buffer.from('one')), a.relay);
    expect((await reply).data.toString()).toBe('one');
    // A proxyware provider's name, allowed by allow[1], refused (or would be) by an0081.proxyware,
    // which quarantines the identity (or notes that enforce mode would).
    if (mode === 'enforce') {
      await sendTo(client, udpFrame('api.honeygain.com', echoPort, Buffer.from('two')), a.relay);
      const refused = await g.waitForClosed((r) => r.client.port === port && r.destination.host === 'api.honeygain.com');
      expect([refused.verdict, refused.detector, refused.matchedRule]).toEqual(['block', 'an0081.proxyware', RULES[1]]);
      // The quarantine refuses a third destination, allowed by allow[2], under its own entry.
      await sendTo(client, udpFrame('127.0.0.1', echoPort, Buffer.from('three')), a.relay);
      const quarantined = await g.waitForClosed((r) => r.client.port === port && r.destination.host === '127.0.0.1');
      expect([quarantined.verdict, quarantined.reason, quarantined.matchedRule]).toEqual(['block', 'quarantine', RULES[2]]);
    } else {
      reply = nextReply(client);
      await sendTo(client, udpFrame('api.honeygain.com', echoPort, Buffer.from('two')), a.relay);
      expect((await reply).data.toString()).toBe('two');
    }
    a.control.end();
    const association = await g.waitForClosed((r) => r.client.port === port && r.destination.host === 'ok.example.test');
    // Enforced, the association keeps its own admission; monitored, it carries the later
    // destination's would-block, that destination's entry with it.
    expect([association.verdict, association.detector, association.matchedRule]).toEqual(
      mode === 'enforce' ? ['allow', null, RULES[0]] : ['would-block', 'an0081.proxyware', RULES[1]],
    );
    expect(association.bytesOut).toBe(mode === 'enforce' ? 3 : 6);
  });
});
