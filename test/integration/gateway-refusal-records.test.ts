/**
 * The gateway's own refusals before any judgement leave one record each, recorded as the rate
 * limit's refusals are (verdict `block`, `enforced: true` in every mode, reason = closeReason, no
 * detector, no matched rule), and are counted so in /metrics: `egressgate serve` as a process, its
 * file flow log read as written. A Via loop (508: the fast path, node:http, CONNECT; monitor and
 * enforce mode), a request arriving during the SIGTERM drain (503 shutting-down: node:http, CONNECT;
 * 0x01 to a SOCKS5 CONNECT or UDP ASSOCIATE whose greeting was answered before it, with no auth or
 * with RFC 1929 credentials sent during the drain),
 * the flow log failing (503 flow-log-unavailable: absolute-URI, CONNECT, SOCKS5 CONNECT, a SOCKS5 UDP
 * destination), and a SOCKS5 UDP ASSOCIATE whose relay cannot be bound (no descriptor left: 0x01
 * relay-error). None carries `X-Egress-Verdict` (no policy refused it).
 * Before, the first three were recorded `verdict: "allow"`, reason null, and counted
 * `gw_policy_decisions_total{verdict="allow",reason="other"}` (3 of 3 via-loop, 3 of 3
 * shutting-down, 4 of 4 flow-log-unavailable reproduced); the relay bind failure left no record and
 * no `gw_flows_closed_total` count at all.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { readdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseRecords, parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import { loopbackServeConfig, type Served, spawnServe } from '../helpers/serve-process.ts';
import { udpFrame } from '../helpers/socks-udp.ts';
import { type Origin, readUntil, startOrigin } from './http-harness.ts';
import { readBytes, readToEnd, startUdpEcho, type UdpEcho } from './socks5-harness.ts';

const TOKEN = 'gateway-refusal-records-token-0123456789';

const fx = serveEchoFixture('egw-gateway-refusals-');
let origin: Origin;
let udpEcho: UdpEcho;
const sockets: Socket[] = [];

beforeAll(async () => {
  origin = await startOrigin();
  udpEcho = await startUdpEcho();
});
afterEach(() => {
  for (const s of sockets) s.destroy();
  sockets.length = 0;
});
afterAll(async () => {
  await origin.close();
  await udpEcho.close();
});

async function serve(name: string, config: string, wrap?: (argv: string[]) => string[]): Promise<Served> {
  const path = join(fx.dir, `${name}.yaml`);
  await writeFile(path, config);
  const s = await spawnServe(path, { env: { EGRESSGATE_ADMIN_TOKEN: TOKEN }, ...(wrap ? { wrap } : {}) });
  fx.killAfterTest(s);
  return s;
}

function socksPort(s: Served): number {
  return Number(s.socks.slice(s.socks.lastIndexOf(':') + 1));
}

async function open(port: number): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1' });
  c.on('error', () => undefined);
  sockets.push(c);
  await once(c, 'connect');
  return c;
}

/** The head of the answer to `request` on a new connection: status line and header lines, lower-cased names. */
async function askHead(s: Served, request: string): Promise<{ status: number; headers: string[] }> {
  const c = await open(s.http.port);
  c.write(request);
  return headOf(await readUntil(c, '\r\n\r\n'));
}

function headOf(raw: Buffer): { status: number; headers: string[] } {
  const lines = raw.toString('latin1').split('\r\n\r\n')[0]?.split('\r\n') ?? [];
  return { status: Number(lines[0]?.split(' ')[1]), headers: lines.slice(1).map((l) => l.toLowerCase()) };
}

