/**
 * A mode switch while an admitted flow's parent proxy (`upstream: http://<name>:port`) is being
 * looked up: the flow is being dialled (its dial's first step is finding the parent's address), not
 * established, and is judged again as any dial is (admission.ts refuseDialsAfterChange). Before, the
 * flow was not marked dialling until that lookup ended, so the switch missed it: flows admitted
 * `would-block` in monitor mode, switched to enforce during a 2 s parent lookup, all reached the
 * parent when the name answered (CONNECT 200, SOCKS5 0x00 2.0 s after the switch), recorded
 * would-block, enforced false. On CONNECT, absolute-URI (the fast path's GET, node:http's POST) and
 * SOCKS5.
 *
 * The parent's name answers late (test/helpers/late-dns.ts: `.slow.test` names get 127.0.0.1 after
 * LOOKUP_MS); the parent records what it is asked.
 */
import { once } from 'node:events';
import { connect, createServer, type Server } from 'node:net';
import { SocksClient } from 'socks';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { createDnsResolver } from '../../gateway/upstream/resolve.ts';
import { caseSockets, replyOf } from '../helpers/dialling-cases.ts';
import { adminPut, startTestGateway, until } from '../helpers/gateway.ts';
import { type LateDns, startLateDns } from '../helpers/late-dns.ts';
import { type ParentProxy, startHttpParent } from '../helpers/parent-proxy.ts';

/** How late the parent's name answers: a refusal "at once" comes well before it on a loaded machine. */
const LOOKUP_MS = 2000;

let dns: LateDns;
let parent: ParentProxy;
let origin: Server;
let originPort = 0;

beforeAll(async () => {
  dns = await startLateDns(LOOKUP_MS);
  parent = await startHttpParent();
  origin = createServer((s) => {
    s.on('error', () => undefined);
    s.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
  });
  origin.listen(0, '127.0.0.1');
  await once(origin, 'listening');
  originPort = (origin.address() as { port: number }).port;
});
afterAll(async () => {
  dns?.close();
  await parent?.close();
  origin?.close();
});

describe('a mode switch while a flow\'s parent proxy is looked up', () => {
  it('PUT /v1/mode enforce: each would-block flow waiting on its parent\'s address is refused at once (403 not-allowlisted / SOCKS 0x02), one block record each, the parent never asked', async ({ expect, onTestFinished }) => {
    const clients = caseSockets(onTestFinished);
    const gw = await startTestGateway(
      { mode: 'monitor', roles: { any: { allow: [{ cidr: '127.0.0.9/32' }] } }, upstream: `http://parent.slow.test:${parent.port}`, limits: { connectTimeoutMs: 20_000 } },
      { resolver: createDnsResolver({ timeoutMs: 10_000, lookup: dns.lookup, slots: 16, perRequester: 16 }) },
    );
    onTestFinished(() => gw.stop());
    const target = `127.0.0.1:${originPort}`;
    const heads = [
      `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
      `GET http://${target}/x HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
      `POST http://${target}/x HTTP/1.1\r\nHost: ${target}\r\nContent-Length: 2\r\n\r\nhi`,
    ];
    const replies: Array<Promise<string>> = [];
    for (const head of heads) {
      const s = connect(gw.httpPort, '127.0.0.1');
      s.on('error', () => undefined);
      clients.push(s);
      replies.push(replyOf(s, 8000));
      s.write(head);
    }
    const socks = SocksClient.createConnection({ proxy: { host: gw.socksHost, port: gw.socksPort, type: 5 }, command: 'connect', destination: { host: '127.0.0.1', port: originPort }, timeout: 8000 }).then(
      (c) => {
        c.socket.destroy();
        return 'connected';
      },
      (err: Error) => err.message,
    );
    // Every flow admitted would-block, the parent's name asked and not answered yet.
    await until('four flows admitted', () => [...gw.flows.activeFlows().values()].filter((f) => f.verdict === 'would-block').length === heads.length + 1);
    await until("the parent's name asked", () => dns.asked.includes('parent.slow.test'));
    const flows = [...gw.flows.activeFlows().values()];
    expect(dns.answered).toEqual([]);
    expect(await adminPut(gw, '/v1/mode', { mode: 'enforce' })).toBe(200);
    for (const [i, text] of (await Promise.all(replies)).entries()) {
      expect(text, heads[i]).toMatch(/^HTTP\/1\.1 403 /);
      expect(text, heads[i]).toMatch(/\r\nX-Egress-Verdict: block\r\n/i);
      expect(text, heads[i]).toContain('"reason":"not-allowlisted"');
    }
    expect(await socks).toMatch(/NotAllowed/);
    // Answered before the parent's name was: refused at the switch, not when the lookup ended.
    expect(dns.answered).toEqual([]);
    for (const f of flows) {
      expect(gw.closed.filter((r) => r.id === f.id).map((r) => [r.verdict, r.enforced, r.reason, r.closeReason])).toEqual([['block', true, 'not-allowlisted', 'not-allowlisted']]);
    }
    // Once the name answers, nothing is dialled through the parent.
    await until("the parent's name answered", () => dns.answered.includes('parent.slow.test'), 10_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(parent.seen).toEqual([]);
  }, 30_000);
});
