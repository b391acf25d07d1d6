/**
 * GET /v1/alerts/stream over a real socket: a raw HTTP client reads Server-Sent Events, receives an
 * alert added to the store, heartbeats, resumes with Last-Event-ID, and leaves no subscriber behind.
 */
import { type ClientRequest, type IncomingMessage, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AlertLike } from '../../gateway/alerts/alert-store.ts';
import { bearer, type Harness, makeHarness, TOKENS } from '../unit/admin/harness.ts';

interface SseEvent {
  id: string | null;
  event: string | null;
  data: string;
}

/** A minimal SSE reader over a raw http request: frames and comment lines as they arrive. */
class SseClient {
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  res: IncomingMessage | null = null;
  private buf = '';
  private waiters: Array<() => void> = [];
  private readonly req: ClientRequest;
  closed = false;

  constructor(port: number, path: string, headers: Record<string, string>) {
    this.req = request({ host: '127.0.0.1', port, path, headers: { accept: 'text/event-stream', ...headers } });
    this.req.on('response', (res) => {
      this.res = res;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => this.feed(chunk));
      res.on('close', () => {
        this.closed = true;
        this.wake();
      });
      this.wake();
    });
    this.req.on('error', () => {
      this.closed = true;
      this.wake();
    });
    this.req.end();
  }

  private feed(chunk: string): void {
    this.buf += chunk;
    let end = this.buf.indexOf('\n\n');
    while (end >= 0) {
      const block = this.buf.slice(0, end);
      this.buf = this.buf.slice(end + 2);
      const ev: SseEvent = { id: null, event: null, data: '' };
      let isEvent = false;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) this.comments.push(line.slice(1).trim());
        else if (line.startsWith('id: ')) ev.id = line.slice(4);
        else if (line.startsWith('event: ')) ev.event = line.slice(7);
        else if (line.startsWith('data: ')) ev.data += line.slice(6);
        else continue;
        if (!line.startsWith(':')) isEvent = true;
      }
      if (isEvent) this.events.push(ev);
      end = this.buf.indexOf('\n\n');
    }
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
  }

  /** Resolve when `pred` holds (checked on every chunk); rejects if the stream ends first. */
  async until(pred: () => boolean, what: string): Promise<void> {
    while (!pred()) {
      if (this.closed) throw new Error(`stream closed before ${what}`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  close(): void {
    this.req.destroy();
  }
}

const alert = (id: string, detector = 'an0081.scan'): AlertLike & Record<string, unknown> => ({
  id,
  time: new Date().toISOString(),
  detector,
  analytic: 'AN0081',
  severity: 'high',
  action: 'would-block',
  enforced: false,
  flowIds: ['f1'],
  identity: { user: 'alice', host: null, roles: [], process: null },
  destination: null,
  evidence: { failedDestinations: 30 },
  reasons: ['30 failed destinations in 300 s'],
});

describe('alerts SSE stream over a real socket', () => {
  let h: Harness;
  let port: number;
  /** Subscribers that are not SSE streams (the metrics counter). */
  let base: number;
  const clients: SseClient[] = [];
  const open = (path: string, headers: Record<string, string> = bearer(TOKENS.read)): SseClient => {
    const c = new SseClient(port, path, headers);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    h = await makeHarness();
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    port = (h.app.server.address() as AddressInfo).port;
    base = h.alerts.subscriberCount;
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await h.close();
  });

  it('refuses without a token (401, no stream)', async () => {
    const c = open('/v1/alerts/stream', {});
    await c.until(() => c.res !== null, 'response');
    expect(c.res?.statusCode).toBe(401);
    c.close();
  });

  it('delivers a new alert as id/event/data, sends heartbeats, resumes with Last-Event-ID', async () => {
    const c = open('/v1/alerts/stream');
    await c.until(() => c.res !== null && c.comments.length > 0, 'the first comment');
    expect(c.res?.statusCode).toBe(200);
    expect(c.res?.headers['content-type']).toMatch(/^text\/event-stream/);
    // Regression: the hijacked stream skipped the onSend hook: no nosniff, and `no-cache` only.
    expect(c.res?.headers['x-content-type-options']).toBe('nosniff');
    expect(c.res?.headers['cache-control']).toMatch(/^no-store\b/);
    expect(h.alerts.subscriberCount).toBe(base + 1);

    const first = h.alerts.add(alert('a-1'));
    await c.until(() => c.events.length >= 1, 'the first alert');
    expect(c.events[0]).toMatchObject({ id: String(first), event: 'alert' });
    expect(JSON.parse(c.events[0]?.data ?? '')).toMatchObject({ id: 'a-1', detector: 'an0081.scan', evidence: { failedDestinations: 30 } });

    // heartbeats are comment lines (the harness sets 200 ms)
    await c.until(() => c.comments.includes('heartbeat'), 'a heartbeat');

    // Disconnect; alerts raised meanwhile are replayed on reconnect, then live ones follow.
    c.close();
    await vi.waitFor(() => expect(h.alerts.subscriberCount).toBe(base), { timeout: 5_000, interval: 20 });
    h.alerts.add(alert('a-2'));
    h.alerts.add(alert('a-3'));
    const again = open('/v1/alerts/stream', bearer(TOKENS.read, { 'last-event-id': String(first) }));
    await again.until(() => again.events.length >= 2, 'the missed alerts');
    expect(again.events.map((e) => JSON.parse(e.data).id)).toEqual(['a-2', 'a-3']);
    h.alerts.add(alert('a-4'));
    await again.until(() => again.events.length >= 3, 'the live alert after replay');
    expect(again.events.map((e) => Number(e.id))).toEqual([first + 1, first + 2, first + 3]);
    again.close();
    await vi.waitFor(() => expect(h.alerts.subscriberCount).toBe(base), { timeout: 5_000, interval: 20 });
  });

  it('a Last-Event-ID from before a restart (beyond the newest id) does not hold new alerts back', async () => {
    const c = open('/v1/alerts/stream', bearer(TOKENS.read, { 'last-event-id': '999999' }));
    await c.until(() => c.comments.length > 0, 'the first comment');
    const id = h.alerts.add(alert('r-1'));
    await c.until(() => c.events.length >= 1, 'the new alert');
    expect(c.events.map((e) => Number(e.id))).toEqual([id]);
    c.close();
  });

  it('filters by detector and ends open streams when the app closes', async () => {
    const c = open('/v1/alerts/stream?detector=an0080.bulk-upload');
    await c.until(() => c.comments.length > 0, 'the first comment');
    h.alerts.add(alert('x-1', 'an0081.scan'));
    h.alerts.add(alert('x-2', 'an0080.bulk-upload'));
    await c.until(() => c.events.length >= 1, 'the matching alert');
    expect(c.events.map((e) => JSON.parse(e.data).id)).toEqual(['x-2']);
    // Closing the app ends the stream (it must not hang on the open response).
    await h.app.close();
    await c.until(() => c.closed, 'the end of the stream');
    expect(h.alerts.subscriberCount).toBe(base);
  });
});
