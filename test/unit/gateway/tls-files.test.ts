import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTlsFiles } from '../../../gateway/listeners/tls-files.ts';

// What a reload, `serve`'s start and `check` say of files that cannot serve: each at its config
// path, naming the file (the certificate-and-key cases are in https-certificate-reload.test.ts).
describe('readTlsFiles', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'egw-tls-files-'));
    await writeFile(join(dir, 'garbage.pem'), 'not a certificate\n');
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('names every file that cannot be read, at its path', async () => {
    const r = await readTlsFiles({ cert: join(dir, 'none.crt'), key: join(dir, 'none.key'), ca: join(dir, 'none-ca.pem') });
    expect(r.ok).toBe(false);
    expect(r.ok ? [] : r.errors).toEqual([
      { path: 'tls.cert', message: expect.stringMatching(/^cannot read .*none\.crt: ENOENT/) },
      { path: 'tls.key', message: expect.stringMatching(/^cannot read .*none\.key: ENOENT/) },
      { path: 'tls.ca', message: expect.stringMatching(/^cannot read .*none-ca\.pem: ENOENT/) },
    ]);
  });

  it('a file that holds no certificate, key or CA certificate is refused at its path', async () => {
    const garbage = join(dir, 'garbage.pem');
    const r = await readTlsFiles({ cert: garbage, key: garbage, ca: garbage });
    expect(r.ok ? [] : r.errors.map((e) => [e.path, e.message.slice(0, garbage.length + 9)])).toEqual([
      ['tls.cert', `${garbage} holds no`],
      ['tls.key', `${garbage} holds no`],
      // OpenSSL alone takes such a CA file as an empty list: no client certificate would be believed.
      ['tls.ca', `${garbage} holds no`],
    ]);
  });
});
