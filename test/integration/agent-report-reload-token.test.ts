/**
 * A report left waiting for its flow (kept 30 s) that an agent-scope `admin.tokens` entry sent is
 * used only if the running policy still has that entry with its agent scope when the flow opens, as
 * one of an `identity.agents` reporter is only while that agent still speaks for the address
 * (agent-report-reload-sources.test.ts). Before, a reload that removed the entry (the token revoked)
 * or took its agent scope away left the report in force: a report of `honeygain` about a connected
 * client of 127.0.0.1, the entry removed, then the client's CONNECT: 403 as an0081.proxyware
 * (enforce), on the word of a token the gateway no longer accepts (401).
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type TcpOrigin, tcpOrigin } from '../helpers/detection-live.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { readUntil } from './http-harness.ts';

const TOKEN = 'agent-scope-admin-token-7f3c9a1e5b';
const ENTRY = { name: 'ws-token', token: TOKEN, scope: 'agent' as const };

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(): Promise<{ gw: TestGateway; origin: TcpOrigin }> {
  const origin = await tcpOrigin('127.0.0.1');
  cleanups.push(() => origin.close());
  const gw = await startTestGateway({ mode: 'enforce', admin: { tokens: [ENTRY] } });
  cleanups.push(() => gw.stop());
  return { gw, origin };
}

/** A reload (as PUT /v1/policy and SIGHUP make) with `tokens` as admin.tokens. */
function reloadTokens(gw: TestGateway, tokens: unknown[]): void {
  const config = structuredClone(gw.policy.current().config) as { admin: { tokens: unknown[] } };
  config.admin.tokens = tokens;
  expect(gw.policy.reload(config, { author: 'test', source: 'api' }).ok).toBe(true);
}

/** POST /v1/agents/reports with the admin.tokens entry's token, from 127.0.0.1 (its own address). */
async function report(gw: TestGateway, localPort: number): Promise<{ status: number; body: Record<string, unknown> }> {
  const body = {
    host: 'ws',
    reports: [
      {
        proto: 'tcp',
        localIp: '127.0.0.1',
        localPort,
        remoteIp: gw.httpHost,
        remotePort: gw.httpPort,
        pid: 4242,
        name: 'honeygain',
        exe: null,
        cmdline: null,
        user: null,
        uid: null,
        loginuid: null,
        ppid: null,
        parentName: null,
        parentExe: null,
        startedAt: null,
      },
    ],
  };
  const res = await fetch(`${gw.adminUrl}/v1/agents/reports`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/**
 * A client of 127.0.0.1 connected to the proxy (nothing sent: no flow yet), a report of `honeygain`
 * about it (pending), `between` run, then its CONNECT: the status line, the flow's process name and
 * the status a second report with the token gets then.
 */
async function reportedThenConnect(gw: TestGateway, origin: TcpOrigin, between: () => void): Promise<{ status: string; process: string | null; reportAfter: number }> {
  const s: Socket = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: '127.0.0.1' });
  s.on('error', () => undefined);
  cleanups.push(() => void s.destroy());
  await once(s, 'connect');
  const localPort = s.localPort as number;
  const first = await report(gw, localPort);
  expect(first).toMatchObject({ status: 200, body: { accepted: 1, attributed: 0, pending: 1 } });
  between();
  s.write(`CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${origin.port}\r\n\r\n`);
  const status = (await readUntil(s, '\r\n')).toString('latin1').split('\r\n')[0] ?? '';
  const rec = gw.flows.list({}).find((r) => r.client.port === localPort && r.protocol === 'connect');
  return { status, process: rec?.identity.process?.name ?? null, reportAfter: (await report(gw, 1)).status };
}

describe('a report of an agent-scope admin.tokens entry waiting for its flow across a reload', () => {
  it('names nothing once a reload removed the entry (the token is refused: 401)', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => reloadTokens(gw, []));
    expect(got).toEqual({ status: 'HTTP/1.1 200 Connection Established', process: null, reportAfter: 401 });
  });

  it('names nothing once a reload took the entry’s agent scope away (read: 403 on reports)', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => reloadTokens(gw, [{ ...ENTRY, scope: 'read' }]));
    expect(got).toEqual({ status: 'HTTP/1.1 200 Connection Established', process: null, reportAfter: 403 });
  });

  it('still names its flow after a reload that kept the entry', async () => {
    const { gw, origin } = await setup();
    const got = await reportedThenConnect(gw, origin, () => reloadTokens(gw, [ENTRY, { name: 'other', token: 'another-agent-token-0c1d2e3f4a', scope: 'agent' }]));
    // Refused at admission: the report came first and names a proxyware process (enforce).
    expect(got.status).toMatch(/^HTTP\/1\.1 403 /);
    expect(got).toMatchObject({ process: 'honeygain', reportAfter: 200 });
  });
});
