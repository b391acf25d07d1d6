/**
 * Where alerts go besides the in-memory store: webhooks (JSON POST, retried with backoff) and
 * syslog (RFC 5424 over UDP or TCP, JSON payload). Both subscribe to the AlertStore and work off a
 * bounded queue, so a slow or dead receiver never blocks the data path or the sweep.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { hostname } from 'node:os';
import type { Alert } from '../../policy/detectors/types.ts';
import type { Severity } from '../../policy/types.ts';
import { REDACTED } from '../../policy/redacted.ts';
import type { Logger } from '../context.ts';
import type { AlertStore } from './alert-store.ts';
import { createTcpSyslogSender } from './syslog-tcp.ts';

const RANK: Record<Severity, number> = { low: 0, medium: 1, high: 2 };
const MAX_QUEUE = 1000;

export interface WebhookTarget {
  url: string;
  minSeverity: Severity;
}

export type SyslogTarget = { host: string; port: number; protocol: 'udp' | 'tcp' };

/** Where alerts go. */
export interface SinkTargets {
  webhooks: readonly WebhookTarget[];
  syslog: SyslogTarget | null;
}

export interface SinkOptions extends SinkTargets {
  /**
   * The targets now, read at each alert (the running policy's `alerts`, so a reload or an API push
   * that changes them applies at once); `webhooks` and `syslog` when absent.
   */
  current?: () => SinkTargets;
  log: Logger;
  /** Attempts per webhook delivery (first try included). */
  maxAttempts?: number;
  baseDelayMs?: number;
}

export interface AlertSinks {
  /** Deliveries still queued or in flight. */
  pending(): number;
  /** Wait (bounded) for queued deliveries, then stop. */
  close(timeoutMs?: number): Promise<void>;
}

/** Attach webhook and syslog delivery to an alert store. */
export function attachAlertSinks(store: AlertStore<Alert>, opts: SinkOptions): AlertSinks {
  const maxAttempts = opts.maxAttempts ?? 5;
  const baseDelayMs = opts.baseDelayMs ?? 500;
  let inFlight = 0;
  let closed = false;
  const timers = new Set<NodeJS.Timeout>();

  const deliver = (target: WebhookTarget, body: string, attempt: number): void => {
    if (closed) return;
    inFlight++;
    fetch(target.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(5000) })
      .then((res) => {
        // Drain the body so the connection is reused.
        void res.arrayBuffer().catch(() => {});
        if (res.status >= 500 || res.status === 429) throw new Error(`status ${res.status}`);
        if (res.status >= 400) opts.log.warn({ url: webhookOrigin(target.url), status: res.status }, 'webhook refused the alert');
      })
      .catch((err: unknown) => {
        if (attempt + 1 >= maxAttempts || closed) {
          opts.log.warn({ url: webhookOrigin(target.url), attempts: attempt + 1, err: String(err) }, 'webhook delivery failed; alert dropped for this webhook');
          return;
        }
        const delay = baseDelayMs * 2 ** attempt;
        const t = setTimeout(() => {
          timers.delete(t);
          deliver(target, body, attempt + 1);
        }, delay);
        t.unref();
        timers.add(t);
      })
      .finally(() => {
        inFlight--;
      });
  };

  const current = opts.current ?? ((): SinkTargets => opts);
  // The syslog sender of the target it was made for; a new target (reload) gets a new sender.
  let syslogFor: SyslogTarget | null = null;
  let syslog: { send(a: Alert): void; close(): void } | null = null;
  const syslogSender = (target: SyslogTarget | null): typeof syslog => {
    if (target === syslogFor) return syslog;
    const same = target && syslogFor && target.host === syslogFor.host && target.port === syslogFor.port && target.protocol === syslogFor.protocol;
    syslogFor = target;
    if (same) return syslog;
    syslog?.close();
    syslog = target ? createSyslogSender(target, opts.log) : null;
    return syslog;
  };
  syslogSender(current().syslog);

  const unsubscribe = store.subscribe(({ alert }) => {
    const targets = current();
    if (inFlight + timers.size < MAX_QUEUE) {
      let body: string | null = null;
      for (const target of targets.webhooks) {
        if (RANK[alert.severity] < RANK[target.minSeverity]) continue;
        body ??= JSON.stringify(alert);
        deliver(target, body, 0);
      }
    } else {
      opts.log.warn({ alert: alert.id }, 'webhook queue full; alert not delivered to webhooks');
    }
    syslogSender(targets.syslog)?.send(alert);
  });

  return {
    pending: () => inFlight + timers.size,
    async close(timeoutMs = 2000): Promise<void> {
      unsubscribe();
      const deadline = Date.now() + timeoutMs;
      while (inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      syslog?.close();
    },
  };
}

const SYSLOG_SEVERITY: Record<Severity, number> = { low: 5, medium: 4, high: 2 }; // notice, warning, critical
const FACILITY_AUTHPRIV = 10;

/** One RFC 5424 message: <PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG (structured data nil, JSON payload). */
export function formatSyslog(alert: Alert, host = hostname(), pid = process.pid): string {
  const pri = FACILITY_AUTHPRIV * 8 + SYSLOG_SEVERITY[alert.severity];
  const msgId = alert.detector.replace(/[^\x21-\x7e]/g, '').slice(0, 32) || '-';
  return `<${pri}>1 ${alert.time} ${host || '-'} egressgate ${pid} ${msgId} - ${JSON.stringify(alert)}`;
}

function createSyslogSender(target: { host: string; port: number; protocol: 'udp' | 'tcp' }, log: Logger): { send(a: Alert): void; close(): void } {
  if (target.protocol === 'udp') {
    const sock: UdpSocket = createSocket(target.host.includes(':') ? 'udp6' : 'udp4');
    sock.on('error', (err) => log.warn({ err: String(err) }, 'syslog socket error'));
    sock.unref();
    return {
      send: (a) => sock.send(formatSyslog(a), target.port, target.host),
      close: () => sock.close(),
    };
  }
  // TCP: RFC 6587 octet counting; alerts wait (bounded) while no connection is up (syslog-tcp.ts).
  const tcp = createTcpSyslogSender(target, log);
  return { send: (a) => tcp.send(formatSyslog(a)), close: () => tcp.close() };
}

/**
 * A webhook URL as logs and read-scope answers may show it: scheme, host and port; the path and
 * query (where Slack-style webhooks carry their secret) and any credentials replaced.
 */
export function webhookOrigin(url: string): string {
  try {
    const u = new URL(url);
    return u.pathname === '/' && !u.search && !u.username && !u.password ? u.origin : `${u.origin}/${REDACTED}`;
  } catch {
    return REDACTED;
  }
}
