/**
 * `limits.udpRelayPorts`: SOCKS5 UDP relays bound within a configured range, through the real
 * listener. Before, every relay was bound on port 0 (reproduced with a serve process: 8
 * associations got BND.PORTs 55917, 50614, 40583, 59240, 60657, 37512, 50397, 48437) and the setting
 * was an unknown key. Now relays take the range's ports in turn; with every port held the
 * ASSOCIATE gets 0x01 and a record closed `out-of-relay-ports`, logged once per interval; a bad
 * range is a validation error at its path.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { run as check } from '../../gateway/commands/check.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, nextReply, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { readBytes, startUdpEcho } from './socks5-harness.ts';

const cleanups: Cleanups = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** Bind a UDP socket on 127.0.0.1:port (exclusive); null when something else has it. */
async function hold(port: number): Promise<UdpSocket | null> {
  const s = createSocket('udp4');
  return new Promise((resolve) => {
    s.once('error', () => {
      s.close();
      resolve(null);
    });
    s.bind({ port, address: '127.0.0.1', exclusive: true }, () => resolve(s));
  });
}

function release(s: UdpSocket): Promise<void> {
  return new Promise((r) => s.close(() => r()));
}

/**
 * `n` consecutive ports free on 127.0.0.1 (UDP), below Linux's ephemeral range so no other
 * test's port-0 socket takes one meanwhile; returned held, for the caller to keep or release.
 */
async function freePorts(n = 4): Promise<{ lo: number; held: UdpSocket[] }> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const lo = 20_000 + n * Math.floor((Math.random() * 10_000) / n);
    const held: UdpSocket[] = [];
    for (let p = lo; p < lo + n; p++) {
      const s = await hold(p);
      if (s === null) break;
      held.push(s);
    }
    if (held.length === n) return { lo, held };
    for (const s of held) await release(s);
  }
  throw new Error(`no ${n} consecutive free UDP ports in 20000-29999`);
}

async function gatewayWithRange(lo: number, n = 4): Promise<TestGateway> {
  const gw = await startTestGateway({ limits: { udpRelayPorts: `${lo}-${lo + n - 1}` } });
  cleanups.push(() => gw.stop());
  return gw;
}

/**
 * UDP ASSOCIATE over a raw socket (no auth): the reply's REP byte and BND.PORT, and the control
 * connection (kept open for the association's life).
 */
async function rawAssociate(gw: TestGateway, clientPort: number): Promise<{ rep: number; port: number; control: Socket }> {
  const control = connect(gw.socksPort, gw.socksHost);
  control.on('error', () => {});
  cleanups.push(() => control.destroy());
  await once(control, 'connect');
  control.write(Buffer.from([5, 1, 0]));
  expect([...(await readBytes(control, 2))]).toEqual([5, 0]);
  const req = Buffer.from([5, 3, 0, 1, 127, 0, 0, 1, 0, 0]);
  req.writeUInt16BE(clientPort, 8);
  control.write(req);
  const reply = await readBytes(control, 10);
  expect(reply.length).toBe(10);
  return { rep: reply[1] as number, port: reply.readUInt16BE(8), control };
}

/** A SOCKS5 CONNECT to 127.0.0.1:port with an RFC 1929 login over a raw socket: the reply's REP byte. */
async function rawConnectVia(gw: TestGateway, user: string, password: string, port: number): Promise<number> {
  const s = connect(gw.socksPort, gw.socksHost);
  s.on('error', () => {});
  cleanups.push(() => s.destroy());
  await once(s, 'connect');
  const login = Buffer.concat([Buffer.from([1, user.length]), Buffer.from(user), Buffer.from([password.length]), Buffer.from(password)]);
  const request = Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 255]);
  s.write(Buffer.concat([Buffer.from([5, 1, 2]), login, request]));
  const answer = await readBytes(s, 2 + 2 + 10);
  expect([...answer.subarray(0, 4)]).toEqual([5, 2, 1, 0]);
  return answer[5] as number;
}

