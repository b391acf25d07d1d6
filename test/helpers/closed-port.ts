/**
 * A loopback TCP port nothing listens on and nothing will be given later: picked below the kernel's
 * ephemeral range (ip_local_port_range), so no socket bound to port 0 (a gateway's listener started
 * after, an origin, a client) can take it. A port freed from the ephemeral range can become a
 * listener's started later, and a request meant for a dead origin then reaches that listener (a
 * self-dial refused 403 deny-range, or another gateway's admin API answering 400), not the 502 the
 * test expects: seen in full runs of http-fast-path and http-refusal-unread-body.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 2048 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** A port on `host` below the ephemeral range that could be bound (so nothing listens there). */
export async function closedPort(host = '127.0.0.1'): Promise<number> {
  const high = ephemeralLow();
  const low = Math.max(1024, high - 12_000);
  for (let i = 0; i < 50; i++) {
    const port = low + Math.floor(Math.random() * (high - low));
    const server = createServer();
    const isFree = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, host, () => resolve(true));
    });
    if (!isFree) continue;
    await new Promise<void>((r) => server.close(() => r()));
    return port;
  }
  throw new Error(`no free port on ${host} between ${low} and ${high} in 50 tries`);
}
