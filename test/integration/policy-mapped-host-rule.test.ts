/**
 * An allow entry naming an IPv4 address admits that address's IPv4-mapped IPv6 spellings, and one
 * naming a mapped address admits its IPv4 spellings: a dial to `::ffff:127.0.0.3` reaches 127.0.0.3.
 * Before, `host: 127.0.0.3` refused `[::ffff:127.0.0.3]`, `[::ffff:7f00:3]` and a SOCKS5 ATYP 4
 * ::ffff:127.0.0.3 (`not-allowlisted`, enforce mode), and `host: "[::ffff:127.0.0.3]"` refused
 * `127.0.0.3`, `2130706435`, `0x7f.3` and SOCKS5 ATYP 1 (reproduced through the absolute-URI, CONNECT,
 * SOCKS5 CONNECT and SOCKS5 UDP paths: 28 of the 28 attempts below refused; deny-range, CIDR entries
 * and the detectors already took the mapped form for its IPv4 address). Names stay names: a name
 * that resolves to the address is admitted by neither rule, and the record keeps the client's
 * spelling in RFC 5952 text (`::ffff:127.0.0.3`) and names the rule as written.
 */
import type { Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Resolver } from '../../gateway/context.ts';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { ADMITTED, type PathName, type Spelling, type SpellingTargets, startSpellingTargets } from '../helpers/destination-spellings.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import type { Cleanups } from '../helpers/socks-udp.ts';
import { readUntil } from './http-harness.ts';

/** The one name the test resolver knows: it resolves to the address the rules name. */
const NAME = 'origin.example.test';
const resolver: Resolver = {
  lookup: async (host) => {
    if (host !== NAME) throw new GatewayError('EGW_DNS_FAILED', `${host}: no such name`);
    return ['127.0.0.3'];
  },
};

const cleanups: Cleanups = [];
let targets: SpellingTargets;
let originPort: number;

beforeAll(async () => {
  targets = await startSpellingTargets(cleanups);
  originPort = targets.originPort;
});
afterAll(() => {
  targets?.close();
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function gatewayAllowing(host: string): Promise<TestGateway> {
  const gw = await startTestGateway({ mode: 'enforce', roles: { r: { allow: [{ host }] } }, defaultRoles: ['r'] }, { resolver });
  cleanups.push(() => gw.stop());
  return gw;
}

const REFUSED: Record<PathName, RegExp> = { 'absolute-URI': /^403$/, CONNECT: /^403$/, 'SOCKS5 CONNECT': /^REP 2$/, 'SOCKS5 UDP': /^refused: .*not allowlisted/ };

function expectAll(gw: TestGateway, spellings: Record<string, Spelling>, want: Record<PathName, RegExp>): Promise<number> {
  return targets.expectAll(gw, spellings, want);
}

/** The closed record of the one flow `act` opens on a new HTTP connection (found by its client port). */
async function recordOf(gw: TestGateway, act: (s: Socket) => Promise<unknown>): Promise<FlowRecord> {
  const s = await targets.open(gw.httpPort);
  await act(s);
  const port = s.localPort;
  s.destroy();
  return gw.waitForClosed((r) => r.client.port === port);
}

const MAPPED: Record<string, Spelling> = {
  '[::ffff:127.0.0.3]': { http: '[::ffff:127.0.0.3]', socks: { atyp: 4, host: '127.0.0.3' } },
  '[::ffff:7f00:3]': { http: '[::ffff:7f00:3]', socks: { atyp: 3, host: '::ffff:7f00:3' } },
};
const PLAIN: Record<string, Spelling> = {
  '127.0.0.3': { http: '127.0.0.3', socks: { atyp: 1, host: '127.0.0.3' } },
  '2130706435': { http: '2130706435', socks: { atyp: 3, host: '2130706435' } },
  '0x7f.3': { http: '0x7f.3', socks: null },
};
const BY_NAME: Record<string, Spelling> = { [NAME]: { http: NAME, socks: { atyp: 3, host: NAME } } };
/** Another address in the same spellings: not admitted by a rule for 127.0.0.3. */
const OTHER: Record<string, Spelling> = {
  '[::ffff:127.0.0.4]': { http: '[::ffff:127.0.0.4]', socks: { atyp: 4, host: '127.0.0.4' } },
  '127.0.0.4': { http: '127.0.0.4', socks: { atyp: 1, host: '127.0.0.4' } },
};

describe('an allow entry naming an IPv4 address or its IPv4-mapped form', () => {
  it('host: 127.0.0.3 admits the IPv4-mapped spellings on every path, not a name resolving to it nor another address', async () => {
    const gw = await gatewayAllowing('127.0.0.3');
    expect(await expectAll(gw, MAPPED, ADMITTED)).toBe(8);
    expect(await expectAll(gw, PLAIN, ADMITTED)).toBe(10);
    await expectAll(gw, BY_NAME, REFUSED);
    await expectAll(gw, OTHER, REFUSED);
    // The record keeps the spelling's RFC 5952 text and names the rule as written.
    const rec = await recordOf(gw, (s) => {
      s.write(`CONNECT [::ffff:7f00:3]:${originPort} HTTP/1.1\r\nHost: x\r\n\r\n`);
      return readUntil(s, '\r\n\r\n');
    });
    expect([rec.verdict, rec.destination.host, rec.destination.ip, rec.matchedRule?.entry]).toEqual(['allow', '::ffff:127.0.0.3', '::ffff:127.0.0.3', 'host=127.0.0.3']);
  });

  it('host: "[::ffff:127.0.0.3]" (or "[::FFFF:7F00:3]") admits the IPv4 spellings on every path, not a name resolving to it nor another address', async () => {
    for (const rule of ['[::ffff:127.0.0.3]', '[::FFFF:7F00:3]']) {
      const gw = await gatewayAllowing(rule);
      expect(await expectAll(gw, PLAIN, ADMITTED), rule).toBe(10);
      expect(await expectAll(gw, MAPPED, ADMITTED), rule).toBe(8);
      await expectAll(gw, BY_NAME, REFUSED);
      await expectAll(gw, OTHER, REFUSED);
      const rec = await recordOf(gw, (s) => {
        s.write(`GET http://2130706435:${originPort}/ HTTP/1.1\r\nHost: x\r\n\r\n`);
        return readUntil(s, 'ok');
      });
      expect([rec.verdict, rec.destination.host, rec.matchedRule?.entry], rule).toEqual(['allow', '127.0.0.3', `host=${rule}`]);
    }
  });
});
