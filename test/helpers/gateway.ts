/**
 * startTestGateway(): the real gateway (startGateway from main.ts: real listeners, real FlowTable,
 * real policy) on 127.0.0.1 port 0, with a test-friendly config: loopback allowed (allowRanges),
 * every destination admitted through a catch-all CIDR role unless the test's overrides say
 * otherwise, no flow log on stdout, logs captured in memory, no local attribution unless asked.
 */
import { once } from 'node:events';
import type { Logger } from '../../gateway/context.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { type RunningGateway, type StartOptions, startGateway } from '../../main.ts';
import { type Config, defaultConfig } from '../../policy/config.ts';

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends Array<infer U> ? U[] : T[K] extends object ? DeepPartial<T[K]> : T[K] };

export interface TestGateway extends RunningGateway {
  /** Host and port of each listener, split for clients. */
  httpHost: string;
  httpPort: number;
  socksHost: string;
  socksPort: number;
  adminUrl: string;
  adminToken: string;
  /** Every record the flow table closed, in order. */
  closed: FlowRecord[];
  /** Warnings and errors logged. */
  logs: Array<{ level: string; msg?: string } & Record<string, unknown>>;
  /** Resolves with the closed record of the next flow matching the predicate (or one already closed). */
  waitForClosed(pred?: (r: FlowRecord) => boolean, timeoutMs?: number): Promise<FlowRecord>;
  stop(): Promise<void>;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep-merge plain objects; arrays and scalars replace. */
export function merge<T>(base: T, over: unknown): T {
  if (!isPlainObject(base) || !isPlainObject(over)) return (over === undefined ? base : over) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in out ? merge(out[k], v) : v;
  return out as T;
}

/** The config every integration test starts from. */
export function testConfig(overrides: DeepPartial<Config> = {}): Config {
  const base = defaultConfig();
  base.listen = { http: '127.0.0.1:0', socks: '127.0.0.1:0', admin: '127.0.0.1:0', https: null };
  base.allowRanges = ['127.0.0.0/8', '::1/128'];
  base.roles = { any: { allow: [{ cidr: '0.0.0.0/0' }, { cidr: '::/0' }] } };
  base.defaultRoles = ['any'];
  base.flowLog = { path: null, interimSec: 60, keepClosed: 10_000, onError: 'refuse' };
  base.identity.localAttribution = false;
  base.detection.sampleIntervalMs = 100;
  return merge(base, overrides);
}

export const TEST_ADMIN_TOKEN = 'test-admin-token-0123456789';

/** Start the real gateway in-process for a test. Always `await gw.stop()` in afterAll/afterEach. */
export async function startTestGateway(
  overrides: DeepPartial<Config> = {},
  opts: Partial<Omit<StartOptions, 'config'>> = {},
): Promise<TestGateway> {
  const logs: TestGateway['logs'] = [];
  const log: Logger = {
    info: () => {},
    warn: (obj, msg) => logs.push({ level: 'warn', msg, ...obj }),
    error: (obj, msg) => logs.push({ level: 'error', msg, ...obj }),
  };
  const config = testConfig(overrides);
  const gw = await startGateway({ attributor: null, log, adminToken: TEST_ADMIN_TOKEN, ...opts, config });
  const closed: FlowRecord[] = [];
  gw.flows.on('close', (flow: { toRecord(now: number): FlowRecord; endedAt: number | null }) => {
    closed.push(flow.toRecord(flow.endedAt ?? Date.now()));
  });
  const split = (a: string): { host: string; port: number } => {
    const i = a.lastIndexOf(':');
    return { host: a.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(a.slice(i + 1)) };
  };
  const h = split(gw.http);
  const s = split(gw.socks);
  const waitForClosed = async (pred: (r: FlowRecord) => boolean = () => true, timeoutMs = 10_000): Promise<FlowRecord> => {
    const found = closed.find(pred);
    if (found) return found;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), timeoutMs);
    try {
      for (;;) {
        await once(gw.flows, 'close', { signal: ac.signal });
        const hit = closed.find(pred);
        if (hit) return hit;
      }
    } catch {
      throw new Error(`no closed flow matched within ${timeoutMs} ms; closed: ${JSON.stringify(closed.map((r) => [r.protocol, r.destination, r.closeReason]))}`);
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    ...gw,
    httpHost: h.host,
    httpPort: h.port,
    socksHost: s.host,
    socksPort: s.port,
    adminUrl: `http://${gw.admin}`,
    adminToken: TEST_ADMIN_TOKEN,
    closed,
    logs,
    waitForClosed,
    stop: () => gw.drain(0),
  };
}

/** GET an admin API path with the test token: status and body text. */
export async function adminGet(g: Pick<TestGateway, 'adminUrl' | 'adminToken'>, path: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`${g.adminUrl}${path}`, { headers: { authorization: `Bearer ${g.adminToken}` } });
  return { status: res.status, text: await res.text() };
}

/** PUT a JSON body to an admin API path with the test token: the status. */
export async function adminPut(g: Pick<TestGateway, 'adminUrl' | 'adminToken'>, path: string, body: unknown): Promise<number> {
  const res = await fetch(`${g.adminUrl}${path}`, { method: 'PUT', headers: { authorization: `Bearer ${g.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await res.arrayBuffer();
  return res.status;
}

/** The running policy's config (GET /v1/policy), for a PUT /v1/policy that changes part of it. */
export async function runningConfig(g: Pick<TestGateway, 'adminUrl' | 'adminToken'>): Promise<Record<string, unknown>> {
  return (JSON.parse((await adminGet(g, '/v1/policy')).text) as { config: Record<string, unknown> }).config;
}

/** Poll `pred` every 20 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function until(what: string, pred: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
