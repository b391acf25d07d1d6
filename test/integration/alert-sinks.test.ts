/**
 * Alerts leave the gateway through webhooks (JSON POST, retried with backoff, filtered by
 * severity) and syslog (RFC 5424 over UDP and TCP) — real local receivers, real sockets.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { attachAlertSinks, formatSyslog } from '../../gateway/alerts/alert-sinks.ts';
import { AlertStore } from '../../gateway/alerts/alert-store.ts';
import type { Logger } from '../../gateway/context.ts';
import type { Alert } from '../../policy/detectors/types.ts';
import { startTestGateway } from '../helpers/gateway.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const warnings: string[] = [];
const warnedUrls: unknown[] = [];
const log: Logger = {
  info: () => {},
  warn: (o, m) => {
    warnings.push(m ?? '');
    warnedUrls.push((o as { url?: unknown }).url);
  },
  error: () => {},
};

function alert(id: string, severity: Alert['severity']): Alert {
  return {
    id,
    time: '2026-11-25T10:00:00.000Z',
    detector: 'an0081.scan',
    analytic: 'AN0081',
    severity,
    action: 'block',
    enforced: true,
    flowIds: ['f1'],
    identity: { user: 'bob', host: 'ws-1', roles: [], process: null },
    destination: { host: 'example.test', ip: '203.0.113.5', port: 443 },
    evidence: { failedPorts: 20 },
    reasons: ['port scan'],
  };
}

async function webhookReceiver(failFirst: number): Promise<{ url: string; bodies: Alert[]; hits: () => number; server: Server }> {
  const bodies: Alert[] = [];
  let hits = 0;
  const server = createHttpServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      text += c;
    });
    req.on('end', () => {
      hits++;
      if (hits <= failFirst) {
        res.writeHead(503).end();
        return;
      }
      bodies.push(JSON.parse(text) as Alert);
      res.writeHead(204).end();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, bodies, hits: () => hits, server };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('alert sinks', () => {
  it('posts alerts at or above minSeverity to a webhook, retrying 5xx with backoff', async () => {
    const hook = await webhookReceiver(2);
    const store = new AlertStore<Alert>({});
    const sinks = attachAlertSinks(store, { webhooks: [{ url: hook.url, minSeverity: 'medium' }], syslog: null, log, baseDelayMs: 20 });
    cleanups.push(() => sinks.close());
    store.add(alert('a-low', 'low'));
    store.add(alert('a-high', 'high'));
    await until(() => hook.bodies.length === 1);
    expect(hook.bodies[0]?.id).toBe('a-high');
    expect(hook.hits()).toBe(3); // two 503s, then delivered
    await until(() => sinks.pending() === 0);
    expect(hook.bodies.map((b) => b.id)).toEqual(['a-high']);
  });

  it('gives up after maxAttempts and says so, without blocking the store', async () => {
    const hook = await webhookReceiver(100);
    const store = new AlertStore<Alert>({});
    const sinks = attachAlertSinks(store, { webhooks: [{ url: hook.url, minSeverity: 'low' }], syslog: null, log, baseDelayMs: 5, maxAttempts: 3 });
    cleanups.push(() => sinks.close());
    warnings.length = 0;
    store.add(alert('a1', 'medium'));
    expect(store.size).toBe(1);
    await until(() => warnings.some((w) => w.includes('webhook delivery failed')));
    expect(hook.hits()).toBe(3);
    // The log names the webhook by its origin: the path (a Slack-style webhook's secret) stays out.
    expect(warnedUrls.at(-1)).toBe(`${new URL(hook.url).origin}/[redacted]`);
  });

  it('sends RFC 5424 messages over UDP with the alert as JSON', async () => {
    const udp = createSocket('udp4');
    udp.bind(0, '127.0.0.1');
    await once(udp, 'listening');
    cleanups.push(() => {
      udp.close();
    });
    const got = once(udp, 'message') as Promise<[Buffer]>;
    const store = new AlertStore<Alert>({});
    const sinks = attachAlertSinks(store, { webhooks: [], syslog: { host: '127.0.0.1', port: udp.address().port, protocol: 'udp' }, log });
    cleanups.push(() => sinks.close());
    store.add(alert('a-udp', 'high'));
    const [msg] = await got;
    const text = msg.toString('utf8');
    // authpriv (10) * 8 + critical (2) = 82
    expect(text).toMatch(/^<82>1 2026-11-25T10:00:00\.000Z \S+ egressgate \d+ an0081\.scan - /);
    expect(JSON.parse(text.slice(text.indexOf(' - ') + 3))).toMatchObject({ id: 'a-udp', detector: 'an0081.scan' });
  });

  it('frames syslog over TCP with octet counting (RFC 6587)', async () => {
    let data = '';
    const server = createTcpServer((s) => {
      s.setEncoding('utf8');
      s.on('data', (c: string) => {
        data += c;
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const store = new AlertStore<Alert>({});
    const sinks = attachAlertSinks(store, { webhooks: [], syslog: { host: '127.0.0.1', port: (server.address() as AddressInfo).port, protocol: 'tcp' }, log });
    store.add(alert('a-tcp', 'medium'));
    const expected = formatSyslog(alert('a-tcp', 'medium'));
    await until(() => data.length >= Buffer.byteLength(expected));
    await sinks.close();
    const space = data.indexOf(' ');
    expect(Number(data.slice(0, space))).toBe(Buffer.byteLength(data.slice(space + 1)));
    expect(data.slice(space + 1)).toMatch(/^<84>1 /); // authpriv warning
  });
});

/** Octet-counted frames (RFC 6587) in `data`: each message's alert id, in order. */
function framedIds(data: string): string[] {
  const ids: string[] = [];
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(' ', at);
    const length = Number(data.slice(at, space));
    const bytes = Buffer.from(data.slice(space + 1), 'utf8');
    if (bytes.length < length) break;
    const msg = bytes.subarray(0, length).toString('utf8');
    ids.push((JSON.parse(msg.slice(msg.indexOf(' - ') + 3)) as Alert).id);
    at = space + 1 + msg.length;
  }
  return ids;
}

