/**
 * `GET /v1/flows?destination=` finds a flow by its destination in any spelling of it: flows made
 * through the real listeners (CONNECT to an IPv4 address, its IPv4-mapped form and ::1, SOCKS5 to a
 * name from resolver.hosts), then looked up with other spellings of each address (brackets, RFC
 * 5952 and uncompressed IPv6, upper case, the mapped form, an IPv4 number) and of the name (case,
 * trailing dot). A name filter stays a name: it finds no flow that named the address it resolves to.
 */
import { once } from 'node:events';
import { SocksClient } from 'socks';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { ipv6LoopbackAvailable, skipNotice } from '../helpers/skip-notice.ts';
import { rawConnect, readUntil } from './http-harness.ts';
import { startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function origin(host: string): Promise<TcpOrigin> {
  const o = await startTcpOrigin(host);
  cleanups.push(() => o.close());
  return o;
}

async function gateway(): Promise<TestGateway> {
  const gw = await startTestGateway({ resolver: { hosts: { 'origin.example.test': '127.0.0.1' } } });
  cleanups.push(() => gw.stop());
  return gw;
}

/** One CONNECT tunnel to `authority` carrying `hello`, echoed, then closed by the client: its record. */
async function tunnel(gw: TestGateway, authority: string): Promise<FlowRecord> {
  const s = await rawConnect(gw.httpPort, gw.httpHost);
  s.on('error', () => undefined);
  s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  expect((await readUntil(s, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
  s.write('hello');
  await readUntil(s, 'hello');
  const clientPort = s.localPort;
  s.end();
  await once(s, 'close');
  return gw.waitForClosed((r) => r.protocol === 'connect' && r.client.port === clientPort);
}

/** The ids GET /v1/flows?destination=<value> lists. */
async function idsFor(gw: TestGateway, value: string): Promise<string[]> {
  const res = await adminGet(gw, `/v1/flows?destination=${encodeURIComponent(value)}`);
  expect(res.status, value).toBe(200);
  return (JSON.parse(res.text) as { flows: FlowRecord[] }).flows.map((f) => f.id).sort();
}

describe('GET /v1/flows?destination= matches the canonical destination', () => {
  it('finds an IPv4 flow and its IPv4-mapped twin under every spelling of the address', async () => {
    const gw = await gateway();
    const o = await origin('127.0.0.1');
    const plain = await tunnel(gw, `127.0.0.1:${o.port}`);
    const mapped = await tunnel(gw, `[::ffff:7f00:1]:${o.port}`);
    expect(plain.destination.host).toBe('127.0.0.1');
    expect(mapped.destination.host).toBe('::ffff:127.0.0.1');
    const both = [plain.id, mapped.id].sort();
    for (const spelling of ['127.0.0.1', '::ffff:127.0.0.1', '::FFFF:127.0.0.1', '[::ffff:127.0.0.1]', '::ffff:7f00:1', '0:0:0:0:0:ffff:7f00:1', '2130706433']) {
      expect(await idsFor(gw, spelling), spelling).toEqual(both);
    }
    expect(await idsFor(gw, '127.0.0.2')).toEqual([]);
  });

  it('finds a flow to ::1 by [::1], 0:0:0:0:0:0:0:1 and ::0001', async () => {
    if (!skipNotice(await ipv6LoopbackAvailable(), 'the ::1 destination filter test', 'no IPv6 loopback')) return;
    const gw = await gateway();
    const o = await origin('::1');
    const flow = await tunnel(gw, `[::1]:${o.port}`);
    expect(flow.destination.host).toBe('::1');
    for (const spelling of ['::1', '[::1]', '0:0:0:0:0:0:0:1', '::0001', '[0000::1]']) {
      expect(await idsFor(gw, spelling), spelling).toEqual([flow.id]);
    }
  });

  it('finds a name case-insensitively and with a trailing dot, and not by the address it names', async () => {
    const gw = await gateway();
    const o = await origin('127.0.0.1');
    const conn = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host: 'origin.example.test', port: o.port },
      timeout: 5000,
    });
    conn.socket.write('hello');
    await readUntil(conn.socket, 'hello');
    conn.socket.end();
    const named = await gw.waitForClosed((r) => r.protocol === 'socks5' && r.destination.host === 'origin.example.test');
    const literal = await tunnel(gw, `127.0.0.1:${o.port}`);
    for (const spelling of ['origin.example.test', 'Origin.Example.TEST', 'origin.example.test.']) {
      expect(await idsFor(gw, spelling), spelling).toEqual([named.id]);
    }
    // The address finds both: the literal by its host, the name by the address it was dialled at.
    expect(await idsFor(gw, '::ffff:127.0.0.1')).toEqual([named.id, literal.id].sort());
  });
});
