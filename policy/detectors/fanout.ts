/**
 * Fan-out detectors (research D3, D4).
 *
 * `an0081.scan`:
 * - fast (D3a): distinct failed ip:port ≥ `failedDestinations` in `windowSec`, or ≥
 *   `failedPortsOnOneHost` ports of one address (port scan);
 * - slow (D3b): failed ip:port accrued with no gap > `slowResetSec`: ≥ `failedDestinations`
 *   external or ≥ `slowFailedDestinationsInternal` internal;
 * - successful fan-out (D3c): > `distinctDestinationsPerHour` distinct destinations in 1 h from a
 *   non-browser process; behaviour only, so its action needs corroboration;
 * - port fan-out (D3c): > `distinctPortsOnOneHostPerHour` distinct ports connected to on one address
 *   in 1 h, unless the process is a browser (an unnamed one counts); flag only, in every mode.
 * A failed attempt is a dial that failed or an attempt the gateway refused by policy at an address
 * (`denied`: deny-range, an IP literal not allowlisted; see `outcomeOfRefusal`): a sweep of
 * forbidden addresses never reaches a dial, and is exactly the scan to alert on.
 *
 * `an0081.proxyjack`:
 * - relay symmetry (D4b): over `windowSec`, Σout ≥ `minBytesOut`, `minRatio` ≤ Σout/Σin ≤
 *   `maxRatio`, ≥ `minDistinctDestinations` registrable domains;
 * - tunnel + fan-out (D4c): a flow ≥ `tunnelMinDurationSec` with out:in ≥ `tunnelMinRatio` while
 *   ≥ `tunnelMinNewDestinations` new domains were contacted in the window.
 */
import type { Identity } from '../types.ts';
import type { DetectionContext } from './context.ts';
import { flowIdsOf, fmtBytes } from './match.ts';
import { BROWSERS } from './process-signals.ts';
import type { SweepSignal } from './signal.ts';
import type { DetectionState, IdentityWindows } from './state.ts';
import type { FlowView } from './types.ts';

// Service-exploitation ports (research D3 severity): SSH, telnet, SMB, Docker, RDP, VNC, Redis, …
const EXPLOIT_PORTS = new Set([22, 23, 445, 2375, 2376, 3389, 5900, 6379, 9200, 27017]);

/** Ids of the failed attempts made at or after `sinceMs`. */
function failedSince(recent: ReadonlyArray<{ id: string; atMs: number }>, sinceMs: number): string[] {
  const ids: string[] = [];
  for (const r of recent) if (r.atMs >= sinceMs) ids.push(r.id);
  return ids;
}

interface Who {
  identity: Identity;
  clientIp?: string | undefined;
}

/**
 * Scan signals for one identity: the failed-attempt rules when `hasNewFailures`, the successful
 * fan-out rule when `hasNewDestinations` (a count can only cross its threshold upwards then).
 */
