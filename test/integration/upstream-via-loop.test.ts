/**
 * Loops through parent proxies (`upstream`), between real `serve` processes: a gateway whose parent
 * is itself (its own listener, refused before it is dialled: upstream-own-listener.test.ts), two
 * gateways that are each other's parent. Each gateway process names itself in Via with a name of its
 * own (gateway/via.ts) and sends it on the CONNECT to an http parent, so the second arrival at a
 * gateway is refused 508 via-loop; two gateways legitimately chained pass. A socks5 parent carries no Via: that loop is bounded by the per-identity new-flow
 * rate (limits.maxNewFlowsPerSecPerIdentity), measured here.
 */
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { killIfRunning, loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';
import { until } from '../helpers/gateway.ts';
import { jsonBody, rawConnect, rawExchange } from './http-harness.ts';

let dir: string;
let origin: Server;
let originPort: number;
let originConnections = 0;
const running: Served[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-upstream-loop-'));
  origin = createServer((s) => {
    originConnections++;
    s.on('error', () => {});
    s.end('hi');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});
afterEach(async () => {
  for (const s of running.splice(0)) await killIfRunning(s.child);
});
afterAll(async () => {
  await new Promise((r) => origin.close(r));
  await rm(dir, { recursive: true, force: true });
});

interface Gw {
  served: Served;
  config: string;
  flowLog: string;
}

/** `extra`: limits for the loop measurement. */
async function serve(name: string, extra = ''): Promise<Gw> {
  const config = join(dir, `${name}.yaml`);
  const flowLog = join(dir, `${name}.jsonl`);
  await writeFile(config, loopbackServeConfig(flowLog) + extra);
  const served = await spawnServe(config);
  running.push(served);
  return { served, config, flowLog };
}

/** Point `g` at `parent` (SIGHUP reload of its config file) and wait until it took it. */
async function setParent(g: Gw, parent: string, extra = ''): Promise<void> {
  await writeFile(g.config, `${loopbackServeConfig(g.flowLog)}${extra}upstream: ${parent}\n`);
  const reloads = (): number => g.served.stderr().split('policy reloaded').length;
  const before = reloads();
  g.served.child.kill('SIGHUP');
  await until('the reload', () => reloads() > before, 5000);
}
const httpUrl = (g: Gw): string => `http://${g.served.http.host}:${g.served.http.port}`;
const socksUrl = (g: Gw): string => `socks5://${g.served.socks}`;

async function recordsOf(g: Gw): Promise<Array<{ closeReason: string; protocol: string; state: string }>> {
  const text = await readFile(g.flowLog, 'utf8').catch(() => '');
  return (parseWrittenRecords(text) as unknown as Array<{ closeReason: string; protocol: string; state: string }>).filter((r) => r.state !== 'interim');
}
function reasons(records: Array<{ closeReason: string }>): string[] {
  return records.map((r) => r.closeReason).sort();
}

const connectHead = (via?: string): string => `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n${via ? `Via: ${via}\r\n` : ''}\r\n`;

// Each case starts one or two `serve` processes and reloads them: 60 s, not the suite's 30, for a loaded machine.
describe('loops through http parents', () => {
  // Regression: the CONNECT to an http parent carried no Via, so a gateway that was its own parent
  // (on another listener) took the CONNECT back as a new flow, again and again: 201 flows for one
  // client CONNECT, ended only by the rate limit (maxNewFlowsPerSecPerIdentity 200). Via then
  // stopped it at the second arrival (two flows, via-loop and upstream-proxy); now the parent, its
  // own listener, is not dialled at all.
  it('a gateway whose parent is itself: refused before the parent is dialled, one flow', async () => {
    const a = await serve('self');
    await setParent(a, httpUrl(a));
    const { response } = await rawExchange(a.served.http.port, connectHead());
    expect(response).toMatch(/^HTTP\/1\.1 502 /);
    expect(jsonBody(response)).toMatchObject({ reason: 'upstream-proxy' });
    await until('its record', async () => (await recordsOf(a)).length >= 1);
    expect(reasons(await recordsOf(a))).toEqual(['upstream-proxy']);
    expect(a.served.stderr()).toMatch(/is a listener of this gateway/);
  }, 60_000);

  // Regression: two gateways that were each other's parent bounced one CONNECT 401 times (201
  // flows at one, 200 at the other, in 0.4 s) until the first one's rate limit refused it.
  it('two gateways that are each other parent: one round, the loop refused where it began', async () => {
    const a = await serve('ring-a');
    const b = await serve('ring-b');
    await setParent(a, httpUrl(b));
    await setParent(b, httpUrl(a));
    const connectionsBefore = originConnections;
    const { response } = await rawExchange(a.served.http.port, connectHead());
    expect(response).toMatch(/^HTTP\/1\.1 502 /);
    await until('the records', async () => (await recordsOf(a)).length + (await recordsOf(b)).length >= 3);
    expect(reasons(await recordsOf(a))).toEqual(['upstream-proxy', 'via-loop']);
    expect(reasons(await recordsOf(b))).toEqual(['upstream-proxy']);
    expect(originConnections).toBe(connectionsBefore);
  }, 60_000);

  it('two gateways chained (A through B, B direct) are no loop, also for a CONNECT that came through another egressgate', async () => {
    const a = await serve('chain-a');
    const b = await serve('chain-b');
    await setParent(a, httpUrl(b));
    for (const via of [undefined, '1.1 egressgate-000000000000', '1.1 egressgate']) {
      const c = await rawConnect(a.served.http.port);
      const chunks: Buffer[] = [];
      c.on('data', (d: Buffer) => chunks.push(d));
      c.write(connectHead(via));
      await once(c, 'close');
      const answer = Buffer.concat(chunks).toString('latin1');
      expect(answer).toMatch(/^HTTP\/1\.1 200 /);
      expect(answer.endsWith('\r\n\r\nhi')).toBe(true);
    }
    await until('the records', async () => (await recordsOf(a)).length >= 3 && (await recordsOf(b)).length >= 3);
    expect(reasons(await recordsOf(a))).toEqual(['closed', 'closed', 'closed']);
    expect(reasons(await recordsOf(b))).toEqual(['closed', 'closed', 'closed']);
  }, 60_000);
});

describe('loops through socks5 parents', () => {
  // A socks5 parent has no Via: the loop runs until each gateway's per-identity new-flow rate
  // refuses it (both see the other, 127.0.0.1, as one identity): each gateway's bucket admits the
  // rate at once and the rate a second more while the loop runs, so 2 × the rate × (1 + T) and one
  // more over a loop of T seconds (47 were seen on a loaded machine with fixed one-second windows).
  it('two gateways that are each other socks5 parent: the loop stops at the new-flow rate limit and the client is answered', async () => {
    const limits = 'limits: { maxNewFlowsPerSecPerIdentity: 20 }\n';
    const a = await serve('socks-a', limits);
    const b = await serve('socks-b', limits);
    await setParent(a, socksUrl(b), limits);
    await setParent(b, socksUrl(a), limits);
    const c = await rawConnect(Number(a.served.socks.slice(a.served.socks.lastIndexOf(':') + 1)));
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.write(Buffer.from([5, 1, 0]));
    await until('the method', () => Buffer.concat(chunks).length >= 2);
    const port = Buffer.alloc(2);
    port.writeUInt16BE(originPort);
    const startedAt = Date.now();
    c.write(Buffer.concat([Buffer.from([5, 1, 0, 1, 127, 0, 0, 1]), port]));
    await once(c, 'close');
    const windows = Math.ceil((Date.now() - startedAt) / 1000) + 1;
    const reply = Buffer.concat(chunks).subarray(2);
    expect(reply[1]).toBe(0x01);
    await until('the records', async () => (await recordsOf(a)).length + (await recordsOf(b)).length >= 41);
    const all = [...(await recordsOf(a)), ...(await recordsOf(b))];
    // Stopped by the rate, once: one refusal, and no more flows than the seconds it spanned allow.
    expect(all.filter((r) => r.closeReason === 'rate-limit')).toHaveLength(1);
    expect(all.length).toBeLessThanOrEqual(2 * 20 * windows + 1);
  }, 60_000);
});
