/**
 * The flow table's live flows: by id, in opening order, without any Map holding a Flow.
 *
 * Why: a long-lived Map sits in V8's old generation, and each rehash (steady add/delete churn
 * rehashes one every few dozen entries) leaves the old table behind with the entries it held. The
 * young-generation collector treats those dead tables as live until the next full collection, so
 * every flow live at a rehash — its identity, decision, and whatever else it points to — was copied
 * and promoted (docs/benchmarks.md, "Sixth pass"). Here
 * the Maps hold only ids and slot numbers (a string and a small integer, nothing further), and the
 * flows sit in a slot array that does not reallocate at a steady size; a closed flow's slot is
 * cleared and reused.
 */
import type { Flow } from './flow.ts';

export class LiveFlows implements ReadonlyMap<string, Flow> {
  /** id → slot, in opening order. */
  private readonly slotById = new Map<string, number>();
  private readonly slots: Array<Flow | null> = [];
  private readonly free: number[] = [];

  get size(): number {
    return this.slotById.size;
  }

  add(flow: Flow): void {
    const slot = this.free.length > 0 ? (this.free.pop() as number) : this.slots.length;
    this.slots[slot] = flow;
    this.slotById.set(flow.id, slot);
  }

  delete(flow: Flow): boolean {
    const slot = this.slotById.get(flow.id);
    if (slot === undefined || this.slots[slot] !== flow) return false;
    this.slotById.delete(flow.id);
    this.slots[slot] = null;
    this.free.push(slot);
    return true;
  }

  get(id: string): Flow | undefined {
    const slot = this.slotById.get(id);
    return slot === undefined ? undefined : (this.slots[slot] ?? undefined);
  }

  has(id: string): boolean {
    return this.slotById.has(id);
  }

  *values(): MapIterator<Flow> {
    for (const slot of this.slotById.values()) yield this.slots[slot] as Flow;
  }

  keys(): MapIterator<string> {
    return this.slotById.keys();
  }

  *entries(): MapIterator<[string, Flow]> {
    for (const [id, slot] of this.slotById) yield [id, this.slots[slot] as Flow];
  }

  [Symbol.iterator](): MapIterator<[string, Flow]> {
    return this.entries();
  }

  forEach(fn: (value: Flow, key: string, map: ReadonlyMap<string, Flow>) => void, thisArg?: unknown): void {
    for (const [id, slot] of this.slotById) fn.call(thisArg, this.slots[slot] as Flow, id, this);
  }
}
