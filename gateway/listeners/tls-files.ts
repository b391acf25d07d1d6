/**
 * The files `tls` names (cert, key, ca), read and checked as one: the same function at `serve`'s
 * start, on every reload, push or rollback of a gateway with an HTTPS listener, and in `check`. A
 * file that cannot be read, holds no certificate or key, or a key that is not the certificate's, is
 * an error at its config path (`tls.key: /etc/egw/key.pem is not the key of …`), never node's bare
 * OpenSSL message at handshake time.
 *
 * TlsListenerFiles holds what the listener serves and hands new handshakes a new secure context
 * (`tls.Server#setSecureContext`) when a reload brings different files; connections already made
 * keep the context they were made with.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext, type Server as TlsServer } from 'node:tls';
import type { Config } from '../../policy/config.ts';
import type { ConfigError } from '../../policy/load-config.ts';

export type TlsSettings = NonNullable<Config['tls']>;

/** What a certificate is known by in the log: never anything of the key. */
export interface CertificateSummary {
  readonly subject: string;
  readonly issuer: string;
  readonly validTo: string;
  readonly fingerprint256: string;
}

/** The files' contents, checked: what a TLS listener is made with. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
  readonly requestCert: boolean;
  readonly certificate: CertificateSummary;
}

export type TlsFilesResult = { ok: true; material: TlsMaterial } | { ok: false; errors: ConfigError[] };

/** A file's bytes, or the error naming its path (read side by side, reported in path order). */
async function readPart(path: string, at: string): Promise<Buffer | ConfigError> {
  try {
    return await readFile(path);
  } catch (err) {
    return { path: at, message: `cannot read ${path}: ${(err as Error).message}` };
  }
}

/** The bytes of `part`, or undefined with its error added to `errors`. */
function bytesOf(part: Buffer | ConfigError | undefined, errors: ConfigError[]): Buffer | undefined {
  if (part === undefined || Buffer.isBuffer(part)) return part;
  errors.push(part);
  return undefined;
}

/** node's OpenSSL message without its `error:0480006C:PEM routines::` prefix. */
function reason(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/^error:[0-9A-F]+:[^:]*::?/i, '');
}

function summarize(x509: X509Certificate): CertificateSummary {
  return { subject: x509.subject.replaceAll('\n', ', '), issuer: x509.issuer.replaceAll('\n', ', '), validTo: x509.validTo, fingerprint256: x509.fingerprint256 };
}

/**
 * Read `tls`'s files and check them: a certificate in `cert`, a private key in `key` that is the
 * certificate's, certificates in `ca`, and the three accepted by OpenSSL together. Every error
 * names its config path and the file.
 */
export async function readTlsFiles(tls: TlsSettings): Promise<TlsFilesResult> {
  const errors: ConfigError[] = [];
  const parts = await Promise.all([readPart(tls.cert, 'tls.cert'), readPart(tls.key, 'tls.key'), tls.ca ? readPart(tls.ca, 'tls.ca') : undefined]);
  const cert = bytesOf(parts[0], errors);
  const key = bytesOf(parts[1], errors);
  const ca = bytesOf(parts[2], errors);
  let x509: X509Certificate | null = null;
  if (cert) {
    try {
      x509 = new X509Certificate(cert);
    } catch (err) {
      errors.push({ path: 'tls.cert', message: `${tls.cert} holds no certificate (PEM or DER): ${reason(err)}` });
    }
  }
  let privateKey: KeyObject | null = null;
  if (key) {
    try {
      privateKey = createPrivateKey(key);
    } catch (err) {
      errors.push({ path: 'tls.key', message: `${tls.key} holds no private key (PEM or DER, unencrypted): ${reason(err)}` });
    }
  }
  if (x509 && privateKey && !x509.checkPrivateKey(privateKey)) {
    errors.push({ path: 'tls.key', message: `${tls.key} is not the key of the certificate in ${tls.cert} (${x509.subject.replaceAll('\n', ', ')}): their public keys differ` });
  }
  if (ca && tls.ca) {
    // OpenSSL skips what is not a certificate in a CA bundle: a file of none would believe no client.
    try {
      new X509Certificate(ca);
    } catch (err) {
      errors.push({ path: 'tls.ca', message: `${tls.ca} holds no CA certificate (PEM or DER): ${reason(err)}` });
    }
  }
  if (errors.length > 0 || !cert || !key || !x509) return { ok: false, errors };
  // What the listener will make of them (a chain, a key type OpenSSL refuses for TLS).
  try {
    createSecureContext({ cert, key, ca });
  } catch (err) {
    return { ok: false, errors: [{ path: 'tls', message: `${tls.cert} and ${tls.key} make no TLS context: ${reason(err)}` }] };
  }
  return { ok: true, material: { cert, key, ca, requestCert: tls.requestClientCert ?? false, certificate: summarize(x509) } };
}

/** Whether two materials would serve alike (the same bytes, the same client certificate request). */
function isSame(a: TlsMaterial, b: TlsMaterial): boolean {
  const sameCa = a.ca === undefined || b.ca === undefined ? a.ca === b.ca : a.ca.equals(b.ca);
  return sameCa && a.requestCert === b.requestCert && a.cert.equals(b.cert) && a.key.equals(b.key);
}

/** The TLS listener's files as it serves them, and the switch to new ones. */
export class TlsListenerFiles {
  constructor(
    private readonly server: TlsServer,
    private serving: TlsMaterial,
  ) {}

  /** The certificate new handshakes get. */
  get certificate(): CertificateSummary {
    return this.serving.certificate;
  }

  /**
   * Serve `next` to new handshakes (checked by readTlsFiles); live connections keep theirs.
   * False when it is what is served already (nothing is replaced: a SIGHUP for log rotation keeps
   * the TLS session tickets valid).
   */
  take(next: TlsMaterial): boolean {
    if (isSame(this.serving, next)) return false;
    this.server.setSecureContext({ cert: next.cert, key: next.key, ...(next.ca ? { ca: next.ca } : {}) });
    // node reads it per connection (tlsConnectionListener); its types do not declare it.
    (this.server as TlsServer & { requestCert: boolean }).requestCert = next.requestCert;
    this.serving = next;
    return true;
  }
}
