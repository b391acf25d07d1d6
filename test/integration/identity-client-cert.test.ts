/**
 * Real mutual TLS: a tls server with requestCert, real tls clients presenting certificates made by
 * openssl, and the identity code turning the verified subject into identity.user / identity.host.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { connect, createServer, type Server, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certSubjectOf } from '../../gateway/identity/client-cert.ts';
import { createIdentityResolver } from '../../gateway/identity/identity-resolver.ts';
import { compilePolicy } from '../../policy/compile.ts';
import { defaultConfig } from '../../policy/config.ts';
import type { PolicySnapshot } from '../../policy/types.ts';
import { type CertFiles, createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';
import { skipNotice } from '../helpers/skip-notice.ts';

const haveOpenssl = hasOpenssl();

describe.skipIf(!skipNotice(haveOpenssl, 'identity-client-cert', 'needs the openssl command'))('client certificate identity over real TLS', () => {
  let pki: TestPki;
  let server: Server;
  let port = 0;
  const sockets = new Set<TLSSocket>();

  beforeAll(async () => {
    pki = await createTestPki(
      {
        alice: { cn: 'alice', san: 'DNS:alice.clients.test' },
        farm: { san: 'DNS:build-farm' },
        stranger: { cn: 'stranger' },
      },
      { untrustedClient: { cn: 'alice' } },
    );
    const cfg = defaultConfig();
    cfg.identity.requireAuth = true;
    cfg.identity.users = [{ name: 'alice', password: 'unused', roles: ['developer'] }];
    cfg.identity.hosts = [{ cidr: '10.1.0.0/16', name: 'build-farm', roles: ['ci'] }];
    cfg.defaultRoles = ['guest'];
    cfg.roles = { developer: { allow: [] }, ci: { allow: [] }, guest: { allow: [] } };
    const snapshot: PolicySnapshot = compilePolicy(cfg);
    const resolver = createIdentityResolver();

    // rejectUnauthorized: false lets the handshake finish without a (valid) certificate so the
    // identity code, not the TLS layer, decides — as an HTTPS proxy listener with optional mTLS does.
    server = createServer({ key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert, requestCert: true, rejectUnauthorized: false }, (socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {});
      const certSubject = certSubjectOf(socket);
      void resolver
        .resolve({ clientIp: socket.remoteAddress ?? '', clientPort: socket.remotePort ?? 0, certSubject }, snapshot)
        .then((result) => socket.end(JSON.stringify({ certSubject, authorized: socket.authorized, result })));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  }, 60_000);

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    if (server?.listening) {
      server.close();
      await once(server, 'close');
    }
    await pki?.cleanup();
  });

  /** Connects with an optional client certificate and returns the server's JSON answer. */
  async function ask(client: CertFiles | null): Promise<{ certSubject: string | null; authorized: boolean; result: unknown }> {
    const socket = connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca: pki.ca.cert,
      ...(client ? { cert: client.cert, key: client.key } : {}),
    });
    let body = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      body += d;
    });
    try {
      await once(socket, 'end');
    } finally {
      socket.destroy();
    }
    return JSON.parse(body);
  }

  it('CN of a configured user → identity.user with the user roles', async () => {
    const r = await ask(pki.clients['alice']!);
    expect(r.authorized).toBe(true);
    expect(r.certSubject).toBe('alice');
    expect(r.result).toEqual({ ok: true, identity: { user: 'alice', host: null, roles: ['developer'], process: null }, hostFromInventory: true });
  });

  it('SAN-only certificate naming a configured host → identity.host', async () => {
    const r = await ask(pki.clients['farm']!);
    expect(r.certSubject).toBe('build-farm');
    expect(r.result).toEqual({ ok: true, identity: { user: null, host: 'build-farm', roles: ['ci'], process: null }, hostFromInventory: false });
  });

  it('CN of no configured user or host → user by that name, default roles', async () => {
    const r = await ask(pki.clients['stranger']!);
    expect(r.result).toEqual({ ok: true, identity: { user: 'stranger', host: null, roles: ['guest'], process: null }, hostFromInventory: true });
  });

  it('no client certificate → no subject → auth-required', async () => {
    const r = await ask(null);
    expect(r.authorized).toBe(false);
    expect(r.certSubject).toBeNull();
    expect(r.result).toEqual({ ok: false, reason: 'auth-required' });
  });

  it('certificate from an untrusted CA claiming CN=alice is not believed', async () => {
    const r = await ask(pki.untrustedClient!);
    expect(r.authorized).toBe(false);
    expect(r.certSubject).toBeNull();
    expect(r.result).toEqual({ ok: false, reason: 'auth-required' });
  });
});