export function scanSignals(
  idKey: string,
  who: Who,
  state: DetectionState,
  ctx: DetectionContext,
  now: number,
  changes: { hasNewFailures: boolean; hasNewDestinations: boolean },
): SweepSignal[] {
  const w = state.windows(idKey);
  if (!w || (!changes.hasNewFailures && !changes.hasNewDestinations)) return [];
  if (ctx.isExpectedScanner(who.identity, who.clientIp) || ctx.isSkipped('an0081.scan', who.identity, null, who.clientIp)) {
    w.portsGrown = null;
    return [];
  }
  const s = ctx.settings('an0081.scan');
  const windowSec = s.n['windowSec'] ?? 300;
  const failedMin = s.n['failedDestinations'] ?? 25;
  const portsMin = s.n['failedPortsOnOneHost'] ?? 15;
  const slowResetSec = s.n['slowResetSec'] ?? 900;
  const internalMin = s.n['slowFailedDestinationsInternal'] ?? 250;
  const out: SweepSignal[] = [];

  // Made at the identity's first failed attempt: none yet, nothing to count.
  const a = changes.hasNewFailures ? w.failed : null;
  const fast = a ? a.fastFailed.prune(now - windowSec * 1000) : 0;
  // Of those, the attempts the gateway refused by policy (never dialled: deny-range, an IP literal not allowlisted).
  const refused = a ? a.fastDenied.prune(now - windowSec * 1000) : 0;
  let topIp = '';
  let topPorts = 0;
  for (const [ip, c] of a ? a.perIp : []) {
    if (c > topPorts) {
      topPorts = c;
      topIp = ip;
    }
  }
  const slowLive = a !== null && now - a.slowLastMs <= slowResetSec * 1000;
  const slowExt = slowLive ? a.slowExternal.size : 0;
  const slowInt = slowLive ? a.slowInternal.size : 0;
  let exploit = false;
  if (a) for (const p of a.failedPorts) if (EXPLOIT_PORTS.has(p)) exploit = true;
  const base = exploit ? 2 : 1;
  let kind: string | null = null;
  let reason = '';
  if (topPorts >= portsMin) {
    kind = 'port-scan';
    reason = `${topPorts} failed ports on ${topIp} within ${windowSec} s (≥ ${portsMin})`;
  } else if (fast >= failedMin) {
    kind = 'address-scan';
    reason = `${fast} distinct failed destinations within ${windowSec} s (≥ ${failedMin})`;
  } else if (slowExt >= failedMin) {
    kind = 'slow-scan';
    reason = `${slowExt} distinct failed external destinations without a ${slowResetSec} s pause (≥ ${failedMin})`;
  } else if (slowInt >= internalMin) {
    kind = 'slow-scan-internal';
    reason = `${slowInt} distinct failed internal destinations without a ${slowResetSec} s pause (≥ ${internalMin})`;
  }
  if (kind && a) {
    out.push({
      detector: 'an0081.scan',
      analytic: 'AN0081',
      idKey,
      identity: who.identity,
      clientIp: who.clientIp,
      baseLevel: base,
      gate: 'config',
      destination: null,
      // The attempts the crossing count is made of: within the window, or since the slow run began.
      flowIds: failedSince(a.recentFailed, kind.startsWith('slow') ? a.slowSinceMs : now - windowSec * 1000),
      evidence: {
        kind,
        failedDestinations: fast,
        refusedDestinations: refused,
        windowSec,
        maxFailedPortsOnOneHost: topPorts,
        slowFailedExternal: slowExt,
        slowFailedInternal: slowInt,
        exploitPorts: exploit,
      },
      reason: `${kind}: ${reason}${refused > 0 ? `; ${refused} of the destinations within ${windowSec} s refused by policy (never dialled)` : ''}${exploit ? '; service-exploitation ports targeted' : ''}`,
      key: `an0081.scan|${idKey}`,
    });
  }

  const p = who.identity.process;
  const isBrowser = p !== null && (BROWSERS.has(p.name) || BROWSERS.has(p.exe));
  const ports = changes.hasNewDestinations ? portFanOut(w, now, s.n['distinctPortsOnOneHostPerHour'] ?? 100, isBrowser) : null;
  if (ports) {
    out.push({
      detector: 'an0081.scan',
      analytic: 'AN0081',
      idKey,
      identity: who.identity,
      clientIp: who.clientIp,
      baseLevel: 1,
      gate: 'flag',
      destination: null,
      flowIds: [],
      evidence: { kind: 'port-fan-out', address: ports.ip, distinctPorts: ports.count, windowSec: 3600, threshold: ports.threshold },
      reason: `port fan-out: ${ports.count} distinct ports on ${ports.ip} in 1 h, > ${ports.threshold}${p ? ` (non-browser ${p.name})` : ''}`,
      // One per address: each host swept is its own finding (repeats inside the hour grouped away).
      key: `an0081.scan|${idKey}|port-fan-out|${ports.ip}`,
    });
  }

  const perHourMin = s.n['distinctDestinationsPerHour'] ?? 250;
  if (changes.hasNewDestinations && p && !BROWSERS.has(p.name) && !BROWSERS.has(p.exe)) {
    const distinct = w.distinctHour.prune(now - 3_600_000);
    if (distinct > perHourMin) {
      out.push({
        detector: 'an0081.scan',
        analytic: 'AN0081',
        idKey,
        identity: who.identity,
        clientIp: who.clientIp,
        baseLevel: 1,
        gate: 'corroborate',
        destination: null,
        flowIds: [],
        evidence: { kind: 'fan-out', distinctDestinations: distinct, windowSec: 3600, threshold: perHourMin },
        reason: `fan-out: ${distinct} distinct destinations in 1 h from non-browser ${p.name} (> ${perHourMin})`,
        key: `an0081.scan|${idKey}|fan-out`,
      });
    }
  }
  return out;
}