/** Every line of /metrics. */
async function metricLines(s: Served): Promise<string[]> {
  const r = await fetch(`http://${s.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(r.status).toBe(200);
  return (await r.text()).split('\n');
}

/** The metric lines of gw_policy_decisions_total and gw_flows_closed_total, as `name{labels} value`. */
async function counts(s: Served): Promise<string[]> {
  return (await metricLines(s)).filter((l) => /^gw_(policy_decisions_total|flows_closed_total)\{/.test(l));
}

/** What the test checks of a record: protocol, verdict, enforced, reason, detector, matchedRule, closeReason. */
function shape(r: FlowRecord): string {
  return `${r.protocol} ${r.verdict} enforced=${r.enforced} reason=${r.reason} detector=${r.detector} rule=${JSON.stringify(r.matchedRule)} close=${r.closeReason}`;
}

/** The same for a refusal of `protocol` with `reason`, as the test expects it. */
function refused(protocol: string, reason: string): string {
  return `${protocol} block enforced=true reason=${reason} detector=null rule=null close=${reason}`;
}

async function stop(s: Served): Promise<void> {
  s.child.kill('SIGTERM');
  await once(s.child, 'exit');
}

describe('refusals before any judgement: recorded block, counted block', () => {
  for (const mode of ['monitor', 'enforce'] as const) {
    it(`via-loop (${mode} mode): fast path, node:http and CONNECT each 508, one record each, block via-loop`, async () => {
      const log = join(fx.dir, `via-${mode}.jsonl`);
      const s = await serve(`via-${mode}`, loopbackServeConfig(log).replace('mode: enforce', `mode: ${mode}`));
      const u = `127.0.0.1:${origin.port}`;
      // The gateway's own Via, as the origin received it on an allowed request.
      expect((await askHead(s, `GET http://${u}/first HTTP/1.1\r\nHost: ${u}\r\n\r\n`)).status).toBe(200);
      const via = origin.seen.findLast((r) => r.url === '/first')?.headers.via;
      expect(via).toMatch(/^1\.1 egressgate-[0-9a-f]{12}$/);
      const answers = [
        await askHead(s, `GET http://${u}/a HTTP/1.1\r\nHost: ${u}\r\nVia: ${via}\r\n\r\n`),
        await askHead(s, `POST http://${u}/b HTTP/1.1\r\nHost: ${u}\r\nVia: ${via}\r\nContent-Length: 3\r\n\r\nabc`),
        await askHead(s, `CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\nVia: ${via}\r\n\r\n`),
      ];
      expect(answers.map((a) => a.status)).toEqual([508, 508, 508]);
      for (const a of answers) expect(a.headers.filter((h) => h.startsWith('x-egress-verdict'))).toEqual([]);
      let text = '';
      await until('the three refusals written', async () => {
        text = await readFile(log, 'utf8');
        return parseWrittenRecords(text).filter((r) => r.closeReason === 'via-loop').length >= 3;
      });
      const metrics = await counts(s);
      expect(metrics).toContain('gw_policy_decisions_total{verdict="block",reason="via-loop"} 3');
      expect(metrics).toContain('gw_flows_closed_total{protocol="http",close_reason="via-loop"} 2');
      expect(metrics).toContain('gw_flows_closed_total{protocol="connect",close_reason="via-loop"} 1');
      expect(metrics.filter((l) => l.includes('reason="other"'))).toEqual([]);
      await stop(s);
      const records = parseRecords(await readFile(log, 'utf8'));
      expect(records.filter((r) => r.closeReason !== 'closed').map(shape)).toEqual([refused('http', 'via-loop'), refused('http', 'via-loop'), refused('connect', 'via-loop')]);
      // One record per flow: the allowed request's and the three refusals', no other.
      expect(records).toHaveLength(4);
    });
  }

  it('shutting-down: requests completed during the SIGTERM drain (node:http GET and POST, CONNECT) each 503, one record each, block shutting-down', async () => {
    const log = join(fx.dir, 'drain.jsonl');
    const s = await serve('drain', loopbackServeConfig(log, 30_000));
    // A live tunnel holds the drain open.
    const tunnel = await open(s.http.port);
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    expect(headOf(await readUntil(tunnel, '\r\n\r\n')).status).toBe(200);
    // Requests under way at SIGTERM (their heads not complete): they are completed during the drain.
    const u = `127.0.0.1:${origin.port}`;
    const get = await open(s.http.port);
    get.write(`GET http://${u}/a HTTP/1.1\r\nHost: ${u}\r\n`);
    const post = await open(s.http.port);
    post.write(`POST http://${u}/b HTTP/1.1\r\nHost: ${u}\r\nContent-Length: 3\r\n`);
    const tunnel2 = await open(s.http.port);
    tunnel2.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\n`);
    // Each accepted by the gateway before the signal (a connection still in the listen queue when the
    // listener closes is never served).
    await until('four client connections accepted', async () => (await metricLines(s)).includes('gw_downstream_cx_active{listener="http"} 4'));
    s.child.kill('SIGTERM');
    await until('the drain begun (not ready)', async () => (await fetch(`http://${s.admin}/readyz`)).status === 503);
    get.write('\r\n');
    post.write('\r\nabc');
    tunnel2.write(`Host: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    const answers = [headOf(await readUntil(get, '\r\n\r\n')), headOf(await readUntil(post, '\r\n\r\n')), headOf(await readUntil(tunnel2, '\r\n\r\n'))];
    expect(answers.map((a) => a.status)).toEqual([503, 503, 503]);
    for (const a of answers) expect(a.headers.filter((h) => h.startsWith('x-egress-verdict'))).toEqual([]);
    // The admin listener answers until the drain ends.
    const metrics = await counts(s);
    expect(metrics).toContain('gw_policy_decisions_total{verdict="block",reason="shutting-down"} 3');
    expect(metrics).toContain('gw_flows_closed_total{protocol="http",close_reason="shutting-down"} 2');
    expect(metrics).toContain('gw_flows_closed_total{protocol="connect",close_reason="shutting-down"} 1');
    expect(metrics.filter((l) => l.includes('reason="other"'))).toEqual([]);
    tunnel.destroy();
    await once(s.child, 'exit');
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.filter((r) => r.closeReason === 'shutting-down').map(shape).sort()).toEqual(
      [refused('http', 'shutting-down'), refused('http', 'shutting-down'), refused('connect', 'shutting-down')].sort(),
    );
    // One record per flow: the tunnel's and the three refusals'.
    expect(records).toHaveLength(4);
  });

  it('shutting-down: SOCKS5 requests sent during the SIGTERM drain after a greeting answered before it (CONNECT, UDP ASSOCIATE) each 0x01, one record each, block shutting-down', async () => {
    // Before, a handshake under way was closed at SIGTERM with no reply and no record (3 of 3).
    const log = join(fx.dir, 'socks-drain.jsonl');
    const s = await serve('socks-drain', loopbackServeConfig(log, 30_000));
    // A live tunnel holds the drain open.
    const tunnel = await open(socksPort(s));
    tunnel.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
    expect((await readBytes(tunnel, 12)).subarray(0, 4).toString('hex')).toBe('05000500');
    // Three handshakes under way at SIGTERM (each greeting answered), and one that has sent nothing.
    const greeted: Socket[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await open(socksPort(s));
      c.write(Buffer.from([5, 1, 0]));
      expect([...(await readBytes(c, 2))]).toEqual([5, 0]);
      greeted.push(c);
    }
    const silent = await open(socksPort(s));
    await until('five client connections accepted', async () => (await metricLines(s)).includes('gw_downstream_cx_active{listener="socks"} 5'));
    const [connectRequest, associate, never] = greeted as [Socket, Socket, Socket];
    const neverClosed = once(never, 'close');
    s.child.kill('SIGTERM');
    // The connection that sent nothing is closed at once, as HTTP's idle ones are.
    await readToEnd(silent);
    const replied = Promise.all([readToEnd(connectRequest), readToEnd(associate)]);
    connectRequest.write(Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
    associate.write(Buffer.from([5, 3, 0, 1, 0, 0, 0, 0, 0, 0]));
    const replies = await replied;
    // RFC 1928 §6: VER 5, REP 0x01 general SOCKS server failure.
    expect(replies.map((r) => r.data.toString('hex').slice(0, 4))).toEqual(['0501', '0501']);
    // The one that never sends its request stays open while the drain goes on.
    expect(never.destroyed).toBe(false);
    const metrics = await counts(s);
    expect(metrics).toContain('gw_policy_decisions_total{verdict="block",reason="shutting-down"} 2');
    expect(metrics).toContain('gw_flows_closed_total{protocol="socks5",close_reason="shutting-down"} 1');
    expect(metrics).toContain('gw_flows_closed_total{protocol="socks5-udp",close_reason="shutting-down"} 1');
    expect(metrics.filter((l) => l.includes('reason="other"'))).toEqual([]);
    // The tunnel ends, and with it the drain: the handshake left is closed, the process exits.
    const exited = once(s.child, 'exit');
    tunnel.destroy();
    await neverClosed;
    expect(((await exited) as [number | null])[0]).toBe(0);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.filter((r) => r.closeReason === 'shutting-down').map(shape).sort()).toEqual([refused('socks5', 'shutting-down'), refused('socks5-udp', 'shutting-down')].sort());
    // One record per flow: the tunnel's and the two refusals'.
    expect(records).toHaveLength(3);
  });

  it('shutting-down: RFC 1929 logins under way at SIGTERM (method 0x02 answered) match the no-auth case: a request after credentials sent during the drain gets 0x01 and one record; no request, a close at the drain\'s end', async () => {
    // Checked, not changed: each was already so (the handshake is held from its first bytes, whatever its stage).
    const log = join(fx.dir, 'socks-auth-drain.jsonl');
    const users = 'identity: { localAttribution: false, users: [ { name: alice, password: wonderland, roles: [any] } ] }';
    // The handshake timer (limits.headerTimeoutMs) longer than the test: only the drain ends a handshake here.
    const config = `${loopbackServeConfig(log).replace('identity: { localAttribution: false }', users)}limits: { drainGraceMs: 30000, headerTimeoutMs: 120000 }\n`;
    const s = await serve('socks-auth-drain', config);
    const tunnel = await open(socksPort(s));
    tunnel.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
    expect((await readBytes(tunnel, 12)).subarray(0, 4).toString('hex')).toBe('05000500');
    // Five clients whose greeting chose username/password before the signal, none has sent credentials.
    const greeted: Socket[] = [];
    for (let i = 0; i < 5; i++) {
      const c = await open(socksPort(s));
      c.write(Buffer.from([5, 1, 2]));
      expect([...(await readBytes(c, 2))]).toEqual([5, 2]);
      greeted.push(c);
    }
    await until('six client connections accepted', async () => (await metricLines(s)).includes('gw_downstream_cx_active{listener="socks"} 6'));
    const [connectRequest, associate, wrong, loggedIn, silent] = greeted as [Socket, Socket, Socket, Socket, Socket];
    const login = (password: string): Buffer => Buffer.concat([Buffer.from([1, 5]), Buffer.from('alice'), Buffer.from([password.length]), Buffer.from(password)]);
    const open4 = [connectRequest, associate, wrong].map((c) => readToEnd(c));
    s.child.kill('SIGTERM');
    await until('the drain begun (not ready)', async () => (await fetch(`http://${s.admin}/readyz`)).status === 503);
    connectRequest.write(Buffer.concat([login('wonderland'), Buffer.from([5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255])]));
    associate.write(Buffer.concat([login('wonderland'), Buffer.from([5, 3, 0, 1, 0, 0, 0, 0, 0, 0])]));
    wrong.write(login('not-the-password'));
    const loginStatus = readBytes(loggedIn, 2);
    loggedIn.write(login('wonderland'));
    // RFC 1929 status 0x00 then RFC 1928 REP 0x01; a refused login 0x01 and a close.
    const replies = await Promise.all(open4);
    expect(replies.map((r) => r.data.toString('hex').slice(0, 8))).toEqual(['01000501', '01000501', '0101']);
    // Logged in with no request yet, or with no credentials yet: both held while the drain goes on.
    expect((await loginStatus).toString('hex')).toBe('0100');
    const heldOpen = [loggedIn, silent].map((c) => readToEnd(c));
    expect([loggedIn.destroyed, silent.destroyed]).toEqual([false, false]);
    const metrics = await counts(s);
    expect(metrics).toContain('gw_flows_closed_total{protocol="socks5",close_reason="shutting-down"} 1');
    expect(metrics).toContain('gw_flows_closed_total{protocol="socks5-udp",close_reason="shutting-down"} 1');
    // The tunnel ends, and with it the drain: the two left are closed with nothing more said, the process exits.
    const exited = once(s.child, 'exit');
    tunnel.destroy();
    const ends = await Promise.all(heldOpen);
    expect(ends.map((e) => e.data.toString('hex'))).toEqual(['', '']);
    expect(((await exited) as [number | null])[0]).toBe(0);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.filter((r) => r.verdict === 'block').map((r) => `${shape(r)} user=${r.identity.user}`).sort()).toEqual(
      [
        `${refused('socks5', 'shutting-down')} user=alice`,
        `${refused('socks5-udp', 'shutting-down')} user=alice`,
        // The refused login as any refused login is recorded (socks5-login-refusal): a policy decision, no destination.
        'socks5 block enforced=true reason=auth-required detector=policy.deny rule=null close=auth-required user=null',
      ].sort(),
    );
    // One record per flow: the tunnel's, the two refusals' and the refused login's.
    expect(records).toHaveLength(4);
  });

  it('flow-log-unavailable (monitor mode): absolute-URI, CONNECT, SOCKS5 CONNECT and a SOCKS5 UDP destination refused, each recorded block once the log recovers', async () => {
    const log = join(fx.dir, 'flow-log.jsonl');
    symlinkSync('/dev/full', log);
    const s = await serve('flow-log', loopbackServeConfig(log).replace('mode: enforce', 'mode: monitor'));
    const u = `127.0.0.1:${origin.port}`;
    // The first record cannot be written: the log is failing from then on.
    expect((await askHead(s, `GET http://${u}/first HTTP/1.1\r\nHost: ${u}\r\n\r\n`)).status).toBe(200);
    await until('the flow log failing', async () => (await fetch(`http://${s.admin}/readyz`)).status === 503);
    const answers = [
      await askHead(s, `GET http://${u}/a HTTP/1.1\r\nHost: ${u}\r\n\r\n`),
      await askHead(s, `CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`),
    ];
    expect(answers.map((a) => a.status)).toEqual([503, 503]);
    for (const a of answers) expect(a.headers.filter((h) => h.startsWith('x-egress-verdict'))).toEqual([]);
    const socks = await open(socksPort(s));
    socks.write(Buffer.from([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, fx.echo.port >> 8, fx.echo.port & 255]));
    expect((await readToEnd(socks)).data.toString('hex').slice(0, 8)).toBe('05000501');
    // A UDP association: its first destination is refused (that destination's record); the
    // association, which relayed nothing, leaves its own record when its client leaves.
    const client = createSocket('udp4');
    client.bind(0, '127.0.0.1');
    await once(client, 'listening');
    try {
      const control = await open(socksPort(s));
      const port = client.address().port;
      control.write(Buffer.from([5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, port >> 8, port & 255]));
      const reply = await readBytes(control, 12);
      expect(reply.subarray(0, 4).toString('hex')).toBe('05000500');
      const relayPort = reply.readUInt16BE(10);
      client.send(udpFrame('127.0.0.1', udpEcho.port, Buffer.from('ping')), relayPort, '127.0.0.1');
      await until('the UDP destination refused', async () => (await counts(s)).some((l) => l.startsWith('gw_flows_closed_total{protocol="socks5-udp",close_reason="flow-log-unavailable"}')));
      control.destroy();
    } finally {
      client.close();
    }
    // The file comes back: every record held is written, each once.
    writeFileSync(`${log}.new`, '');
    renameSync(`${log}.new`, log);
    await until('the flow log writable again', async () => (await fetch(`http://${s.admin}/readyz`)).status === 200, 10_000);
    const metrics = await counts(s);
    expect(metrics).toContain('gw_policy_decisions_total{verdict="block",reason="flow-log-unavailable"} 4');
    for (const protocol of ['http', 'connect', 'socks5', 'socks5-udp']) expect(metrics).toContain(`gw_flows_closed_total{protocol="${protocol}",close_reason="flow-log-unavailable"} 1`);
    // Only the association's own record, judged by nothing (spec-notes: allow, reason null).
    expect(metrics.filter((l) => l.includes('reason="other"'))).toEqual(['gw_policy_decisions_total{verdict="allow",reason="other"} 1']);
    await stop(s);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.filter((r) => r.closeReason === 'flow-log-unavailable').map(shape)).toEqual([
      refused('http', 'flow-log-unavailable'),
      refused('connect', 'flow-log-unavailable'),
      refused('socks5', 'flow-log-unavailable'),
      refused('socks5-udp', 'flow-log-unavailable'),
    ]);
    // One record per flow: the first request's, the four refusals' and the association's own.
    expect(records.filter((r) => r.closeReason !== 'flow-log-unavailable').map((r) => [r.protocol, r.verdict, r.reason])).toEqual([
      ['http', 'allow', 'allowed'],
      ['socks5-udp', 'allow', null],
    ]);
    expect(records).toHaveLength(6);
  });

  it('relay-error: a UDP ASSOCIATE whose relay cannot be bound (no descriptor left) gets 0x01 and leaves its one record, block relay-error, counted', async () => {
    // Room for serve's start (node's loader opens the modules concurrently: dist/cli.js exited EMFILE
    // under 96, and through tsx a loaded run hit it at 128 before listening).
    const NOFILE = 512;
    const log = join(fx.dir, 'relay.jsonl');
    const s = await serve('relay', `${loopbackServeConfig(log)}limits: { headerTimeoutMs: 120000, drainGraceMs: 2000 }\n`, (argv) => [
      'sh',
      '-c',
      `ulimit -n ${NOFILE} && exec "$@"`,
      'sh',
      ...argv,
    ]);
    const pid = s.child.pid as number;
    const descriptors = (): number => readdirSync(`/proc/${pid}/fd`).filter((fd) => Number(fd) < NOFILE).length;
    // Every descriptor taken by SOCKS5 greetings the gateway answered (one each; the handshake waits).
    const held: Socket[] = [];
    for (let i = 0; i < NOFILE && descriptors() < NOFILE; i++) {
      const c = await open(socksPort(s));
      c.write(Buffer.from([5, 1, 0]));
      const answer = await Promise.race([readBytes(c, 2), once(c, 'close').then(() => null)]);
      if (answer !== null && answer[1] === 0) held.push(c);
      else c.destroy();
    }
    expect(descriptors()).toBe(NOFILE);
    // The last greeted connection asks for an association: no descriptor for its relay socket.
    const last = held.pop() as Socket;
    last.write(Buffer.from([5, 3, 0, 1, 0, 0, 0, 0, 0, 0]));
    expect((await readToEnd(last)).data.toString('hex').slice(0, 4)).toBe('0501');
    for (const c of held) c.destroy();
    let metrics: string[] = [];
    await until('the metrics answered', async () => {
      metrics = await counts(s).catch(() => []);
      return metrics.length > 0;
    });
    expect(metrics).toContain('gw_flows_closed_total{protocol="socks5-udp",close_reason="relay-error"} 1');
    expect(metrics).toContain('gw_policy_decisions_total{verdict="block",reason="relay-error"} 1');
    await stop(s);
    const records = parseRecords(await readFile(log, 'utf8'));
    expect(records.map(shape)).toEqual([refused('socks5-udp', 'relay-error')]);
    expect(records[0]?.reasons[0]).toMatch(/^UDP relay bind failed: .*EMFILE/);
    expect(records[0]?.connected).toBe(false);
  });
});
