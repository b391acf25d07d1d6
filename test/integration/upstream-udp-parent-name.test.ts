/**
 * The parent a SOCKS5 UDP destination is refused for (its identity's egress goes through a parent,
 * which carries TCP only) is named in the warning as the flow records name a parent: scheme, host
 * and the port the gateway dials (the scheme's default, 3128 or 1080, when the URL has none; `:80`
 * when written), never the credentials.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, sendTo, udpFrame, udpSocket } from '../helpers/socks-udp.ts';
import { startUdpEcho } from './socks5-harness.ts';

let gw: TestGateway | null = null;
const cleanups: Cleanups = [];

afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  await gw?.stop();
  gw = null;
});

// Regression: the warning named the parent by the URL parser's `host`, which leaves out a port equal
// to the scheme's own default: `http://u:pw@10.0.0.5:80` (dialled on 80) and `http://10.0.0.5` (dialled
// on 3128) were both logged `http://10.0.0.5`, while the records of the same identity's TCP flows said
// `http://10.0.0.5:80` and `http://10.0.0.5:3128`.
describe('the warning for a UDP destination refused because of a parent', () => {
  const cases: Array<[string, string]> = [
    ['http://u:s3cret@127.0.0.1:80', 'http://127.0.0.1:80'],
    ['http://127.0.0.1', 'http://127.0.0.1:3128'],
    ['socks5://127.0.0.1', 'socks5://127.0.0.1:1080'],
    ['http://[::1]:80', 'http://[::1]:80'],
  ];
  it.each(cases)('upstream %s: the parent is named %s', async (upstream, named) => {
    const echo = await startUdpEcho();
    cleanups.push(() => echo.close());
    gw = await startTestGateway({ upstream });
    const client = await udpSocket(cleanups);
    const assoc = await associate(gw, client, cleanups);
    await sendTo(client, udpFrame('127.0.0.1', echo.port, Buffer.from('ping')), assoc.relay);
    const rec = await gw.waitForClosed((r) => r.protocol === 'socks5-udp' && r.destination.port === echo.port);
    expect(rec).toMatchObject({ closeReason: 'udp-upstream-unsupported', bytesOut: 0 });
    const warn = gw.logs.find((l) => l.msg === 'socks5 udp destination refused');
    expect(warn?.['reason']).toBe(`egress for this identity goes through ${named}, which cannot carry UDP`);
    expect(JSON.stringify(gw.logs)).not.toContain('s3cret');
  });
});
