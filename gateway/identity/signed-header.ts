/**
 * Signed identity tokens for sidecars (`identity.headers.signed: {header, secret, maxAgeSec}`).
 *
 * Token = base64url(JSON{user?, host?, exp}) + "." + base64url(HMAC-SHA256(secret, first part)),
 * `exp` in seconds since the epoch (as in JWT). Unlike the plain trusted headers, a token is
 * accepted from any source address: the signature is the proof. It must not be expired, and its
 * `exp` may lie at most `maxAgeSec` ahead, so a leaked token is useful only briefly and a sidecar
 * cannot mint long-lived ones. The MAC is compared in constant time over equal-length buffers.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export interface SignedIdentity {
  readonly user: string | null;
  readonly host: string | null;
  /** Expiry, seconds since the epoch. */
  readonly exp: number;
}

export type SignedTokenResult =
  | ({ readonly ok: true } & SignedIdentity)
  | { readonly ok: false; readonly reason: 'malformed' | 'bad-signature' | 'expired' | 'too-long-lived' };

/** Longest token accepted (a user and a host name of 256 characters each fit easily). */
export const MAX_TOKEN_CHARS = 4096;
const MAX_NAME_CHARS = 256;
const B64URL = /^[A-Za-z0-9_-]+$/;
const NAME_RE = /^[\x21-\x7e]+$/;

function mac(secret: string | Buffer, payload: string): Buffer {
  return createHmac('sha256', secret).update(payload).digest();
}

/** Mints a token (used by sidecars written in TypeScript, and by tests). */
export function signIdentityToken(claims: { user?: string; host?: string; exp: number }, secret: string | Buffer): string {
  const payload = Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${payload}.${mac(secret, payload).toString('base64url')}`;
}

function name(v: unknown): string | null | undefined {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_NAME_CHARS || !NAME_RE.test(v)) return undefined;
  return v;
}

/**
 * Verifies a token at `nowMs`: signature first (constant time), then the payload, then the expiry
 * window `nowSec < exp ≤ nowSec + maxAgeSec`.
 */
export function verifyIdentityToken(token: string, secret: string | Buffer, nowMs: number, maxAgeSec: number): SignedTokenResult {
  if (token.length > MAX_TOKEN_CHARS) return { ok: false, reason: 'malformed' };
  const dot = token.indexOf('.');
  if (dot <= 0 || dot !== token.lastIndexOf('.')) return { ok: false, reason: 'malformed' };
  const payload = token.slice(0, dot);
  const sigText = token.slice(dot + 1);
  if (!B64URL.test(payload) || !B64URL.test(sigText)) return { ok: false, reason: 'malformed' };
  const given = Buffer.from(sigText, 'base64url');
  const expected = mac(secret, payload);
  // Length is public (always 32 for SHA-256); only equal lengths reach timingSafeEqual.
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad-signature' };
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return { ok: false, reason: 'malformed' };
  const o = body as Record<string, unknown>;
  const user = name(o['user']);
  const host = name(o['host']);
  const exp = o['exp'];
  if (user === undefined || host === undefined || typeof exp !== 'number' || !Number.isFinite(exp)) return { ok: false, reason: 'malformed' };
  if (user === null && host === null) return { ok: false, reason: 'malformed' };
  const nowSec = nowMs / 1000;
  if (exp <= nowSec) return { ok: false, reason: 'expired' };
  if (exp > nowSec + maxAgeSec) return { ok: false, reason: 'too-long-lived' };
  return { ok: true, user, host, exp };
}
