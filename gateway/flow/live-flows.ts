/**
 * The flow table's live flows: by id, in opening order, without any Map holding a Flow. The Map
 * here holds ids and slot numbers only; the flows sit in a SlotArray (gateway/slot-array.ts says
 * why a long-lived Map of flows is costly).
 */
import { SlotArray } from '../slot-array.ts';
import type { Flow } from './flow.ts';

export class LiveFlows implements ReadonlyMap<string, Flow> {
  /** id → slot, in opening order. */
  private readonly slotById = new Map<string, number>();
  private readonly slots = new SlotArray<Flow>();

  get size(): number {
    return this.slotById.size;
  }

  add(flow: Flow): void {
    this.slotById.set(flow.id, this.slots.add(flow));
  }

  delete(flow: Flow): boolean {
    const slot = this.slotById.get(flow.id);
    if (slot === undefined || !this.slots.remove(slot, flow)) return false;
    this.slotById.delete(flow.id);
    return true;
  }

  get(id: string): Flow | undefined {
    const slot = this.slotById.get(id);
    return slot === undefined ? undefined : this.slots.get(slot);
  }

  has(id: string): boolean {
    return this.slotById.has(id);
  }

  *values(): MapIterator<Flow> {
    for (const slot of this.slotById.values()) yield this.slots.get(slot) as Flow;
  }

  keys(): MapIterator<string> {
    return this.slotById.keys();
  }

  *entries(): MapIterator<[string, Flow]> {
    for (const [id, slot] of this.slotById) yield [id, this.slots.get(slot) as Flow];
  }

  [Symbol.iterator](): MapIterator<[string, Flow]> {
    return this.entries();
  }

  forEach(fn: (value: Flow, key: string, map: ReadonlyMap<string, Flow>) => void, thisArg?: unknown): void {
    for (const [id, slot] of this.slotById) fn.call(thisArg, this.slots.get(slot) as Flow, id, this);
  }
}
