/**
 * A SOCKS5 client whose RFC 1929 username/password login is refused leaves one flow record, as an
 * HTTP request with wrong Proxy-Authorization does (SPEC §5: one record per SOCKS connection).
 * Regression: the refusal (status 0x01, connection closed) left only a warn log line, so a
 * password-guessing client was invisible in the flow log and the admin API. RFC 1929's login
 * comes before the request, so the record names no destination: { host: null, ip: null, port: null }.
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REFUSAL_RECORDS_HELD } from '../../gateway/admission.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { parseRecords } from '../helpers/flow-records.ts';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { run } from './http-harness.ts';
import { readBytes, startBareSocksGateway, startTcpOrigin, type TcpOrigin } from './socks5-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-socks-login-'));
const logPath = join(dir, 'flows.jsonl');
const GREETING = Buffer.from('hello from origin\n');
const PASSWORD = 's3cret-pw';
const WRONG = 'guess-Xq7-not-it';

let gw: TestGateway;
let origin: TcpOrigin;

beforeAll(async () => {
  gw = await startTestGateway({
    identity: {
      requireAuth: true,
      users: [
        { name: 'alice', password: PASSWORD, roles: ['any'] },
        // A scrypt user: checking a password takes a derivation on the thread pool, time for a client to leave.
        { name: 'bob', passwordHash: await hashPassword(PASSWORD), roles: ['any'] },
        // Another, logged in once only: its check is not answered from the cache of checks.
        { name: 'carol', passwordHash: await hashPassword(PASSWORD), roles: ['any'] },
      ],
    },
    flowLog: { path: logPath },
  });
  origin = await startTcpOrigin('127.0.0.1', GREETING);
});

afterAll(async () => {
  await gw.stop();
  await origin.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The records the flow log file holds now. */
function logged(): FlowRecord[] {
  return parseRecords(readFileSync(logPath, 'utf8'));
}

/** RFC 1929 auth message for `user` / `password`. */
function authMessage(user: string, password: string): Buffer {
  const u = Buffer.from(user);
  const p = Buffer.from(password);
  return Buffer.concat([Buffer.from([0x01, u.length]), u, Buffer.from([p.length]), p]);
}

/** CONNECT 127.0.0.1:port. */
function connectRequest(port: number): Buffer {
  return Buffer.from([0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, port >> 8, port & 0xff]);
}

async function open(): Promise<Socket> {
  const s = connect({ host: gw.socksHost, port: gw.socksPort });
  s.on('error', () => {});
  await once(s, 'connect');
  return s;
}

/** Everything the gateway sends until it closes the connection (bounded by `timeoutMs`). */
function readToClose(s: Socket, timeoutMs = 10_000): Promise<{ bytes: Buffer; isClosedByGateway: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let isEnded = false;
    const timer = setTimeout(() => {
      s.destroy();
    }, timeoutMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      isEnded = true;
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ bytes: Buffer.concat(chunks), isClosedByGateway: isEnded });
    });
  });
}

