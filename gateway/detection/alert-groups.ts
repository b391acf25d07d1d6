/**
 * Alert grouping: alerts for the same finding key (detector, identity and, where it has one, flow
 * or destination) are one group. A repeat is alerted again when its action or severity changes,
 * or once the group's last alert is older than the repeat window the caller gives. Bounded: past
 * `maxGroups` the groups whose last alert is oldest go.
 */
export class AlertGroups {
  /** Finding key → the action/severity and time of its last alert (insertion order = oldest first). */
  private readonly last = new Map<string, { sig: string; at: number }>();

  constructor(private readonly maxGroups = 100_000) {}

  /**
   * Should the alert `sig` (action/severity) for `key` at `now` be raised? If so it is noted as
   * the group's last alert.
   */
  shouldRaise(key: string, sig: string, now: number, repeatMs: number): boolean {
    const last = this.last.get(key);
    if (last !== undefined && last.sig === sig && now - last.at < repeatMs) return false;
    // Re-inserted so that the map's order stays oldest first.
    this.last.delete(key);
    this.last.set(key, { sig, at: now });
    if (this.last.size > this.maxGroups) {
      for (const k of this.last.keys()) {
        this.last.delete(k);
        if (this.last.size <= this.maxGroups) break;
      }
    }
    return true;
  }

  get size(): number {
    return this.last.size;
  }
}
