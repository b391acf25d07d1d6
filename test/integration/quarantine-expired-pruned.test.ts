/**
 * Quarantines that have run out do not pile up (gateway/detection/quarantine.ts): the entries held
 * stay under twice the live ones (1,024 at least), however many identities came, were quarantined
 * and never came back.
 *
 * Regression: an expired entry went only when its own identity was looked up again or GET
 * /v1/quarantines listed them. Through the real listeners, 3 rounds of 700 client addresses each
 * quarantined once (a CONNECT to a proxyware destination, 403), the clock moved past quarantineSec
 * between rounds, left 700, 1,400 and 2,100 entries held for a gateway that runs for months.
 */
import { once } from 'node:events';
import { connect, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DetectionEngine } from '../../gateway/detection/detection-engine.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const ROUNDS = 3;
const PER_ROUND = 700;
const QUARANTINE_SEC = 60;
/** What the engine holds at most while fewer than half its entries are live (quarantine.ts MIN_PRUNE_AT). */
const HELD_BOUND = 1024;

let gw: TestGateway;
let destination: Server;
let destinationPort: number;
/** The gateway's clock, moved by the test past each round's quarantines. */
let nowMs = Date.now();

beforeAll(async () => {
  destination = createServer((s) => s.destroy());
  destination.listen(0, '127.0.0.2');
  await once(destination, 'listening');
  destinationPort = (destination.address() as { port: number }).port;
  gw = await startTestGateway(
    { mode: 'enforce', detection: { quarantineSec: QUARANTINE_SEC, lists: { proxywareDomains: ['127.0.0.2'] } } },
    { now: () => nowMs },
  );
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => destination?.close(r));
});

/** Client address i, one per identity (the quarantine key is `address|-|-`), spread over 127.0.0.0/8. */
const clientIp = (i: number): string => `127.${10 + (i >> 14)}.${(i >> 7) & 0x7f}.${1 + (i & 0x7f)}`;

/** A CONNECT to the proxyware destination from `localAddress`: the answer's status line and body (bounded). */
function connectFrom(localAddress: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: gw.httpHost, port: gw.httpPort, localAddress });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => s.destroy(), 10_000);
    s.on('connect', () => s.write(`CONNECT 127.0.0.2:${destinationPort} HTTP/1.1\r\nHost: 127.0.0.2:${destinationPort}\r\n\r\n`));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

describe('expired quarantines', () => {
  it('identities quarantined once and gone do not pile up in the engine', async () => {
    // The enforced quarantines the engine holds, expired ones not yet dropped included.
    const held = (): number => (gw.ctx.detection as DetectionEngine).quarantine.size;
    let next = 0;
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < PER_ROUND; i += 25) {
        const answers = await Promise.all(Array.from({ length: 25 }, () => connectFrom(clientIp(next++))));
        for (const a of answers) expect(a).toMatch(/^HTTP\/1\.1 403 .*"reason":"an0081\.proxyware"/s);
      }
      // Every identity of this round is quarantined; those of the rounds before have run out.
      expect(held()).toBeGreaterThanOrEqual(PER_ROUND);
      expect(held()).toBeLessThanOrEqual(HELD_BOUND);
      if (round < ROUNDS - 1) nowMs += (QUARANTINE_SEC + 1) * 1000;
    }
    // The last round's quarantines still hold: the newest identity's next CONNECT is refused by its own.
    expect(await connectFrom(clientIp(next - 1))).toMatch(/^HTTP\/1\.1 403 .*"reason":"quarantine"/s);
    const listed = JSON.parse((await adminGet(gw, '/v1/quarantines')).text) as { quarantines: unknown[] };
    expect(listed.quarantines).toHaveLength(PER_ROUND);
  }, 60_000);
});
