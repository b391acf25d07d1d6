/**
 * What the flow-log integration tests share: a small tmpfs to fill (root only), and flows made with
 * one curl through the proxy, each a GET of /size/N from the http-harness origin (so each flow's
 * record is told apart by its bytesIn, N).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { run } from '../integration/http-harness.ts';

/** Mount a tmpfs of `size` (`64k`, `2m`) at `dir` (made here): '' once mounted, else why not (for skipNotice). */
export function mountTmpfs(dir: string, size: string): string {
  if (process.getuid?.() !== 0) return 'needs root (a tmpfs mount)';
  try {
    mkdirSync(dir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
    return '';
  } catch (err) {
    return `mount -t tmpfs failed: ${(err as Error).message}`;
  }
}

/** GETs of /size/N for each N in `sizes`, one curl, through the HTTP proxy at host:port: their statuses, in order. */
export async function curlSizes(proxy: { host: string; port: number }, originPort: number, sizes: readonly number[]): Promise<number[]> {
  const args = ['-s', '-w', '%{http_code}\n', '-x', `http://${proxy.host}:${proxy.port}`];
  for (const n of sizes) args.push('-o', '/dev/null', `http://127.0.0.1:${originPort}/size/${n}`);
  const r = await run('curl', args);
  return r.stdout.toString('utf8').trim().split('\n').map(Number);
}
