/**
 * Server-Sent Events for `GET /v1/alerts/stream`, hand-rolled over the raw response (20 lines of
 * protocol do not need a 0.x plugin). Each alert is one event:
 *
 *     id: 42
 *     event: alert
 *     data: {"id":"…","detector":"an0081.scan",…}
 *
 * A reconnecting client sends `Last-Event-ID` and first gets every alert it missed that the store
 * still holds. A comment line every `heartbeatMs` keeps proxies from timing the stream out and lets
 * a dead client be noticed. One idempotent cleanup removes the subscription, the timer and the
 * listeners, whichever way the stream ends.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AlertEvent } from '../gateway/alerts/alert-store.ts';
import type { ControlPort } from '../gateway/control.ts';

/** A slow reader is cut off past this much unsent data; it reconnects with Last-Event-ID. */
const MAX_BUFFERED_BYTES = 1 << 20;

export interface StreamLimits {
  /** Open streams in all; 0 = no limit. */
  maxStreams: number;
  /** Open streams per token; 0 = no limit. */
  maxStreamsPerToken: number;
}

/**
 * The open streams: ended all at once when the app closes, and counted per token and in all, so
 * one read token cannot hold thousands of subscriptions (5,000 from one token were accepted, each
 * a subscriber every alert is formatted and written for). Over a limit the route answers 429.
 * Each keeps its token check, asked again for all of them when the credentials change.
 */
export class SseStreams {
  private readonly open = new Map<ServerResponse, { token: string; recheck: () => void }>();
  private readonly perToken = new Map<string, number>();
  refusedPerToken = 0;
  refusedTotal = 0;

  constructor(private readonly limits: () => StreamLimits) {}

  get size(): number {
    return this.open.size;
  }

  /** Which limit a new stream for `token` would pass, or null when it may open. */
  refusal(token: string): 'token' | 'total' | null {
    const { maxStreams, maxStreamsPerToken } = this.limits();
    if (maxStreamsPerToken > 0 && (this.perToken.get(token) ?? 0) >= maxStreamsPerToken) {
      this.refusedPerToken++;
      return 'token';
    }
    if (maxStreams > 0 && this.open.size >= maxStreams) {
      this.refusedTotal++;
      return 'total';
    }
    return null;
  }

  /** `recheck` ends the stream when its token no longer grants it (see recheckAll). */
  add(res: ServerResponse, token: string, recheck: () => void): void {
    this.open.set(res, { token, recheck });
    this.perToken.set(token, (this.perToken.get(token) ?? 0) + 1);
  }

  delete(res: ServerResponse): void {
    const token = this.open.get(res)?.token;
    if (token === undefined) return;
    this.open.delete(res);
    const n = (this.perToken.get(token) ?? 1) - 1;
    if (n <= 0) this.perToken.delete(token);
    else this.perToken.set(token, n);
  }

  /**
   * Ask every open stream's token again (the policy changed: a reload, a PUT, a rollback): one
   * revoked, or narrowed below the read scope, ends at once, not at its next alert or heartbeat.
   */
  recheckAll(): void {
    for (const { recheck } of [...this.open.values()]) recheck();
  }

  /** End every open stream (the app is closing: live streams would keep the server open). */
  endAll(): void {
    for (const res of [...this.open.keys()]) res.end();
  }
}

export interface SseOptions {
  heartbeatMs: number;
  detector?: string;
  /** From the Last-Event-ID header or the `lastEventId` query; null = only new alerts. */
  lastEventId: number | null;
  /** Open streams, so the app can end them on close, and the token this one counts against. */
  open: SseStreams;
  token: string;
  /**
   * Whether the stream's token still grants the read scope (a PUT or reload may revoke it): asked
   * when the policy changes (SseStreams.recheckAll) and before each alert and heartbeat; false ends
   * the stream.
   */
  isAuthorized: () => boolean;
}

/** One SSE frame for an alert event. */
export function formatAlertEvent(ev: AlertEvent): string {
  // JSON.stringify never emits a raw newline, so one data: line carries the whole record.
  return `id: ${ev.eventId}\nevent: alert\ndata: ${JSON.stringify(ev.alert)}\n\n`;
}

