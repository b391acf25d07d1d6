/**
 * A SOCKS5 login whose password check spans a reload (a slow scrypt `passwordHash`): what the
 * connection asks next is held to the running policy's limits, as a new connection's is. The reload
 * is issued while the gateway derives the hash (its scrypt run counted, N = 2^16: ~200 ms alone).
 * Before, a UDP ASSOCIATE after it was held to `limits.maxFlowsPerIdentity` of the policy the
 * connection started under: with the limit reloaded from 2 to 1 and alice's one association open,
 * hers was answered 0x00 with a relay bound (2 associations held under a limit of 1), where a new
 * connection's was refused 0x02. A CONNECT after it already was judged by admission (running policy).
 * Real gateway, real SOCKS5 listener.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { hashPassword } from '../../gateway/identity/password-hash.ts';
import { adminGet, startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { associate, type Cleanups, udpSocket } from '../helpers/socks-udp.ts';
import { rawConnect } from './http-harness.ts';
import { reloadEdited } from './reload-harness.ts';
import { readBytes } from './socks5-harness.ts';

const cleanups: Cleanups = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

const ALICE = { userId: 'alice', password: 'pw-alice-0123' };

interface EditableConfig {
  limits: { maxFlowsPerIdentity: number };
}

/** A reload (as PUT /v1/policy and SIGHUP make) of the running config with `maxFlowsPerIdentity`. */
function reloadWithLimit(gw: TestGateway, maxFlowsPerIdentity: number): void {
  reloadEdited<EditableConfig>(gw, (c) => {
    c.limits.maxFlowsPerIdentity = maxFlowsPerIdentity;
  });
}

async function scryptRuns(gw: TestGateway): Promise<number> {
  const m = /^gw_identity_scrypt_runs_total (\d+)$/m.exec((await adminGet(gw, '/metrics')).text);
  return Number(m?.[1] ?? Number.NaN);
}

describe('a SOCKS5 login whose password check spans a reload', () => {
  it('a UDP ASSOCIATE after it is held to the running policy’s maxFlowsPerIdentity', async () => {
    const passwordHash = await hashPassword(ALICE.password, { N: 65_536, r: 8, p: 1 });
    const gw = await startTestGateway({
      mode: 'enforce',
      limits: { maxFlowsPerIdentity: 2 },
      identity: { requireAuth: true, users: [{ name: ALICE.userId, passwordHash, roles: ['any'] }] },
    });
    cleanups.push(() => gw.stop());
    // Alice's first association holds one place.
    const client = await udpSocket(cleanups);
    await associate(gw, client, cleanups, { auth: ALICE });
    // A new policy object with the same limit: the next login is checked afresh (the credential
    // cache is per policy), so its scrypt derivation runs.
    reloadWithLimit(gw, 2);

    const s = await rawConnect(gw.socksPort);
    cleanups.push(() => s.destroy());
    s.on('error', () => undefined);
    s.write(Buffer.from([0x05, 0x01, 0x02]));
    expect([...(await readBytes(s, 2))]).toEqual([0x05, 0x02]);
    const runs = await scryptRuns(gw);
    const u = Buffer.from(ALICE.userId);
    const p = Buffer.from(ALICE.password);
    const status = readBytes(s, 2);
    s.write(Buffer.concat([Buffer.from([0x01, u.length]), u, Buffer.from([p.length]), p]));
    // The reload lands while the hash is being derived.
    const deadline = Date.now() + 5000;
    while ((await scryptRuns(gw)) === runs && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(await scryptRuns(gw)).toBe(runs + 1);
    reloadWithLimit(gw, 1);
    expect([...(await status)]).toEqual([0x01, 0x00]);

    // UDP ASSOCIATE 0.0.0.0:0: alice holds 1 place, the running limit is 1.
    s.write(Buffer.from([0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0]));
    const reply = await readBytes(s, 10);
    expect(reply[1]).toBe(0x02);
    const record = await gw.waitForClosed((r) => r.protocol === 'socks5-udp');
    expect(record).toMatchObject({ verdict: 'block', reason: 'rate-limit', closeReason: 'rate-limit' });
    expect(record.identity.user).toBe(ALICE.userId);

    // As a new connection's association is refused.
    const client2 = await udpSocket(cleanups);
    await expect(associate(gw, client2, cleanups, { auth: ALICE })).rejects.toThrow();
  });
});
