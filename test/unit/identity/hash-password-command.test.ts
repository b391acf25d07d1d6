import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { run } from '../../../gateway/commands/hash-password.ts';
import { verifyPassword } from '../../../gateway/identity/password-hash.ts';

async function exec(argv: string[], stdin = '') {
  let out = '';
  let err = '';
  const code = await run(argv, {
    stdin: Readable.from([Buffer.from(stdin)]),
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
  });
  return { code, out, err };
}

describe('egressgate hash-password', () => {
  it('hashes the first line of stdin', async () => {
    const r = await exec(['--cost', '1024'], 'hunter2\nsecond line\n');
    expect(r.code).toBe(0);
    const hash = r.out.trim();
    expect(hash).toMatch(/^scrypt\$1024\$8\$1\$/);
    expect(await verifyPassword('hunter2', hash)).toBe(true);
    expect(await verifyPassword('hunter2\n', hash)).toBe(false);
  });

  it('strips a CRLF line ending', async () => {
    const r = await exec(['--cost', '1024'], 'pw\r\n');
    expect(await verifyPassword('pw', r.out.trim())).toBe(true);
  });

  it('takes --password', async () => {
    const r = await exec(['--password', 'p w', '--cost', '2048', '--block-size', '4', '--parallelism', '2']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^scrypt\$2048\$4\$2\$/);
    expect(await verifyPassword('p w', r.out.trim())).toBe(true);
  });

  it('--verify: 0 on match, 1 on mismatch, 2 on a malformed hash', async () => {
    const hash = (await exec(['--password', 'pw', '--cost', '1024'])).out.trim();
    expect(await exec(['--verify', hash], 'pw\n')).toMatchObject({ code: 0, out: 'match\n' });
    expect(await exec(['--verify', hash, '--password', 'nope'])).toMatchObject({ code: 1, out: 'mismatch\n' });
    const bad = await exec(['--verify', 'scrypt$1$2$3', '--password', 'pw']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/scrypt\$N\$r\$p/);
  });

  const usage: Array<[string, string[], string, RegExp]> = [
    ['unknown flag', ['--pasword', 'x'], '', /Unknown option/],
    ['positional', ['x'], '', /positional/i],
    ['empty stdin', [], '', /empty password/],
    ['empty line', [], '\nrest', /empty password/],
    ['bad cost', ['--cost', '1000', '--password', 'x'], '', /power of two/],
    ['cost not a number', ['--cost', 'lots', '--password', 'x'], '', /power of two/],
  ];
  for (const [name, argv, stdin, err] of usage) {
    it(`exit 2: ${name}`, async () => {
      const r = await exec(argv, stdin);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(err);
      expect(r.out).toBe('');
    });
  }

  it('--help exits 0 and documents the format', async () => {
    const r = await exec(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('scrypt$N$r$p$saltB64$hashB64');
  });
});
