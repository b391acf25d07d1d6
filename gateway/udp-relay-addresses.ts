/**
 * The addresses of the gateway's live SOCKS5 UDP relay sockets, one per association
 * (listeners/socks5-udp.ts adds each when it is bound and deletes it when it is closed). Admission
 * reads them to refuse a UDP destination that is one of them (SPEC §4: never its own listeners): the
 * gateway's upstream socket would otherwise send into another association's relay, whose client on
 * the gateway's own host, associated for any port, takes it for its own datagram and relays it on
 * under its identity.
 */
import { formatAuthority } from '../policy/address.ts';

export class UdpRelayAddresses {
  /** "ip:port" / "[ip]:port" of each bound relay, as the socket reports its address. */
  private readonly keys = new Set<string>();
  /** Relays bound on each port (relays on different addresses may share one): most destinations stop here. */
  private readonly ports = new Map<number, number>();

  /** A relay bound on `ip:port`; returns the key to delete it by when it closes. */
  add(ip: string, port: number): string {
    const key = formatAuthority(ip, port);
    if (this.keys.has(key)) return key;
    this.keys.add(key);
    this.ports.set(port, (this.ports.get(port) ?? 0) + 1);
    return key;
  }

  /** The relay of `key` (from `add`) is closed. */
  delete(key: string): void {
    if (!this.keys.delete(key)) return;
    const port = Number(key.slice(key.lastIndexOf(':') + 1));
    const n = (this.ports.get(port) ?? 1) - 1;
    if (n === 0) this.ports.delete(port);
    else this.ports.set(port, n);
  }

  /** Whether some relay is bound on `port` (no string built). */
  hasPort(port: number): boolean {
    return this.ports.has(port);
  }

  /** Whether a relay is bound on `ip:port`; `ip` as a dial reaches it (plain IPv4, no brackets). */
  has(ip: string, port: number): boolean {
    return this.ports.has(port) && this.keys.has(formatAuthority(ip, port));
  }

  get size(): number {
    return this.keys.size;
  }
}
