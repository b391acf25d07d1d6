/**
 * A detection list's domain (`detection.lists.proxywareDomains`, `storageDomains`) is a host pattern,
 * matched in the form the data plane gives a destination, whatever spelling the list or the client
 * used. Before, list entries were only lower-cased: `pröxy.test` never matched `xn--prxy-6qa.test`
 * (every path gives the punycode form), `[::FFFF:7F00:3]` never matched anything, and `127.0.0.3` did
 * not match `[::ffff:127.0.0.3]`, which dials the same host. With `an0081.proxyware` on `action:
 * block`, each of those went through (reproduced: 200 / REP 0 / relayed on every path, 32 of the 32
 * attempts below that must be refused). Now each is refused by `an0081.proxyware` on the absolute-URI, CONNECT, SOCKS5
 * ATYP 1/3/4 and SOCKS5 UDP paths, and a list entry that is no host pattern (`2130706435`, `*`) is a
 * validation error instead of an entry that silently never matches.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Resolver } from '../../gateway/context.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { loadConfig } from '../../policy/load-config.ts';
import { ADMITTED, type PathName, type Spelling, type SpellingTargets, startSpellingTargets } from '../helpers/destination-spellings.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import type { Cleanups } from '../helpers/socks-udp.ts';

/** Names the test resolver answers, all with the origin's address. */
const NAMES = new Set(['xn--prxy-6qa.test', 'sub.xn--prxy-6qa.test', 'other.test']);
const resolver: Resolver = {
  lookup: async (host) => {
    if (!NAMES.has(host)) throw new GatewayError('EGW_DNS_FAILED', `${host}: no such name`);
    return ['127.0.0.3'];
  },
};

const cleanups: Cleanups = [];
let targets: SpellingTargets;

beforeAll(async () => {
  targets = await startSpellingTargets(cleanups);
});
afterAll(() => {
  targets?.close();
});
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function gatewayListing(entries: string[]): Promise<TestGateway> {
  const gw = await startTestGateway(
    { mode: 'enforce', detection: { lists: { proxywareDomains: entries }, detectors: { 'an0081.proxyware': { action: 'block' } }, quarantineSec: 0 } },
    { resolver },
  );
  cleanups.push(() => gw.stop());
  return gw;
}

/** The answers a path gives when an0081.proxyware refuses (UDP: the refusal names it). */
const REFUSED: Record<PathName, RegExp> = { 'absolute-URI': /^403$/, CONNECT: /^403$/, 'SOCKS5 CONNECT': /^REP 2$/, 'SOCKS5 UDP': /^refused: .*proxyware/ };

async function answers(gw: TestGateway, spellings: Record<string, Spelling>): Promise<Array<{ how: string; path: PathName; answer: string }>> {
  const out: Array<{ how: string; path: PathName; answer: string }> = [];
  for (const [how, sp] of Object.entries(spellings)) {
    for (const [path, run] of Object.entries(targets.paths) as Array<[PathName, SpellingTargets['paths'][PathName]]>) {
      if ((path.startsWith('SOCKS5') ? sp.socks : sp.http) === null) continue;
      out.push({ how, path, answer: await run(gw, sp) });
    }
  }
  return out;
}

const MAPPED: Record<string, Spelling> = {
  '[::ffff:127.0.0.3]': { http: '[::ffff:127.0.0.3]', socks: { atyp: 4, host: '127.0.0.3' } },
  '[::ffff:7f00:3]': { http: '[::ffff:7f00:3]', socks: { atyp: 3, host: '::ffff:7f00:3' } },
};
const PLAIN: Record<string, Spelling> = {
  '127.0.0.3': { http: '127.0.0.3', socks: { atyp: 1, host: '127.0.0.3' } },
  '2130706435': { http: '2130706435', socks: { atyp: 3, host: '2130706435' } },
};

describe('a detection list entry in any spelling refuses its destination in any spelling', () => {
  it('an IDN entry refuses the punycode name (and its subdomains) on every path; another name goes through', async () => {
    const gw = await gatewayListing(['pröxy.test']);
    const refused = await answers(gw, {
      'xn--prxy-6qa.test': { http: 'xn--prxy-6qa.test', socks: { atyp: 3, host: 'xn--prxy-6qa.test' } },
      'SUB.XN--PRXY-6QA.TEST.': { http: 'SUB.XN--PRXY-6QA.TEST.', socks: { atyp: 3, host: 'SUB.XN--PRXY-6QA.TEST.' } },
    });
    expect(refused).toHaveLength(8);
    for (const r of refused) expect(r.answer, `${r.path} ${r.how}`).toMatch(REFUSED[r.path]);
    const admitted = await answers(gw, { 'other.test': { http: 'other.test', socks: { atyp: 3, host: 'other.test' } } });
    for (const r of admitted) expect(r.answer, `${r.path} ${r.how}`).toMatch(ADMITTED[r.path]);
  });

  it('an IPv4 entry refuses its IPv4-mapped spellings, and an IPv6 entry in any spelling its address however it is named', async () => {
    for (const [entry, spellings] of [
      ['127.0.0.3', MAPPED],
      ['[::FFFF:7F00:3]', { ...PLAIN, ...MAPPED }],
    ] as const) {
      const gw = await gatewayListing([entry]);
      const got = await answers(gw, spellings);
      expect(got.length).toBeGreaterThanOrEqual(8);
      for (const r of got) expect(r.answer, `entry ${entry}: ${r.path} ${r.how}`).toMatch(REFUSED[r.path]);
      // The records say which detector refused.
      const records = gw.closed.filter((c) => c.protocol !== 'socks5-udp');
      expect(records.length).toBeGreaterThan(0);
      for (const rec of records) expect([rec.verdict, rec.detector], JSON.stringify(rec.destination)).toEqual(['block', 'an0081.proxyware']);
    }
  });

  it('an entry that is no host pattern is a validation error, not an entry that never matches', () => {
    for (const bad of ['2130706435', '*', 'a*.test']) {
      const r = loadConfig(JSON.stringify({ detection: { lists: { proxywareDomains: [bad], storageDomains: [bad] } } }));
      expect(r.ok, bad).toBe(false);
      if (!r.ok) expect(r.errors.map((e) => e.path).sort(), bad).toEqual(['detection.lists.proxywareDomains[0]', 'detection.lists.storageDomains[0]']);
    }
    const good = loadConfig(JSON.stringify({ detection: { lists: { proxywareDomains: ['pröxy.test', '*.Example.Test.', '[::ffff:7f00:3]', '10.0.0.1'] } } }));
    expect(good.ok).toBe(true);
  });
});
