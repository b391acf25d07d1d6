/**
 * Hot reload under a live streaming tunnel (issue 3): a reload that passes swaps the policy for new
 * flows at once and never drops an established one; a reload that fails changes nothing; rollback
 * restores an old version. Real gateway HTTP listener, real CONNECT tunnel, real echo origin.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LocalGateway, jsonBody, rawConnect, rawExchange, readUntil, startLocalGateway } from './http-harness.ts';

let echo: Server;
let echoPort = 0;
let gw: LocalGateway;

// Version 1: the catch-all role of the harness, enforce mode. Version 2: loopback is no longer
// allowlisted (only an unrelated host), so new CONNECTs to the echo origin are refused.
const V2 = `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { host: "only.example.com", ports: [443] } ] } }
defaultRoles: [any]
flowLog: { path: null }
`;

beforeAll(async () => {
  echo = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  echoPort = (echo.address() as { port: number }).port;
  gw = await startLocalGateway({ mode: 'enforce' });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise<void>((r) => echo.close(() => r()));
});

async function openTunnel(): Promise<Socket> {
  const s = await rawConnect(gw.httpPort);
  s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
  const head = await readUntil(s, '\r\n\r\n');
  expect(head.toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
  return s;
}

/** Writes `marker` through the tunnel and waits for the echo. */
async function roundTrip(s: Socket, marker: string): Promise<void> {
  const got = readUntil(s, marker);
  s.write(marker);
  await got;
}

/** A new CONNECT that the policy refuses: the gateway answers and closes. */
async function refusedConnect(): Promise<{ status: string; body: Record<string, unknown> }> {
  const { response } = await rawExchange(gw.httpPort, `CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`, 5000);
  return { status: response.slice(9, 12), body: jsonBody(response) };
}

describe('policy reload under a live tunnel', () => {
  it('keeps the established tunnel, refuses new flows under the new policy, rolls back', async () => {
    const tunnel = await openTunnel();
    tunnel.on('error', () => undefined);
    let sent = 0;
    for (let i = 0; i < 5; i++) {
      const m = `before-${i};`;
      await roundTrip(tunnel, m);
      sent += m.length;
    }

    // 1. A good reload: new version at once.
    expect(gw.policy.reload(V2, { author: 'test', source: 'api' })).toEqual({ ok: true, version: 2 });
    const refused = await refusedConnect();
    expect(refused.status).toBe('403');
    expect(refused.body).toMatchObject({ reason: 'not-allowlisted' });

    // 2. The established tunnel still streams both ways.
    for (let i = 0; i < 5; i++) {
      const m = `after-${i};`;
      await roundTrip(tunnel, m);
      sent += m.length;
    }

    // 3. A failed reload changes nothing.
    const bad = gw.policy.reload('roles: { any: { allow: [ { cidr: 300.0.0.0/8 } ] } }\n', { author: 'test' });
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.errors[0]?.path).toBe('roles.any.allow[0].cidr');
    expect(gw.policy.current().version).toBe(2);
    expect((await refusedConnect()).status).toBe('403');
    await roundTrip(tunnel, 'still-alive;');
    sent += 'still-alive;'.length;

    // 4. Rollback to version 1: new tunnels are allowed again, as version 3.
    expect(gw.policy.rollback(1, { author: 'test' })).toEqual({ ok: true, version: 3 });
    const reopened = await openTunnel();
    await roundTrip(reopened, 'v3;');
    reopened.destroy();

    // 5. The original tunnel was never dropped: it closes when we close it, with every byte counted.
    tunnel.end();
    const record = await gw.waitForClosed((r) => r.protocol === 'connect' && r.bytesOut === sent);
    expect(record.bytesIn).toBe(sent);
    expect(record.verdict).toBe('allow');
  });
});
