/**
 * The resolver's use of the thread pool (gateway/upstream/resolve.ts), with an OS lookup the test
 * controls: names under `dead.test` never answer until released (as with servers that do not
 * answer, the thread stays taken), others answer at once. The end-to-end case, with the real OS
 * resolver and a DNS server that never answers, is test/integration/dns-starvation.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { createDnsResolver, dialOrder, dnsSlots } from '../../../gateway/upstream/resolve.ts';

function controlledLookup() {
  const hanging: Array<{ host: string; release: () => void }> = [];
  const calls: string[] = [];
  const lookup = (host: string): Promise<string[]> => {
    calls.push(host);
    if (!host.endsWith('.dead.test')) return Promise.resolve(['192.0.2.10']);
    return new Promise((_, reject) => hanging.push({ host, release: () => reject(Object.assign(new Error('EAI_AGAIN'), { code: 'EAI_AGAIN' })) }));
  };
  return { lookup, hanging, calls };
}

describe('createDnsResolver: the thread pool shared fairly', () => {
  it("one client's dead names hold at most its share of the slots: another client's lookup runs at once", async () => {
    const os = controlledLookup();
    const r = createDnsResolver({ slots: 8, timeoutMs: 300, lookup: os.lookup });
    const attack = Array.from({ length: 40 }, (_, i) => r.lookup(`x${i}.dead.test`, '10.0.0.66').catch((e: Error) => e.message));
    // A quarter of the slots: two of the attacker's names are in the pool, the rest wait.
    expect(os.hanging.map((h) => h.host)).toEqual(['x0.dead.test', 'x1.dead.test']);
    expect(await r.lookup('www.example.test', '10.0.0.7')).toEqual(['192.0.2.10']);
    // When one of the attacker's lookups returns, its next name takes the slot.
    os.hanging[0]?.release();
    await new Promise((res) => setImmediate(res));
    expect(os.hanging.map((h) => h.host)).toContain('x2.dead.test');
    for (const h of os.hanging) h.release();
    await Promise.all(attack);
  });

  it('the attacker\'s waiting lookups time out for the attacker; with 2 slots (libuv\'s default share) the other slot stays free', async () => {
    const os = controlledLookup();
    const r = createDnsResolver({ slots: 2, timeoutMs: 100, lookup: os.lookup });
    const attack = Array.from({ length: 10 }, (_, i) => r.lookup(`y${i}.dead.test`, '10.0.0.66').catch((e: Error) => e.message));
    expect(os.hanging.length).toBe(1);
    expect(await r.lookup('api.example.test', '10.0.0.8')).toEqual(['192.0.2.10']);
    const answers = await Promise.all(attack);
    expect(answers.every((a) => /timed out/.test(String(a)))).toBe(true);
    for (const h of os.hanging) h.release();
  });

  it('requesters waiting are served in turn, not in arrival order', async () => {
    const os = controlledLookup();
    const r = createDnsResolver({ slots: 1, timeoutMs: 300, lookup: os.lookup });
    const first = r.lookup('block.dead.test', 'a').catch(() => null);
    const aNames = Array.from({ length: 5 }, (_, i) => r.lookup(`a${i}.dead.test`, 'a').catch(() => null));
    const b = r.lookup('b0.dead.test', 'b').catch(() => null);
    os.hanging[0]?.release(); // block.dead.test returns: the next turn is b's, though a asked first
    await new Promise((res) => setImmediate(res));
    expect(os.hanging.map((h) => h.host)).toEqual(['block.dead.test', 'b0.dead.test']);
    for (const h of os.hanging) h.release();
    await Promise.all([first, b, ...aNames]);
  });

  it('one lookup per name in flight; a failed name is answered from memory for a while; answers are cached', async () => {
    const os = controlledLookup();
    const r = createDnsResolver({ slots: 4, timeoutMs: 2000, negativeTtlMs: 60_000, lookup: os.lookup });
    const same = [r.lookup('z.dead.test', 'a'), r.lookup('z.dead.test', 'b')].map((p) => p.catch((e: Error) => e.message));
    expect(os.calls).toEqual(['z.dead.test']);
    os.hanging[0]?.release();
    expect(await Promise.all(same)).toEqual(['lookup of z.dead.test failed', 'lookup of z.dead.test failed']);
    await expect(r.lookup('z.dead.test', 'c')).rejects.toThrow('lookup of z.dead.test failed');
    await r.lookup('ok.example.test', 'a');
    await r.lookup('ok.example.test', 'b');
    expect(os.calls).toEqual(['z.dead.test', 'ok.example.test']);
  });

  it('a lookup failed while the process has no descriptor free is the gateway\'s own (EGW_OUT_OF_DESCRIPTORS), not remembered as a failed name', async () => {
    const os = controlledLookup();
    let errno: string | null = 'EMFILE';
    const r = createDnsResolver({ slots: 4, timeoutMs: 2000, negativeTtlMs: 60_000, lookup: os.lookup, descriptorShortage: async () => errno });
    const first = r.lookup('z.dead.test', 'a').catch((e: { code?: string }) => e.code);
    os.hanging[0]?.release();
    expect(await first).toBe('EGW_OUT_OF_DESCRIPTORS');
    // Asked again, not answered from memory: with descriptors back, its failure is the name's.
    errno = null;
    const second = r.lookup('z.dead.test', 'a').catch((e: { code?: string }) => e.code);
    expect(os.calls).toEqual(['z.dead.test', 'z.dead.test']);
    os.hanging[1]?.release();
    expect(await second).toBe('EGW_DNS_FAILED');
    await expect(r.lookup('z.dead.test', 'c')).rejects.toThrow('lookup of z.dead.test failed');
    expect(os.calls).toHaveLength(2);
  });

  it('lifetimes read at each lookup: 0 caches nothing but still shares a lookup in flight; lowered, it forgets; raised, it keeps', async () => {
    const os = controlledLookup();
    let ttlMs = 0;
    const r = createDnsResolver({ slots: 4, timeoutMs: 2000, cacheTtlMs: () => ttlMs, negativeTtlMs: 0, lookup: os.lookup });
    const shared = [r.lookup('n.dead.test', 'a'), r.lookup('n.dead.test', 'b')].map((p) => p.catch((e: Error) => e.message));
    expect(os.calls).toEqual(['n.dead.test']);
    os.hanging[0]?.release();
    await Promise.all(shared);
    await r.lookup('n.dead.test', 'c').catch(() => null); // not remembered: asked again
    await r.lookup('zero.example.test', 'a');
    await r.lookup('zero.example.test', 'a');
    expect(os.calls).toEqual(['n.dead.test', 'n.dead.test', 'zero.example.test', 'zero.example.test']);
    for (const h of os.hanging) h.release();
    ttlMs = 60_000;
    await r.lookup('kept.example.test', 'a');
    ttlMs = 600_000; // raised: kept
    await r.lookup('kept.example.test', 'a');
    expect(os.calls.filter((c) => c === 'kept.example.test')).toHaveLength(1);
    ttlMs = 30_000; // lowered: forgotten
    await r.lookup('kept.example.test', 'a');
    expect(os.calls.filter((c) => c === 'kept.example.test')).toHaveLength(2);
  });

  it('a client with 256 names waiting gets its next ones refused at once (bounded memory)', async () => {
    const os = controlledLookup();
    const r = createDnsResolver({ slots: 1, timeoutMs: 300, lookup: os.lookup });
    const waiting = Array.from({ length: 257 }, (_, i) => r.lookup(`w${i}.dead.test`, 'flood').catch((e: Error) => e.message));
    await expect(r.lookup('one-more.dead.test', 'flood')).rejects.toThrow(/256 lookups from this client already waiting/);
    for (const h of os.hanging) h.release();
    const answers = await Promise.all(waiting);
    expect(answers.every((a) => /failed|timed out/.test(String(a)))).toBe(true);
  });

  it("dnsSlots: libuv's DNS share of UV_THREADPOOL_SIZE", () => {
    expect(dnsSlots({})).toBe(2);
    expect(dnsSlots({ UV_THREADPOOL_SIZE: '16' })).toBe(8);
    expect(dnsSlots({ UV_THREADPOOL_SIZE: '1' })).toBe(1);
    expect(dnsSlots({ UV_THREADPOOL_SIZE: 'x' })).toBe(2);
  });
});

describe('dialOrder (the addresses a flow dials after its first, RFC 8305 §4)', () => {
  it.each([
    { ips: ['10.0.0.1'], first: '10.0.0.1', order: [] },
    { ips: ['10.0.0.1', '10.0.0.2', '10.0.0.3'], first: '10.0.0.1', order: ['10.0.0.2', '10.0.0.3'] },
    // The other family first, then alternating, each family in the resolver's order.
    { ips: ['2001:db8::1', '2001:db8::2', '10.0.0.1', '10.0.0.2'], first: '10.0.0.1', order: ['2001:db8::1', '10.0.0.2', '2001:db8::2'] },
    { ips: ['10.0.0.1', '10.0.0.2', '10.0.0.3', '2001:db8::1'], first: '10.0.0.1', order: ['2001:db8::1', '10.0.0.2', '10.0.0.3'] },
    { ips: ['2001:db8::1', '2001:db8::2', '2001:db8::1'], first: '2001:db8::1', order: ['2001:db8::2'] },
  ])('$ips after $first: $order', ({ ips, first, order }) => {
    expect(dialOrder(ips, first)).toEqual(order);
  });
});
