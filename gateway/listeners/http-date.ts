/**
 * The `Date` field of the gateway's own answers (RFC 9110 §6.6.1: a server with a clock sends it on
 * its 2xx, 3xx and 4xx responses), for the heads written as text (the CONNECT 200, refusals on a raw
 * socket or on the absolute-URI fast path); node:http's ServerResponse adds its own.
 */

/** The current IMF-fixdate, or null once its second is over. */
let cached: string | null = null;

function expire(): void {
  cached = null;
}

/**
 * Now as an IMF-fixdate (`Sun, 06 Dec 2026 04:40:00 GMT`). Computed at most once a second, as
 * node:http's own `utcDate()` does: a string read on every other call, so the CONNECT 200 (the
 * hot path) formats no date per connection.
 */
export function httpDate(): string {
  if (cached === null) {
    const d = new Date();
    cached = d.toUTCString();
    // Cleared when the second ends; unref'd so it never holds the process open.
    setTimeout(expire, 1000 - d.getMilliseconds()).unref();
  }
  return cached;
}
