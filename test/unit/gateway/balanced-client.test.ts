/**
 * Local attribution of a client a PROXY-protocol balancer named (admission/local-attribution.ts):
 * its socket is the 4-tuple (claimed client, the balancer's front the header names), looked up only
 * when the balancer is on this host too. A loopback client claimed by another host's balancer is on
 * that host: looking it up here would name whatever process of ours has that 4-tuple.
 */
import { describe, expect, it } from 'vitest';
import { clientReached, isLocalClient, kBalanced } from '../../../gateway/admission.ts';

const direct = { localAddress: '127.0.0.1', localPort: 3128 };
const viaLocal = { ...direct, [kBalanced]: { balancerIp: '127.0.0.5', reachedIp: '127.0.0.5', reachedPort: 8080 } };
// TEST-NET-3: never one of this machine's addresses.
const viaRemote = { ...direct, [kBalanced]: { balancerIp: '203.0.113.9', reachedIp: '127.0.0.1', reachedPort: 8080 } };

describe('a client a balancer named', () => {
  it.each<[string, string, object, boolean]>([
    ['direct loopback client', '127.0.0.1', direct, true],
    ['direct remote client', '203.0.113.7', direct, false],
    ['loopback client, balancer on this host', '127.0.0.1', viaLocal, true],
    ['remote client, balancer on this host', '203.0.113.7', viaLocal, false],
    ["loopback client of another host's balancer", '127.0.0.1', viaRemote, false],
  ])('%s: local %s', (_what, clientIp, server, want) => {
    expect(isLocalClient(clientIp, server)).toBe(want);
  });

  it("is looked up at the balancer's front, a direct client at the listener", () => {
    expect(clientReached(viaLocal)).toEqual({ ip: '127.0.0.5', port: 8080 });
    expect(clientReached(direct)).toEqual({ ip: '127.0.0.1', port: 3128 });
    expect(clientReached({})).toEqual({ ip: '', port: 0 });
  });
});
