/**
 * A request with Host twice is 400 on the admin listener (RFC 9112 §3.2), as on the proxy listeners,
 * through the real listener and raw sockets. Before, node kept the first Host and the DNS-rebinding
 * check read only that one: `Host: localhost` then `Host: rebound.attacker.example` was answered
 * (200 on /healthz, /proxy.pac, and /v1/mode with a token), the same two in the other order 421; a
 * front that goes by the last Host had routed the request by the name the check never saw.
 * Authorization twice likewise: node kept the first, and `Bearer <token>` then `Bearer <other>` was
 * answered 200 under the first token.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

/** One request on its own connection, its head as written; the answer's status and body. */
async function raw(gw: TestGateway, head: string): Promise<{ status: number; body: string }> {
  const port = Number(gw.admin.slice(gw.admin.lastIndexOf(':') + 1));
  const s = connect(port, '127.0.0.1');
  s.setTimeout(5000, () => s.destroy(new Error('no answer in 5 s')));
  s.write(`${head}Connection: close\r\n\r\n`);
  let text = '';
  for await (const chunk of s) text += (chunk as Buffer).toString('latin1');
  const [top = '', body = ''] = text.split('\r\n\r\n');
  return { status: Number(top.split(' ')[1]), body };
}

describe('admin listener: Host twice', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startTestGateway();
  });
  afterAll(async () => {
    await gw.stop();
  });

  it('is 400 in the error shape, whichever comes first, on token-free routes and with a token', async () => {
    const auth = `Authorization: Bearer ${gw.adminToken}\r\n`;
    const pairs = [
      ['localhost', 'rebound.attacker.example'],
      ['rebound.attacker.example', 'localhost'],
      ['127.0.0.1', '127.0.0.1'],
    ];
    for (const path of ['/healthz', '/proxy.pac', '/v1/mode']) {
      for (const [first, second] of pairs) {
        const a = await raw(gw, `GET ${path} HTTP/1.1\r\nHost: ${first}\r\nHost: ${second}\r\n${path === '/v1/mode' ? auth : ''}`);
        expect(a.status, `${path} ${first} ${second}`).toBe(400);
        expect(JSON.parse(a.body)).toEqual({ error: 'bad-request', message: 'more than one Host field' });
      }
    }
    // One Host is answered as before.
    expect((await raw(gw, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n')).status).toBe(200);
    expect((await raw(gw, `GET /v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}`)).status).toBe(200);
    expect((await raw(gw, 'GET /healthz HTTP/1.1\r\nHost: rebound.attacker.example\r\n')).status).toBe(421);
  });

  it('Authorization twice is 400 too, whichever token comes first; one is answered as before', async () => {
    const good = `Bearer ${gw.adminToken}`;
    for (const [first, second] of [
      [good, 'Bearer not-a-token'],
      ['Bearer not-a-token', good],
      [good, good],
    ]) {
      const a = await raw(gw, `GET /v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${first}\r\nAuthorization: ${second}\r\n`);
      expect(a.status, `${first} / ${second}`).toBe(400);
      expect(JSON.parse(a.body)).toEqual({ error: 'bad-request', message: 'more than one Authorization field' });
    }
    expect((await raw(gw, `GET /v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${good}\r\n`)).status).toBe(200);
    expect((await raw(gw, 'GET /v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer not-a-token\r\n')).status).toBe(401);
  });
});
