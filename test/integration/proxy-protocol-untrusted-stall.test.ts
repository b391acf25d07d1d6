/**
 * A peer outside `proxyProtocol.trustedSources` whose first bytes start like a PROXY signature
 * (`P`, `PR`, the v2 signature's `\r\n\r\n`) and then stall, through the real gateway: its bytes
 * are never a header, so the stall ends as the listener ends any stalled head, as on a gateway with
 * no front at all (HTTP: 408 JSON and the header-timeout warning; SOCKS: refused as a greeting
 * whose version byte is not 5).
 *
 * Regression: such a peer was closed with no answer at limits.headerTimeoutMs and logged as a PROXY
 * timeout (`PROXY signature prefix not completed`), where a silent peer got the 408.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';

const HEADER_TIMEOUT_MS = 400;
/** Bounds one exchange: the front's and the listener's timeouts are each 400 ms; 10 s is wide. */
const GUARD_MS = 10_000;

let fronted: TestGateway;
let bare: TestGateway;
const sockets = new Set<Socket>();

beforeAll(async () => {
  fronted = await startTestGateway({ proxyProtocol: { trustedSources: ['10.9.9.9/32'] }, limits: { headerTimeoutMs: HEADER_TIMEOUT_MS } });
  bare = await startTestGateway({ limits: { headerTimeoutMs: HEADER_TIMEOUT_MS } });
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await fronted?.stop();
  await bare?.stop();
});

interface Outcome {
  /** What the gateway sent before closing, its Date header blanked. */
  answer: string;
  /** The warnings this connection caused, by message and code. */
  logged: Array<{ msg: string | undefined; code: unknown }>;
}

/** Send `bytes` (nothing when empty), stall, and return what the gateway answered and logged. */
async function stall(gw: TestGateway, listener: 'http' | 'socks', bytes: Buffer): Promise<Outcome> {
  const logsBefore = gw.logs.length;
  const s = await rawConnect(listener === 'http' ? gw.httpPort : gw.socksPort);
  sockets.add(s);
  s.on('error', () => undefined);
  const guard = setTimeout(() => s.destroy(), GUARD_MS);
  try {
    const done = readToEnd(s);
    if (bytes.length > 0) s.write(bytes);
    const { data } = await done;
    const answer = data.toString('latin1').replace(/^date: .*\r\n/im, 'date: -\r\n');
    return { answer, logged: gw.logs.slice(logsBefore).map((l) => ({ msg: l.msg, code: l.code })) };
  } finally {
    clearTimeout(guard);
    sockets.delete(s);
  }
}

const SIGNATURE_STARTS: Array<[string, Buffer]> = [
  ['P', Buffer.from('P')],
  ['PR', Buffer.from('PR')],
  ['the v2 signature\'s first 4 bytes', Buffer.from([0x0d, 0x0a, 0x0d, 0x0a])],
];

describe('untrusted peer stalling inside a PROXY signature', () => {
  it.each(SIGNATURE_STARTS)('HTTP, %s: 408 header-timeout JSON and the warning, as a silent peer gets', async (_name, bytes) => {
    const silent = await stall(fronted, 'http', Buffer.alloc(0));
    expect(silent.answer).toMatch(/^HTTP\/1\.1 408 /);
    const got = await stall(fronted, 'http', bytes);
    expect(got.answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(got.answer).toMatch(/"reason":"header-timeout"/);
    expect(got.logged).toContainEqual({ msg: 'client request refused', code: 'EGW_HEADER_TIMEOUT' });
    expect(got.logged.some((l) => l.msg === 'PROXY protocol: connection refused')).toBe(false);
    // The same bytes on a gateway with no front end the same way.
    expect(got).toEqual(await stall(bare, 'http', bytes));
  });

  it.each(SIGNATURE_STARTS)('SOCKS5, %s: refused as a greeting of that version, as without a front; no PROXY warning', async (_name, bytes) => {
    const got = await stall(fronted, 'socks', bytes);
    expect(got.logged).toEqual([{ msg: 'socks5 refused', code: 'EGW_SOCKS_PROTOCOL' }]);
    expect(got).toEqual(await stall(bare, 'socks', bytes));
  });
});
