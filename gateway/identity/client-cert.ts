/**
 * The identity a verified TLS client certificate carries (as smokescreen derives its role from the
 * certificate CN). Listeners with a TLS socket call `certSubjectOf` and pass the result as
 * `IdentityClaims.certSubject`; the resolver maps it to a user, else a host.
 */
import type { PeerCertificate, TLSSocket } from 'node:tls';

const NAME_RE = /^[\x21-\x7e]{1,256}$/;

/**
 * Subject name of a certificate: the CN, else the first DNS, email or URI subjectAltName.
 * Null when there is none usable (multi-valued CNs are ambiguous and refused).
 */
export function subjectName(cert: Pick<PeerCertificate, 'subject' | 'subjectaltname'> | null | undefined): string | null {
  if (!cert) return null;
  const cn: unknown = cert.subject?.CN;
  if (typeof cn === 'string' && NAME_RE.test(cn)) return cn;
  const san = cert.subjectaltname;
  if (typeof san === 'string') {
    for (const part of san.split(', ')) {
      const m = /^(DNS|email|URI):(.+)$/.exec(part);
      if (m && NAME_RE.test(m[2]!)) return m[2]!;
    }
  }
  return null;
}

/**
 * The client certificate's subject when the TLS handshake verified it against the configured CA
 * (`socket.authorized`), else null: an unverified certificate proves nothing.
 */
export function certSubjectOf(socket: TLSSocket): string | null {
  if (!socket.authorized) return null;
  const cert = socket.getPeerCertificate(false);
  // getPeerCertificate returns {} when the client sent no certificate.
  if (!cert || Object.keys(cert).length === 0) return null;
  return subjectName(cert);
}
