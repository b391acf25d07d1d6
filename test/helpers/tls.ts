/**
 * A throw-away PKI for TLS tests, made at test time with the `openssl` command line (Debian
 * package `openssl`): a CA, a server certificate for 127.0.0.1/localhost, client certificates with
 * the subjects a test asks for, and optionally a second, untrusted CA with its own client.
 * Keys are P-256 (fast to generate); everything lives in one temp directory removed by `cleanup()`.
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CertFiles {
  readonly certPath: string;
  readonly keyPath: string;
  readonly cert: string;
  readonly key: string;
}

export interface ClientSpec {
  /** Subject CN; omit for a certificate that carries its name only in subjectAltName. */
  cn?: string;
  /** subjectAltName value, e.g. `DNS:build-farm` or `URI:spiffe://corp/app`. */
  san?: string;
}

export interface TestPki {
  readonly dir: string;
  readonly ca: CertFiles;
  readonly server: CertFiles;
  readonly clients: Readonly<Record<string, CertFiles>>;
  /** A client certificate signed by a CA the server does not trust (when asked for). */
  readonly untrustedClient: CertFiles | null;
  cleanup(): Promise<void>;
}

/** True when an `openssl` binary is on PATH (tests skip with a reason otherwise). */
export function hasOpenssl(): boolean {
  return spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function makeCa(dir: string, name: string): Promise<CertFiles> {
  const keyPath = join(dir, `${name}.key`);
  const certPath = join(dir, `${name}.crt`);
  await run('openssl', [
    'req', '-x509', ...EC, '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=egressgate test ${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { keyPath, certPath, key: await readFile(keyPath, 'utf8'), cert: await readFile(certPath, 'utf8') };
}

async function makeLeaf(dir: string, ca: CertFiles, name: string, subject: string, ext: string[]): Promise<CertFiles> {
  const keyPath = join(dir, `${name}.key`);
  const csrPath = join(dir, `${name}.csr`);
  const certPath = join(dir, `${name}.crt`);
  const extPath = join(dir, `${name}.ext`);
  await writeFile(extPath, `${ext.join('\n')}\n`);
  await run('openssl', ['req', '-new', ...EC, '-keyout', keyPath, '-out', csrPath, '-subj', subject]);
  await run('openssl', [
    'x509', '-req', '-in', csrPath, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-set_serial', `0x${randomBytes(8).toString('hex')}`,
    '-days', '2', '-out', certPath, '-extfile', extPath,
  ]);
  return { keyPath, certPath, key: await readFile(keyPath, 'utf8'), cert: await readFile(certPath, 'utf8') };
}

function clientExt(spec: ClientSpec): string[] {
  const ext = ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth'];
  if (spec.san) ext.push(`subjectAltName=${spec.san}`);
  return ext;
}

/** Generates the PKI; `clients` maps a label to the subject of that client's certificate. */
export async function createTestPki(clients: Record<string, ClientSpec>, opts: { untrustedClient?: ClientSpec } = {}): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'egressgate-pki-'));
  try {
    const ca = await makeCa(dir, 'ca');
    const server = await makeLeaf(dir, ca, 'server', '/CN=localhost', [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ]);
    const made: Record<string, CertFiles> = {};
    for (const [label, spec] of Object.entries(clients)) {
      const subject = spec.cn ? `/CN=${spec.cn}` : '/O=egressgate-test';
      made[label] = await makeLeaf(dir, ca, `client-${label}`, subject, clientExt(spec));
    }
    let untrusted: CertFiles | null = null;
    if (opts.untrustedClient) {
      const other = await makeCa(dir, 'other-ca');
      const spec = opts.untrustedClient;
      untrusted = await makeLeaf(dir, other, 'client-untrusted', spec.cn ? `/CN=${spec.cn}` : '/O=egressgate-test', clientExt(spec));
    }
    return { dir, ca, server, clients: made, untrustedClient: untrusted, cleanup: () => rm(dir, { recursive: true, force: true }) };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
