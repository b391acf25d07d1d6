/**
 * UnansweredAddresses (gateway/upstream/unanswered.ts): the order a name's addresses are dialled in
 * once some did not answer, and what a staggered dial over real loopback sockets marks: the address
 * that refused, not the one that answered; nothing for a dial that was killed.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dialFirstReachable } from '../../../gateway/upstream/dial.ts';
import { UnansweredAddresses } from '../../../gateway/upstream/unanswered.ts';

describe('UnansweredAddresses.reorder', () => {
  it('moves the marked addresses after the others, each group in its order', () => {
    const m = new UnansweredAddresses(() => 60_000);
    expect(m.reorder('10.0.0.1', ['10.0.0.2', '10.0.0.3'], 443)).toBeNull();
    m.note('10.0.0.1', 443);
    expect(m.reorder('10.0.0.1', ['10.0.0.2', '10.0.0.3'], 443)).toEqual({ ip: '10.0.0.2', alternates: ['10.0.0.3', '10.0.0.1'] });
    m.note('10.0.0.2', 443);
    expect(m.reorder('10.0.0.1', ['10.0.0.2', '10.0.0.3'], 443)).toEqual({ ip: '10.0.0.3', alternates: ['10.0.0.1', '10.0.0.2'] });
  });

  it('puts a marked first address after only an address the flow may go on to', () => {
    const m = new UnansweredAddresses(() => 60_000);
    m.note('10.0.0.1', 443);
    const mayLead = (ip: string): boolean => ip !== '10.0.0.2';
    expect(m.reorder('10.0.0.1', ['10.0.0.2', '10.0.0.3'], 443, mayLead)).toEqual({ ip: '10.0.0.3', alternates: ['10.0.0.2', '10.0.0.1'] });
    // None the flow may go on to: the first stays first, the marked ones still go last.
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 443, mayLead)).toBeNull();
    m.note('10.0.0.4', 443);
    expect(m.reorder('10.0.0.1', ['10.0.0.4', '10.0.0.2'], 443, mayLead)).toEqual({ ip: '10.0.0.1', alternates: ['10.0.0.2', '10.0.0.4'] });
  });

  it('keeps the order when every address is marked, and marks per port', () => {
    const m = new UnansweredAddresses(() => 60_000);
    m.note('10.0.0.1', 443);
    m.note('10.0.0.2', 443);
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 443)).toBeNull();
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 80)).toBeNull();
    m.clear('10.0.0.1', 443);
    // Already last: the order is kept.
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 443)).toBeNull();
    expect(m.reorder('10.0.0.2', ['10.0.0.1'], 443)).toEqual({ ip: '10.0.0.1', alternates: ['10.0.0.2'] });
  });

  it('remembers nothing at a lifetime of 0, and forgets a mark once its lifetime is over', async () => {
    let ttl = 0;
    const m = new UnansweredAddresses(() => ttl);
    m.note('10.0.0.1', 443);
    expect(m.isMarked('10.0.0.1', 443)).toBe(false);
    ttl = 50;
    m.note('10.0.0.1', 443);
    expect(m.isMarked('10.0.0.1', 443)).toBe(true);
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 443)).toEqual({ ip: '10.0.0.2', alternates: ['10.0.0.1'] });
    // Set to 0 (a reload): the marks made before no longer reorder.
    ttl = 0;
    expect(m.reorder('10.0.0.1', ['10.0.0.2'], 443)).toBeNull();
    ttl = 50;
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(m.isMarked('10.0.0.1', 443)).toBe(false);
  });
});

describe('a staggered dial', () => {
  /** Serves on OPEN:port; REFUSING:port has no listener (a reset at once). */
  const OPEN = '127.0.0.181';
  const REFUSING = '127.0.0.182';
  let server: Server;
  let port = 0;

  beforeAll(async () => {
    server = createServer((s) => s.destroy());
    server.listen(0, OPEN);
    await once(server, 'listening');
    port = (server.address() as { port: number }).port;
  });
  afterAll(() => {
    server.close();
  });

  it('marks the address that refused and clears the one that answered', async () => {
    const m = new UnansweredAddresses(() => 60_000);
    m.note(OPEN, port);
    const socket = await dialFirstReachable({ ip: REFUSING, port, upstream: null, timeoutMs: 5000, via: 'x', unanswered: m }, [OPEN], () => true);
    expect(socket.remoteAddress).toBe(OPEN);
    socket.destroy();
    expect(m.isMarked(REFUSING, port)).toBe(true);
    expect(m.isMarked(OPEN, port)).toBe(false);
  });

  it('marks nothing when it is killed', async () => {
    const m = new UnansweredAddresses(() => 60_000);
    const flow: { dialling: { destroy(err?: Error): void } | null; state: 'active' | 'closed' } = { dialling: null, state: 'active' };
    const dialled = dialFirstReachable({ ip: OPEN, port, upstream: null, timeoutMs: 5000, via: 'x', unanswered: m, flow: flow as never }, [REFUSING], () => true);
    flow.dialling?.destroy();
    await expect(dialled).rejects.toThrow();
    expect(m.size).toBe(0);
  });
});
