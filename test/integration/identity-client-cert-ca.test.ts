/**
 * `egressgate serve` with a TLS listener asking for client certificates (`tls.requestClientCert`),
 * driven with curl presenting real certificates. A certificate that names a user must come from the
 * CA the operator configured (`tls.ca`), never from whatever node's own trust store holds.
 *
 * Regression: with `requestClientCert: true` and no `tls.ca`, node verified client certificates
 * against its bundled public roots and NODE_EXTRA_CA_CERTS. A certificate from such a CA with
 * CN=alice logged in as alice (requireAuth satisfied, alice's roles) without her password. The
 * system store is stood in for here by NODE_EXTRA_CA_CERTS naming a test CA.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseWrittenRecords } from '../helpers/flow-records.ts';
import { CLI, killIfRunning, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';
import { type Origin, run, startOrigin } from './http-harness.ts';

const curlVersion = await run('curl', ['--version']).catch(() => null);
const canRun = hasOpenssl() && curlVersion !== null && /HTTPS-proxy/.test(curlVersion.stdout.toString('utf8'));

describe.skipIf(!skipNotice(canRun, 'identity-client-cert-ca', 'needs openssl and a curl built with HTTPS-proxy'))('client certificates are believed only from tls.ca', () => {
  let pki: TestPki;
  let origin: Origin;
  let dir: string;
  let served: Served | null = null;

  beforeAll(async () => {
    // pki.ca: a CA in the process's trust store (NODE_EXTRA_CA_CERTS), never named in the config.
    // pki's "other" CA (untrustedClient) is the one the operator configures as tls.ca.
    pki = await createTestPki({ alice: { cn: 'alice' } }, { untrustedClient: { cn: 'alice' } });
    origin = await startOrigin();
    dir = await mkdtemp(join(tmpdir(), 'egw-client-cert-ca-'));
  }, 60_000);

  afterEach(async () => {
    await killIfRunning(served?.child ?? null);
    served = null;
  });

  afterAll(async () => {
    await origin?.close();
    await pki?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function writePolicy(name: string, ca: string | null): Promise<string> {
    const path = join(dir, `${name}.yaml`);
    await writeFile(
      path,
      `mode: enforce
listen: { https: "127.0.0.1:0" }
tls: { cert: ${JSON.stringify(pki.server.certPath)}, key: ${JSON.stringify(pki.server.keyPath)}, requestClientCert: true${ca ? `, ca: ${JSON.stringify(ca)}` : ''} }
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
identity: { localAttribution: false, requireAuth: true, users: [ { name: alice, password: "alice-password-0123", roles: [any] } ] }
flowLog: { path: "-" }
`,
    );
    return path;
  }

  /** `cli.ts serve` run to its exit (it must not start): exit code and stderr. */
  function serveExit(config: string): Promise<{ code: number; stderr: string; stdout: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [CLI, 'serve', '--config', config, '--http', '127.0.0.1:0', '--socks', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
        { cwd: ROOT, timeout: 20_000, env: { ...process.env, EGRESSGATE_CONFIG: '', NODE_EXTRA_CA_CERTS: pki.ca.certPath } },
        (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
      );
    });
  }

  it('requestClientCert without tls.ca: serve refuses the config, naming tls, and never listens', async () => {
    const r = await serveExit(await writePolicy('no-ca', null));
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.code).not.toBe(-1); // exited by itself, not killed at the timeout
    expect(r.stdout).not.toContain('"listening"');
    expect(r.stderr).toMatch(/tls.*requestClientCert needs ca/);
  }, 30_000);

  it('with tls.ca: a certificate from a CA only in the trust store is no login (407, the origin sees nothing); one from tls.ca is alice', async () => {
    served = await spawnServe(await writePolicy('with-ca', join(pki.dir, 'other-ca.crt')), {
      env: { EGRESSGATE_CONFIG: '', NODE_EXTRA_CA_CERTS: pki.ca.certPath },
    });
    let out = '';
    served.child.stdout?.on('data', (b: Buffer) => {
      out += b.toString('utf8');
    });
    const curl = async (cert: { certPath: string; keyPath: string }, path: string): Promise<number> => {
      const r = await run('curl', [
        '-s', '-o', '/dev/null', '-w', '%{http_code}', '--noproxy', '', '-x', `https://${served!.https}`, '--proxy-cacert', pki.ca.certPath,
        '--proxy-cert', cert.certPath, '--proxy-key', cert.keyPath, `http://127.0.0.1:${origin.port}${path}`,
      ]);
      return Number(r.stdout.toString('utf8'));
    };
    expect(await curl(pki.clients['alice']!, '/store-ca')).toBe(407);
    expect(origin.seen.some((s) => s.url === '/store-ca')).toBe(false);
    expect(await curl(pki.untrustedClient!, '/configured-ca')).toBe(200);
    const deadline = Date.now() + 10_000;
    while (parseWrittenRecords(out).filter((r) => r.destination.port === origin.port).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const records = parseWrittenRecords(out).filter((r) => r.destination.port === origin.port);
    expect(records.map((r) => [r.identity.user, r.closeReason])).toEqual([
      [null, 'auth-required'],
      ['alice', 'closed'],
    ]);
  }, 30_000);
});
