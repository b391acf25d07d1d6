/**
 * The HTTPS variant of the listener (`createHttpProxy(ctx, {tls})`): curl speaks TLS to the proxy
 * itself (`-x https://…`), then absolute-URI and CONNECT work as on the plain listener. The
 * certificate is made by the real openssl for the test.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LocalGateway, type Origin, run, startLocalGateway, startOrigin } from './http-harness.ts';

let gw: LocalGateway;
let origin: Origin;
let dir: string;
let isReady = false;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'egw-tls-'));
  const made = await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
    '-subj', '/CN=egressgate-test', '-addext', 'subjectAltName=IP:127.0.0.1',
  ]);
  expect(made.code).toBe(0);
  origin = await startOrigin();
  gw = await startLocalGateway({}, { tls: { cert: readFileSync(join(dir, 'cert.pem')), key: readFileSync(join(dir, 'key.pem')) } });
  isReady = true;
});

afterAll(async () => {
  await gw?.stop();
  await origin?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const curl = (args: string[]) => run('curl', ['-sS', '--noproxy', '', '-x', `https://127.0.0.1:${gw.httpPort}`, '--proxy-cacert', join(dir, 'cert.pem'), ...args]);

describe('HTTPS proxy listener', () => {
  it('absolute-URI over a TLS connection to the proxy', async () => {
    expect(isReady).toBe(true);
    const r = await curl([`http://127.0.0.1:${origin.port}/size/2048`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBe(2048);
    const rec = await gw.waitForClosed((f) => f.protocol === 'http' && f.bytesIn === 2048);
    expect(rec.closeReason).toBe('closed');
  });

  it('CONNECT over a TLS connection to the proxy', async () => {
    const r = await curl(['-p', `http://127.0.0.1:${origin.port}/size/4096`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.length).toBe(4096);
    const rec = await gw.waitForClosed((f) => f.protocol === 'connect' && f.closeReason === 'closed');
    expect(rec.bytesIn).toBeGreaterThan(4096);
  });
});