/** Parse a Last-Event-ID header (decimal event id), or null. */
export function parseLastEventId(value: string | string[] | undefined): number | null {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || !/^\d{1,15}$/.test(v.trim())) return null;
  return Number(v.trim());
}

/** The head of a stream (and of a HEAD of the route). */
const STREAM_HEAD = {
  'content-type': 'text/event-stream; charset=utf-8',
  // As every admin answer (app.ts setAnswerHeaders: the hijacked reply skips the onSend hook).
  'cache-control': 'no-store, no-transform',
  'x-content-type-options': 'nosniff',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
} as const;

/**
 * `HEAD /v1/alerts/stream` (fastify gives every GET route a HEAD twin): the head a stream starts
 * with, ended at once, no stream opened. node sends a HEAD's head only when the response ends, so
 * the stream it used to open sent nothing at all and held the connection (and a place in the
 * stream limits) until the client gave up; a request pipelined behind it was never answered.
 */
export function answerStreamHead(reply: FastifyReply): void {
  reply.hijack();
  reply.raw.writeHead(200, STREAM_HEAD);
  reply.raw.end();
}

/** Take over the response and stream alerts until the client goes away. */
export function streamAlerts(port: ControlPort, request: FastifyRequest, reply: FastifyReply, opts: SseOptions): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, STREAM_HEAD);
  const newest = port.listAlerts({ limit: 0 }).lastEventId;
  // An id of an earlier run is below this run's ids (main.ts: they start above its start time), so
  // the replay sends every alert this run raised. One beyond the newest (a clock set back between
  // runs, or made up): replaying from it would hold back every new alert until the counter caught
  // up, so start from now instead.
  const resumeFrom = opts.lastEventId !== null && opts.lastEventId <= newest ? opts.lastEventId : null;
  let lastSent = resumeFrom ?? newest;
  let closed = false;
  const send = (ev: AlertEvent): void => {
    if (closed || ev.eventId <= lastSent) return;
    // A token revoked (or narrowed to no read scope) since the stream opened reads no more alerts.
    if (!opts.isAuthorized()) {
      cleanup();
      return;
    }
    if (opts.detector && ev.alert.detector !== opts.detector) return;
    lastSent = ev.eventId;
    res.write(formatAlertEvent(ev));
    if (res.writableLength > MAX_BUFFERED_BYTES) cutOff();
  };
  // Subscribing and replaying in the same tick leaves no gap between backlog and live events.
  const unsubscribe = port.subscribeAlerts(send);
  const heartbeat = setInterval(() => {
    if (closed) return;
    if (opts.isAuthorized()) res.write(': heartbeat\n\n');
    else cleanup();
  }, opts.heartbeatMs);
  heartbeat.unref();
  const cleanup = (): void => {
    if (closed) return;
    closed = true;
    unsubscribe();
    clearInterval(heartbeat);
    request.raw.off('close', cleanup);
    res.off('close', cleanup);
    res.off('error', cleanup);
    opts.open.delete(res);
    if (!res.writableEnded) res.end();
    // An ended stream does not keep its connection for another request.
    if (!res.socket?.destroyed) res.socket?.destroySoon();
  };
  // A reader that fell behind: its socket holds the megabyte it did not read, and ending the
  // response would wait for the reader to take it (destroySoon waits for the drain): one that
  // never reads held the buffer and the connection for good, out of the stream limits' count.
  // Destroyed at once; the reader resumes with Last-Event-ID.
  const cutOff = (): void => {
    cleanup();
    res.socket?.destroy();
  };
  request.raw.on('close', cleanup);
  res.on('close', cleanup);
  res.on('error', cleanup);
  opts.open.add(res, opts.token, () => {
    if (!closed && !opts.isAuthorized()) cleanup();
  });
  // Tell the browser how soon to reconnect, and flush the headers with a first comment.
  res.write(`retry: 3000\n: connected, last event id ${lastSent}\n\n`);
  if (resumeFrom !== null) for (const ev of port.alertsAfter(resumeFrom, opts.detector)) send(ev);
}