/**
 * The address with the most distinct connected ports in the last hour among those that got a new
 * port since the last look, when over `threshold`; null otherwise, and for a browser. Takes the
 * grown addresses either way, so the set stays as small as one sweep's new ports.
 */
function portFanOut(w: IdentityWindows, now: number, threshold: number, isBrowser: boolean): { ip: string; count: number; threshold: number } | null {
  const grown = w.portsGrown;
  if (grown === null) return null;
  let best: { ip: string; count: number; threshold: number } | null = null;
  if (!isBrowser) {
    w.connectedPorts.prune(now - 3_600_000);
    for (const ip of grown) {
      const c = w.portsPerIp.get(ip) ?? 0;
      if (c > threshold && (best === null || c > best.count)) best = { ip, count: c, threshold };
    }
  }
  w.portsGrown = null;
  return best;
}

/** Proxyjack signal for one identity with new bytes, or null. `flows` are this identity's flows. */
export function proxyjackSignal(
  idKey: string,
  who: Who,
  flows: readonly FlowView[],
  state: DetectionState,
  ctx: DetectionContext,
  now: number,
): SweepSignal | null {
  const w = state.windows(idKey);
  const p = who.identity.process;
  if (!w || (p && (BROWSERS.has(p.name) || BROWSERS.has(p.exe)))) return null;
  if (ctx.isSkipped('an0081.proxyjack', who.identity, null, who.clientIp)) return null;
  const s = ctx.settings('an0081.proxyjack');
  const windowSec = s.n['windowSec'] ?? 900;
  const since = now - windowSec * 1000;
  const out = w.out.sumSince(since);
  const inn = w.in.sumSince(since);
  const ratio = out / Math.max(inn, 1);
  const minOut = s.n['minBytesOut'] ?? 20_971_520;
  const ratioOk = ratio >= (s.n['minRatio'] ?? 0.5) && ratio <= (s.n['maxRatio'] ?? 2);
  const tunnelMinMs = (s.n['tunnelMinDurationSec'] ?? 1800) * 1000;
  const tunnelRatio = s.n['tunnelMinRatio'] ?? 3;
  // The tunnel of D4c: the open flow with the most bytes out among the long, upload-heavy ones.
  let tunnel: FlowView | undefined;
  for (const f of flows) {
    if (f.outcome !== 'open' || now - f.startedAtMs < tunnelMinMs || f.bytesOut / Math.max(f.bytesIn, 1) < tunnelRatio) continue;
    if (!tunnel || f.bytesOut > tunnel.bytesOut) tunnel = f;
  }
  // Cheap exits first: neither volume-and-symmetry nor a tunnel candidate → nothing to count.
  if (!(out >= minOut && ratioOk) && !tunnel) return null;
  const distinct = w.domains.prune(since);
  let fresh = 0;
  for (const e of w.domains.map.values()) if (e.v >= since) fresh++;
  const symmetric = out >= minOut && ratioOk && distinct >= (s.n['minDistinctDestinations'] ?? 50);
  const tunnelFanout = tunnel !== undefined && fresh >= (s.n['tunnelMinNewDestinations'] ?? 20);
  if (!symmetric && !tunnelFanout) return null;
  const open = flows.filter((f) => f.outcome === 'open');
  const primary = tunnel ?? [...open].sort((a, b) => b.bytesOut - a.bytesOut)[0] ?? null;
  const why: string[] = [];
  if (symmetric) why.push(`relay symmetry: ${fmtBytes(out)} out / ${fmtBytes(inn)} in (ratio ${ratio.toFixed(2)}) to ${distinct} domains in ${windowSec} s`);
  if (tunnelFanout && tunnel) why.push(`tunnel ${tunnel.destination.host} open ${Math.round((now - tunnel.startedAtMs) / 1000)} s while ${fresh} new domains were contacted`);
  return {
    detector: 'an0081.proxyjack',
    analytic: 'AN0081',
    idKey,
    identity: who.identity,
    clientIp: who.clientIp,
    baseLevel: symmetric && tunnelFanout ? 2 : 1,
    gate: 'config',
    destination: primary ? primary.destination : null,
    flowIds: flowIdsOf(open),
    evidence: {
      windowSec,
      bytesOut: out,
      bytesIn: inn,
      ratio: Number(ratio.toFixed(2)),
      distinctDestinations: distinct,
      newDestinations: fresh,
      relaySymmetry: symmetric,
      tunnelFanout,
    },
    reason: why.join('; '),
    key: `an0081.proxyjack|${idKey}`,
  };
}
