import { describe, expect, it } from 'vitest';
import { httpParentRefusal } from '../../../gateway/upstream/http-parent-refusal.ts';

/** A head as dial.ts hands it over: status line and fields, each line CRLF-ended. */
const head = (status: string, ...fields: string[]): string => `HTTP/1.1 ${status}\r\n${fields.map((f) => `${f}\r\n`).join('')}`;

describe('httpParentRefusal', () => {
  it.each([
    [503, head('503 Service Unavailable', 'Server: squid/5.7', 'X-Squid-Error: ERR_CONNECT_FAIL 111'), 'EGW_DIAL_REFUSED', 'ERR_CONNECT_FAIL 111'],
    [503, head('503 Service Unavailable', 'x-squid-error:ERR_CONNECT_FAIL 113 '), 'EGW_DIAL_UNREACHABLE', 'ERR_CONNECT_FAIL 113'],
    [503, head('503 x', 'X-Squid-Error: ERR_CONNECT_FAIL 101', 'Vary: Accept-Language'), 'EGW_DIAL_UNREACHABLE', 'ERR_CONNECT_FAIL 101'],
    [503, head('503 x', 'X-Squid-Error: ERR_CONNECT_FAIL 110'), 'EGW_DIAL_TIMEOUT', 'ERR_CONNECT_FAIL 110'],
    // The parent's own failure: no errno that is a word on the destination, or another error.
    [503, head('503 x', 'X-Squid-Error: ERR_CONNECT_FAIL 0'), 'EGW_UPSTREAM_PROXY', 'ERR_CONNECT_FAIL 0'],
    [503, head('503 x', 'X-Squid-Error: ERR_DNS_FAIL 0'), 'EGW_UPSTREAM_PROXY', ''],
    [503, head('503 x'), 'EGW_UPSTREAM_PROXY', ''],
    [503, head('503 x', 'X-Note: X-Squid-Error: ERR_CONNECT_FAIL 111'), 'EGW_UPSTREAM_PROXY', ''],
    // Only squid's 503 carries it; its field on another status says nothing more than the status.
    [502, head('502 x', 'X-Squid-Error: ERR_CONNECT_FAIL 111'), 'EGW_UPSTREAM_PROXY', ''],
    [403, head('403 x', 'X-Squid-Error: ERR_ACCESS_DENIED 0'), 'EGW_UPSTREAM_PROXY', ''],
    [504, head('504 x'), 'EGW_DIAL_TIMEOUT', ''],
  ])('%d %j → %s', (status, text, code, detail) => {
    expect(httpParentRefusal(status, text)).toEqual({ code, detail });
  });
});
