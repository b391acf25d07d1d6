/**
 * Two SIGHUPs in quick succession after one edit of the config file make one policy version, not
 * two, with an HTTPS listener (whose TLS files each write reads first, asynchronously). Driven
 * through the real gateway's reloadFromFile, which is what `serve` runs on each SIGHUP.
 *
 * Regression: the "file unchanged" comparison ran before the write was queued, so the second SIGHUP
 * compared the file with the text the first had not yet swapped in: GET /v1/policy/history showed
 * the same text as two new versions after each of 2 edits, pushing real ones out of the rollback
 * history.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { createTestPki, hasOpenssl, type TestPki } from '../helpers/tls.ts';

interface History {
  current: number;
  versions: Array<{ version: number; author: string | null; source: string }>;
}

describe.skipIf(!skipNotice(hasOpenssl(), 'policy-reload-sighup-twice', 'needs openssl to make the test certificates'))('two SIGHUPs after one edit', () => {
  let pki: TestPki;
  let dir: string;
  let gw: TestGateway;
  let configPath: string;

  /** The file's text: the running listeners and certificate, and `headerTimeoutMs`, the edit. */
  const text = (headerTimeoutMs: number): string => `listen: { http: "127.0.0.1:0", socks: "127.0.0.1:0", admin: "127.0.0.1:0", https: "127.0.0.1:0" }
tls: { cert: ${JSON.stringify(pki.server.certPath)}, key: ${JSON.stringify(pki.server.keyPath)} }
allowRanges: [127.0.0.0/8]
roles: { any: { allow: [ { cidr: 127.0.0.0/8 } ] } }
defaultRoles: [any]
identity: { localAttribution: false }
flowLog: { path: null }
limits: { headerTimeoutMs: ${headerTimeoutMs} }
`;

  beforeAll(async () => {
    pki = await createTestPki({});
    dir = await mkdtemp(join(tmpdir(), 'egw-sighup-twice-'));
    configPath = join(dir, 'policy.yaml');
    gw = await startTestGateway({ listen: { https: '127.0.0.1:0' }, tls: { cert: pki.server.certPath, key: pki.server.keyPath } }, { configPath });
  }, 60_000);

  afterAll(async () => {
    await gw?.stop();
    await pki?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function history(): Promise<History> {
    const r = await adminGet(gw, '/v1/policy/history');
    expect(r.status).toBe(200);
    return JSON.parse(r.text) as History;
  }

  it.each([
    ['the first edit', 9000],
    ['a second edit', 8000],
  ])('%s: one new version, the second SIGHUP finding the file unchanged', async (_name, headerTimeoutMs) => {
    const before = await history();
    await writeFile(configPath, text(headerTimeoutMs));
    const results = await Promise.all([gw.reloadFromFile('SIGHUP'), gw.reloadFromFile('SIGHUP')]);
    expect(results.map((r) => r.ok)).toEqual([true, true]);
    const after = await history();
    const added = after.versions.filter((v) => v.version > before.current);
    expect(added).toEqual([expect.objectContaining({ version: before.current + 1, author: 'SIGHUP', source: 'file' })]);
    expect(after.current).toBe(before.current + 1);
    expect(gw.policy.current().config.limits.headerTimeoutMs).toBe(headerTimeoutMs);
    // A third SIGHUP, later, finds it unchanged too.
    expect((await gw.reloadFromFile('SIGHUP')).ok).toBe(true);
    expect((await history()).current).toBe(before.current + 1);
  });
});
