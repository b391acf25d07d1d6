/**
 * Alert grouping: alerts for the same finding key (detector, identity and, where it has one, flow
 * or destination) are one group. A repeat is alerted again when its action or severity changes,
 * or once the group's last alert is older than the repeat window the caller gives. Bounded: past
 * `maxGroups` the groups whose last alert is oldest go.
 */
export class AlertGroups {
  /** Finding key → the action/severity, time and id of its last alert (insertion order = oldest first). */
  private readonly last = new Map<string, { sig: string; at: number; id: string | null }>();

  constructor(private readonly maxGroups = 100_000) {}

  /**
   * Should the alert `sig` (action/severity) for `key` at `now` be raised? If so it is noted as
   * the group's last alert, `id` its id.
   */
  shouldRaise(key: string, sig: string, now: number, repeatMs: number, id: string | null = null): boolean {
    const last = this.last.get(key);
    if (last !== undefined && last.sig === sig && now - last.at < repeatMs) return false;
    // Re-inserted so that the map's order stays oldest first.
    this.last.delete(key);
    this.last.set(key, { sig, at: now, id });
    if (this.last.size > this.maxGroups) {
      for (const k of this.last.keys()) {
        this.last.delete(k);
        if (this.last.size <= this.maxGroups) break;
      }
    }
    return true;
  }

  /** The id of the last alert raised for `key`, or null. */
  lastAlertId(key: string): string | null {
    return this.last.get(key)?.id ?? null;
  }

  /**
   * Forget the groups of the identity `idKey` (finding keys `detector|idKey` and
   * `detector|idKey|…`): after an operator released its quarantine, a finding that quarantines it
   * again comes with its alert. O(groups), on a release only.
   */
  forgetIdentity(idKey: string): void {
    for (const key of this.last.keys()) {
      const i = key.indexOf('|');
      if (i < 0 || !key.startsWith(idKey, i + 1)) continue;
      const end = i + 1 + idKey.length;
      if (end === key.length || key.charCodeAt(end) === 0x7c) this.last.delete(key);
    }
  }

  get size(): number {
    return this.last.size;
  }
}
