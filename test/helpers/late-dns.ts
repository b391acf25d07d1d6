/**
 * A DNS server on 127.0.0.1 (UDP, port 0) that answers late: A queries for names under `.slow.test`
 * get 127.0.0.1 after `delayMs`, every other query gets an empty NOERROR answer after the same delay,
 * and names under `.dead.test` get no answer at all. `lookup` asks it through a c-ares resolver of
 * its own (one try, no retry), for the gateway's resolver seam (createDnsResolver's `lookup`), so the
 * gateway's own lookup timeout is what bounds a dead name.
 */
import { createSocket } from 'node:dgram';
import { Resolver } from 'node:dns/promises';
import { once } from 'node:events';
import { parseQuestion } from './zone-dns.ts';

export interface LateDns {
  port: number;
  /** Names asked for (A queries), in order. */
  asked: string[];
  /** Names answered so far (A queries; `.dead.test` names never are), in order. */
  answered: string[];
  lookup(host: string): Promise<string[]>;
  close(): void;
}

export async function startLateDns(delayMs: number): Promise<LateDns> {
  const server = createSocket('udp4');
  const asked: string[] = [];
  const answered: string[] = [];
  const timers = new Set<NodeJS.Timeout>();
  server.on('message', (query, from) => {
    const { name, qtype, end } = parseQuestion(query);
    if (qtype === 1) asked.push(name);
    if (name.endsWith('.dead.test')) return;
    const header = Buffer.alloc(12);
    query.copy(header, 0, 0, 2);
    header.writeUInt16BE(0x8180, 2); // response, recursion desired and available, NOERROR
    header.writeUInt16BE(1, 4);
    const isAnswered = qtype === 1 && name.endsWith('.slow.test');
    header.writeUInt16BE(isAnswered ? 1 : 0, 6);
    // A pointer to the question's name, A, IN, TTL 30, 4 bytes: 127.0.0.1.
    const answer = isAnswered ? Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]) : Buffer.alloc(0);
    const reply = Buffer.concat([header, query.subarray(12, end), answer]);
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (qtype === 1) answered.push(name);
      server.send(reply, from.port, from.address);
    }, delayMs);
    timers.add(timer);
  });
  server.bind(0, '127.0.0.1');
  await once(server, 'listening');
  const port = server.address().port;
  const resolver = new Resolver({ timeout: 10_000, tries: 1 });
  resolver.setServers([`127.0.0.1:${port}`]);
  return {
    port,
    asked,
    answered,
    lookup: (host) => resolver.resolve4(host),
    close() {
      for (const t of timers) clearTimeout(t);
      resolver.cancel();
      server.close();
    },
  };
}
