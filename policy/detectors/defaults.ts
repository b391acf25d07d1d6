/**
 * The one place detector defaults live (SPEC §3 `detection.detectors`, research/detections.md §2/§4).
 * `detectorSettings(config, name)` merges the config's entry over these, so a config that names
 * only `action` keeps every threshold. The config schema takes each detector's allowed settings
 * from this table: a threshold not listed here is an unknown key in the policy file.
 */
import type { Config, DetectorConfig } from '../config.ts';
import type { FindingAction } from './types.ts';
import type { BehaviourDetector } from './types.ts';

export interface DetectorSettings {
  readonly enabled: boolean;
  readonly action: FindingAction;
  readonly corroborate: boolean;
  /** Numeric thresholds (windowSec, bytesOut, …). */
  readonly n: Readonly<Record<string, number>>;
}

interface DefaultEntry {
  action: FindingAction;
  corroborate: boolean;
  n: Record<string, number>;
}

const MiB = 1024 * 1024;

/**
 * Defaults. Where SPEC §3 shows a number it is used verbatim; the extra thresholds are the research
 * file's: D3b internal fan-out 250 (bro-simple-scan local scanner), D3c > 100 distinct ports to one
 * address in 1 h (Elastic), D4c tunnel 30 min / out:in ≥ 3 / 20 new destinations, D6a out:in ≥ 5 and
 * 1 GiB per day.
 */
export const DETECTOR_DEFAULTS: Readonly<Record<BehaviourDetector, DefaultEntry>> = {
  'an0081.proxyware': { action: 'block', corroborate: false, n: {} },
  'an0081.scanner-tool': { action: 'block', corroborate: false, n: {} },
  'an0081.scan': {
    action: 'block',
    corroborate: false,
    n: {
      windowSec: 300,
      failedDestinations: 25,
      failedPortsOnOneHost: 15,
      slowResetSec: 900,
      slowFailedDestinationsInternal: 250,
      distinctDestinationsPerHour: 250,
      distinctPortsOnOneHostPerHour: 100,
    },
  },
  'an0081.sustained': { action: 'flag', corroborate: false, n: { minDurationSec: 3600, minBytesPerSec: 8000 } },
  'an0081.proxyjack': {
    action: 'kill',
    corroborate: true,
    n: {
      windowSec: 900,
      minBytesOut: 20 * MiB,
      minRatio: 0.5,
      maxRatio: 2,
      minDistinctDestinations: 50,
      tunnelMinDurationSec: 1800,
      tunnelMinRatio: 3,
      tunnelMinNewDestinations: 20,
    },
  },
  'an0080.bulk-upload': { action: 'kill', corroborate: false, n: { bytesOut: 50 * MiB, minRatio: 10, storageBytesOut: 10 * MiB } },
  'an0080.split-upload': {
    action: 'block',
    corroborate: false,
    n: { windowSec: 3600, bytesOut: 50 * MiB, minRatio: 5, dayBytesOut: 1024 * MiB },
  },
  'an0080.long-session': { action: 'flag', corroborate: false, n: { minDurationSec: 3600, rareWithinDays: 7 } },
  'an0080.lineage': { action: 'kill', corroborate: false, n: {} },
  'an0080.exfil-tool': { action: 'block', corroborate: false, n: {} },
};

/** Modifier constants (research §4.14, RITA): not in the config schema on purpose. */
export const MODIFIER_DEFAULTS = {
  /** A destination first seen this many days ago or earlier is "long-known" (−1). RITA: 30 d. */
  knownAfterDays: 30,
  /** Beacon: at least this many connection starts to one destination… */
  beaconMinConnections: 6,
  /** …whose intervals vary by at most this coefficient of variation (RITA-style jitter ≤ 20 %). */
  beaconMaxJitter: 0.2,
  /** …seen in at least this many distinct hours (RITA: duration subscore needs ≥ 6 h). */
  beaconMinHours: 6,
  /** Intervals shorter than this are bursts, not beacons. */
  beaconMinIntervalSec: 10,
  /** A second detector within this window corroborates (and repeats are grouped for as long). */
  corroborationWindowSec: 3600,
} as const;

function readNumber(entry: DetectorConfig | undefined, key: string, fallback: number): number {
  const v = entry?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}

/** Settings of one detector: the config entry over the defaults. */
export function detectorSettings(config: Config, name: BehaviourDetector): DetectorSettings {
  const def = DETECTOR_DEFAULTS[name];
  const entry = config.detection.detectors[name];
  const n: Record<string, number> = {};
  // The config schema allows exactly these keys (config-schema.ts builds each detector's settings
  // from this table), so a threshold a detector reads is always one an operator can set.
  for (const [k, v] of Object.entries(def.n)) n[k] = readNumber(entry, k, v);
  const action = entry?.action === 'flag' || entry?.action === 'block' || entry?.action === 'kill' ? entry.action : def.action;
  return {
    enabled: entry?.enabled !== false,
    action,
    corroborate: typeof entry?.corroborate === 'boolean' ? entry.corroborate : def.corroborate,
    n,
  };
}
