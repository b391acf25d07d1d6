/**
 * Log rotation while `egressgate serve` has no descriptor left (`ulimit -n`): the SIGUSR2 that
 * follows the move cannot open the new file (EMFILE). The gateway goes on writing to the file it
 * has (the one moved away) and tries the path again every second, so once connections close the
 * flow log and the audit log are at their paths again. Before, the failed reopen was never tried
 * again: every later record went to the rotated file until the next signal (a day, for a daily
 * logrotate), and nothing was at the path a log shipper follows.
 */
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile, rename } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRecords } from '../helpers/flow-records.ts';
import { serveEchoFixture } from '../helpers/serve-echo-fixture.ts';
import type { Served } from '../helpers/serve-process.ts';
import { readUntil } from './http-harness.ts';
import { readToEnd } from './socks5-harness.ts';
import { connectFrom, fillDescriptors, greeted, NOFILE, openDescriptors, serveUnderLimit } from '../helpers/descriptor-limit.ts';

const TOKEN = 'flow-log-reopen-descriptors-token-0123';

const fx = serveEchoFixture('egw-reopen-descriptors-');
const held: Socket[] = [];

afterEach(() => {
  for (const s of held) s.destroy();
  held.length = 0;
});

/** A CONNECT to the echo origin; the whole answer until the gateway closes ('' = closed unanswered). */
async function connectAnswer(s: Served): Promise<string> {
  const c = await connectFrom(s.http.port);
  c.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
  return (await readToEnd(c)).data.toString('latin1');
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('log rotation with every descriptor taken', () => {
  it('a SIGUSR2 whose open fails with EMFILE is tried again: the flow log and audit log are at their paths once descriptors are free', async () => {
    const flowLog = join(fx.dir, 'flows.jsonl');
    const auditLog = `${flowLog}.audit.jsonl`;
    const s = await serveUnderLimit(fx.dir, flowLog, TOKEN);
    fx.killAfterTest(s);
    // One audit entry before the rotation, so the audit file exists to be moved.
    const mode = await fetch(`http://${s.admin}/v1/mode`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"mode":"enforce"}' });
    expect(mode.status).toBe(200);
    await waitFor('the first audit entry', () => existsSync(auditLog));

    const pid = s.child.pid as number;
    await fillDescriptors(s, held, NOFILE - 1);
    expect(openDescriptors(pid)).toBe(NOFILE - 1);

    // logrotate: move both files away, then the signal. The one free descriptor is the reopen's to
    // lose: a CONNECT takes it, refused 503 (its record goes to the file still open).
    await rename(flowLog, `${flowLog}.1`);
    await rename(auditLog, `${auditLog}.1`);
    let refused = '';
    for (let i = 0; i < 50 && refused === ''; i++) refused = await connectAnswer(s).catch(() => '');
    expect(refused.split('\r\n')[0]).toBe('HTTP/1.1 503 Service Unavailable');
    const holder = await greeted(s);
    if (holder !== null) held.push(holder);
    s.child.kill('SIGUSR2');
    await waitFor('the failed reopen', () => s.stderr().includes('flow log could not be reopened'));
    expect(s.stderr()).toContain('audit log could not be reopened');
    expect(existsSync(flowLog)).toBe(false);

    // The holders go: within a few retries both files are at their paths again, with no signal.
    for (const c of held) c.destroy();
    held.length = 0;
    await waitFor('the flow log at its path', () => existsSync(flowLog) && existsSync(auditLog));
    await waitFor('the reopen logged', () => s.stderr().includes('"msg":"flow log reopened"'));

    // A tunnel after that is recorded at the path; an admin write is audited at its path.
    const tunnel = await connectFrom(s.http.port);
    tunnel.write(`CONNECT 127.0.0.1:${fx.echo.port} HTTP/1.1\r\nHost: 127.0.0.1:${fx.echo.port}\r\n\r\n`);
    await readUntil(tunnel, '\r\n\r\n');
    tunnel.write('after the rotation');
    await readUntil(tunnel, 'after the rotation');
    tunnel.end();
    await once(tunnel, 'close');
    const monitor = await fetch(`http://${s.admin}/v1/mode`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"mode":"monitor"}' });
    expect(monitor.status).toBe(200);

    s.child.kill('SIGTERM');
    await once(s.child, 'exit');
    const rotated = parseRecords(await readFile(`${flowLog}.1`, 'utf8'));
    const current = parseRecords(await readFile(flowLog, 'utf8'));
    // The refusal at the limit is in the rotated file, the tunnel after it at the path; none lost.
    expect(rotated.map((r) => r.closeReason)).toEqual(['out-of-descriptors']);
    expect(current).toHaveLength(1);
    expect(current[0]).toMatchObject({ protocol: 'connect', closeReason: 'closed', bytesOut: 18, bytesIn: 18 });
    const audited = (await readFile(auditLog, 'utf8')).trim().split('\n');
    expect(audited).toHaveLength(1);
    expect(audited[0]).toContain('monitor');
  });
});
