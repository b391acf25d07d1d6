/**
 * An absolute-form request target (`GET http://127.0.0.1:9180/v1/flows`, RFC 9112 §3.2.2: a server
 * must accept it) is answered as its path, and its authority is the name the Host check reads, through
 * the real admin listener and raw sockets. Before, fastify routed it by the path inside, but
 * `request.url` kept the whole target: flow data came without `cache-control: no-store`, a wrong
 * method was 404 with no Allow, the audit recorded `http://…` as the path, and the DNS-rebinding
 * check read the Host field the RFC has the server ignore (`http://rebound.attacker.example/healthz`
 * with `Host: localhost` was 200).
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One request on its own connection, head and body as written. */
async function raw(gw: TestGateway, head: string, body = ''): Promise<Answer> {
  const port = Number(gw.admin.slice(gw.admin.lastIndexOf(':') + 1));
  const s = connect(port, '127.0.0.1');
  s.setTimeout(5000, () => s.destroy(new Error('no answer in 5 s')));
  s.write(`${head}Connection: close\r\n\r\n${body}`);
  let text = '';
  for await (const chunk of s) text += (chunk as Buffer).toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const [top = '', ...lines] = text.slice(0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
  return { status: Number(top.split(' ')[1]), headers, body: text.slice(end + 4) };
}

describe('admin listener: absolute-form request targets', () => {
  let gw: TestGateway;
  let auth: string;
  beforeAll(async () => {
    gw = await startTestGateway();
    auth = `Authorization: Bearer ${gw.adminToken}\r\n`;
  });
  afterAll(async () => {
    await gw.stop();
  });

  it('are answered as their path: no-store on API data, 405 with Allow, the audit path', async () => {
    const flows = await raw(gw, `GET http://${gw.admin}/v1/flows?limit=5 HTTP/1.1\r\nHost: ${gw.admin}\r\n${auth}`);
    expect(flows.status).toBe(200);
    expect(flows.headers['cache-control']).toBe('no-store');
    expect(JSON.parse(flows.body)).toMatchObject({ flows: [] });

    const patch = await raw(gw, `PATCH http://${gw.admin}/v1/flows HTTP/1.1\r\nHost: ${gw.admin}\r\n${auth}`);
    expect(patch.status).toBe(405);
    expect(patch.headers['allow']).toBe('GET, HEAD');

    const body = JSON.stringify({ mode: 'monitor' });
    const put = await raw(gw, `PUT HTTP://${gw.admin}/v1/mode HTTP/1.1\r\nHost: ${gw.admin}\r\n${auth}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n`, body);
    expect(put.status).toBe(200);
    const audit = await raw(gw, `GET /v1/audit HTTP/1.1\r\nHost: ${gw.admin}\r\n${auth}`);
    expect(JSON.parse(audit.body).entries[0]).toMatchObject({ method: 'PUT', route: '/v1/mode', path: '/v1/mode', status: 200 });
  });

  it("check the target's authority, not Host, against DNS rebinding", async () => {
    const port = gw.admin.slice(gw.admin.lastIndexOf(':') + 1);
    for (const path of ['/healthz', '/proxy.pac']) {
      const a = await raw(gw, `GET http://rebound.attacker.example:${port}${path} HTTP/1.1\r\nHost: localhost:${port}\r\n`);
      expect(a.status, path).toBe(421);
      expect(JSON.parse(a.body)).toMatchObject({ error: 'misdirected-request' });
    }
    const withToken = await raw(gw, `GET http://rebound.attacker.example/v1/mode HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}`);
    expect(withToken.status).toBe(421);
    // A loopback authority is answered whatever Host says (ignored, RFC 9112 §3.2.2).
    expect((await raw(gw, `GET http://localhost:${port}/healthz HTTP/1.1\r\nHost: rebound.attacker.example\r\n`)).status).toBe(200);
  });
});
