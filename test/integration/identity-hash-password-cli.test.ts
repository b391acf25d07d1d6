/** `egressgate hash-password` as an operator runs it: the real CLI entry, password on stdin. */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { verifyPassword } from '../../gateway/identity/password-hash.ts';
import { CLI } from '../helpers/serve-process.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

function cli(args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [CLI, ...args], { cwd: root, timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(input);
  });
}

describe('egressgate hash-password (CLI)', () => {
  it('prints a hash of the stdin password that verifies', async () => {
    const r = await cli(['hash-password', '--cost', '1024'], 's3cret\n');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^scrypt\$1024\$8\$1\$[^$\s]+\$[^$\s]+\n$/);
    expect(await verifyPassword('s3cret', r.stdout.trim())).toBe(true);
  });

  it('unknown flag → exit 2 with a message', async () => {
    const r = await cli(['hash-password', '--bogus'], '');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Unknown option '--bogus'/);
  });
});
