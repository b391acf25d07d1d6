import { describe, expect, it } from 'vitest';
import { switchesToOffered } from '../../../gateway/listeners/http-upgrade-tokens.ts';

describe('switchesToOffered (RFC 9110 §7.8)', () => {
  it.each<[string, string[], string, boolean]>([
    ['the offered protocol', ['Upgrade', 'websocket'], 'websocket', true],
    ['case aside', ['upgrade', 'WebSocket'], 'websocket', true],
    ['one of several offered, with its version', ['Upgrade', 'irc/6.9'], 'h2c, IRC/6.9', true],
    ['two layers, both offered, in two fields', ['Upgrade', 'a', 'UPGRADE', ' b , '], 'b, a', true],
    ['no Upgrade field', ['Connection', 'Upgrade'], 'websocket', false],
    ['an Upgrade naming nothing', ['Upgrade', ' , '], 'websocket', false],
    ['a protocol not offered', ['Upgrade', 'h2c'], 'websocket', false],
    ['a version not offered', ['Upgrade', 'websocket/13'], 'websocket', false],
    ['a version where none was named', ['Upgrade', 'irc'], 'IRC/6.9', false],
    ['one offered, one not', ['Upgrade', 'websocket', 'Upgrade', 'h2c'], 'websocket', false],
  ])('%s', (_name, headers, offered, want) => expect(switchesToOffered(headers, offered)).toBe(want));
});
