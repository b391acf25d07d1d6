/**
 * A kill (admin DELETE, a detector, the drain's end: FlowTable.kill) resets both sides (SPEC §4), on
 * the HTTPS listener too. Regression: there `resetAndDestroy()` threw on the TLS socket and the
 * fallback destroy() ended the client's connection with a plain FIN (no close_notify, no RST), which
 * a node client reads as a normal end. And an absolute-URI request served through node:http (every
 * request on the HTTPS listener; a POST on the plain one) was destroyed before its reset, so its
 * client read a FIN on both listeners, as did one whose Upgrade its origin declined, killed while the
 * answer's body was relayed. A node client tells them apart: ECONNRESET, or 'end'.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { hasOpenssl } from '../helpers/tls.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type LocalGateway, rawConnect, run, startLocalGateway } from './http-harness.ts';

/** How a connection ended, as its owner saw it. */
type Ending = 'reset' | 'end' | 'other';

/** Resolves with how `s` ended: ECONNRESET, a clean end, or anything else (another error, a close without either). */
function endingOf(s: Socket): Promise<Ending> {
  return new Promise((resolve) => {
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNRESET' ? 'reset' : 'other'));
    s.on('end', () => resolve('end'));
    s.on('close', () => resolve('other'));
    s.resume();
  });
}

let dir: string;
let tlsGw: LocalGateway;
let plainGw: LocalGateway;
/**
 * The destination: holds every connection open, answers an Upgrade to /ws with 101 and nothing
 * else, declines one to /declined with the start of a body read until the close, and records how
 * each connection ended.
 */
let dest: Server;
let destPort = 0;
const destEndings: Array<Promise<Ending>> = [];
let destRead = '';
let isReady = false;

beforeAll(async () => {
  if (!hasOpenssl()) return;
  dir = mkdtempSync(join(tmpdir(), 'egw-kill-reset-'));
  const made = await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
    '-subj', '/CN=egressgate-test', '-addext', 'subjectAltName=IP:127.0.0.1',
  ]);
  expect(made.code).toBe(0);
  dest = createServer((c) => {
    destEndings.push(endingOf(c));
    c.on('data', (d: Buffer) => {
      destRead += d.toString('latin1');
      const text = d.toString('latin1');
      if (text.startsWith('GET /ws ')) c.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n');
      // Declined, with a body that ends at the close: the client cannot tell a cut from its end but by a reset.
      if (text.startsWith('GET /declined ')) c.write('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart of the body');
    });
  });
  dest.listen(0, '127.0.0.1');
  await once(dest, 'listening');
  destPort = (dest.address() as { port: number }).port;
  tlsGw = await startLocalGateway({}, { tls: { cert: readFileSync(join(dir, 'cert.pem')), key: readFileSync(join(dir, 'key.pem')) } });
  plainGw = await startLocalGateway();
  isReady = true;
}, 60_000);

afterAll(async () => {
  await tlsGw?.stop();
  await plainGw?.stop();
  await new Promise<void>((r) => (dest ? dest.close(() => r()) : r()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A TLS connection to the HTTPS listener, handshake done. */
async function tlsClient(): Promise<Socket> {
  const s = tlsConnect({ host: '127.0.0.1', port: tlsGw.httpPort, ca: readFileSync(join(dir, 'cert.pem')) });
  await once(s, 'secureConnect');
  return s;
}

/**
 * Send `head` on `client`, wait until the destination has read `marker` (the flow is under way
 * there), kill the flow, and say how the client's and the destination's `at`th connection ended.
 */
async function killUnderWay(gw: LocalGateway, client: Socket, at: number, head: string, marker: string): Promise<{ client: Ending; dest: Ending; closeReason: string | null }> {
  const clientEnding = endingOf(client);
  client.write(head);
  await until('the request is at the destination', () => destRead.includes(marker) && destEndings.length > at);
  const live = gw.flows.list({ state: 'active' }).find((f) => f.destination.port === destPort);
  expect(live).toBeDefined();
  expect(gw.flows.kill(live?.id ?? '', 'admin')).toBe(true);
  const rec = await gw.waitForClosed((f) => f.id === live?.id);
  return { client: await clientEnding, dest: await (destEndings[at] as Promise<Ending>), closeReason: rec.closeReason };
}

describe.skipIf(!skipNotice(hasOpenssl(), 'https-kill-reset', 'needs openssl to make the test certificate'))('a kill resets the client on the HTTPS listener', () => {
  it('a killed CONNECT tunnel over TLS: the client and the destination are reset', async () => {
    expect(isReady).toBe(true);
    const at = destEndings.length;
    destRead = '';
    const client = await tlsClient();
    const got = new Promise<void>((r) => client.once('data', () => r()));
    client.write(`CONNECT 127.0.0.1:${destPort} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await got;
    const ended = await killUnderWay(tlsGw, client, at, 'in the tunnel', 'in the tunnel');
    expect(ended).toEqual({ client: 'reset', dest: 'reset', closeReason: 'admin' });
  });

  it('a killed absolute-URI request over TLS: the client is reset', async () => {
    expect(isReady).toBe(true);
    const at = destEndings.length;
    destRead = '';
    const client = await tlsClient();
    const ended = await killUnderWay(tlsGw, client, at, `GET http://127.0.0.1:${destPort}/held HTTP/1.1\r\nHost: x\r\n\r\n`, 'GET /held ');
    expect(ended.client).toBe('reset');
    expect(ended.closeReason).toBe('admin');
  });

  it('a killed Upgrade tunnel over TLS: the client and the destination are reset', async () => {
    expect(isReady).toBe(true);
    const at = destEndings.length;
    destRead = '';
    const client = await tlsClient();
    const got = new Promise<void>((r) => client.once('data', () => r()));
    client.write(`GET http://127.0.0.1:${destPort}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n`);
    await got;
    const ended = await killUnderWay(tlsGw, client, at, 'upgraded', 'upgraded');
    expect(ended).toEqual({ client: 'reset', dest: 'reset', closeReason: 'admin' });
  });

  // The body of a declined Upgrade is relayed by http-upgrade.ts itself (relayRefusedUpgrade): its
  // kill destroyed the client's socket, a FIN, on both listeners.
  it.each(['https', 'http'] as const)('a killed Upgrade declined by its origin while its body is relayed (%s listener): the client is reset', async (listener) => {
    expect(isReady).toBe(true);
    const at = destEndings.length;
    destRead = '';
    const client = listener === 'https' ? await tlsClient() : await rawConnect(plainGw.httpPort);
    let got = '';
    client.on('data', (d: Buffer) => {
      got += d.toString('latin1');
    });
    const gw = listener === 'https' ? tlsGw : plainGw;
    client.write(`GET http://127.0.0.1:${destPort}/declined HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n`);
    await until('the body has begun at the client', () => got.endsWith('part of the body'));
    const ended = await killUnderWay(gw, client, at, '', 'GET /declined ');
    expect(ended).toEqual({ client: 'reset', dest: 'reset', closeReason: 'admin' });
  });

  it('a killed absolute-URI POST on the plain listener (served through node:http): the client is reset', async () => {
    expect(isReady).toBe(true);
    const at = destEndings.length;
    destRead = '';
    const client = await rawConnect(plainGw.httpPort);
    const ended = await killUnderWay(plainGw, client, at, `POST http://127.0.0.1:${destPort}/held HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab`, 'ab');
    expect(ended.client).toBe('reset');
    expect(ended.closeReason).toBe('admin');
  });
});
