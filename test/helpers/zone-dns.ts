/**
 * A tiny authoritative DNS server on a loopback address (UDP port 53, for a resolv.conf `nameserver`
 * line): answers A and AAAA queries from a zone the test gives (name → addresses, in order), NXDOMAIN
 * for names it does not know, SERVFAIL for names under `.servfail.test`, nothing at all for names
 * under `.dead.test`, and, for names under `.held.test`, its answer only when the test calls
 * `releaseHeld()` (a lookup kept in flight for as long as a test needs, then let end). A zone entry may be a function, called per query (a rebinding name answering
 * differently each time). Records every (name, type) asked.
 */
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { isIPv4, isIPv6 } from 'node:net';

export type ZoneAnswer = string[] | (() => string[]);

export interface ZoneDns {
  /** The address it answers on, port 53 (for the resolv.conf): see `startZoneDns`. */
  address: string;
  /** Queries asked, as "name A" / "name AAAA", in order. */
  asked: string[];
  /** Send the answers held for names under `.held.test` (NXDOMAIN unless the zone names them), and each later one at once. */
  releaseHeld(): void;
  /** Hold the answers for names under `.held.test` again, as at the start (the next test's lookups). */
  holdAgain(): void;
  close(): Promise<void>;
}

function ipv4Bytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

/**
 * The 16 bytes of an IPv6 address (an AAAA record's data), `::` and a dotted IPv4 tail
 * (`::ffff:127.0.0.5`, RFC 4291 §2.2 form 3) included.
 */
export function ipv6Bytes(ip: string): Buffer {
  const dotted = ip.lastIndexOf(':');
  const tail4 = ip.includes('.', dotted) ? ipv4Bytes(ip.slice(dotted + 1)) : null;
  // The dotted tail is the last two groups, in hex.
  const text = tail4 === null ? ip : `${ip.slice(0, dotted + 1)}${tail4.readUInt16BE(0).toString(16)}:${tail4.readUInt16BE(2).toString(16)}`;
  const [head = '', tail = ''] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = text.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
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

/** Addresses tried after the one asked for is taken. */
const SPARE_ADDRESSES = 64;

/** A UDP socket on `address`:53, or null when another socket has it. */
async function bind53(address: string): Promise<Socket | null> {
  const s = createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(53, address, () => {
        s.off('error', reject);
        resolve();
      });
    });
    return s;
  } catch (err) {
    s.close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') return null;
    throw err;
  }
}

/**
 * Answers on `address`:53, or, when another process has that (the same test file in another run of
 * the suite on this host: a resolv.conf `nameserver` has no port, so every copy needs 53 on its own
 * address), on the first free one of 127.53.1.x to 127.53.64.x, x being `address`'s last byte (no
 * test names 127.53.0.0/16). The caller writes `address` of the answer into its resolv.conf.
 */
export async function startZoneDns(address: string, zone: Record<string, ZoneAnswer>, ttlSec = 0): Promise<ZoneDns> {
  const last = address.split('.')[3] ?? '1';
  let found: Socket | null = null;
  let bound = address;
  for (let i = 0; i <= SPARE_ADDRESSES && found === null; i++) {
    bound = i === 0 ? address : `127.53.${i}.${last}`;
    found = await bind53(bound);
  }
  if (found === null) throw new Error(`no free UDP port 53 on ${address} nor on 127.53.1-${SPARE_ADDRESSES}.${last}`);
  const server = found;
  const asked: string[] = [];
  let held: Array<() => void> | null = [];
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
    const send = (): void => server.send(Buffer.concat([header, query.subarray(12, end), ...answers]), from.port, from.address);
    if (held !== null && name.endsWith('.held.test')) held.push(send);
    else send();
  });
  return {
    address: bound,
    asked,
    releaseHeld() {
      const sends = held ?? [];
      held = null;
      for (const send of sends) send();
    },
    holdAgain() {
      held ??= [];
    },
    async close() {
      server.close();
      await once(server, 'close');
    },
  };
}
