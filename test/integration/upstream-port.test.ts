/**
 * A parent proxy named with its port written out is dialled on that port, whatever the scheme's
 * default is. The parent here is a second gateway listening on port 80 of a loopback address (so the
 * test needs the right to bind a port below 1024, which CI has).
 */
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { type Origin, run, startOrigin } from './http-harness.ts';

/** A loopback address of its own, so port 80 is not taken by anything else on the machine. */
const PARENT_IP = `127.80.${1 + (process.pid % 250)}.${1 + Math.floor(Math.random() * 250)}`;

function canListenOn80(): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(80, PARENT_IP, () => probe.close(() => resolve(true)));
  });
}

const available = await canListenOn80();
let parent: TestGateway;
let child: TestGateway;
let origin: Origin;

beforeAll(async () => {
  if (!available) return;
  origin = await startOrigin();
  parent = await startTestGateway({ listen: { http: `${PARENT_IP}:80` } });
  child = await startTestGateway({ upstream: `http://${PARENT_IP}:80` });
});

afterAll(async () => {
  await child?.stop();
  await parent?.stop();
  await origin?.close();
});

// Regression: dial() took the port from URL.port, which the WHATWG parser leaves empty when it is the
// scheme's default, so `upstream: http://parent:80` was dialled at parent:3128: every flow got 502
// upstream-proxy ("parent proxy …:3128 unreachable").
describe.runIf(skipNotice(available, 'upstream on port 80', `cannot listen on ${PARENT_IP}:80`))('upstream: http://parent:80', () => {
  it('a CONNECT tunnel leaves through the parent on port 80', async () => {
    const r = await run('curl', ['-sS', '--noproxy', '', '-p', '-x', `http://127.0.0.1:${child.httpPort}`, `http://127.0.0.1:${origin.port}/size/321`]);
    expect(r.stdout.length).toBe(321);
    const rec = await child.waitForClosed((f) => f.protocol === 'connect');
    expect(rec.closeReason).toBe('closed');
    const up = await parent.waitForClosed((f) => f.protocol === 'connect' && f.destination.port === origin.port);
    expect(up.bytesIn).toBe(rec.bytesIn);
  });

  it('an absolute-URI request leaves through the parent on port 80', async () => {
    const r = await run('curl', ['-sS', '--noproxy', '', '-x', `http://127.0.0.1:${child.httpPort}`, `http://127.0.0.1:${origin.port}/size/123`]);
    expect(r.stdout.length).toBe(123);
    const rec = await child.waitForClosed((f) => f.protocol === 'http');
    expect(rec.closeReason).toBe('closed');
  });
});
