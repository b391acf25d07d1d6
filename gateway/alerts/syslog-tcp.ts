/**
 * Syslog over TCP (RFC 6587 octet counting) that keeps what it could not hand over. Messages wait in
 * a bounded queue while no connection is up (the receiver down, restarting, or the gateway out of
 * descriptors) and are written, oldest first, once one is: a connect that fails is tried again after
 * a backoff (1 s, doubling to 30 s) for as long as messages wait. Before, each alert was written to a
 * socket still connecting, and a refused or failed connect dropped it with a warning: a receiver
 * restart lost every alert raised while it was down.
 *
 * What TCP took is taken as delivered (there is no acknowledgement in syslog over TCP); a connection
 * that breaks later may lose what the kernel still held, as with any syslog client.
 */
import { connect, type Socket } from 'node:net';
import type { Logger } from '../context.ts';

/** Messages kept while no connection is up; beyond, the oldest is dropped (counted, logged). */
export const SYSLOG_TCP_MAX_WAITING = 1000;
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30_000;
const DROP_LOG_EVERY_MS = 10_000;

export interface SyslogSender {
  send(message: string): void;
  close(): void;
}

export function createTcpSyslogSender(target: { host: string; port: number }, log: Logger, firstRetryMs = FIRST_RETRY_MS): SyslogSender {
  const waiting: string[] = [];
  let sock: Socket | null = null;
  let isUp = false;
  let retry: NodeJS.Timeout | null = null;
  let retryMs = firstRetryMs;
  let isClosed = false;
  let dropped = 0;
  let droppedLoggedAt = 0;

  const flush = (): void => {
    if (sock === null || !isUp || waiting.length === 0) return;
    sock.write(waiting.join(''));
    waiting.length = 0;
  };

  const scheduleRetry = (): void => {
    if (isClosed || retry !== null || waiting.length === 0) return;
    retry = setTimeout(() => {
      retry = null;
      if (sock === null) open();
    }, retryMs);
    retry.unref();
    retryMs = Math.min(LAST_RETRY_MS, retryMs * 2);
  };

  const open = (): void => {
    const s = connect({ host: target.host, port: target.port });
    sock = s;
    isUp = false;
    s.unref();
    s.on('connect', () => {
      if (sock !== s) return;
      isUp = true;
      retryMs = firstRetryMs;
      flush();
    });
    s.on('error', (err) => {
      log.warn({ err: String(err), waiting: waiting.length }, 'syslog connection error; alerts wait for the next connection');
    });
    // The receiver closed its side (a restart): what comes next waits for a new connection.
    s.on('end', () => {
      if (sock === s) isUp = false;
    });
    s.on('close', () => {
      if (sock !== s) return;
      if (!isClosed) log.info({ waiting: waiting.length }, 'syslog connection closed');
      sock = null;
      isUp = false;
      scheduleRetry();
    });
  };

  return {
    send(message) {
      if (isClosed) return;
      if (waiting.length >= SYSLOG_TCP_MAX_WAITING) {
        waiting.shift();
        dropped++;
        const now = Date.now();
        if (now - droppedLoggedAt >= DROP_LOG_EVERY_MS) {
          droppedLoggedAt = now;
          log.warn({ dropped, maxWaiting: SYSLOG_TCP_MAX_WAITING }, 'syslog receiver unreachable and its queue full; oldest alerts dropped for syslog');
        }
      }
      waiting.push(`${Buffer.byteLength(message)} ${message}`);
      if (sock === null && retry === null) open();
      else flush();
    },
    close() {
      isClosed = true;
      if (retry !== null) clearTimeout(retry);
      retry = null;
      if (waiting.length > 0) log.warn({ undelivered: waiting.length }, 'syslog closed with alerts never delivered');
      waiting.length = 0;
      sock?.end();
    },
  };
}
