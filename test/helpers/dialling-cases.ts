/**
 * What the "while its flow dials" tests (flow-kill-while-dialling, client-left-while-dialling, the
 * mode-switch-while-* tests) share: a gateway whose name lookups answer late (late-dns.ts) with an
 * origin that counts its connections, the sockets a concurrent case destroys when it ends, and what
 * a raw client receives.
 */
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import type { TestContext } from 'vitest';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { startTestGateway, type TestGateway } from './gateway.ts';
import { type LateDns, startLateDns } from './late-dns.ts';

export interface LateLookupSetup {
  gw: TestGateway;
  dns: LateDns;
  /** The origin's port (the late answer names 127.0.0.1). */
  originPort: number;
  /** Connections the origin accepted so far (a dialled late answer would make one). */
  connections(): number;
  close(): Promise<void>;
}

/** A gateway whose lookups answer `delayMs` late, and an origin that counts what reaches it. */
export async function startLateLookup(delayMs: number): Promise<LateLookupSetup> {
  const dns = await startLateDns(delayMs);
  let connections = 0;
  const origin = createServer((s) => {
    connections++;
    s.destroy();
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  const gw = await startTestGateway({}, { resolver: createDnsResolver({ timeoutMs: 5000, lookup: dns.lookup, slots: 16, perRequester: 16 }) });
  return {
    gw,
    dns,
    originPort: (origin.address() as { port: number }).port,
    connections: () => connections,
    close: async () => {
      await gw.stop();
      dns.close();
      origin.close();
    },
  };
}

/** Sockets the case destroys when it ends (its own: the cases run concurrently). */
export function caseSockets(onTestFinished: TestContext['onTestFinished']): Socket[] {
  const clients: Socket[] = [];
  onTestFinished(() => {
    for (const s of clients) s.destroy();
  });
  return clients;
}

/**
 * What a raw client socket receives until its refusal body (JSON) is whole, a `200` head has come,
 * it closes, or `ms` pass.
 */
export function replyOf(s: Socket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve(text), ms);
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.endsWith('}') || (text.startsWith('HTTP/1.1 200') && text.includes('\r\n\r\n'))) {
        clearTimeout(timer);
        resolve(text);
      }
    });
    s.once('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
}
