/**
 * Memoised parses of config text (CIDRs, host patterns, time zones): validation and compilation
 * parse the same texts again at every reload, so each is parsed once. Bounded in entries (emptied
 * whole when full, as the other memos) and in the length of the texts it keeps: a text longer than
 * any valid one is parsed at each use and never kept. A validation's body is the client's (POST
 * /v1/policy/validate takes a read token), and a memo that kept every text it met held each
 * validated megabyte, with its error message, for the process's life.
 */
export class TextMemo<V> {
  private readonly map = new Map<string, V>();

  constructor(
    readonly name: string,
    private readonly maxEntries: number,
    private readonly maxTextLength: number,
  ) {
    memos.push(this as TextMemo<unknown>);
  }

  /** `parse(text)`, kept for the next call when `text` is short enough to be valid. */
  get(text: string, parse: (text: string) => V): V {
    if (text.length > this.maxTextLength) return parse(text);
    let v = this.map.get(text);
    if (v === undefined) {
      v = parse(text);
      if (this.map.size >= this.maxEntries) this.map.clear();
      this.map.set(text, v);
    }
    return v;
  }

  /** Texts kept, and the longest one's length. */
  stats(): { name: string; entries: number; longestText: number } {
    let longestText = 0;
    for (const t of this.map.keys()) if (t.length > longestText) longestText = t.length;
    return { name: this.name, entries: this.map.size, longestText };
  }
}

const memos: Array<TextMemo<unknown>> = [];

/** Every memo's texts kept and longest text (what the tests read; O(entries)). */
export function textMemoStats(): Array<{ name: string; entries: number; longestText: number }> {
  return memos.map((m) => m.stats());
}
