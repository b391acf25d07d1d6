/**
 * `/proxy.pac` on a gateway whose HTTP listener is a wildcard hands out the name the Host check
 * judged, never another, through the real admin listener and raw sockets: an absolute-form target's
 * authority (RFC 9112 §3.2.2: Host is then ignored), else Host. Before, the check read the target's
 * authority but the PAC was built from Host: `GET http://127.0.0.1:P/proxy.pac` with `Host:
 * evil.example` (a name that alone is 421 there) was 200 `PROXY evil.example:…`, and with
 * `admin.allowedHosts: [gw.corp.example]` an allowed authority carried any Host into the file.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;
let adminPort = 0;
let httpPort = 0;

beforeAll(async () => {
  gw = await startTestGateway({ listen: { http: '0.0.0.0:0' }, admin: { allowedHosts: ['gw.corp.example'] } });
  adminPort = Number(gw.admin.slice(gw.admin.lastIndexOf(':') + 1));
  httpPort = Number(gw.http.slice(gw.http.lastIndexOf(':') + 1));
});

afterAll(async () => {
  await gw?.stop();
});

/** One request head on its own connection: the status and the PAC's PROXY line (or the body). */
async function pac(target: string, host: string | null): Promise<{ status: number; proxy: string }> {
  const s = connect(adminPort, '127.0.0.1');
  s.setTimeout(5000, () => s.destroy(new Error('no answer in 5 s')));
  s.write(`GET ${target} HTTP/1.1\r\n${host === null ? '' : `Host: ${host}\r\n`}Connection: close\r\n\r\n`);
  let text = '';
  for await (const chunk of s) text += (chunk as Buffer).toString('utf8');
  const status = Number(text.slice(0, text.indexOf('\r\n')).split(' ')[1]);
  const proxy = /return "PROXY ([^"]*)";/.exec(text)?.[1] ?? text.slice(text.indexOf('\r\n\r\n') + 4);
  return { status, proxy };
}

describe('/proxy.pac: the proxy address comes from the name the Host check judged', () => {
  it('an absolute-form target: its authority, whatever Host says', async () => {
    const cases: Array<[string, string, string]> = [
      [`http://127.0.0.1:${adminPort}/proxy.pac`, 'evil.example', `127.0.0.1:${httpPort}`],
      [`http://localhost:${adminPort}/proxy.pac`, 'evil.example', `localhost:${httpPort}`],
      [`http://gw.corp.example:${adminPort}/proxy.pac`, 'evil.example', `gw.corp.example:${httpPort}`],
      [`http://[::1]:${adminPort}/proxy.pac`, 'evil.example', `[::1]:${httpPort}`],
      [`http://gw.corp.example/proxy.pac`, '127.0.0.1', `gw.corp.example:${httpPort}`],
    ];
    for (const [target, host, proxy] of cases) {
      expect({ target, host, ...(await pac(target, host)) }).toEqual({ target, host, status: 200, proxy });
    }
  });

  it('an absolute-form target naming a refused name is 421, whatever Host says', async () => {
    expect((await pac(`http://evil.example:${adminPort}/proxy.pac`, 'gw.corp.example')).status).toBe(421);
  });

  it('origin form: Host, as before (a refused name 421; an allowed one, an address or none as given)', async () => {
    expect(await pac('/proxy.pac', 'evil.example')).toMatchObject({ status: 421 });
    expect(await pac('/proxy.pac', `gw.corp.example:${adminPort}`)).toEqual({ status: 200, proxy: `gw.corp.example:${httpPort}` });
    expect(await pac('/proxy.pac', `127.0.0.1:${adminPort}`)).toEqual({ status: 200, proxy: `127.0.0.1:${httpPort}` });
    // An address literal is the client's own choice (no one can rebind one): the file it gets names it.
    expect(await pac('/proxy.pac', '192.0.2.7')).toEqual({ status: 200, proxy: `192.0.2.7:${httpPort}` });
  });
});
