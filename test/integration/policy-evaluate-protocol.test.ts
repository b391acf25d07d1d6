/**
 * `POST /v1/policy/evaluate` takes the protocol a connection arrives by, as `egressgate evaluate
 * --protocol` does: an allow entry with `protocol: udp` admits only SOCKS5 UDP, `protocol: tcp`
 * everything else.
 *
 * Regression: the body had no `protocol`; the dry run always judged a CONNECT, and fastify dropped a
 * `protocol` the caller sent without a word. A datagram that a real SOCKS5 UDP association relayed
 * (allow, matchedRule the udp entry) evaluated to block not-allowlisted "matches the destination but
 * not protocol connect", even when the caller asked for socks5-udp.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';

let gw: TestGateway;
let echo: UdpSocket;
let echoPort: number;
const cleanups: Cleanups = [];

beforeAll(async () => {
  echo = createSocket('udp4');
  echo.on('message', (m, r) => echo.send(m, r.port, r.address));
  echo.bind(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = echo.address().port;
  gw = await startTestGateway({
    mode: 'enforce',
    roles: { any: { allow: [] }, dns: { allow: [{ host: 'dns.example.test', protocol: 'udp' }, { host: 'web.example.test', protocol: 'tcp' }] } },
    defaultRoles: ['dns'],
    resolver: { hosts: { 'dns.example.test': '127.0.0.1', 'web.example.test': '127.0.0.1' } },
  });
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await gw?.stop();
  await new Promise<void>((r) => echo.close(() => r()));
});

async function evaluate(body: Record<string, string>): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${gw.adminUrl}/v1/policy/evaluate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe('POST /v1/policy/evaluate: protocol', () => {
  it('a UDP-only entry: socks5-udp evaluates to allow, as the association relays it; connect to block', async () => {
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    const reply = nextReply(client);
    await sendTo(client, udpFrame('dns.example.test', echoPort, Buffer.from('ping')), a.relay);
    expect((await reply).data.toString()).toBe('ping');
    a.control.destroy();
    const rec = await gw.waitForClosed((f) => f.protocol === 'socks5-udp');
    expect(rec).toMatchObject({ verdict: 'allow', matchedRule: { role: 'dns', index: 0 } });

    const udp = await evaluate({ dest: `dns.example.test:${echoPort}`, protocol: 'socks5-udp' });
    expect(udp.status).toBe(200);
    expect(udp.json).toMatchObject({ verdict: 'allow', reason: 'allowed', matchedRule: { role: 'dns', index: 0 }, protocol: 'socks5-udp' });

    const tcp = await evaluate({ dest: `dns.example.test:${echoPort}` });
    expect(tcp.json).toMatchObject({ verdict: 'block', reason: 'not-allowlisted', matchedRule: null, protocol: 'connect' });
  });

  it('a TCP-only entry: socks5 and http evaluate to allow, socks5-udp to block', async () => {
    for (const protocol of ['socks5', 'http', 'connect']) {
      expect((await evaluate({ dest: 'web.example.test:443', protocol })).json, protocol).toMatchObject({ verdict: 'allow', matchedRule: { role: 'dns', index: 1 } });
    }
    expect((await evaluate({ dest: 'web.example.test:443', protocol: 'socks5-udp' })).json).toMatchObject({ verdict: 'block', reason: 'not-allowlisted' });
  });

  it('an unknown protocol is a 400, not ignored', async () => {
    const r = await evaluate({ dest: 'web.example.test:443', protocol: 'quic' });
    expect(r.status).toBe(400);
  });
});
