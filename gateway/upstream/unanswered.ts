/**
 * Addresses that lately did not answer a dial on a port. Among a name's addresses they are dialled
 * last for `resolver.rememberUnansweredMs`, so one dead address of a name costs the first flow its
 * attempt delay (ATTEMPT_DELAY_MS, dial.ts) and not every flow after it. Squid's ipcache does the
 * same: an address a connect failed on is marked bad and tried after the good ones. RFC 8305 §4 lets
 * a client sort by what it learnt of earlier attempts.
 *
 * What marks an address (StaggeredDial, dial.ts): a refusal or an unreachable route, the connect
 * timeout, or still connecting when an address dialled after it answered. A connection to it clears
 * the mark. A kill or a client leaving marks nothing: that says nothing of the address. Only a flow
 * whose name has several addresses is reordered (admission, once the policy allowed its first
 * address): a flow with one address dials it whatever is remembered, a flow with none marked gets
 * its order unchanged and nothing allocated, and a refused first address refuses the flow as before.
 * Marks are per port: an address can refuse one port and serve another.
 */
import { LRUCache } from 'lru-cache';

/** Marks kept at most (the oldest go first). */
const MAX_MARKS = 4096;

export class UnansweredAddresses {
  private readonly marks = new LRUCache<string, true>({ max: MAX_MARKS, ttl: 60_000 });

  /** `ttlMs()`: how long a mark lasts, read at each mark (the policy's value); 0 = remember nothing. */
  constructor(private readonly ttlMs: () => number) {}

  /** `ip` did not answer a dial on `port`. */
  note(ip: string, port: number): void {
    const ttl = this.ttlMs();
    if (ttl > 0) this.marks.set(`${ip} ${port}`, true, { ttl });
  }

  /** `ip` answered on `port`: no longer dialled last. */
  clear(ip: string, port: number): void {
    if (this.marks.size > 0) this.marks.delete(`${ip} ${port}`);
  }

  isMarked(ip: string, port: number): boolean {
    return this.marks.size > 0 && this.marks.has(`${ip} ${port}`);
  }

  /**
   * A name's addresses in the order to dial them on `port`: `first` (the address admission checked),
   * then `alternates` (the order admission chose), with the marked ones moved after the others, each
   * group in its order. A marked `first` gives way only to an address `mayLead` lets the flow go on
   * to (the check each alternate meets before it is dialled), else it stays first. Null when that
   * is the order already (none marked, all marked, the marked ones last) and while the lifetime is 0
   * (a reload to 0 applies at once, to the marks made before it too).
   */
  reorder(first: string, alternates: readonly string[], port: number, mayLead: (ip: string) => boolean = () => true): { ip: string; alternates: string[] } | null {
    if (this.marks.size === 0 || this.ttlMs() === 0) return null;
    const ips = [first, ...alternates];
    const answered = ips.filter((ip) => !this.isMarked(ip, port));
    if (answered.length === 0 || answered.every((ip, i) => ip === ips[i])) return null;
    const ordered = answered.concat(ips.filter((ip) => this.isMarked(ip, port)));
    const lead = answered[0] === first ? first : (answered.find(mayLead) ?? first);
    const rest = ordered.filter((ip) => ip !== lead);
    if (lead === first && rest.every((ip, i) => ip === alternates[i])) return null;
    return { ip: lead, alternates: rest };
  }

  get size(): number {
    return this.marks.size;
  }
}
