/**
 * GET /v1/alerts/stream with a reader that never reads, over real sockets: past 1 MiB unsent the
 * stream is cut, and its connection with it. Before, the cut ended the response and waited for the
 * reader to take the megabyte: the connection and its buffer stayed for good, no longer counted
 * against admin.maxStreamsPerToken, so one read token held 20 connections and 21 MB by opening
 * stream after stream.
 */
import { connect, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AlertLike } from '../../gateway/alerts/alert-store.ts';
import { type Harness, makeHarness, TOKENS } from '../unit/admin/harness.ts';

/** 64 KiB of evidence per alert: a few dozen fill what the kernel buffers on loopback. */
const EVIDENCE = 'x'.repeat(64 * 1024);
const alert = (id: string): AlertLike & Record<string, unknown> => ({
  id,
  time: new Date().toISOString(),
  detector: 'an0080.bulk-upload',
  analytic: 'AN0080',
  severity: 'high',
  action: 'flag',
  enforced: false,
  flowIds: ['f1'],
  identity: { user: 'alice', host: null, roles: [], process: null },
  destination: null,
  evidence: { note: EVIDENCE },
  reasons: ['large upload'],
});

describe('alerts SSE stream: a reader that never reads', () => {
  let h: Harness;
  let port: number;
  /** The admin server's side of every connection, in the order they came. */
  const serverSide: Socket[] = [];
  const clients: Socket[] = [];

  beforeAll(async () => {
    h = await makeHarness();
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    port = (h.app.server.address() as AddressInfo).port;
    h.app.server.on('connection', (s: Socket) => serverSide.push(s));
  });

  afterAll(async () => {
    for (const c of clients) c.destroy();
    await h.close();
  });

  /** A stream whose client reads the head and then nothing more. */
  async function stalledStream(): Promise<Socket> {
    const before = serverSide.length;
    const c = connect(port, '127.0.0.1');
    clients.push(c);
    c.on('error', () => {});
    await new Promise<void>((resolve) => c.once('connect', () => resolve()));
    c.write(`GET /v1/alerts/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKENS.read}\r\n\r\n`);
    const head = await new Promise<string>((resolve) => c.once('data', (b: Buffer) => resolve(b.toString('latin1'))));
    expect(head).toMatch(/^HTTP\/1\.1 200 /);
    c.pause();
    const server = serverSide[before];
    if (!server) throw new Error('no server side for the stream');
    return server;
  }

  it('drops the connection of a reader cut off, however many streams it opens one after another', async () => {
    const streams = 20;
    for (let k = 0; k < streams; k++) {
      const server = await stalledStream();
      // Alerts until the stream is cut (its response ended): at most 400 (25 MiB) per stream.
      for (let i = 0; i < 400 && !server.writableEnded && !server.destroyed; i++) {
        h.alerts.add(alert(`s${k}-${i}`));
        await new Promise((r) => setImmediate(r));
      }
      expect(server.writableEnded || server.destroyed).toBe(true);
    }
    // Cut, the stream no longer counts against the token's limit (16); nor may its socket stay.
    await vi.waitFor(
      () => {
        const open = serverSide.filter((s) => !s.destroyed);
        expect({ open: open.length, heldBytes: open.reduce((n, s) => n + s.writableLength, 0) }).toEqual({ open: 0, heldBytes: 0 });
      },
      { timeout: 10_000, interval: 50 },
    );
    const metrics = await h.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${TOKENS.read}` } });
    expect(metrics.body).toMatch(/^gw_admin_streams_active 0$/m);
  });
});
