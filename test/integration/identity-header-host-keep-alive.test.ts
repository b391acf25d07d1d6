/**
 * A host named by a trusted identity header stays that connection's host for its later requests.
 * A keep-alive connection reuses the identity its first request resolved (per policy version), and
 * its second request used to take the host `identity.hosts` gives the client's address instead:
 * from the trusted front 127.0.0.9, `X-Egress-Host: lab` was recorded `lab` for the first request
 * and `kiosk` (the address's inventory entry, with its roles) for the second.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

const TRUSTED = '127.0.0.9';

let gw: TestGateway;
let origin: Server;
let port: number;

beforeAll(async () => {
  origin = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  port = (origin.address() as { port: number }).port;
  gw = await startTestGateway({
    roles: { lab: { allow: [{ cidr: '127.0.0.0/8' }] }, shut: { allow: [] } },
    identity: {
      hosts: [
        { name: 'lab', cidr: '10.9.9.0/24', roles: ['lab'] },
        { name: 'kiosk', cidr: '127.0.0.0/8', roles: ['shut'] },
      ],
      headers: { trustedSources: [`${TRUSTED}/32`], user: 'x-egress-user', host: 'x-egress-host' },
    },
    mode: 'enforce',
  });
});

afterAll(async () => {
  await gw?.stop();
  await new Promise((r) => origin.close(r));
});

/** Send `count` requests one after another on one connection from the trusted front; the status of each. */
async function onOneConnection(heads: string[]): Promise<{ statuses: number[]; port: number }> {
  const s: Socket = connect({ host: gw.httpHost, port: gw.httpPort, localAddress: TRUSTED });
  await once(s, 'connect');
  const statuses: number[] = [];
  let buf = '';
  s.setEncoding('latin1');
  for (const head of heads) {
    s.write(head);
    // Each answer is a head and at most a short body: read until the next status line's answer ends.
    for (;;) {
      const m = /^HTTP\/1\.1 (\d{3}) [^\r]*\r\n[\s\S]*?content-length: (\d+)\r\n[\s\S]*?\r\n\r\n/i.exec(buf);
      if (m && buf.length >= m[0].length + Number(m[2])) {
        statuses.push(Number(m[1]));
        buf = buf.slice(m[0].length + Number(m[2]));
        break;
      }
      const [chunk] = (await once(s, 'data')) as [string];
      buf += chunk;
    }
  }
  const clientPort = s.localPort as number;
  s.destroy();
  return { statuses, port: clientPort };
}

describe('a trusted header host on a keep-alive connection', () => {
  it('the second request keeps the host the header named (and its roles), on the fast path and node:http', async () => {
    const get = (n: number): string => `GET http://127.0.0.1:${port}/r${n} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Egress-Host: lab\r\n\r\n`;
    const post = (n: number): string => `POST http://127.0.0.1:${port}/r${n} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Egress-Host: lab\r\nContent-Length: 2\r\n\r\nhi`;
    for (const heads of [[get(1), get(2), get(3)], [post(4), post(5)]]) {
      const r = await onOneConnection(heads);
      expect(r.statuses).toEqual(heads.map(() => 200));
      await gw.waitForClosed(() => gw.closed.filter((f) => f.client.port === r.port && f.client.ip === TRUSTED).length === heads.length);
      const records = gw.closed.filter((f) => f.client.port === r.port && f.client.ip === TRUSTED);
      expect(records.map((f) => [f.identity.host, f.identity.roles])).toEqual(heads.map(() => ['lab', ['lab']]));
    }
  });
});
