/**
 * What the tests of a reload under live SOCKS5 connections share (socks5-reload-*.test.ts): the
 * reload itself, as PUT /v1/policy and SIGHUP make it, loopback UDP echoes, and the wait for a
 * datagram the relay should not pass.
 */
import { expect } from 'vitest';
import type { TestGateway } from '../helpers/gateway.ts';
import type { Cleanups } from '../helpers/socks-udp.ts';
import { startUdpEcho, type UdpEcho } from './socks5-harness.ts';

/** A reload of the running config as `edit` changes it (`C`: the parts the test edits); it must take. */
export function reloadEdited<C>(gw: TestGateway, edit: (config: C) => void): void {
  const config = structuredClone(gw.policy.current().config) as unknown as C;
  edit(config);
  expect(gw.policy.reload(config as object, { author: 'test', source: 'api' }).ok).toBe(true);
}

/** `n` UDP echoes on 127.0.0.1, closed by `cleanups`. */
export async function udpEchoes(cleanups: Cleanups, n: number): Promise<UdpEcho[]> {
  const out: UdpEcho[] = [];
  for (let i = 0; i < n; i++) {
    const e = await startUdpEcho('udp4');
    cleanups.push(() => e.close());
    out.push(e);
  }
  return out;
}

/** Waits out a datagram the relay should not pass (bounded; nothing to wait for otherwise). */
export const quietPeriod = (): Promise<void> => new Promise((r) => setTimeout(r, 400));
