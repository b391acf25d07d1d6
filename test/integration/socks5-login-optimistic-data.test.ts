/**
 * A SOCKS5 client that logs in (RFC 1929) and sends its request and first bytes without waiting for
 * the answers (optimistic data) is served as one that offers no authentication is: the bytes past
 * the request go to the destination and are counted, exactly. Raw sockets on the real listener,
 * a loopback echo origin that counts what it read.
 *
 * Regression: while the credentials were checked the handshake kept reading and took the request
 * and the data after it for a flood once they passed 4,096 bytes ("5010 bytes buffered during the
 * handshake"): the client got `05 02`, no login status, no reply and a close; nothing was dialled
 * and no record was left. Without a login the same bytes were relayed.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readToEnd, type SocksGateway, startSocksGateway, startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const PASSWORD = 'pw-optimistic';
/** Past the handshake's 4,096-byte cap, well inside one 64 KiB read. */
const PAYLOAD = Buffer.alloc(20_000, 0x61);

let gw: SocksGateway;
let origin: TcpOrigin;

beforeAll(async () => {
  gw = await startSocksGateway({ identity: { users: [{ name: 'dora', password: PASSWORD, roles: ['any'] }] } });
  origin = await startTcpOrigin();
});
afterAll(async () => {
  await Promise.all([gw.stop(), origin.close()]);
});

function login(user: string, password: string): Buffer {
  return Buffer.concat([Buffer.from([0x01, user.length]), Buffer.from(user), Buffer.from([password.length]), Buffer.from(password)]);
}

function connectRequest(port: number): Buffer {
  return Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, port >> 8, port & 0xff]);
}

async function open(): Promise<Socket> {
  const s = connect(gw.socksPort, gw.socksHost);
  await once(s, 'connect');
  return s;
}

describe('SOCKS5 login pipelined with the request and optimistic data', () => {
  it.each([
    ['in one write', false],
    ['the data in a second write, before the login status', true],
  ])('%s: relayed and recorded byte for byte', async (_name, isSplit) => {
    const before = origin.done.length;
    const s = await open();
    const clientPort = s.localPort as number;
    const got = readToEnd(s);
    const handshake = Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), login('dora', PASSWORD), connectRequest(origin.port)]);
    if (isSplit) {
      s.write(handshake);
      s.end(PAYLOAD);
    } else s.end(Buffer.concat([handshake, PAYLOAD]));
    const { data } = await got;
    // Method 0x02, login status 0x00, reply 0x00, then the echo of every byte sent past the request.
    expect(data.subarray(0, 4).toString('hex')).toBe('05020100');
    expect(data.subarray(4, 7).toString('hex')).toBe('050000');
    expect(data.length).toBe(14 + PAYLOAD.length);
    expect(data.subarray(14).equals(PAYLOAD)).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    const [seen] = (await origin.waitDone(before + 1)).slice(before);
    expect(seen?.bytesRead).toBe(PAYLOAD.length);
    expect(rec).toMatchObject({ protocol: 'socks5', identity: { user: 'dora' }, verdict: 'allow', closeReason: 'closed', bytesOut: PAYLOAD.length, bytesIn: PAYLOAD.length });
    expect(gw.logs.filter((l) => l.client === `127.0.0.1:${clientPort}`)).toEqual([]);
  });

  it('a wrong password sent that way gets its 01 01; nothing is dialled', async () => {
    const before = origin.done.length;
    const s = await open();
    const clientPort = s.localPort as number;
    const got = readToEnd(s);
    s.end(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), login('dora', 'not-the-password'), connectRequest(origin.port), PAYLOAD]));
    const { data } = await got;
    expect(data.toString('hex')).toBe('05020101');
    // The login's refusal is the connection's one record: no destination, so no dial.
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect(rec).toMatchObject({ verdict: 'block', reason: 'auth-required', destination: { host: null, port: null }, bytesOut: 0 });
    expect(gw.closed.filter((r) => r.client.port === clientPort)).toHaveLength(1);
    expect(origin.done.length).toBe(before);
  });
});
