/**
 * The SSRF rule through a parent proxy (SPEC §4: private and metadata ranges denied after DNS). The
 * gateway resolves and judges every name itself and asks the parent for the checked IP literal, never
 * for a name the parent would resolve on its own: a name that resolves (by `resolver.hosts` or by
 * DNS) to a denied range is 403 deny-range / SOCKS 0x02 and the parent is never asked; a name only
 * the parent could resolve is 502 dns-failed / SOCKS 0x04 here. On every client path: absolute-URI,
 * CONNECT, SOCKS5 with a domain name; through a socks5 and an http parent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Resolver } from '../../gateway/context.ts';
import { GatewayError } from '../../gateway/errors.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { type Origin, run, startOrigin } from './http-harness.ts';

/** The gateway's DNS: these names resolve, every other one fails at once like NXDOMAIN. */
const DNS: Record<string, string> = { 'rebind.test': '10.0.0.7', 'meta-dns.test': '169.254.169.254', 'origin.test': '127.0.0.1' };
const resolver: Resolver = {
  lookup(host) {
    const ip = DNS[host];
    return ip ? Promise.resolve([ip]) : Promise.reject(new GatewayError('EGW_DNS_FAILED', `no address for ${host}`));
  },
};

let origin: Origin;
let socksParent: ParentProxy;
let httpParent: ParentProxy;
let viaSocks: TestGateway;
let viaHttp: TestGateway;

beforeAll(async () => {
  origin = await startOrigin();
  socksParent = await startSocksParent();
  httpParent = await startHttpParent();
  const hosts = { 'meta.test': '169.254.169.254', 'ten.test': '10.1.2.3' };
  // allowRanges is loopback only (the test config): 10/8 and 169.254/16 stay denied.
  viaSocks = await startTestGateway({ upstream: socksParent.url(), resolver: { hosts } }, { resolver });
  viaHttp = await startTestGateway({ upstream: httpParent.url(), resolver: { hosts } }, { resolver });
});

afterAll(async () => {
  await viaSocks?.stop();
  await viaHttp?.stop();
  await socksParent?.close();
  await httpParent?.close();
  await origin?.close();
});

/** What curl reports for `url` through the gateway: the HTTP status, or curl's error (CONNECT / SOCKS5 refusals). */
async function through(gw: TestGateway, path: 'absolute-URI' | 'CONNECT' | 'SOCKS5', url: string): Promise<string> {
  const via =
    path === 'SOCKS5' ? ['--socks5-hostname', `127.0.0.1:${gw.socksPort}`] : ['--noproxy', '', ...(path === 'CONNECT' ? ['-p'] : []), '-x', `http://127.0.0.1:${gw.httpPort}`];
  const r = await run('curl', ['-sS', '-m', '10', '-o', '/dev/null', '-w', '%{http_code}', ...via, url]);
  if (r.stdout.toString() !== '000') return r.stdout.toString();
  return /response (\d+)|connection to \S+ \((\d+)\)/.exec(r.stderr)?.slice(1).find(Boolean) ?? r.stderr;
}

const PATHS = ['absolute-URI', 'CONNECT', 'SOCKS5'] as const;

describe('the SSRF rule through a parent proxy', () => {
  for (const [name, gw, parent] of [
    ['socks5', () => viaSocks, () => socksParent],
    ['http', () => viaHttp, () => httpParent],
  ] as const) {
    it(`${name} parent: names of denied addresses are 403 deny-range / SOCKS 0x02, a name only the parent could resolve 502 / 0x04; the parent is never asked`, async () => {
      const asked = parent().seen.length;
      for (const host of ['meta.test', 'ten.test', 'rebind.test', 'meta-dns.test']) {
        for (const path of PATHS) expect([host, path, await through(gw(), path, `http://${host}:${origin.port}/`)]).toEqual([host, path, path === 'SOCKS5' ? '2' : '403']);
        const rec = await gw().waitForClosed((r) => r.destination.host === host && r.protocol === 'socks5');
        expect(rec).toMatchObject({ verdict: 'block', closeReason: 'deny-range', destination: { ip: DNS[host] ?? (host === 'meta.test' ? '169.254.169.254' : '10.1.2.3') } });
      }
      for (const path of PATHS) expect([path, await through(gw(), path, `http://only-parent.test:${origin.port}/`)]).toEqual([path, path === 'SOCKS5' ? '4' : '502']);
      expect(parent().seen.length).toBe(asked);
      // An allowed name reaches the parent as the IP literal the gateway checked, on every path.
      for (const path of PATHS) expect(await through(gw(), path, `http://origin.test:${origin.port}/size/10`)).toBe('200');
      expect(new Set(parent().seen.slice(asked).map((s) => s.target))).toEqual(new Set([`127.0.0.1:${origin.port}`]));
    });
  }
});
