/**
 * Which parent proxy carried a flow, in its record: `upstream` (scheme://host:port, never the
 * credentials the URL carries) on the flow log line and the admin API's flow view, for CONNECT,
 * SOCKS5 and absolute-URI flows through an http or a socks5 parent, also when the parent failed;
 * absent for a direct flow.
 */
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocksClient } from 'socks';
import { communityId } from '../../gateway/flow/community-id.ts';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway, until } from '../helpers/gateway.ts';
import { type ParentProxy, startHttpParent, startSocksParent } from '../helpers/parent-proxy.ts';
import { rawExchange } from './http-harness.ts';

let dir: string;
let origin: Server;
let originPort: number;
let httpParent: ParentProxy;
let socksParent: ParentProxy;
let gw: TestGateway | null = null;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'egw-upstream-record-'));
  origin = createServer((s) => {
    s.on('error', () => {});
    s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'));
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
  httpParent = await startHttpParent();
  socksParent = await startSocksParent('pu:s3cret-socks');
});
afterEach(async () => {
  await gw?.stop();
  gw = null;
});
afterAll(async () => {
  await httpParent.close();
  await socksParent.close();
  await new Promise((r) => origin.close(r));
  await rm(dir, { recursive: true, force: true });
});

async function logLines(path: string, n: number): Promise<string[]> {
  let lines: string[] = [];
  await until(`${n} flow log lines`, async () => {
    lines = (await readFile(path, 'utf8').catch(() => '')).split('\n').filter((l) => l !== '');
    return lines.length >= n;
  });
  return lines;
}


// Regression: a flow record did not say which parent carried it; an operator with two roles on two
// parents could not tell from the flow log (or GET /v1/flows) which one a flow went through.
describe('the record names the parent proxy', () => {
  it('http parent with credentials: CONNECT and absolute-URI records say `http://127.0.0.1:<port>`, no credentials; the flow view too', async () => {
    httpParent.mode = { kind: 'relay' };
    const flowLog = join(dir, 'http.jsonl');
    gw = await startTestGateway({ upstream: `http://pu:s3cret-http@127.0.0.1:${httpParent.port}`, flowLog: { path: flowLog } });
    const want = `http://127.0.0.1:${httpParent.port}`;
    const connect = await rawExchange(gw.httpPort, `CONNECT 127.0.0.1:${originPort} HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(connect.response).toMatch(/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nok$/);
    const plain = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nConnection: close\r\n\r\n`);
    expect(plain.response).toMatch(/^HTTP\/1\.1 200 /);
    expect(httpParent.seen.at(-1)?.login).toBe('pu:s3cret-http');
    const lines = await logLines(flowLog, 2);
    const records = lines.map((l) => JSON.parse(l) as { protocol: string; upstream?: string; closeReason: string });
    expect(records.map((r) => [r.protocol, r.upstream]).sort()).toEqual([
      ['connect', want],
      ['http', want],
    ]);
    for (const l of lines) expect(l).not.toContain('s3cret');
    const view = await adminGet(gw, '/v1/flows?state=closed');
    const flows = (JSON.parse(view.text) as { flows: Array<{ upstream?: string }> }).flows;
    expect(flows.map((f) => f.upstream)).toEqual([want, want]);
    expect(view.text).not.toContain('s3cret');
  });

  it('socks5 parent with a login: the SOCKS5 flow says `socks5://127.0.0.1:<port>`; a failed dial through it too', async () => {
    socksParent.mode = { kind: 'relay' };
    const flowLog = join(dir, 'socks.jsonl');
    gw = await startTestGateway({ upstream: `socks5://pu:s3cret-socks@127.0.0.1:${socksParent.port}`, flowLog: { path: flowLog } });
    const want = `socks5://127.0.0.1:${socksParent.port}`;
    const { socket } = await SocksClient.createConnection({
      proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 },
      command: 'connect',
      destination: { host: '127.0.0.1', port: originPort },
    });
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    socket.resume();
    await once(socket, 'close');
    socksParent.mode = { kind: 'refuse', code: 0x05 };
    await expect(
      SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: originPort } }),
    ).rejects.toThrow();
    const lines = await logLines(flowLog, 2);
    const records = lines.map((l) => JSON.parse(l) as { upstream?: string; closeReason: string; communityId: string; client: { ip: string; port: number } });
    // communityId through a parent is the record's own client ↔ destination, as for a direct flow
    // (docs/spec-notes.md, Records: the decision and why), not the gateway ↔ parent connection.
    for (const r of records) expect(r.communityId).toBe(communityId('tcp', r.client.ip, r.client.port, '127.0.0.1', originPort));
    expect(records.map((r) => [r.closeReason, r.upstream]).sort()).toEqual([
      ['closed', want],
      ['connection-refused', want],
    ]);
    for (const l of lines) expect(l).not.toContain('s3cret');
  });

  it('a direct flow has no upstream field', async () => {
    const flowLog = join(dir, 'direct.jsonl');
    gw = await startTestGateway({ flowLog: { path: flowLog } });
    const plain = await rawExchange(gw.httpPort, `GET http://127.0.0.1:${originPort}/ HTTP/1.1\r\nHost: 127.0.0.1:${originPort}\r\nConnection: close\r\n\r\n`);
    expect(plain.response).toMatch(/^HTTP\/1\.1 200 /);
    const [line] = await logLines(flowLog, 1);
    expect(JSON.parse(line as string)).not.toHaveProperty('upstream');
  });
});
