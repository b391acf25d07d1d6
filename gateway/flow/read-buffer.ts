/**
 * Read a socket into one buffer of our own instead of a fresh allocation per read.
 *
 * By default node allocates a new ArrayBuffer (malloc, 64 KiB) for every read of a socket and
 * frees it at the next GC. On a bulk tunnel that is ~16,000 allocations per GB: page faults on
 * fresh heap pages, malloc trimming and GC work, measured at more than half of the gateway's CPU
 * per GB (docs/benchmarks.md, "Tunnel throughput"). Node's `onread` socket option reads into a
 * caller-owned buffer instead, but it exists only for sockets we construct, and a tunnel's client
 * socket was accepted by node:http or net.Server. So this module turns it on for an existing TCP
 * socket, with the same fields node's own `onread` option sets (found by their symbol
 * descriptions once, at load). Where they cannot be found (another runtime, a TLS socket, a
 * socket without a TCP handle) `adoptReadBuffer` answers 'never' and the caller keeps reading
 * 'data' events: slower, never wrong. The buffer is allocated only once a switch is certain.
 *
 * The contract for a caller: `onRead(n, buf)` gets the bytes in `buf[0, n)`. They must be consumed
 * (written on) before returning, and if the write could not complete at once (the peer's
 * `writableLength > 0`), return false: reading stops (node's readStop) until `socket.resume()`,
 * so the buffer is not overwritten while the kernel still has to take it. End of stream, errors
 * and 'close' are reported as usual.
 */
import { Socket } from 'node:net';

type ReadCallback = (nread: number, buf: Buffer) => boolean;

interface ReadSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

/**
 * Bytes per read buffer. Node reads 64 KiB at a time; twice that halves the read/write system calls
 * per GB on a fast path (loopback: 20–30 % less gateway CPU per GB than 64 KiB, noisy 2-core box).
 * Only bulk directions get one, and only the pages a read actually filled become resident.
 */
export const READ_BUFFER_BYTES = 128 * 1024;

const symbols: ReadSymbols | null = findSymbols();
let isEnabled = symbols !== null && process.env.EGRESSGATE_READ_BUFFERS !== 'off';

function findSymbols(): ReadSymbols | null {
  try {
    // `onread` is a documented net.connect() option that @types/node lists only there.
    const options = { onread: { buffer: Buffer.alloc(1), callback: () => true } } as ConstructorParameters<typeof Socket>[0];
    const probe = new Socket(options);
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]));
    const buffer = byName.get('kBuffer');
    const callback = byName.get('kBufferCb');
    const generator = byName.get('kBufferGen');
    probe.destroy();
    if (!buffer || !callback || !generator) return null;
    return { buffer, callback, generator };
  } catch {
    return null;
  }
}

interface UserBufferHandle {
  useUserBuffer?: (buf: Buffer) => void;
  constructor?: { name?: string };
}

/** Whether sockets can be switched at all in this runtime (and not turned off for a comparison). */
export function readBuffersAvailable(): boolean {
  return isEnabled;
}

/** Turn the mechanism off or on (benchmarks compare both in one process; tests cover both paths). */
export function setReadBuffersEnabled(on: boolean): void {
  isEnabled = on && symbols !== null;
}

/**
 * What a switch attempt came to: 'adopted'; 'not-now' (bytes are still buffered in the socket's
 * readable side and would be delivered after newer ones: try again later); 'never' (this socket
 * cannot switch, or already did: stop trying).
 */
export type AdoptResult = 'adopted' | 'not-now' | 'never';

/**
 * Make `socket` read into a buffer of `bytes` of its own and hand each read to `onRead` instead
 * of emitting 'data'. One-way: a switched socket stays switched.
 */
export function adoptReadBuffer(socket: Socket, onRead: ReadCallback, bytes: number = READ_BUFFER_BYTES): AdoptResult {
  return switchReads(socket, onRead, bytes, null);
}

/**
 * Like adoptReadBuffer, but after every read `next()` names the buffer the following read goes to
 * (node's `onread` buffer function): the same one again when the bytes were consumed, else another.
 * For a socket whose reader is not ours (an origin socket undici parses: http-origin-reads.ts).
 */
export function adoptReadBuffers(socket: Socket, onRead: ReadCallback, bytes: number, next: () => Buffer): AdoptResult {
  return switchReads(socket, onRead, bytes, next);
}

function switchReads(socket: Socket, onRead: ReadCallback, bytes: number, next: (() => Buffer) | null): AdoptResult {
  if (!isEnabled || symbols === null || socket.destroyed) return 'never';
  const handle = (socket as unknown as { _handle?: UserBufferHandle | null })._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || handle.constructor?.name !== 'TCP') return 'never';
  const fields = socket as unknown as Record<symbol, unknown>;
  if (fields[symbols.buffer]) return 'never'; // already switched
  if (socket.readableLength !== 0) return 'not-now';
  const buf = Buffer.allocUnsafeSlow(bytes);
  fields[symbols.generator] = next;
  fields[symbols.callback] = onRead;
  fields[symbols.buffer] = buf;
  handle.useUserBuffer(buf);
  return 'adopted';
}
