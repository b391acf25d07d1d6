/**
 * scrypt password hashes for `identity.users[].passwordHash` (written by `egressgate hash-password`).
 *
 * Format (one line, `$`-separated, no spaces):
 *
 *     scrypt$N$r$p$saltB64$hashB64        e.g. scrypt$16384$8$1$q2Vx…$3bL0…
 *
 * - `N` cost (a power of two, written in decimal), `r` block size, `p` parallelism — the parameters
 *   of RFC 7914, passed to `crypto.scrypt` as they are;
 * - `saltB64` / `hashB64`: standard base64 (RFC 4648 §4), padding optional; salt 8–64 bytes, derived
 *   key 16–64 bytes.
 *
 * Defaults: N=16384 (2^14), r=8, p=1, 16-byte random salt, 32-byte key — the scrypt paper's
 * "interactive login" setting: about 16 MiB and tens of milliseconds per check. Larger costs are
 * accepted up to 128·N·r ≤ 256 MiB so a hand-made hash cannot make every proxy login allocate
 * gigabytes. The check runs on the libuv pool (async `crypto.scrypt`) and the resolver caches
 * its result, so keep-alive and many connections do not pay it each time.
 */
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

export interface ScryptParams {
  readonly N: number;
  readonly r: number;
  readonly p: number;
}

export interface ParsedPasswordHash extends ScryptParams {
  readonly salt: Buffer;
  readonly hash: Buffer;
}

export const DEFAULT_SCRYPT_PARAMS: ScryptParams = Object.freeze({ N: 16_384, r: 8, p: 1 });
const SALT_BYTES = 16;
const KEY_BYTES = 32;
/** Upper bound on scrypt memory (128·N·r bytes) accepted from a config file. */
const MAX_SCRYPT_MEMORY = 256 * 1024 * 1024;

const B64 = /^[A-Za-z0-9+/]+={0,2}$/;

function decodeB64(text: string): Buffer | null {
  if (!B64.test(text)) return null;
  const buf = Buffer.from(text, 'base64');
  // Re-encoding catches non-canonical input (stray bits, wrong padding) that Buffer.from accepts.
  if (buf.toString('base64').replace(/=+$/, '') !== text.replace(/=+$/, '')) return null;
  return buf;
}

function paramError(N: number, r: number, p: number): string | null {
  if (!Number.isSafeInteger(N) || N < 2 || (N & (N - 1)) !== 0) return 'N must be a power of two ≥ 2';
  if (!Number.isSafeInteger(r) || r < 1 || r > 64) return 'r must be an integer 1–64';
  if (!Number.isSafeInteger(p) || p < 1 || p > 16) return 'p must be an integer 1–16';
  if (128 * N * r > MAX_SCRYPT_MEMORY) return 'scrypt memory 128·N·r exceeds 256 MiB';
  return null;
}

function decimal(text: string): number {
  return /^[1-9]\d{0,9}$/.test(text) ? Number(text) : Number.NaN;
}

/** Parses `scrypt$N$r$p$salt$hash`; returns an error message naming what is wrong otherwise. */
export function parsePasswordHash(text: string): ParsedPasswordHash | { error: string } {
  if (typeof text !== 'string') return { error: 'passwordHash must be a string' };
  const parts = text.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') {
    return { error: 'passwordHash must look like scrypt$N$r$p$saltB64$hashB64 (see `egressgate hash-password`)' };
  }
  const [, nText, rText, pText, saltText, hashText] = parts as [string, string, string, string, string, string];
  const N = decimal(nText);
  const r = decimal(rText);
  const p = decimal(pText);
  const bad = paramError(N, r, p);
  if (bad !== null) return { error: `passwordHash: ${bad}` };
  const salt = decodeB64(saltText);
  if (salt === null || salt.length < 8 || salt.length > 64) return { error: 'passwordHash: salt must be 8–64 bytes of base64' };
  const hash = decodeB64(hashText);
  if (hash === null || hash.length < 16 || hash.length > 64) return { error: 'passwordHash: hash must be 16–64 bytes of base64' };
  return { N, r, p, salt, hash };
}

function derive(password: string, salt: Buffer, keyLen: number, params: ScryptParams): Promise<Buffer> {
  // maxmem must cover 128·N·r plus scrypt's small per-p overhead, else Node refuses valid params.
  const maxmem = 128 * params.N * params.r + 128 * params.r * params.p + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scrypt(password, salt, keyLen, { N: params.N, r: params.r, p: params.p, maxmem }, (err, key) => {
      if (err) reject(err);
      else resolve(key);
    });
  });
}

/** Hashes a password into the `scrypt$N$r$p$salt$hash` form (async, off the event loop). */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT_PARAMS): Promise<string> {
  const bad = paramError(params.N, params.r, params.p);
  if (bad !== null) throw new RangeError(bad);
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(password, salt, KEY_BYTES, params);
  const b64 = (b: Buffer): string => b.toString('base64').replace(/=+$/, '');
  return `scrypt$${params.N}$${params.r}$${params.p}$${b64(salt)}$${b64(key)}`;
}

/**
 * True when `password` matches a parsed hash. The derived key has the stored key's length, so the
 * comparison is a constant-time `timingSafeEqual` over equal-length buffers.
 */
export async function verifyParsedHash(password: string, parsed: ParsedPasswordHash): Promise<boolean> {
  const key = await derive(password, parsed.salt, parsed.hash.length, parsed);
  return timingSafeEqual(key, parsed.hash);
}

/** True when `password` matches `encoded`; false for a mismatch and for a malformed hash. */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parsePasswordHash(encoded);
  if ('error' in parsed) return false;
  return verifyParsedHash(password, parsed);
}
