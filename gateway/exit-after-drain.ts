/**
 * How `serve` ends its process once a drain is over (SIGTERM: 0; a fatal error: 1) without waiting
 * for DNS lookups the OS resolver still has under way.
 *
 * A lookup (getaddrinfo) holds one of libuv's pool threads until the OS resolver gives up, and no
 * one can cancel it. node's process.exit() joins every pool thread (uv_library_shutdown, from node's
 * exit handler and again as a destructor at exit(3)), so after the drain was done, the records
 * written and the logs closed, the process stayed up for resolv.conf's `timeout` × `attempts` (150 s
 * with `timeout:30 attempts:5`), past any supervisor's stop timeout. Every exit node offers joins
 * them (process.exit, the loop running dry, WASI's proc_exit); execve(2) does not: it ends the other
 * threads, keeps the pid, and the program it runs exits with our code.
 *
 * So, when lookups are under way at the end and process.execve exists (node ≥ 22.15; node 20 has
 * none and keeps waiting, docs/deploy.md says what to set): wait (bounded) for file system work in
 * the pool and stdout/stderr to be done, then replace the process with `node -e
 * process.exitCode=<code>` (node's own binary, which is there wherever the gateway runs; an empty
 * environment, so NODE_OPTIONS loads nothing). Without lookups under way, process.exit as ever.
 */

/** Active resources (process.getActiveResourcesInfo) that are a lookup in the OS resolver. */
const LOOKUPS: ReadonlySet<string> = new Set(['GetAddrInfoReqWrap', 'GetNameInfoReqWrap']);
/** Active resources that are file system work in the pool: waited for, never abandoned. */
const FILE_WORK = /^(FS|FileHandle)/;
/** How long file system work and stdout/stderr get before the exit goes ahead anyway. */
const FILE_WAIT_MS = 2000;
const POLL_MS = 20;

type Execve = (file: string, args?: readonly string[], env?: NodeJS.ProcessEnv) => never;

/** process.execve where node has it (22.15, 23.11 and later; not on Windows). */
function execveOf(p: NodeJS.Process): Execve | null {
  const fn = (p as NodeJS.Process & { execve?: unknown }).execve;
  return typeof fn === 'function' ? (fn.bind(p) as Execve) : null;
}

let exitCode: number | null = null;

function isWritingOut(): boolean {
  return process.stdout.writableLength > 0 || process.stderr.writableLength > 0;
}

function tryExit(startedAt: number): void {
  const code = exitCode ?? 0;
  const active = process.getActiveResourcesInfo();
  const execve = execveOf(process);
  if (execve === null || !active.some((r) => LOOKUPS.has(r))) {
    process.exit(code);
  }
  const isBusy = isWritingOut() || active.some((r) => FILE_WORK.test(r));
  if (isBusy && Date.now() - startedAt < FILE_WAIT_MS) {
    setTimeout(() => tryExit(startedAt), POLL_MS);
    return;
  }
  try {
    execve(process.execPath, [process.execPath, '-e', `process.exitCode = ${code}`], {});
  } catch {
    // Refused (a seccomp filter, the binary gone): the joining exit, late but with its code.
    process.exit(code);
  }
}

/**
 * End the process with `code` once the drain is over. A second call (a fatal error while the first
 * waits for file work) keeps the higher code and the first call's wait.
 */
export function exitAfterDrain(code: number): void {
  const isWaiting = exitCode !== null;
  exitCode = Math.max(exitCode ?? 0, code);
  if (!isWaiting) tryExit(Date.now());
}
