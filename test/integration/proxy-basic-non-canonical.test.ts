/**
 * A `Proxy-Authorization: Basic` token that is base64's alphabet but not a canonical RFC 4648
 * encoding, through a real `serve`: a dangling last character (length 4n + 1), padding where none
 * is due or too much of it, non-zero bits in the last character. Each is malformed credentials,
 * 407 and an `auth-required` record, on the absolute-URI path and CONNECT; a token with its padding
 * left off (which RFC 7617 clients rarely send but many servers take) still logs in, and the SOCKS5
 * RFC 1929 login (no base64) is unaffected.
 *
 * Regression: node's decoder drops what makes no byte, so `<token>x`, `<token>=`, `<token>x==`,
 * `…cHc==` and `…cHd=` decoded as the valid token and logged in as its user (200).
 */
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';

const dir = mkdtempSync(join(tmpdir(), 'egw-basic-canonical-'));
const flowLog = join(dir, 'flows.jsonl');
let served: Served | null = null;
let origin: Server;
let originPort = 0;
let accepts = 0;
const sockets = new Set<Socket>();

beforeAll(async () => {
  origin = createServer((s) => {
    accepts++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.on('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  const path = join(dir, 'serve.yaml');
  writeFileSync(
    path,
    `mode: enforce
allowRanges: [127.0.0.0/8]
roles: { special: { allow: [ { cidr: 127.0.0.1/32, ports: [${originPort}] } ] } }
defaultRoles: []
identity:
  localAttribution: false
  users: [ { name: alice, password: secret, roles: [special] }, { name: carol, password: pw, roles: [special] } ]
flowLog: { path: ${JSON.stringify(flowLog)} }
`,
  );
  served = await spawnServe(path);
}, 120_000);

afterAll(async () => {
  await killIfRunning(served?.child ?? null);
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
  rmSync(dir, { recursive: true, force: true });
});

function records(): FlowRecord[] {
  let text = '';
  try {
    text = readFileSync(flowLog, 'utf8');
  } catch {
    return [];
  }
  return parseWrittenRecords(text);
}

/**
 * Each exchange comes from a loopback address of its own: failed logins slow their source down
 * (doubling waits), which would otherwise stretch the later cases and the SOCKS logins.
 */
let nextSource = 10;

/** Sends `head` on a raw connection and resolves with the status of the first answer (0: none in 5 s). */
function exchange(head: string): Promise<number> {
  return new Promise((resolve) => {
    const s = connect({ port: (served as Served).http.port, host: '127.0.0.1', localAddress: `127.0.0.${nextSource++}` });
    let text = '';
    const done = (): void => {
      clearTimeout(guard);
      s.destroy();
      resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0));
    };
    const guard = setTimeout(done, 5_000);
    s.on('error', () => undefined);
    s.on('data', (b: Buffer) => {
      text += b.toString('latin1');
      if (text.includes('\r\n\r\n')) done();
    });
    s.on('close', done);
    s.write(head);
  });
}

const paths: Array<[string, (token: string) => string]> = [
  ['absolute-URI', (t) => `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${t}\r\n\r\n`],
  ['CONNECT', (t) => `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic ${t}\r\n\r\n`],
];

// 'alice:secret' is 16 characters of base64 with no padding; 'carol:pw' is 'Y2Fyb2w6cHc='.
describe.each(paths)('%s', (_path, head) => {
  it.each([
    ['canonical', 'YWxpY2U6c2VjcmV0'],
    ['canonical, padded', 'Y2Fyb2w6cHc='],
    ['padding left off', 'Y2Fyb2w6cHc'],
  ])('%s: logs in (control)', async (_name, token) => {
    expect(await exchange(head(token))).toBe(200);
  });

  it.each([
    ['a dangling last character (length 4n + 1)', 'YWxpY2U6c2VjcmV0x'],
    ['a dangling character padded', 'YWxpY2U6c2VjcmV0x=='],
    ['padding where none is due', 'YWxpY2U6c2VjcmV0='],
    ['too much padding', 'Y2Fyb2w6cHc=='],
    ['non-zero pad bits', 'Y2Fyb2w6cHd='],
  ])('%s: 407, the origin sees nothing, the record is auth-required', async (_name, token) => {
    const before = accepts;
    const recordsBefore = records().length;
    expect(await exchange(head(token))).toBe(407);
    let refused: FlowRecord | undefined;
    await until('the refused flow\'s record', () => {
      refused = records()
        .slice(recordsBefore)
        .find((r) => r.verdict === 'block');
      return refused !== undefined;
    });
    expect(refused).toMatchObject({ reason: 'auth-required', identity: { user: null } });
    expect(accepts).toBe(before);
  });
});

describe('SOCKS5 RFC 1929 login (no base64)', () => {
  it('is unaffected: the same users log in, a wrong password does not', async () => {
    const socks = (served as Served).socks;
    const proxy = { host: '127.0.0.1', port: Number(socks.slice(socks.lastIndexOf(':') + 1)), type: 5 as const };
    const destination = { host: '127.0.0.1', port: originPort };
    for (const [userId, password] of [
      ['alice', 'secret'],
      ['carol', 'pw'],
    ] as const) {
      const { socket } = await SocksClient.createConnection({ proxy: { ...proxy, userId, password }, command: 'connect', destination, timeout: 5_000 });
      sockets.add(socket);
      socket.destroy();
    }
    await expect(SocksClient.createConnection({ proxy: { ...proxy, userId: 'carol', password: 'pw=' }, command: 'connect', destination, timeout: 5_000 })).rejects.toThrow();
  });
});
