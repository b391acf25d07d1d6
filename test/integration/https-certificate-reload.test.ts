/**
 * A certificate renewed for the HTTPS listener (`listen.https` + `tls`) is taken on a reload: the
 * files `tls` names are read again at SIGHUP (the config file unchanged: a renewal in place), on a
 * PUT /v1/policy naming other files and on a rollback, and new handshakes get the new certificate
 * while a tunnel made before keeps its own. A file that cannot serve (a broken key, a key that is
 * not the certificate's) refuses the reload at its path; the old certificate goes on serving.
 *
 * Regression: `tls` was read at start only. Reproduced through a real `serve` with certificates A
 * and B made by openssl: after B was copied over A's files and SIGHUP sent, 3 of 3 new handshakes
 * still got A (the log said `config file unchanged`), and a PUT naming B's files was answered 200
 * with A still served, and only a warning that `tls` applies at the next restart.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/gateway.ts';
import { CLI, killIfRunning, loggedLines, ROOT, type Served, spawnServe } from '../helpers/serve-process.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';

const run = promisify(execFile);
const TOKEN = 'https-cert-reload-token-0123456789';
const auth = { authorization: `Bearer ${TOKEN}` };
const TAKEN = 'TLS listener: new handshakes get this certificate; live connections keep theirs';
const FAILED = 'policy reload failed; the running policy is unchanged';

interface Cert {
  certPath: string;
  keyPath: string;
  pem: string;
  fingerprint256: string;
}

/** A self-signed certificate for 127.0.0.1 (openssl, P-256). */
async function makeCert(dir: string, name: string): Promise<Cert> {
  const certPath = join(dir, `${name}.crt`);
  const keyPath = join(dir, `${name}.key`);
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyPath, '-out', certPath,
    '-days', '2', '-subj', `/CN=egw-cert-${name}`, '-addext', 'subjectAltName=IP:127.0.0.1',
  ]);
  const pem = await readFile(certPath, 'utf8');
  return { certPath, keyPath, pem, fingerprint256: new X509Certificate(pem).fingerprint256 };
}

function policy(tls: { cert: string; key: string }, flowLog: string): string {
  return `mode: enforce
listen: { https: "127.0.0.1:0" }
tls: { cert: ${JSON.stringify(tls.cert)}, key: ${JSON.stringify(tls.key)} }
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: ${JSON.stringify(flowLog)} }
`;
}

