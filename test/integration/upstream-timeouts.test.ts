/**
 * A parent proxy that is slow or silent at the TCP level, made on loopback without nftables: its
 * accept queue is full (test/helpers/stalled-parent.ts), so the kernel drops the gateway's SYN
 * until the test lets the parent accept. What is checked is what a user sees: the client's answer,
 * its reason, the flow record.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type StalledParent, startStalledParent } from '../helpers/stalled-parent.ts';
import { jsonBody } from './http-harness.ts';

let gw: TestGateway | null = null;
let parent: StalledParent | null = null;

afterEach(async () => {
  await gw?.stop();
  await parent?.close();
  gw = null;
  parent = null;
});

/** A CONNECT through the gateway's HTTP listener: the status line, the reason of a refusal, and what came after the head. */
async function connectThrough(g: TestGateway, target: string): Promise<{ status: string; reason: unknown; after: string }> {
  const socket = connect({ host: g.httpHost, port: g.httpPort });
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
  let raw = '';
  socket.on('data', (d: Buffer) => {
    raw += d.toString('latin1');
    if (raw.endsWith('first-bytes')) socket.destroy();
  });
  await once(socket, 'close');
  const end = raw.indexOf('\r\n\r\n');
  const isRefused = !raw.startsWith('HTTP/1.1 200 ');
  return { status: raw.slice(0, raw.indexOf('\r\n')), reason: isRefused ? jsonBody(raw).reason : null, after: isRefused ? '' : raw.slice(end + 4) };
}

// Regression: the TCP connect to a parent and the parent's handshake each had the whole
// limits.connectTimeoutMs. With 5,000 ms, a parent whose accept took 2 s (SYNs dropped) and whose
// CONNECT answer came 4 s later gave the client its 200 after 6.1 s: a dial over its budget went on.
describe('one budget for a dial through a parent: TCP connect and handshake together', () => {
  for (const protocol of ['http', 'socks5'] as const) {
    it(`${protocol} parent: accepted after a retransmitted SYN and answering 4 s later is over connectTimeoutMs 5,000: 504 connect-timeout`, async () => {
      const answer = protocol === 'http' ? 'HTTP/1.1 200 Connection established\r\n\r\nfirst-bytes' : 'first-bytes';
      parent = await startStalledParent({ protocol, answer, answerDelayMs: 4000 });
      gw = await startTestGateway({ upstream: parent.url, limits: { connectTimeoutMs: 5000 } });
      const answered = connectThrough(gw, '127.0.0.1:9');
      // Let the parent accept only once the gateway's SYN has been dropped and sent again (1 s):
      // the connect takes at least 2 s, the handshake 4 s; each alone is within 5 s, both are not.
      await parent.waitSynRetransmits(1);
      parent.release();
      const r = await answered;
      expect(r).toEqual({ status: 'HTTP/1.1 504 Gateway Timeout', reason: 'connect-timeout', after: '' });
      const rec = await gw.waitForClosed((x) => x.protocol === 'connect');
      expect(rec).toMatchObject({ closeReason: 'connect-timeout', bytesIn: 0, bytesOut: 0 });
    }, 20_000);
  }
});
