/**
 * A cheap bound on how many values a JSON body holds, checked before it is parsed. JSON.parse's cost
 * follows the number of values, not the bytes: 4 MiB of `[{},{},…]` (1.4 million objects) held the
 * admin event loop, which the proxies share, for hundreds of milliseconds, where a 4 MB agent report
 * of 1,000 real reports parses in a few. A route that knows how many values a valid body can have
 * (`config.maxJsonValues`) has a body past it refused unparsed (admin/app.ts).
 *
 * The count is of `{`, `[` and `,` outside strings: every value but the first follows a `,` or an
 * opening bracket, so a body of n values counts at most 2n and at least n − 1. Strings are skipped
 * with indexOf and the rest searched by a regular expression (native code), so long strings and
 * whitespace cost little to scan; the scan stops at the budget. Allocates nothing.
 */

const BACKSLASH = 0x5c;
const QUOTE = 0x22;

/** What the scan stops at: a string's opening quote, or a character it counts. */
const STOPS = /["{[,]/g;

/**
 * True when `text` has more than `max` of `{`, `[` and `,` outside its strings. Text that is not
 * JSON (an unterminated string) answers false: JSON.parse refuses it as before.
 */
export function exceedsJsonValues(text: string, max: number): boolean {
  let count = 0;
  // Shared: every call starts it at 0 (a call that returned early left it where it stopped).
  STOPS.lastIndex = 0;
  // test() moves lastIndex past the stop it finds and allocates no match.
  while (STOPS.test(text)) {
    const at = STOPS.lastIndex - 1;
    if (text.charCodeAt(at) !== QUOTE) {
      if (++count > max) return true;
      continue;
    }
    // The closing quote: the next one not escaped (preceded by an even run of backslashes).
    let end = at;
    for (;;) {
      end = text.indexOf('"', end + 1);
      if (end < 0) return false;
      let backslashes = 0;
      while (text.charCodeAt(end - 1 - backslashes) === BACKSLASH) backslashes++;
      if (backslashes % 2 === 0) break;
    }
    STOPS.lastIndex = end + 1;
  }
  return false;
}
