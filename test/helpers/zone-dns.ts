/**
 * A tiny authoritative DNS server on a loopback address (UDP port 53, for a resolv.conf `nameserver`
 * line): answers A and AAAA queries from a zone the test gives (name → addresses, in order), NXDOMAIN
 * for names it does not know, SERVFAIL for names under `.servfail.test`, nothing at all for names
 * under `.dead.test`. A zone entry may be a function, called per query (a rebinding name answering
 * differently each time). Records every (name, type) asked.
 */
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { isIPv4, isIPv6 } from 'node:net';

export type ZoneAnswer = string[] | (() => string[]);

export interface ZoneDns {
  /** Queries asked, as "name A" / "name AAAA", in order. */
  asked: string[];
  close(): Promise<void>;
}

function ipv4Bytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

function ipv6Bytes(ip: string): Buffer {
  const [head = '', tail = ''] = ip.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = ip.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) out.writeUInt16BE(Number.parseInt(groups[i] as string, 16), i * 2);
  return out;
}

/**
 * A query's question: its name (lower case), QTYPE, and the offset after QCLASS (the question ends
 * there, for the answer to repeat it). Labels from offset 12 up to a zero byte.
 */
export function parseQuestion(query: Buffer): { name: string; qtype: number; end: number } {
  let i = 12;
  const labels: string[] = [];
  while (i < query.length && query[i] !== 0) {
    const n = query[i] as number;
    labels.push(query.toString('latin1', i + 1, i + 1 + n));
    i += n + 1;
  }
  return { name: labels.join('.').toLowerCase(), qtype: query.readUInt16BE(i + 1), end: i + 5 };
}

export async function startZoneDns(address: string, zone: Record<string, ZoneAnswer>, ttlSec = 0): Promise<ZoneDns> {
  const server: Socket = createSocket('udp4');
  const asked: string[] = [];
  server.on('message', (query, from) => {
    const { name, qtype, end } = parseQuestion(query);
    asked.push(`${name} ${qtype === 28 ? 'AAAA' : qtype === 1 ? 'A' : qtype}`);
    if (name.endsWith('.dead.test')) return;
    const entry = zone[name];
    const all = typeof entry === 'function' ? entry() : entry;
    const rcode = name.endsWith('.servfail.test') ? 2 : all === undefined ? 3 : 0;
    const wanted = (all ?? []).filter((a) => (qtype === 1 ? isIPv4(a) : qtype === 28 ? isIPv6(a) : false));
    const header = Buffer.alloc(12);
    query.copy(header, 0, 0, 2);
    header.writeUInt16BE(0x8580 | rcode, 2); // response, authoritative, RD, RA
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(rcode === 0 ? wanted.length : 0, 6);
    const answers = rcode !== 0 ? [] : wanted.map((a) => {
      const data = qtype === 1 ? ipv4Bytes(a) : ipv6Bytes(a);
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0);
      rr.writeUInt16BE(qtype, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(ttlSec, 6);
      rr.writeUInt16BE(data.length, 10);
      return Buffer.concat([rr, data]);
    });
    server.send(Buffer.concat([header, query.subarray(12, end), ...answers]), from.port, from.address);
  });
  server.bind(53, address);
  await once(server, 'listening');
  return {
    asked,
    async close() {
      server.close();
      await once(server, 'close');
    },
  };
}
