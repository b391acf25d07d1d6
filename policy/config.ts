/**
 * The config file's shape after validation (SPEC §3), with every default filled in.
 * `policy/load-config.ts` turns YAML/JSON text into this (or a list of errors with paths);
 * nothing else constructs a Config except tests and `defaultConfig()`.
 */
import type { Mode } from './types.ts';

export interface AllowEntry {
  /** Exact host or `*.` subdomain wildcard. Exactly one of host / cidr is set. */
  host?: string;
  cidr?: string;
  /** Ports and ranges: 443 or "8000-8099". Absent = any port. */
  ports?: Array<number | string>;
  /** Restrict to one protocol family: tcp (http/connect/socks5) or udp (socks5-udp). */
  protocol?: 'tcp' | 'udp';
}

export interface RoleConfig {
  mode?: Mode;
  allow: AllowEntry[];
  upstream?: string | null;
}

export interface UserConfig {
  name: string;
  password?: string;
  passwordHash?: string;
  roles: string[];
}

export interface HostConfig {
  cidr: string;
  name: string;
  roles: string[];
}

export interface AgentTokenConfig {
  name: string;
  token?: string;
  tokenSha256?: string;
  sources: string[];
}

export interface AdminTokenConfig {
  name: string;
  token?: string;
  tokenSha256?: string;
  scope: 'admin' | 'read' | 'agent';
}

export interface DetectorConfig {
  enabled: boolean;
  action: 'flag' | 'block' | 'kill';
  corroborate: boolean;
  /** Detector-specific thresholds (windowSec, bytesOut, minRatio, …), numbers only. */
  [threshold: string]: number | boolean | string;
}

export interface ExceptionConfig {
  process?: string[];
  user?: string[];
  host?: string[];
  destination?: string[];
  detectors: string[];
}

export interface Config {
  mode: Mode;
  listen: { http: string; socks: string; admin: string; https?: string | null };
  tls?: { cert: string; key: string; ca?: string | null; requestClientCert?: boolean } | null;
  admin: {
    tokens: AdminTokenConfig[];
    /**
     * Host header names the admin listener answers besides loopback names and IP literals
     * (patterns as in allow entries; "*" = any). Empty: any name on connections that did not arrive
     * on a loopback address (PAC serving), loopback names only on those that did.
     */
    allowedHosts: string[];
    /** Open connections per source address on the admin listener; 0 = no limit. */
    maxConnectionsPerSource: number;
    /** Failed tokens from one source within a minute before it is locked out; 0 = never locked out. */
    maxAuthFailuresPerSource: number;
    /** How long a locked-out source is answered 429 without its token being checked. */
    authLockoutSec: number;
    /** Open SSE streams (GET /v1/alerts/stream) in all; 0 = no limit. */
    maxStreams: number;
    /** Open SSE streams per token; 0 = no limit. */
    maxStreamsPerToken: number;
  };
  identity: {
    requireAuth: boolean;
    users: UserConfig[];
    hosts: HostConfig[];
    headers: { trustedSources: string[]; user: string; host: string; signed?: { header: string; secret: string; maxAgeSec: number } | null };
    agents: AgentTokenConfig[];
    localAttribution: boolean;
  };
  roles: Record<string, RoleConfig>;
  defaultRoles: string[];
  deny: { privateRanges: boolean; cidrs: string[] };
  allowRanges: string[];
  resolver: { hosts: Record<string, string>; timeoutMs: number; rememberUnansweredMs: number; cacheTtlSec: number; negativeCacheTtlSec: number };
  schedule: {
    timezone: string;
    businessHours: { days: Array<'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun'>; start: string; end: string };
  };
  exceptions: ExceptionConfig[];
  approvedUploadDestinations: string[];
  expectedScanSources: Array<{ host?: string; user?: string; process?: string[] }>;
  detection: {
    sampleIntervalMs: number;
    detectors: Record<string, DetectorConfig>;
    lists: { proxyware?: string[]; scannerTools?: string[]; exfilTools?: string[]; storageDomains?: string[]; proxywareDomains?: string[] };
    quarantineSec: number;
    maxTrackedIdentities: number;
    maxTrackedDestinations: number;
  };
  state: { path: string | null };
  limits: {
    maxFlowsPerIdentity: number;
    maxNewFlowsPerSecPerIdentity: number;
    /** Open client connections per source address, all listeners; 0 = no limit. */
    maxConnectionsPerSource: number;
    headerTimeoutMs: number;
    idleTimeoutMs: number;
    maxHeaderBytes: number;
    connectTimeoutMs: number;
    drainGraceMs: number;
    /**
     * The ports SOCKS5 UDP relays are bound on, "LO-HI" inclusive; null = any ephemeral port.
     * Read per association: a reload applies to new associations.
     */
    udpRelayPorts: string | null;
  };
  flowLog: { path: string | null; interimSec: number; keepClosed: number; onError: 'refuse' | 'admit' };
  alerts: {
    webhooks: Array<{ url: string; minSeverity: 'low' | 'medium' | 'high' }>;
    syslog: { host: string; port: number; protocol: 'udp' | 'tcp' } | null;
    keep: number;
  };
  proxyProtocol: { trustedSources: string[] };
  upstream: string | null;
}

/** The embedded default policy: monitor mode, loopback listeners, everything in memory (SPEC §2). */
export function defaultConfig(): Config {
  return {
    mode: 'monitor',
    listen: { http: '127.0.0.1:3128', socks: '127.0.0.1:1080', admin: '127.0.0.1:9180', https: null },
    tls: null,
    admin: { tokens: [], allowedHosts: [], maxConnectionsPerSource: 64, maxAuthFailuresPerSource: 10, authLockoutSec: 60, maxStreams: 128, maxStreamsPerToken: 16 },
    identity: {
      requireAuth: false,
      users: [],
      hosts: [],
      headers: { trustedSources: [], user: 'x-egress-user', host: 'x-egress-host', signed: null },
      agents: [],
      localAttribution: true,
    },
    roles: {},
    defaultRoles: [],
    deny: { privateRanges: true, cidrs: [] },
    allowRanges: [],
    resolver: { hosts: {}, timeoutMs: 5000, rememberUnansweredMs: 60_000, cacheTtlSec: 30, negativeCacheTtlSec: 5 },
    schedule: {
      timezone: 'UTC',
      businessHours: { days: ['mon', 'tue', 'wed', 'thu', 'fri'], start: '08:00', end: '18:00' },
    },
    exceptions: [],
    approvedUploadDestinations: [],
    expectedScanSources: [],
    detection: {
      sampleIntervalMs: 1000,
      detectors: {},
      lists: {},
      quarantineSec: 600,
      maxTrackedIdentities: 100_000,
      maxTrackedDestinations: 1_000_000,
    },
    state: { path: null },
    limits: {
      maxFlowsPerIdentity: 512,
      maxNewFlowsPerSecPerIdentity: 200,
      maxConnectionsPerSource: 4096,
      headerTimeoutMs: 10_000,
      idleTimeoutMs: 300_000,
      maxHeaderBytes: 16_384,
      connectTimeoutMs: 10_000,
      drainGraceMs: 10_000,
      udpRelayPorts: null,
    },
    flowLog: { path: '-', interimSec: 60, keepClosed: 10_000, onError: 'refuse' },
    alerts: { webhooks: [], syslog: null, keep: 10_000 },
    proxyProtocol: { trustedSources: [] },
    upstream: null,
  };
}
