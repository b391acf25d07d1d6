/**
 * SourcePortCheck when its owner lookup outlasts the wait: it fails closed (held datagrams dropped
 * and counted, and those that come before the answer), keeps one lookup in flight, and the late
 * answer decides; when it finds a port shared by sockets of several uids (fails closed too); and
 * when it finds no socket on a port (its own event, not another user's). The lookups here are promises the test answers; the real tables' slowness is
 * test/integration/socks5-udp-owner-check.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { HeldShare, UdpRelayLedger } from '../../../gateway/listeners/socks5-udp-ledger.ts';
import { type OwnerLookup, SourcePortCheck } from '../../../gateway/listeners/socks5-udp-source.ts';

type Answer = Awaited<ReturnType<OwnerLookup>>;

function setup(waitMs: number): {
  check: SourcePortCheck;
  asked: Array<{ ports: readonly number[]; answer: (a: Answer) => void }>;
  events: string[];
  ledger: UdpRelayLedger;
} {
  const asked: Array<{ ports: readonly number[]; answer: (a: Answer) => void }> = [];
  const events: string[] = [];
  const ledger = new UdpRelayLedger();
  const lookup: OwnerLookup = (ports) => new Promise<Answer>((answer) => asked.push({ ports, answer }));
  const check = new SourcePortCheck(
    lookup,
    new HeldShare(ledger),
    {
      lock: (port, held, foreign) => events.push(`lock ${port} held ${held.length} foreign ${foreign}`),
      otherUser: (port, uid, control, dropped) => events.push(`other ${port} uid ${uid} control ${control} dropped ${dropped}`),
      unlisted: (port, control, dropped) => events.push(`unlisted ${port} control ${control} dropped ${dropped}`),
      unknown: (dropped) => events.push(`unknown ${dropped}`),
      shared: (port, uids, control, dropped) => events.push(`shared ${port} uids ${uids.join(',')} control ${control} dropped ${dropped}`),
    },
    waitMs,
  );
  return { check, asked, events, ledger };
}

const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const msg = Buffer.alloc(10);

describe('SourcePortCheck, a lookup slower than its wait', () => {
  it('drops the held datagrams at the wait and those that come before the answer; the late answer locks the owner\'s port with none', async () => {
    const { check, asked, events, ledger } = setup(20);
    expect(check.offer(1000, msg)).toBe('held');
    expect(check.offer(1000, msg)).toBe('held');
    await wait(60);
    expect(events).toEqual(['unknown 2']);
    expect(ledger.heldBytes).toBe(0);
    // While the lookup still runs: dropped, and no second lookup.
    expect(check.offer(2000, msg)).toBe('unknown');
    expect(check.offer(1000, msg)).toBe('unknown');
    expect(asked).toHaveLength(1);
    asked[0]?.answer({ control: 0, ports: [0] });
    await wait(0);
    expect(events).toEqual(['unknown 2', 'lock 1000 held 0 foreign 0']);
  });

  it("the late answer remembers another user's port; the next datagram of another port is held and asked", async () => {
    const { check, asked, events } = setup(20);
    check.offer(1000, msg);
    await wait(60);
    asked[0]?.answer({ control: 0, ports: [65534] });
    await wait(0);
    expect(events).toEqual(['unknown 1', 'other 1000 uid 65534 control 0 dropped 0']);
    expect(check.offer(1000, msg)).toBe('other-user');
    expect(check.offer(2000, msg)).toBe('held');
    expect(asked.map((a) => a.ports)).toEqual([[1000], [2000]]);
  });

  it('a lookup that tells nothing fails closed, and the next datagram asks again', async () => {
    const { check, asked, events } = setup(1000);
    check.offer(1000, msg);
    asked[0]?.answer(null);
    await wait(0);
    expect(events).toEqual(['unknown 1']);
    expect(check.offer(1000, msg)).toBe('held');
    expect(asked).toHaveLength(2);
  });

  it('tables without the control connection: the first port asked is locked, as without attribution', async () => {
    const { check, asked, events } = setup(1000);
    check.offer(1000, msg);
    asked[0]?.answer({ control: null, ports: [null] });
    await wait(0);
    expect(events).toEqual(['lock 1000 held 1 foreign 0']);
  });
});

describe('SourcePortCheck, a port sockets of several uids share', () => {
  it("is not locked, the control connection's uid among them, nor remembered: its next datagram asks again", async () => {
    const { check, asked, events, ledger } = setup(1000);
    check.offer(1000, msg);
    asked[0]?.answer({ control: 0, ports: [{ shared: [0, 65534] }] });
    await wait(0);
    expect(events).toEqual(['shared 1000 uids 0,65534 control 0 dropped 1']);
    expect(ledger.heldBytes).toBe(0);
    expect(check.offer(1000, msg)).toBe('held');
    asked[1]?.answer({ control: 0, ports: [0] });
    await wait(0);
    expect(events.at(-1)).toBe('lock 1000 held 1 foreign 0');
  });
});

describe('SourcePortCheck, a port on which no socket is listed', () => {
  // Regression: an unlisted socket (closed after sending, a raw sender) was reported as another
  // user's (uid null), so its datagrams were counted and logged with another user's.
  it("is its own event, not another user's, and not remembered: its next datagram asks again", async () => {
    const { check, asked, events, ledger } = setup(1000);
    check.offer(1000, msg);
    check.offer(2000, msg);
    asked[0]?.answer({ control: 0, ports: [null] });
    await wait(0);
    expect(asked[1]?.ports).toEqual([2000]);
    asked[1]?.answer({ control: 0, ports: [65534] });
    await wait(0);
    expect(events).toEqual(['unlisted 1000 control 0 dropped 1', 'other 2000 uid 65534 control 0 dropped 1']);
    expect(ledger.heldBytes).toBe(0);
    expect(check.offer(2000, msg)).toBe('other-user');
    expect(check.offer(1000, msg)).toBe('held');
    asked[2]?.answer({ control: 0, ports: [0] });
    await wait(0);
    expect(events.at(-1)).toBe('lock 1000 held 1 foreign 0');
  });
});