describe.skipIf(!skipNotice(hasOpenssl(), 'https-certificate-reload', 'needs openssl to make the test certificates'))('HTTPS listener: the certificate follows reloads', () => {
  let dir: string;
  let a: Cert;
  let b: Cert;
  let echo: Server;
  let echoPort = 0;
  let served: Served | null = null;
  const sockets: TLSSocket[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-https-cert-reload-'));
    [a, b] = await Promise.all([makeCert(dir, 'a'), makeCert(dir, 'b')]);
    echo = createServer((c) => {
      c.on('error', () => undefined);
      c.pipe(c);
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    echoPort = (echo.address() as { port: number }).port;
  }, 60_000);

  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    await killIfRunning(served?.child ?? null);
    served = null;
  });

  afterAll(async () => {
    await new Promise<void>((r) => (echo ? echo.close(() => r()) : r()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** A TLS connection to the HTTPS listener that trusts `ca` only; resolves once the handshake is done. */
  async function handshake(ca: string): Promise<TLSSocket> {
    const where = served?.https as string;
    const s = tlsConnect({ host: '127.0.0.1', port: Number(where.slice(where.lastIndexOf(':') + 1)), ca, rejectUnauthorized: false });
    sockets.push(s);
    s.on('error', () => undefined);
    await once(s, 'secureConnect');
    return s;
  }

  /** The certificate a new handshake gets: its fingerprint, and whether `ca` (that certificate itself) verifies it. */
  async function served256(ca: Cert): Promise<{ fingerprint256: string; isAuthorized: boolean }> {
    const s = await handshake(ca.pem);
    const seen = { fingerprint256: s.getPeerCertificate().fingerprint256, isAuthorized: s.authorized };
    s.destroy();
    return seen;
  }

  /** Reads from `s` until `text` has come (bounded by the test's timeout). */
  async function readUntil(s: TLSSocket, text: string): Promise<string> {
    let got = '';
    while (!got.includes(text)) {
      const [chunk] = (await once(s, 'data')) as [Buffer];
      got += chunk.toString('latin1');
      if (got.length > 65_536) break;
    }
    return got;
  }

  /** A CONNECT tunnel to the echo server over the HTTPS listener (certificate verified against `ca`). */
  async function tunnel(ca: Cert): Promise<TLSSocket> {
    const s = await handshake(ca.pem);
    expect(s.authorized).toBe(true);
    s.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
    expect(await readUntil(s, '\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    return s;
  }

  async function echoes(s: TLSSocket, text: string): Promise<boolean> {
    s.write(text);
    return (await readUntil(s, text)).includes(text);
  }

  async function sighup(s: Served, msg: string): Promise<Record<string, unknown>> {
    const from = s.stderr().length;
    s.child.kill('SIGHUP');
    await until(`"${msg}" after SIGHUP`, () => loggedLines(s, msg, from).length > 0 || loggedLines(s, FAILED, from).length > 0, 30_000);
    const line = loggedLines(s, msg, from)[0];
    expect(line, s.stderr().slice(from)).toBeDefined();
    return line as Record<string, unknown>;
  }

  it('SIGHUP takes a certificate renewed at the same path; a tunnel made before goes on; a broken key is refused and the old one serves', async () => {
    const tlsDir = join(dir, 'same-path');
    await mkdir(tlsDir, { recursive: true });
    const files = { cert: join(tlsDir, 'cert.pem'), key: join(tlsDir, 'key.pem') };
    await copyFile(a.certPath, files.cert);
    await copyFile(a.keyPath, files.key);
    const config = join(dir, 'same-path.yaml');
    await writeFile(config, policy(files, join(dir, 'same-path-flows.jsonl')));
    served = await spawnServe(config, { env: { EGRESSGATE_CONFIG: undefined, EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    const s = served;

    expect(await served256(a)).toEqual({ fingerprint256: a.fingerprint256, isAuthorized: true });
    const before = await tunnel(a);
    expect(await echoes(before, 'ping-before')).toBe(true);

    // 1. The renewal: B over A's files, the config file unchanged, SIGHUP.
    await copyFile(b.certPath, files.cert);
    await copyFile(b.keyPath, files.key);
    const taken = await sighup(s, TAKEN);
    expect(taken).toMatchObject({ cert: files.cert, subject: 'CN=egw-cert-b', fingerprint256: b.fingerprint256, version: 1 });
    expect(s.stderr()).not.toContain('PRIVATE KEY');
    for (let i = 0; i < 3; i++) expect(await served256(b)).toEqual({ fingerprint256: b.fingerprint256, isAuthorized: true });
    // The tunnel made with A goes on, with A.
    expect(await echoes(before, 'ping-after-renewal')).toBe(true);
    expect(before.getPeerCertificate().fingerprint256).toBe(a.fingerprint256);

    // 2. A broken key file: the reload is refused at tls.key, naming the file; B still serves.
    await writeFile(files.key, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
    const broken = await sighup(s, FAILED);
    expect(broken['errors']).toEqual([{ path: 'tls.key', message: expect.stringContaining(`${files.key} holds no private key`) }]);
    // 3. A's key beside B's certificate: not its key.
    await copyFile(a.keyPath, files.key);
    const mismatched = await sighup(s, FAILED);
    expect(mismatched['errors']).toEqual([{ path: 'tls.key', message: expect.stringContaining(`${files.key} is not the key of the certificate in ${files.cert}`) }]);
    expect(await served256(b)).toEqual({ fingerprint256: b.fingerprint256, isAuthorized: true });
    expect(await echoes(before, 'ping-after-refusal')).toBe(true);
    const metrics = await (await fetch(`http://${s.admin}/metrics`, { headers: auth })).text();
    expect(metrics).toMatch(/gw_config_reload_total\{result="failure"\} 2\b/);
  }, 90_000);

  it('PUT /v1/policy naming other files and a rollback take theirs; a push whose key is not its certificate\'s is 400 at tls.key', async () => {
    const tlsDir = join(dir, 'push');
    await mkdir(tlsDir, { recursive: true });
    const files = { cert: join(tlsDir, 'cert.pem'), key: join(tlsDir, 'key.pem') };
    await copyFile(a.certPath, files.cert);
    await copyFile(a.keyPath, files.key);
    const flowLog = join(dir, 'push-flows.jsonl');
    const config = join(dir, 'push.yaml');
    await writeFile(config, policy(files, flowLog));
    served = await spawnServe(config, { env: { EGRESSGATE_CONFIG: undefined, EGRESSGATE_ADMIN_TOKEN: TOKEN } });
    const s = served;
    const put = (body: string): Promise<Response> =>
      fetch(`http://${s.admin}/v1/policy`, { method: 'PUT', headers: { ...auth, 'content-type': 'text/yaml' }, body });
    expect(await served256(a)).toEqual({ fingerprint256: a.fingerprint256, isAuthorized: true });

    // 1. New paths: B's own files.
    let from = s.stderr().length;
    const toB = await put(policy({ cert: b.certPath, key: b.keyPath }, flowLog));
    expect(toB.status).toBe(200);
    expect(loggedLines(s, TAKEN, from)).toMatchObject([{ cert: b.certPath, fingerprint256: b.fingerprint256, version: 2 }]);
    expect(await served256(b)).toEqual({ fingerprint256: b.fingerprint256, isAuthorized: true });

    // 2. B's certificate with A's key: refused at tls.key, version 2 and B stay.
    const mixed = await put(policy({ cert: b.certPath, key: a.keyPath }, flowLog));
    expect(mixed.status).toBe(400);
    const refusal = (await mixed.json()) as { error: string; details: Array<{ path: string; message: string }> };
    expect(refusal.details).toEqual([{ path: 'tls.key', message: expect.stringContaining(`${a.keyPath} is not the key of the certificate in ${b.certPath}`) }]);
    expect(((await (await fetch(`http://${s.admin}/v1/policy`, { headers: auth })).json()) as { version: number }).version).toBe(2);
    expect(await served256(b)).toEqual({ fingerprint256: b.fingerprint256, isAuthorized: true });

    // 3. A rollback to version 1 reads its files (A's, at the first paths) again.
    from = s.stderr().length;
    const back = await fetch(`http://${s.admin}/v1/policy/rollback/1`, { method: 'POST', headers: auth });
    expect(back.status).toBe(200);
    expect(loggedLines(s, TAKEN, from)).toMatchObject([{ cert: files.cert, fingerprint256: a.fingerprint256, version: 3 }]);
    expect(await served256(a)).toEqual({ fingerprint256: a.fingerprint256, isAuthorized: true });
    // tls on or off still waits for a restart, as before.
    expect(loggedLines(s, 'these settings apply at the next restart; the running gateway keeps its listeners, logs and state where they are', 0)).toEqual([]);
  }, 90_000);

  it('requestClientCert: a client CA replaced in place is the one new handshakes believe', async () => {
    // pki.ca issued the server's certificate and alice's; pki's other CA issued the second alice.
    const pki: TestPki = await createTestPki({ alice: { cn: 'alice' } }, { untrustedClient: { cn: 'alice' } });
    try {
      const caFile = join(dir, 'client-ca.pem');
      await copyFile(pki.ca.certPath, caFile);
      const config = join(dir, 'client-ca.yaml');
      await writeFile(
        config,
        `mode: enforce
listen: { https: "127.0.0.1:0" }
tls: { cert: ${JSON.stringify(pki.server.certPath)}, key: ${JSON.stringify(pki.server.keyPath)}, ca: ${JSON.stringify(caFile)}, requestClientCert: true }
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
identity: { localAttribution: false, requireAuth: true, users: [ { name: alice, password: "alice-password-0123", roles: [any] } ] }
flowLog: { path: ${JSON.stringify(join(dir, 'client-ca-flows.jsonl'))} }
`,
      );
      served = await spawnServe(config, { env: { EGRESSGATE_CONFIG: undefined, EGRESSGATE_ADMIN_TOKEN: TOKEN } });
      const s = served;
      /** The answer to a CONNECT from a client presenting `client`'s certificate: 200 when it logs in. */
      const connectAs = async (client: { cert: string; key: string }): Promise<string> => {
        const where = s.https as string;
        const c = tlsConnect({ host: '127.0.0.1', port: Number(where.slice(where.lastIndexOf(':') + 1)), ca: pki.ca.cert, cert: client.cert, key: client.key });
        sockets.push(c);
        c.on('error', () => undefined);
        await once(c, 'secureConnect');
        c.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
        const head = await readUntil(c, '\r\n');
        c.destroy();
        return head.slice(0, 12);
      };
      const first = pki.clients['alice'] as { cert: string; key: string };
      const second = pki.untrustedClient as { cert: string; key: string };
      expect([await connectAs(first), await connectAs(second)]).toEqual(['HTTP/1.1 200', 'HTTP/1.1 407']);
      await copyFile(join(pki.dir, 'other-ca.crt'), caFile);
      expect(await sighup(s, TAKEN)).toMatchObject({ ca: caFile, requestClientCert: true, fingerprint256: new X509Certificate(pki.server.cert).fingerprint256 });
      expect([await connectAs(first), await connectAs(second)]).toEqual(['HTTP/1.1 407', 'HTTP/1.1 200']);
    } finally {
      await pki.cleanup();
    }
  }, 90_000);

  it('check refuses a key that is not the certificate\'s, at tls.key', async () => {
    const config = join(dir, 'check.yaml');
    await writeFile(config, policy({ cert: b.certPath, key: a.keyPath }, '-'));
    const r = await run(process.execPath, [CLI, 'check', '--config', config], { cwd: ROOT, timeout: 50_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code?: number; stderr?: string }) => ({ code: err.code ?? -1, stderr: err.stderr ?? '' }),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`tls.key: ${a.keyPath} is not the key of the certificate in ${b.certPath}`);
  }, 60_000);
});
