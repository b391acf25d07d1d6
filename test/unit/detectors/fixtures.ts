/** Object-literal builders for detector tests: a config, processes, connect facts and flow views. */
import { defaultConfig, type Config } from '../../../policy/config.ts';
import { DetectionState } from '../../../policy/detectors/state.ts';
import type { FlowView } from '../../../policy/detectors/types.ts';
import type { ConnectFacts, Identity, ProcessInfo } from '../../../policy/types.ts';

export const MiB = 1024 * 1024;
export const DAY = 86_400_000;
/** Wednesday 2026-03-04 10:00 UTC: inside the default business hours. */
export const WED_10 = Date.parse('2026-03-04T10:00:00Z');
/** Wednesday 02:00 UTC: outside business hours. */
export const WED_02 = Date.parse('2026-03-04T02:00:00Z');

/** A default config with detection tweaks; `patch` edits it in place. */
export function snap(patch?: (c: Config) => void): { config: Config } {
  const c = defaultConfig();
  patch?.(c);
  return { config: c };
}

/** A fresh state that finished learning a month before `now`. */
export function learnedState(now: number, known: string[] = []): DetectionState {
  const s = new DetectionState({ learningStartedAtMs: now - 30 * DAY, maxTrackedIdentities: 1000, maxTrackedDestinations: 1000 });
  for (const k of known) s.seedFirstSeen(k, now - 90 * DAY);
  return s;
}

export function proc(name: string, extra: Partial<ProcessInfo> = {}): ProcessInfo {
  return {
    pid: 100,
    name,
    exe: `/usr/bin/${name}`,
    cmdline: null,
    user: 'alice',
    uid: 1001,
    loginuid: 1001,
    ppid: 99,
    parentName: 'bash',
    parentExe: null,
    ...extra,
  };
}

export function ident(process: ProcessInfo | null, host = 'ws1', user: string | null = 'alice'): Identity {
  return { user, host, roles: [], process };
}

export function facts(process: ProcessInfo | null, dest: string, extra: Partial<ConnectFacts> = {}): ConnectFacts {
  const [host, port] = dest.split(':') as [string, string];
  return {
    protocol: 'connect',
    clientIp: '10.1.2.3',
    clientPort: 40000,
    identity: ident(process),
    destHost: host,
    destPort: Number(port),
    destIp: /^[\d.]+$/.test(host) ? host : '198.51.100.20',
    ...extra,
  };
}

let seq = 0;
/** A flow view; `startedAtMs` defaults to `now` minus `ageMs`. */
export function flow(identity: Identity, dest: string, o: Partial<FlowView> & { now: number; ageMs?: number }): FlowView {
  const [host, port] = dest.split(':') as [string, string];
  const { now, ageMs, ...rest } = o;
  return {
    id: `t${++seq}`,
    protocol: 'connect',
    clientIp: '10.1.2.3',
    identity,
    destination: { host, ip: /^[\d.]+$/.test(host) ? host : '198.51.100.20', port: Number(port) },
    startedAtMs: now - (ageMs ?? 1000),
    endedAtMs: null,
    lastActivityAtMs: now,
    bytesOut: 0,
    bytesIn: 0,
    outcome: 'open',
    ...rest,
  };
}
