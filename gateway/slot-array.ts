/**
 * Items in numbered slots that are reused as items come and go: add returns the slot, the holder
 * keeps the number (on the item or in an index) and gives it back on removal.
 *
 * Why not a long-lived Map or Set of connections or flows: such a Map sits in V8's old generation,
 * and each rehash (steady add/delete churn rehashes one every few dozen entries) leaves the old table
 * behind with the entries it held. The young-generation collector treats those dead tables as live
 * until the next full collection, so every connection held at a rehash was copied and promoted
 * (docs/benchmarks.md, "Sixth pass"). This array only grows with the peak number of items and a
 * freed slot holds nothing.
 */
export class SlotArray<T extends object> {
  private readonly items: Array<T | null> = [];
  private readonly free: number[] = [];

  /** Put `item` in a free slot (or a new one) and return the slot. */
  add(item: T): number {
    const slot = this.free.pop() ?? this.items.length;
    this.items[slot] = item;
    return slot;
  }

  /** Free `slot` if it holds `item` (a stale number never frees another item's slot). */
  remove(slot: number, item: T): boolean {
    if (slot < 0 || this.items[slot] !== item) return false;
    this.items[slot] = null;
    this.free.push(slot);
    return true;
  }

  get(slot: number): T | undefined {
    return this.items[slot] ?? undefined;
  }

  /** Every item held, in slot order. */
  *values(): Generator<T> {
    for (const item of this.items) if (item !== null) yield item;
  }
}
