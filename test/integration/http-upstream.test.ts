/**
 * A parent proxy (`upstream: http://…`): absolute-URI requests and CONNECT tunnels of the child
 * gateway leave through the parent's CONNECT, asked for exactly the address the child checked.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { type Origin, pattern, run, startOrigin } from './http-harness.ts';

let parent: TestGateway;
let child: TestGateway;
/** Only the `chained` role (user bob) goes through the parent; everyone else leaves directly. */
let perRole: TestGateway;
let origin: Origin;
/** A parent that wants its own credentials, and a child configured with them in the URL. */
let lockedParent: TestGateway;
let lockedChild: TestGateway;

beforeAll(async () => {
  origin = await startOrigin();
  parent = await startTestGateway();
  child = await startTestGateway({ upstream: `http://127.0.0.1:${parent.httpPort}` });
  lockedParent = await startTestGateway({ identity: { requireAuth: true, users: [{ name: 'child-gw', password: 'p@ss:w0rd', roles: ['any'] }] } });
  lockedChild = await startTestGateway({ upstream: `http://child-gw:${encodeURIComponent('p@ss:w0rd')}@127.0.0.1:${lockedParent.httpPort}` });
  perRole = await startTestGateway({
    identity: { users: [{ name: 'bob', password: 'bob-pass-1', roles: ['chained'] }] },
    roles: { chained: { allow: [{ cidr: '0.0.0.0/0' }, { cidr: '::/0' }], upstream: `http://127.0.0.1:${parent.httpPort}` } },
  });
});

afterAll(async () => {
  await child?.stop();
  await lockedChild?.stop();
  await lockedParent?.stop();
  await perRole?.stop();
  await parent?.stop();
  await origin?.close();
});

describe('parent proxy chaining from the HTTP listener', () => {
  it('absolute-URI: the child keeps one http flow per request, the parent carries it as a tunnel to the same IP', async () => {
    const body = pattern(5000);
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${child.httpPort}`, '--data-binary', '@-', `http://localhost:${origin.port}/up`], { input: body });
    expect(r.stdout.toString()).toBe('echo:POST:5000');
    const rec = await child.waitForClosed((f) => f.protocol === 'http' && f.bytesOut === 5000);
    expect(rec.bytesIn).toBe('echo:POST:5000'.length);
    const ip = rec.destination.ip;
    expect(ip === '127.0.0.1' || ip === '::1').toBe(true);
    expect(origin.seen.find((s) => s.url === '/up')?.headers.host).toBe(`localhost:${origin.port}`);
    // The parent's tunnel is pooled by the child and stays open for reuse: look at the live flow.
    const live = parent.flows.list({ state: 'active' }).find((f) => f.protocol === 'connect');
    expect(live?.destination).toMatchObject({ host: ip, port: origin.port });
  });

  it('CONNECT through the child is a tunnel in the parent too', async () => {
    const r = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${child.httpPort}`, `http://127.0.0.1:${origin.port}/size/777`]);
    expect(r.stdout.length).toBe(777);
    const rec = await child.waitForClosed((f) => f.protocol === 'connect' && f.closeReason === 'closed');
    const up = await parent.waitForClosed((f) => f.protocol === 'connect' && f.bytesIn === rec.bytesIn);
    expect(up.bytesOut).toBe(rec.bytesOut);
  });
});

describe('parent proxy per role', () => {
  it("a role's upstream carries only that role's traffic", async () => {
    const seenByParent = (): number => parent.flows.list({ state: 'active' }).length + parent.flows.list({ state: 'closed', limit: 10_000 }).length;
    const before = seenByParent();
    const direct = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${perRole.httpPort}`, `http://127.0.0.1:${origin.port}/size/321`]);
    expect(direct.stdout.length).toBe(321);
    await perRole.waitForClosed((f) => f.protocol === 'connect' && f.identity.user === null && f.closeReason === 'closed');
    expect(seenByParent()).toBe(before);
    const chained = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${perRole.httpPort}`, '--proxy-user', 'bob:bob-pass-1', `http://127.0.0.1:${origin.port}/size/654`]);
    expect(chained.stdout.length).toBe(654);
    const rec = await perRole.waitForClosed((f) => f.protocol === 'connect' && f.identity.user === 'bob' && f.closeReason === 'closed');
    const up = await parent.waitForClosed((f) => f.protocol === 'connect' && f.bytesIn === rec.bytesIn && f.destination.port === origin.port);
    expect(up.bytesOut).toBe(rec.bytesOut);
  });
});

// Regression: the credentials in an http parent proxy's URL were never sent, so a parent that wants
// them answered 407 and every flow through it got 502 upstream-proxy.
describe('a parent proxy that wants credentials', () => {
  it('gets the ones in its URL, on CONNECT and on absolute-URI requests', async () => {
    const tunnel = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${lockedChild.httpPort}`, `http://127.0.0.1:${origin.port}/size/321`]);
    expect(tunnel.stdout.length).toBe(321);
    const up = await lockedParent.waitForClosed((f) => f.protocol === 'connect' && f.bytesIn > 321);
    expect(up.identity.user).toBe('child-gw');
    const abs = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${lockedChild.httpPort}`, `http://127.0.0.1:${origin.port}/size/123`]);
    expect(abs.stdout.length).toBe(123);
  });
});