describe('SOCKS5 RFC 1929 login refused', () => {
  it('wrong password: status 0x01, the connection closed, one auth-required record without a destination', async () => {
    const before = gw.closed.length;
    const s = await open();
    const clientPort = s.localPort as number;
    const answer = readToClose(s);
    // Greeting, auth and a CONNECT pipelined behind it: the request must never be acted on.
    s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), authMessage('alice', WRONG), connectRequest(origin.port)]));
    const { bytes, isClosedByGateway } = await answer;
    expect(bytes.toString('hex')).toBe('05020101');
    expect(isClosedByGateway).toBe(true);

    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect(gw.closed.slice(before).filter((r) => r.client.port === clientPort)).toHaveLength(1);
    expect(rec).toMatchObject({
      protocol: 'socks5',
      client: { ip: '127.0.0.1', port: clientPort },
      identity: { user: null, host: null, process: null },
      destination: { host: null, ip: null, port: null },
      bytesOut: 0,
      bytesIn: 0,
      verdict: 'block',
      enforced: true,
      reason: 'auth-required',
      detector: 'policy.deny',
      state: 'closed',
      closeReason: 'auth-required',
      communityId: null,
      matchedRule: null,
      reasons: ['proxy authentication required'],
    });
    // The origin was never dialled.
    expect(origin.done.length).toBe(0);

    // The flow log's line (written by its own JSON writer) says the same, and never the password.
    await until('the flow log line', () => logged().some((r) => r.id === rec.id));
    const line = readFileSync(logPath, 'utf8')
      .split('\n')
      .find((l) => l.includes(`"${rec.id}"`)) as string;
    expect(JSON.parse(line)).toEqual(rec);
    expect(line).not.toContain(WRONG);

    // The admin API lists it with the other refusals, and serves it by id.
    const list = await adminGet(gw, '/v1/flows?state=closed&verdict=block&limit=1000');
    expect(list.status).toBe(200);
    const listed = (JSON.parse(list.text) as { flows: FlowRecord[] }).flows.filter((r) => r.id === rec.id);
    expect(listed).toEqual([rec]);
    const one = await adminGet(gw, `/v1/flows/${rec.id}`);
    expect(one.status).toBe(200);
    expect(JSON.parse(one.text)).toEqual(rec);
    expect(list.text).not.toContain(WRONG);
  });

  it('says what HTTP says for wrong Proxy-Authorization (verdict, reason, detector, closeReason, identity)', async () => {
    const r = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '--proxy-user', `alice:${WRONG}`, `http://127.0.0.1:${origin.port}/`]);
    expect(r.stdout.toString()).toBe('407');
    const http = await gw.waitForClosed((f) => f.protocol === 'http' && f.closeReason === 'auth-required');
    const socks = await gw.waitForClosed((f) => f.protocol === 'socks5' && f.closeReason === 'auth-required');
    const shape = (f: FlowRecord): unknown => [f.verdict, f.enforced, f.reason, f.detector, f.closeReason, f.reasons, f.identity, f.matchedRule];
    expect(shape(socks)).toEqual(shape(http));
  });

  it('a client that sends its credentials and leaves before the answer is recorded too', async () => {
    const s = await open();
    const clientPort = s.localPort as number;
    s.resume();
    s.end(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), authMessage('bob', WRONG)]));
    await once(s, 'close');
    // The client's FIN came while bob's scrypt derivation ran; the check's answer still refused it.
    await until('the login refused', () => gw.logs.some((l) => l.client === `127.0.0.1:${clientPort}` && /username\/password refused/.test(String(l.reason))));
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect([rec.protocol, rec.verdict, rec.closeReason, rec.destination]).toEqual(['socks5', 'block', 'auth-required', { host: null, ip: null, port: null }]);
    // Nothing else for that connection (the handshake's own refusal, at the client's FIN, records nothing).
    expect(gw.closed.filter((r) => r.client.port === clientPort)).toHaveLength(1);
  });

  it('no credentials where they are required: 0xFF (no acceptable method), one auth-required record as HTTP without Proxy-Authorization', async () => {
    const s = await open();
    const clientPort = s.localPort as number;
    const answer = readToClose(s);
    // Offers only "no authentication", then a CONNECT: never acted on.
    s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x00]), connectRequest(origin.port)]));
    const { bytes, isClosedByGateway } = await answer;
    expect(bytes.toString('hex')).toBe('05ff');
    expect(isClosedByGateway).toBe(true);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    expect([rec.protocol, rec.verdict, rec.reason, rec.closeReason, rec.destination]).toEqual(['socks5', 'block', 'auth-required', 'auth-required', { host: null, ip: null, port: null }]);
    expect(gw.closed.filter((r) => r.client.port === clientPort)).toHaveLength(1);
    expect(origin.done.length).toBe(0);
    const r = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-x', `http://${gw.httpHost}:${gw.httpPort}`, `http://127.0.0.1:${origin.port}/none`]);
    expect(r.stdout.toString()).toBe('407');
    const http = await gw.waitForClosed((f) => f.protocol === 'http' && f.closeReason === 'auth-required' && f.destination.port === origin.port);
    expect([http.verdict, http.reason, http.identity.user]).toEqual([rec.verdict, rec.reason, rec.identity.user]);
  });

  // Regression: a zero-length username (`01 00 <plen> <pass>`, curl --proxy-user ':') was refused as a
  // protocol error: status 0x01, but no record and no failure counted for the login throttle.
  it('an empty username is a failed login: status 0x01, one auth-required record, counted by the login throttle', async () => {
    const identityMetric = async (name: string): Promise<number> => {
      const { text } = await adminGet(gw, '/metrics');
      return Number(new RegExp(`^${name.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
    };
    const failuresBefore = await identityMetric('gw_identity_auth_failures_total{reason="bad-credentials"}');
    const throttledBefore = await identityMetric('gw_identity_auth_throttled_total');
    // From an address of its own, so the per-source budget (5 free failures a minute) is its alone.
    const attempt = async (): Promise<{ hex: string; clientPort: number; isClosedByGateway: boolean }> => {
      const s = connect({ host: gw.socksHost, port: gw.socksPort, localAddress: '127.0.0.77' });
      s.on('error', () => {});
      await once(s, 'connect');
      const clientPort = s.localPort as number;
      const answer = readToClose(s);
      s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), authMessage('', PASSWORD), connectRequest(origin.port)]));
      const { bytes, isClosedByGateway } = await answer;
      return { hex: bytes.toString('hex'), clientPort, isClosedByGateway };
    };
    for (let i = 0; i < 6; i++) {
      const { hex, clientPort, isClosedByGateway } = await attempt();
      expect(hex).toBe('05020101');
      expect(isClosedByGateway).toBe(true);
      const rec = await gw.waitForClosed((r) => r.client.port === clientPort && r.client.ip === '127.0.0.77');
      expect(gw.closed.filter((r) => r.client.port === clientPort && r.client.ip === '127.0.0.77')).toHaveLength(1);
      expect([rec.protocol, rec.verdict, rec.enforced, rec.reason, rec.closeReason, rec.identity.user, rec.destination]).toEqual([
        'socks5', 'block', true, 'auth-required', 'auth-required', null, { host: null, ip: null, port: null },
      ]);
    }
    // Six failures, counted as wrong passwords are: the sixth from that address waited its turn.
    expect((await identityMetric('gw_identity_auth_failures_total{reason="bad-credentials"}')) - failuresBefore).toBe(6);
    expect((await identityMetric('gw_identity_auth_throttled_total')) - throttledBefore).toBe(1);
    expect(origin.done.length).toBe(0);

    // curl's own empty username, as a user would try it: refused (curl says 1 1), one record.
    const before = gw.closed.filter((r) => r.protocol === 'socks5' && r.closeReason === 'auth-required').length;
    const r = await run('curl', ['-sS', '--socks5', `${gw.socksHost}:${gw.socksPort}`, '--proxy-user', ':', `http://127.0.0.1:${origin.port}/`]);
    expect(r.code).toBe(97);
    await until('the curl login recorded', () => gw.closed.filter((x) => x.protocol === 'socks5' && x.closeReason === 'auth-required').length === before + 1);
    expect(origin.done.length).toBe(0);
  });

  it('the right password still gets through, with its usual record and no refusal record', async () => {
    const before = origin.done.length;
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5, userId: 'alice', password: PASSWORD },
      command: 'connect',
      destination: { host: '127.0.0.1', port: origin.port },
      timeout: 10_000,
    });
    const clientPort = socket.localPort as number;
    socket.end('hi');
    const answer = await readBytes(socket, GREETING.length + 3);
    expect(answer.toString()).toBe(`${GREETING.toString()}hi`);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    await origin.waitDone(before + 1);
    expect(rec).toMatchObject({
      protocol: 'socks5',
      identity: { user: 'alice' },
      destination: { host: '127.0.0.1', ip: '127.0.0.1', port: origin.port },
      verdict: 'allow',
      closeReason: 'closed',
      bytesOut: 2,
      bytesIn: GREETING.length + 2,
    });
    expect(gw.closed.filter((r) => r.client.port === clientPort)).toHaveLength(1);
    expect(gw.logs.filter((l) => l.level === 'error')).toEqual([]);
  });

  // Regression: the client's FIN, read while a scrypt password was being checked, cut the handshake
  // ("client closed during the handshake (at auth)"): the right password got 05 02 and a close, and
  // the request and payload sent before the FIN were dropped without a record.
  it('the right password, pipelined with the request and payload and then a FIN, reaches the origin', async () => {
    const before = origin.done.length;
    const s = await open();
    const clientPort = s.localPort as number;
    const got = readToClose(s);
    s.end(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), authMessage('carol', PASSWORD), connectRequest(origin.port), Buffer.from('pipelined')]));
    const { bytes } = await got;
    expect(bytes.subarray(0, 4)).toEqual(Buffer.from([0x05, 0x02, 0x01, 0x00]));
    expect(bytes.subarray(4, 7)).toEqual(Buffer.from([0x05, 0x00, 0x00]));
    expect(bytes.subarray(14).toString()).toBe(`${GREETING.toString()}pipelined`);
    const rec = await gw.waitForClosed((r) => r.client.port === clientPort);
    const [seen] = (await origin.waitDone(before + 1)).slice(before);
    expect(seen?.bytesRead).toBe('pipelined'.length);
    expect(rec).toMatchObject({ identity: { user: 'carol' }, verdict: 'allow', closeReason: 'closed', bytesOut: 'pipelined'.length, bytesIn: GREETING.length + 'pipelined'.length });
  });
});