describe('limits.udpRelayPorts and limits.maxFlowsPerIdentity', () => {
  // Regression: an association counted against its identity's limit only from its first datagram, so
  // one user with maxFlowsPerIdentity 3 held all 8 ports of the range with associations that sent
  // nothing, and every other user's UDP ASSOCIATE got 0x01 out-of-relay-ports.
  it('an identity at its limit cannot take the range from another: its associations count from UDP ASSOCIATE', async () => {
    const { lo, held } = await freePorts(8);
    for (const s of held) await release(s);
    const gw = await startTestGateway({
      mode: 'enforce',
      identity: { users: [{ name: 'alice', password: 'pa', roles: ['any'] }, { name: 'bob', password: 'pb', roles: ['any'] }] },
      limits: { maxFlowsPerIdentity: 3, udpRelayPorts: `${lo}-${lo + 7}` },
    });
    cleanups.push(() => gw.stop());
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const alice = { auth: { userId: 'alice', password: 'pa' } };
    // Three associations that send nothing are alice's three places; her next 5 are refused 0x02.
    for (let i = 0; i < 3; i++) await associate(gw, await udpSocket(cleanups), cleanups, alice);
    for (let i = 0; i < 5; i++) await expect(associate(gw, await udpSocket(cleanups), cleanups, alice)).rejects.toThrow(/NotAllowed/);
    const refused = gw.closed.filter((r) => r.protocol === 'socks5-udp');
    expect(refused).toHaveLength(5);
    for (const r of refused) expect(r).toMatchObject({ verdict: 'block', enforced: true, reason: 'rate-limit', closeReason: 'rate-limit', identity: { user: 'alice' }, bytesOut: 0, bytesIn: 0 });
    // A TCP flow of alice's is over the limit too: her empty associations hold its places.
    const tcp = await rawConnectVia(gw, 'alice', 'pa', echo.port);
    expect(tcp).toBe(0x02);
    // bob gets a relay port of the range and is served.
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups, { auth: { userId: 'bob', password: 'pb' } });
    expect(a.relay.port).toBeGreaterThanOrEqual(lo);
    expect(a.relay.port).toBeLessThanOrEqual(lo + 7);
    const reply = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('bob')), a.relay);
    expect((await reply).data.toString()).toBe('echo:bob');
    expect(gw.closed.filter((r) => r.closeReason === 'out-of-relay-ports')).toHaveLength(0);
  });
});

