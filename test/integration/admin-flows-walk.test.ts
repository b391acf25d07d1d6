/**
 * Walking `GET /v1/flows` page by page with `next` (as `after`) lists every flow the walk's first
 * page found, each once, however flows close or open between the pages: CONNECT tunnels through
 * the real HTTP listener, held open or closed by the client between two admin requests. With
 * `offset` the same walk listed 05 04 | 05 04 | 01 00 (03 and 02, live all along, never). Each flow
 * is listed with the state it has when its page is taken, a page's live flows before its closed ones.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../gateway/flow/flow.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { rawConnect, readUntil } from './http-harness.ts';
import { startTcpOrigin } from './socks5-harness.ts';

interface Page {
  flows: FlowRecord[];
  count: number;
  next: string | null;
}

interface Tunnel {
  id: string;
  socket: Socket;
  clientPort: number;
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function setup(): Promise<{ gw: TestGateway; open: () => Promise<Tunnel> }> {
  const gw = await startTestGateway();
  cleanups.push(() => gw.stop());
  const o = await startTcpOrigin('127.0.0.1');
  cleanups.push(() => o.close());
  /** A CONNECT tunnel carrying `hello`, echoed, and held open: its flow's id. */
  const open = async (): Promise<Tunnel> => {
    const socket = await rawConnect(gw.httpPort, gw.httpHost);
    socket.on('error', () => undefined);
    cleanups.push(() => socket.destroy());
    socket.write(`CONNECT 127.0.0.1:${o.port} HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\n\r\n`);
    expect((await readUntil(socket, '\r\n\r\n')).toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
    socket.write('hello');
    await readUntil(socket, 'hello');
    const clientPort = socket.localPort as number;
    const live = gw.flows.list({ state: 'active', limit: 10_000 }).find((r) => r.protocol === 'connect' && r.client.port === clientPort);
    expect(live, 'the tunnel is a live flow').toBeDefined();
    return { id: (live as FlowRecord).id, socket, clientPort };
  };
  return { gw, open };
}

/** The client closes the tunnel; resolves once its flow is closed. */
async function close(gw: TestGateway, t: Tunnel): Promise<void> {
  t.socket.end();
  await once(t.socket, 'close');
  await gw.waitForClosed((r) => r.protocol === 'connect' && r.client.port === t.clientPort);
}

async function page(gw: TestGateway, query: string): Promise<Page> {
  const res = await adminGet(gw, `/v1/flows?${query}`);
  expect(res.status, res.text).toBe(200);
  const body = JSON.parse(res.text) as Page;
  expect(body.count).toBe(body.flows.length);
  return body;
}

const ids = (p: Page): string[] => p.flows.map((f) => f.id);