/** A TCP syslog receiver on `port` (0: any); `drop()` resets its connections and stops listening. */
async function tcpReceiver(port: number): Promise<{ port: number; text: () => string; drop: () => Promise<void> }> {
  let data = '';
  const conns = new Set<Socket>();
  const server = createTcpServer((s) => {
    conns.add(s);
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      data += c;
    });
    s.on('close', () => conns.delete(s));
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const drop = async (): Promise<void> => {
    for (const s of conns) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  cleanups.push(async () => {
    if (server.listening) await drop();
  });
  return { port: (server.address() as AddressInfo).port, text: () => data, drop };
}

describe('syslog over TCP while the receiver is down', () => {
  // Regression: each alert was written to a socket still connecting; a refused connect (receiver down
  // or restarting) dropped it with a warning, so every alert raised meanwhile never reached the SIEM.
  it('keeps the alerts and delivers them in order once the receiver is up, across a receiver restart', async () => {
    const first = await tcpReceiver(0);
    const port = first.port;
    await first.drop();
    const store = new AlertStore<Alert>({});
    const infos: string[] = [];
    const sinks = attachAlertSinks(store, { webhooks: [], syslog: { host: '127.0.0.1', port, protocol: 'tcp' }, log: { ...log, info: (_o, m) => infos.push(m ?? '') } });
    cleanups.push(() => sinks.close());
    warnings.length = 0;
    store.add(alert('down-1', 'medium'));
    store.add(alert('down-2', 'high'));
    await until(() => warnings.some((w) => w.includes('syslog connection error')));
    const up = await tcpReceiver(port);
    // Tried again after its backoff (1 s at first).
    await until(() => framedIds(up.text()).length === 2, 10_000);
    expect(framedIds(up.text())).toEqual(['down-1', 'down-2']);
    store.add(alert('up-1', 'low'));
    await until(() => framedIds(up.text()).length === 3);
    // The receiver restarts: what is raised while it is away arrives after it is back.
    const closes = (): number => infos.filter((m) => m === 'syslog connection closed').length;
    const closedBefore = closes();
    await up.drop();
    // Once the sender has seen the receiver go (a new alert then waits for a new connection).
    await until(() => closes() > closedBefore);
    store.add(alert('restart-1', 'medium'));
    const back = await tcpReceiver(port);
    await until(() => framedIds(back.text()).length === 1, 10_000);
    expect(framedIds(back.text())).toEqual(['restart-1']);
    expect(framedIds(up.text())).toEqual(['down-1', 'down-2', 'up-1']);
  });
});

describe('alert sinks of a running gateway', () => {
  // Regression: the sinks were attached once from the start-up policy, so a PUT /v1/policy (or a
  // reload) that replaced a webhook answered 200 and showed the new one while alerts went on going to
  // the old one; a leaking webhook could not be removed without a restart.
  it('a policy pushed through the admin API that replaces the webhook applies to the next alert', async () => {
    const a = await webhookReceiver(0);
    const b = await webhookReceiver(0);
    const gw = await startTestGateway({ alerts: { webhooks: [{ url: a.url, minSeverity: 'low' }] } });
    cleanups.push(() => gw.stop());
    gw.alerts.add(alert('before', 'high'));
    await until(() => a.bodies.length === 1);
    const auth = { authorization: `Bearer ${gw.adminToken}` };
    const current = (await (await fetch(`${gw.adminUrl}/v1/policy`, { headers: auth })).json()) as { config: { alerts: { webhooks: unknown[] } } };
    current.config.alerts.webhooks = [{ url: b.url, minSeverity: 'low' }];
    const put = await fetch(`${gw.adminUrl}/v1/policy`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(current.config) });
    expect(put.status).toBe(200);
    gw.alerts.add(alert('after', 'high'));
    await until(() => b.bodies.length === 1);
    expect(b.bodies.map((x) => x.id)).toEqual(['after']);
    expect(a.bodies.map((x) => x.id)).toEqual(['before']);
  });
});