describe('SOCKS5 login refusals while the flow log cannot be written', () => {
  it(`yield to real flows as other refusals do: past ${REFUSAL_RECORDS_HELD} held records they are counted, not recorded`, async () => {
    const bare = await startBareSocksGateway({ identity: { requireAuth: true, users: [{ name: 'alice', password: PASSWORD, roles: ['any'] }] } });
    try {
      let backlog = REFUSAL_RECORDS_HELD - 1;
      // The seams main.ts fills from the flow log: failing with `onError: refuse`, and its backlog.
      bare.ctx.isRefusingUnrecorded = () => true;
      bare.ctx.flowLogBacklog = () => backlog;
      const login = async (): Promise<string> => {
        const s = connect({ host: bare.socksHost, port: bare.socksPort });
        s.on('error', () => {});
        await once(s, 'connect');
        const answer = readToClose(s);
        s.write(Buffer.concat([Buffer.from([0x05, 0x01, 0x02]), authMessage('alice', WRONG)]));
        return (await answer).bytes.toString('hex');
      };
      expect(await login()).toBe('05020101');
      await until('the first refusal', () => bare.flows.totalClosed === 1);
      expect(bare.flows.skippedRecords).toBe(0);
      backlog = REFUSAL_RECORDS_HELD;
      expect(await login()).toBe('05020101');
      await until('the second refusal', () => bare.flows.totalClosed === 2);
      expect(bare.flows.skippedRecords).toBe(1);
    } finally {
      await bare.stop();
    }
  });
});