describe('GET /v1/flows walked with next', () => {
  it('lists each flow once when the flows of a page close before the next page', async () => {
    const { gw, open } = await setup();
    const t: Tunnel[] = [];
    for (let i = 0; i < 6; i++) t.push(await open());
    await close(gw, t[0] as Tunnel);
    await close(gw, t[1] as Tunnel);
    const id = (i: number): string => (t[i] as Tunnel).id;

    const first = await page(gw, 'limit=2');
    expect(ids(first)).toEqual([id(5), id(4)]);
    expect(first.next).toEqual(expect.any(String));
    // The flows just seen close: they move from the live flows to the head of the closed ones.
    await close(gw, t[5] as Tunnel);
    await close(gw, t[4] as Tunnel);
    const second = await page(gw, `limit=2&after=${encodeURIComponent(first.next as string)}`);
    expect(ids(second)).toEqual([id(3), id(2)]);
    expect(second.flows.map((f) => f.state)).toEqual(['active', 'active']);
    const third = await page(gw, `limit=2&after=${encodeURIComponent(second.next as string)}`);
    expect(ids(third)).toEqual([id(1), id(0)]);
    expect(third.next).toBeNull();

    // A new walk sees the table as it is now: live 03 02, then closed newest first.
    const again = await page(gw, 'limit=10');
    expect(ids(again)).toEqual([id(3), id(2), id(4), id(5), id(1), id(0)]);
    expect(again.next).toBeNull();
  });

  it('does not push flows already listed onto the next page when flows open between pages', async () => {
    const { gw, open } = await setup();
    const t: Tunnel[] = [];
    for (let i = 0; i < 4; i++) t.push(await open());
    const id = (i: number): string => (t[i] as Tunnel).id;

    const first = await page(gw, 'limit=2');
    expect(ids(first)).toEqual([id(3), id(2)]);
    t.push(await open());
    t.push(await open());
    const second = await page(gw, `limit=2&after=${encodeURIComponent(first.next as string)}`);
    expect(ids(second)).toEqual([id(1), id(0)]);
    expect(second.next).toBeNull();
  });

  // It stayed in the live part with its closed record: page 2 listed 02 (closed) before 01 (live),
  // and a state=active walk listed 02, closed.
  it('lists a flow that closes before its page once, after the live flows of the next page, with its closed record', async () => {
    const { gw, open } = await setup();
    const t: Tunnel[] = [];
    for (let i = 0; i < 6; i++) t.push(await open());
    await close(gw, t[5] as Tunnel);
    const id = (i: number): string => (t[i] as Tunnel).id;

    const all = await page(gw, 'limit=2');
    const active = await page(gw, 'state=active&limit=2');
    expect(ids(all)).toEqual([id(4), id(3)]);
    expect(ids(active)).toEqual([id(4), id(3)]);
    // 02, not yet listed, closes.
    await close(gw, t[2] as Tunnel);

    const walked: Page[] = [all];
    for (let n = 0; n < 10 && walked.at(-1)?.next; n++) walked.push(await page(gw, `limit=2&after=${encodeURIComponent(walked.at(-1)?.next as string)}`));
    // Page 2: 01, live, then 02, closed since page 1; page 3: 00, live, then 05, closed before the walk.
    expect(walked.map(ids)).toEqual([[id(4), id(3)], [id(1), id(2)], [id(0), id(5)]]);
    expect(walked.map((p) => p.flows.map((f) => f.state))).toEqual([['active', 'active'], ['active', 'closed'], ['active', 'closed']]);
    for (const p of walked) {
      const states = p.flows.map((f) => f.state);
      expect(states.indexOf('closed') === -1 || states.lastIndexOf('active') < states.indexOf('closed'), 'live before closed').toBe(true);
    }

    const activeNext = await page(gw, `state=active&limit=2&after=${encodeURIComponent(active.next as string)}`);
    expect(ids(activeNext)).toEqual([id(1), id(0)]);
    expect(activeNext.flows.map((f) => f.state)).toEqual(['active', 'active']);
    expect(activeNext.next).toBeNull();
  });

  it('walks the closed flows alone with state=closed, and refuses a cursor it did not give', async () => {
    const { gw, open } = await setup();
    const t: Tunnel[] = [];
    for (let i = 0; i < 3; i++) t.push(await open());
    for (const tunnel of t) await close(gw, tunnel);
    const live = await open();
    const id = (i: number): string => (t[i] as Tunnel).id;

    const first = await page(gw, 'state=closed&limit=2');
    expect(ids(first)).toEqual([id(2), id(1)]);
    // Opened since the walk began: not listed. Live when it began and closed since: listed on the next
    // page, before the flows closed before the walk (it closed after them).
    const late = await open();
    await close(gw, late);
    await close(gw, live);
    const second = await page(gw, `state=closed&limit=2&after=${encodeURIComponent(first.next as string)}`);
    expect(ids(second)).toEqual([live.id, id(0)]);
    expect(second.flows.map((f) => f.state)).toEqual(['closed', 'closed']);
    expect(second.next).toBeNull();

    for (const bad of ['nonsense', `${(first.next as string).slice(0, -1)}zz`, `000000${(first.next as string).slice(6)}`]) {
      const res = await adminGet(gw, `/v1/flows?after=${encodeURIComponent(bad)}`);
      expect(res.status, bad).toBe(400);
      expect(JSON.parse(res.text)).toMatchObject({ error: 'bad-request' });
    }
  });
});