describe('limits.udpRelayPorts', () => {
  it('relays are bound inside the range, each association on its own port, and relay a datagram both ways', async () => {
    const { lo, held } = await freePorts();
    for (const s of held) await release(s);
    const gw = await gatewayWithRange(lo);
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const ports: number[] = [];
    for (let i = 0; i < 3; i++) {
      const client = await udpSocket(cleanups);
      const a = await associate(gw, client, cleanups);
      ports.push(a.relay.port);
      const reply = nextReply(client);
      await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from(`ping${i}`)), a.relay);
      const r = await reply;
      expect(r.data.toString()).toBe(`echo:ping${i}`);
      expect(r.port).toBe(echo.port);
    }
    // Three live associations: three ports of the range, none twice.
    expect(new Set(ports).size).toBe(3);
    for (const p of ports) {
      expect(p).toBeGreaterThanOrEqual(lo);
      expect(p).toBeLessThanOrEqual(lo + 3);
    }
    expect(echo.received.map((m) => m.data.toString())).toEqual(['ping0', 'ping1', 'ping2']);
    // GET /v1/policy shows the setting in force.
    const view = JSON.parse((await adminGet(gw, '/v1/policy')).text) as { config: { limits: { udpRelayPorts: unknown } } };
    expect(view.config.limits.udpRelayPorts).toBe(`${lo}-${lo + 3}`);
  });

  it('every port of a 4-port range held by other sockets: ASSOCIATE refused 0x01 and recorded out-of-relay-ports, logged once; the next succeeds once one is freed', async () => {
    const { lo, held } = await freePorts();
    cleanups.push(async () => {
      for (const s of held) await release(s).catch(() => {});
    });
    const gw = await gatewayWithRange(lo);
    const client = await udpSocket(cleanups);
    for (let i = 0; i < 3; i++) {
      const r = await rawAssociate(gw, client.address().port);
      expect(r.rep).toBe(0x01);
      const rec = await gw.waitForClosed((x) => x.closeReason === 'out-of-relay-ports' && gw.closed.filter((y) => y.closeReason === 'out-of-relay-ports').length === i + 1);
      expect(rec).toMatchObject({ protocol: 'socks5-udp', bytesOut: 0, bytesIn: 0, connected: false, destination: { port: client.address().port } });
      expect(rec.reasons[0]).toBe(`no UDP relay port free in limits.udpRelayPorts ${lo}-${lo + 3} (4 tried)`);
    }
    // Three refusals, one error line (once per interval, not per ASSOCIATE), naming the range.
    const lines = gw.logs.filter((l) => l['code'] === 'EGW_OUT_OF_RELAY_PORTS');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'error', udpRelayPorts: `${lo}-${lo + 3}`, tried: 4 });
    // One port freed: the next ASSOCIATE gets it, and it relays.
    const freed = held.splice(2, 1)[0] as UdpSocket;
    await release(freed);
    const echo = await startUdpEcho('udp4');
    cleanups.push(() => echo.close());
    const a = await associate(gw, client, cleanups);
    expect(a.relay.port).toBe(lo + 2);
    const reply = nextReply(client);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('after')), a.relay);
    expect((await reply).data.toString()).toBe('echo:after');
  });

  it('bounded work: with all 64 ports of a range held, an ASSOCIATE tries 16 of them, then is refused', async () => {
    const { lo, held } = await freePorts(64);
    cleanups.push(async () => {
      for (const s of held) await release(s).catch(() => {});
    });
    const gw = await gatewayWithRange(lo, 64);
    const client = await udpSocket(cleanups);
    const r = await rawAssociate(gw, client.address().port);
    expect(r.rep).toBe(0x01);
    const rec = await gw.waitForClosed((x) => x.closeReason === 'out-of-relay-ports');
    expect(rec.reasons[0]).toBe(`no UDP relay port free in limits.udpRelayPorts ${lo}-${lo + 63} (16 tried)`);
  });

  it('a reload changes the range for the next association', async () => {
    const first = await freePorts();
    const second = await freePorts();
    for (const s of [...first.held, ...second.held]) await release(s);
    const gw = await gatewayWithRange(first.lo);
    const client = await udpSocket(cleanups);
    const a = await associate(gw, client, cleanups);
    expect(a.relay.port).toBeGreaterThanOrEqual(first.lo);
    expect(a.relay.port).toBeLessThanOrEqual(first.lo + 3);
    const policy = (range: string) => `allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 0.0.0.0/0 } ] } }
defaultRoles: [any]
flowLog: { path: null }
identity: { localAttribution: false }
limits: { udpRelayPorts: "${range}" }
`;
    expect(gw.policy.reload(policy(`${second.lo}-${second.lo + 3}`), { author: 'test', source: 'api' }).ok).toBe(true);
    const client2 = await udpSocket(cleanups);
    const b = await associate(gw, client2, cleanups);
    expect(b.relay.port).toBeGreaterThanOrEqual(second.lo);
    expect(b.relay.port).toBeLessThanOrEqual(second.lo + 3);
  });

  it('egressgate check: a bad range is an error at limits.udpRelayPorts; a good one passes', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'egw-relay-ports-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const checked = async (value: string): Promise<{ code: number; stderr: string }> => {
      const path = join(dir, 'policy.yaml');
      writeFileSync(path, `limits: { udpRelayPorts: ${value} }\n`);
      let stderr = '';
      const io = { stdout: { write: () => true }, stderr: { write: (t: string) => (stderr += t) } };
      return { code: await check(['--config', path], io), stderr };
    };
    expect(await checked('"40000-40999"')).toMatchObject({ code: 0 });
    expect(await checked('null')).toMatchObject({ code: 0 });
    for (const [value, message] of [
      ['"40999-40000"', 'start is after end'],
      ['"40000-70000"', 'ports are 1-65535'],
      ['"80-90"', 'relay ports are 1024-65535'],
      ['"lots"', 'use "LO-HI"'],
      ['40000', 'string'],
    ] as const) {
      const r = await checked(value);
      expect(r.code, value).toBe(1);
      expect(r.stderr, value).toMatch(/^limits\.udpRelayPorts: /m);
      expect(r.stderr, value).toContain(message);
    }
  });
});
