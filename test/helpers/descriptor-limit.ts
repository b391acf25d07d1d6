/**
 * A `serve` process under a low descriptor limit (`ulimit -n`), filled with held SOCKS5 greetings:
 * what the descriptor-exhaustion tests share. Low enough to fill in about a second, enough for node
 * to start.
 */
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { readBytes } from '../integration/socks5-harness.ts';
import { loopbackServeConfig, type Served, spawnServe } from './serve-process.ts';

export const NOFILE = 256;

/** spawnServe's `wrap`: the process runs under `ulimit -n NOFILE`. */
export function underNofileLimit(argv: string[]): string[] {
  return ['sh', '-c', `ulimit -n ${NOFILE} && exec "$@"`, 'sh', ...argv];
}

/**
 * `serve` under the limit, its policy (`dir`/policy.yaml) the loopback one with records to `flowLog`,
 * a long header timeout (held greetings must not be cut), a short drain, and `extra` YAML.
 */
export async function serveUnderLimit(dir: string, flowLog: string, token: string, extra = ''): Promise<Served> {
  const configPath = join(dir, 'policy.yaml');
  await writeFile(configPath, `${loopbackServeConfig(flowLog)}limits: { headerTimeoutMs: 120000, drainGraceMs: 2000 }\n${extra}`);
  return spawnServe(configPath, { env: { EGRESSGATE_ADMIN_TOKEN: token }, wrap: underNofileLimit });
}

/**
 * Descriptor numbers under the limit the serve process has open: the limit bounds the number, and a
 * new one is the lowest free (one inherited from before the limit was set may lie above it).
 */
export function openDescriptors(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => Number(fd) < NOFILE).length;
}

export function socksPort(s: Served): number {
  return Number(s.socks.slice(s.socks.lastIndexOf(':') + 1));
}

/** A connection from `from` that resolves once established; errors are answers here. */
export async function connectFrom(port: number, from = '127.0.0.1'): Promise<Socket> {
  const c = connect({ port, host: '127.0.0.1', localAddress: from });
  c.on('error', () => undefined);
  await once(c, 'connect');
  return c;
}

/**
 * A SOCKS5 greeting the gateway answered: it holds exactly one of the gateway's descriptors (the
 * handshake waits for the request). Null when the connection was closed unanswered (accept failed).
 */
export async function greeted(s: Served): Promise<Socket | null> {
  const c = connect({ port: socksPort(s), host: '127.0.0.1' });
  c.on('error', () => undefined);
  const isOpen = await Promise.race([once(c, 'connect').then(() => true), once(c, 'close').then(() => false)]);
  if (!isOpen) return null;
  c.write(Buffer.from([5, 1, 0]));
  const answer = await Promise.race([readBytes(c, 2), once(c, 'close').then(() => null)]);
  if (answer !== null && answer[0] === 5 && answer[1] === 0) return c;
  c.destroy();
  return null;
}

/** Hold greetings (pushed to `held`) until the process has `upTo` descriptors under the limit open. */
export async function fillDescriptors(s: Served, held: Socket[], upTo: number): Promise<void> {
  const pid = s.child.pid as number;
  for (let i = 0; i < NOFILE && openDescriptors(pid) < upTo; i++) {
    const c = await greeted(s);
    if (c !== null) held.push(c);
  }
}
