/**
 * A name refused before it is looked up still names the local process that asked for it.
 *
 * In enforce mode a name no allow entry of the client's roles can admit is refused unresolved (the
 * lookup would carry the name out). That refusal came before local attribution started, so its
 * record said process null: the gateway on a shared host saw "someone here asked for a forbidden
 * name" and never who. Now the refusal waits for the lookup as an admitted flow does, and the record
 * names the process (here a real curl, through CONNECT and through SOCKS5 with a remote name).
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalAttributor } from '../../agent/attribution.ts';
import { ATTRIBUTION_GUARD_MS } from '../helpers/detection-live.ts';
import { type TestGateway, startTestGateway } from '../helpers/gateway.ts';

let gw: TestGateway;

beforeAll(async () => {
  gw = await startTestGateway(
    {
      mode: 'enforce',
      identity: { localAttribution: true },
      roles: { dev: { allow: [{ host: 'allowed.test', ports: [443] }] } },
      defaultRoles: ['dev'],
    },
    { attributor: new LocalAttributor({ timeoutMs: ATTRIBUTION_GUARD_MS }) },
  );
});
afterAll(async () => {
  await gw?.stop();
});

/** Run curl to completion (bounded); its pid and stdout. */
async function curl(args: string[]): Promise<{ pid: number; out: string }> {
  const child = spawn('curl', ['-s', '-o', '/dev/null', '--max-time', '5', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await new Promise<void>((r) => child.once('exit', () => r()));
  clearTimeout(timer);
  return { pid: child.pid ?? -1, out };
}

describe('a name the roles never admit, refused unresolved in enforce mode', () => {
  it('CONNECT: 403, and the record names curl with its pid', async () => {
    const { pid, out } = await curl(['-p', '-x', `http://${gw.httpHost}:${gw.httpPort}`, '-w', '%{http_connect}', 'http://forbidden.test:443/']);
    expect(out).toBe('403');
    const rec = await gw.waitForClosed((r) => r.destination.host === 'forbidden.test' && r.protocol === 'connect');
    expect(rec).toMatchObject({ verdict: 'block', reason: 'not-allowlisted' });
    expect(rec.destination.ip).toBeNull();
    expect(rec.identity.process).toMatchObject({ name: 'curl', pid });
  });

  it('SOCKS5 with a remote name: refused, and the record names curl with its pid', async () => {
    const { pid } = await curl(['--socks5-hostname', `${gw.socksHost}:${gw.socksPort}`, 'http://socks-forbidden.test:443/']);
    const rec = await gw.waitForClosed((r) => r.destination.host === 'socks-forbidden.test');
    expect(rec).toMatchObject({ verdict: 'block', reason: 'not-allowlisted' });
    expect(rec.identity.process).toMatchObject({ name: 'curl', pid });
  });
});
