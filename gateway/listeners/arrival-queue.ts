/**
 * Connections waiting for their first bytes, in arrival order, for the CONNECT front's header
 * timeout. Not a `Map<Socket, number>`: a long-lived Map of connections keeps them alive through
 * young-generation collections (gateway/slot-array.ts says how). Here a socket holds a ticket number,
 * leaves by having its slot cleared, and cleared slots are trimmed from the front; at the usual few
 * dozen waiting sockets V8 shifts such short arrays in place rather than reallocating them.
 */

/** Arrival sequence number: which slot a waiting item occupies. */
export type ArrivalTicket = number;

export class ArrivalQueue<T extends object> {
  private items: Array<T | null> = [];
  private readonly arrivedAt: number[] = [];
  /** Ticket of items[0]. */
  private base = 0;
  private live = 0;

  get size(): number {
    return this.live;
  }

  add(item: T, now: number): ArrivalTicket {
    this.items.push(item);
    this.arrivedAt.push(now);
    this.live++;
    return this.base + this.items.length - 1;
  }

  /** Forget the item holding `ticket` (no-op if it already left). */
  remove(ticket: ArrivalTicket): void {
    const i = ticket - this.base;
    if (i < 0 || i >= this.items.length || this.items[i] === null) return;
    this.items[i] = null;
    this.live--;
    this.trim();
  }

  /** Take out, oldest first, every item that arrived `maxAgeMs` or more before `now`. */
  expire(now: number, maxAgeMs: number, onExpired: (item: T) => void): void {
    while (this.items.length > 0) {
      const item = this.items[0] as T | null;
      if (item !== null && now - (this.arrivedAt[0] as number) < maxAgeMs) break;
      this.shift();
      if (item !== null) {
        this.live--;
        onExpired(item);
      }
    }
  }

  /** Take out every item (closing). */
  clear(onItem: (item: T) => void): void {
    const items = this.items;
    this.items = [];
    this.arrivedAt.length = 0;
    this.base += items.length;
    this.live = 0;
    for (const item of items) if (item !== null) onItem(item);
  }

  /** Drop cleared slots at the front, so a queue whose items all left holds nothing. */
  private trim(): void {
    while (this.items.length > 0 && this.items[0] === null) this.shift();
  }

  private shift(): void {
    this.items.shift();
    this.arrivedAt.shift();
    this.base++;
  }
}
