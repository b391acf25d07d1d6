/**
 * A byte budget towards the destination (an0080.bulk-upload `action: kill`) on the absolute-URI
 * path: what fits reaches the origin, not one byte more, and the flow closes `an0080.bulk-upload`.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DetectionHooks } from '../../gateway/context.ts';
import { type LocalGateway, pattern, rawConnect, startLocalGateway } from './http-harness.ts';

const BUDGET = 4096;
let gw: LocalGateway;
let origin: Server;
let port: number;
let received = 0;
let originDone: Promise<void>;
let markDone: () => void = () => undefined;

const detection: DetectionHooks = {
  onConnect: () => null,
  onDestination: () => null,
  onRelayed: () => undefined,
  uploadBudget: () => BUDGET,
  onEnforcedWhileDialled: () => null,
  onConnectFailed: () => undefined,
};

beforeAll(async () => {
  originDone = new Promise<void>((r) => {
    markDone = r;
  });
  origin = createServer((req, res) => {
    req.on('data', (c: Buffer) => {
      received += c.length;
    });
    const done = (): void => {
      markDone();
      res.destroy();
    };
    req.on('end', () => {
      markDone();
      res.end('complete');
    });
    req.on('close', done);
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startLocalGateway({}, { detection });
});

afterAll(async () => {
  await gw?.stop();
  origin?.closeAllConnections();
  await new Promise<void>((r) => (origin ? origin.close(() => r()) : r()));
});

describe('upload byte budget on absolute-URI requests', () => {
  it('stops the request body at the budget and closes the flow an0080.bulk-upload', async () => {
    const body = pattern(50_000);
    const s = await rawConnect(gw.httpPort);
    s.on('error', () => undefined);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(`POST http://127.0.0.1:${port}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`);
    s.write(body);
    await closed;
    await originDone;
    const rec = await gw.waitForClosed((f) => f.destination.port === port);
    expect(rec.closeReason).toBe('an0080.bulk-upload');
    expect(rec.bytesOut).toBe(BUDGET);
    expect(received).toBeLessThanOrEqual(BUDGET);
  });
});
