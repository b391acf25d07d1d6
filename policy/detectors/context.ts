/**
 * What the detectors need from a PolicySnapshot, compiled once per snapshot (cached in a WeakMap):
 * settings per detector, lists, approved upload destinations, exceptions, expected scan sources.
 */
import type { Config } from '../config.ts';
import { compileHostSet, type HostPatternMap } from '../host-pattern.ts';
import { detectionLists } from '../lists.ts';
import type { Identity, PolicySnapshot } from '../types.ts';
import { type DetectorSettings, detectorSettings } from './defaults.ts';
import { DomainList, NameList, baseName, hostOf, processNames, userOf } from './match.ts';
import { DETECTOR_NAMES } from '../types.ts';
import type { BehaviourDetector } from './types.ts';

// Every behaviour detector: the contract's names less the policy and quarantine ones.
const ALL = DETECTOR_NAMES.filter(
  (n): n is BehaviourDetector => n !== 'policy.deny' && n !== 'policy.deny-range' && n !== 'quarantine',
);

interface CompiledException {
  process: NameList | null;
  users: Set<string> | null;
  hosts: Set<string> | null;
  destinations: HostPatternMap<true> | null;
  detectors: Set<string>;
}

interface CompiledScanSource {
  host: string | null;
  user: string | null;
  process: NameList | null;
}

export interface DetectionContext {
  readonly config: Config;
  settings(name: BehaviourDetector): DetectorSettings;
  readonly proxyware: NameList;
  readonly proxywareImages: readonly string[];
  readonly proxywareDomains: DomainList;
  readonly scannerTools: NameList;
  readonly networkUtilities: NameList;
  readonly tunnelTools: NameList;
  readonly exfilTools: NameList;
  readonly storageDomains: DomainList;
  readonly tunnelDomains: DomainList;
  /** Destination host is in `approvedUploadDestinations`. */
  isApprovedDestination(host: string): boolean;
  /** An exception (or the detector being disabled) skips `detector` for this identity + destination. */
  isSkipped(detector: BehaviourDetector, identity: Identity, destHost: string | null, clientIp?: string): boolean;
  /** The identity is an expected scanner (`expectedScanSources`). */
  isExpectedScanner(identity: Identity, clientIp?: string): boolean;
}

const cache = new WeakMap<object, DetectionContext>();

/** The compiled detection context of a snapshot (memoised per snapshot object). */
export function detectionContext(snapshot: Pick<PolicySnapshot, 'config'>): DetectionContext {
  const hit = cache.get(snapshot);
  if (hit) return hit;
  const ctx = compileContext(snapshot.config);
  cache.set(snapshot, ctx);
  return ctx;
}

function compileContext(config: Config): DetectionContext {
  const lists = detectionLists(config);
  const settings = new Map<BehaviourDetector, DetectorSettings>();
  for (const name of ALL) settings.set(name, detectorSettings(config, name));
  const approved = compileHostSet(config.approvedUploadDestinations);
  const exceptions: CompiledException[] = config.exceptions.map((e) => ({
    process: e.process && e.process.length > 0 ? new NameList(e.process) : null,
    users: e.user && e.user.length > 0 ? new Set(e.user.map((u) => u.toLowerCase())) : null,
    hosts: e.host && e.host.length > 0 ? new Set(e.host.map((h) => h.toLowerCase())) : null,
    destinations: e.destination && e.destination.length > 0 ? compileHostSet(e.destination) : null,
    detectors: new Set(e.detectors),
  }));
  const scanSources: CompiledScanSource[] = config.expectedScanSources.map((s) => ({
    host: s.host?.toLowerCase() ?? null,
    user: s.user?.toLowerCase() ?? null,
    process: s.process && s.process.length > 0 ? new NameList(s.process) : null,
  }));
  const processMatches = (list: NameList, identity: Identity): boolean =>
    processNames(identity.process).some((n) => list.has(n));

  return {
    config,
    settings: (name) => settings.get(name)!,
    proxyware: new NameList(lists.proxyware),
    proxywareImages: lists.proxywareImages.map((i) => i.toLowerCase()),
    proxywareDomains: new DomainList(lists.proxywareDomains),
    scannerTools: new NameList(lists.scannerTools),
    networkUtilities: new NameList(lists.networkUtilities),
    tunnelTools: new NameList(lists.tunnelTools),
    exfilTools: new NameList(lists.exfilTools),
    storageDomains: new DomainList(lists.storageDomains),
    tunnelDomains: new DomainList(lists.tunnelDomains),
    isApprovedDestination: (host) => approved.size > 0 && approved.matches(host.toLowerCase()),
    isSkipped(detector, identity, destHost, clientIp) {
      if (!settings.get(detector)!.enabled) return true;
      const host = hostOf(identity, clientIp).toLowerCase();
      const user = userOf(identity).toLowerCase();
      for (const e of exceptions) {
        if (!e.detectors.has(detector) && !e.detectors.has('*')) continue;
        if (e.process && !processMatches(e.process, identity)) continue;
        if (e.users && !e.users.has(user)) continue;
        if (e.hosts && !e.hosts.has(host)) continue;
        if (e.destinations && (destHost === null || !e.destinations.matches(destHost.toLowerCase()))) continue;
        return true;
      }
      return false;
    },
    isExpectedScanner(identity, clientIp) {
      const host = hostOf(identity, clientIp).toLowerCase();
      const user = userOf(identity).toLowerCase();
      return scanSources.some(
        (s) =>
          (s.host === null || s.host === host) &&
          (s.user === null || s.user === user) &&
          (s.process === null || processMatches(s.process, identity)),
      );
    },
  };
}

/** Basename helper re-exported for detectors that only need this module. */
export { baseName };
