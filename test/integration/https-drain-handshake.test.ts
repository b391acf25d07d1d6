/**
 * `egressgate serve` drained by SIGTERM while a client of the HTTPS listener (`listen.https`) has not
 * finished its TLS handshake: that connection carries no request and no flow, and is closed as the
 * plain listener's connections that have sent nothing are, so the process exits at once.
 *
 * Regression: node:http knows a TLS connection only once its handshake is done, so the drain's
 * closeIdleConnections and closeAllConnections missed it and server.close() waited for its handshake
 * timeout. Reproduced with `headerTimeoutMs: 30000`, `drainGraceMs: 2000` and one raw TCP client
 * that sent nothing: exit 0 came 30 s after SIGTERM (the same client on the plain HTTP or SOCKS
 * listener: 0.5 s); with node's 120 s handshake timeout before, 120 s.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { killIfRunning, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';

/** Far below the 60 s handshake timeout configured, far above an exit on a loaded machine. */
const EXIT_WITHIN_MS = 25_000;
const TOKEN = 'https-drain-token-0123456789';

describe.skipIf(!skipNotice(hasOpenssl(), 'https-drain-handshake', 'needs openssl to make the test certificates'))('SIGTERM with a TLS handshake under way', () => {
  let pki: TestPki;
  let dir: string;
  let served: Served | null = null;

  beforeAll(async () => {
    pki = await createTestPki({});
    dir = await mkdtemp(join(tmpdir(), 'egw-https-drain-'));
  }, 60_000);

  afterEach(async () => {
    await killIfRunning(served?.child ?? null);
    served = null;
  });

  afterAll(async () => {
    await pki?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a client that has sent nothing to the TLS listener is closed at SIGTERM and serve exits 0 at once', async () => {
    const config = join(dir, 'policy.yaml');
    await writeFile(
      config,
      `mode: enforce
listen: { https: "127.0.0.1:0" }
tls: { cert: ${JSON.stringify(pki.server.certPath)}, key: ${JSON.stringify(pki.server.keyPath)} }
allowRanges: [127.0.0.0/8]
identity: { localAttribution: false }
limits: { headerTimeoutMs: 60000, drainGraceMs: 2000 }
flowLog: { path: "-" }
`,
    );
    served = await spawnServe(config, { env: { EGRESSGATE_CONFIG: '', EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    const where = served.https as string;
    const client = connect(Number(where.slice(where.lastIndexOf(':') + 1)), '127.0.0.1');
    client.on('error', () => undefined);
    await once(client, 'connect');
    const isClientClosed = once(client, 'close').then(() => true);
    // The gateway has the connection (its TLS server, before any handshake byte) before SIGTERM.
    await until('the https listener counts the connection', async () => {
      const r = await fetch(`http://${served?.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
      return /gw_downstream_cx_active\{listener="https"\} 1\b/.test(await r.text());
    }, 20_000);
    const exited = once(served.child, 'exit').then(([code]) => code as number | null);
    served.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise<'still running'>((r) => (timer = setTimeout(() => r('still running'), EXIT_WITHIN_MS)))]);
    clearTimeout(timer);
    client.destroy();
    expect(code).toBe(0);
    expect(await isClientClosed).toBe(true);
  }, 60_000);
});
