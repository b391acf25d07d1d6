/**
 * Connect-time detectors (research D1, D2, D9, D12): decided from the identity's process and the
 * destination before anything is dialled. A `kill` action becomes `block` here (no live flow yet).
 *
 * - `an0081.proxyware`: process / exe / parent / container image / provider domain on the list.
 * - `an0081.scanner-tool`: scanners and proxy-chaining tools, unless an expected scan source;
 *   nc / socat only flag unless the scan detector already fired for the identity.
 * - `an0080.exfil-tool`: tunnel tools alone; transfer tools and upload command lines with a
 *   file-sharing / tunnel / IP-literal / rare destination; otherwise a flag.
 * - `an0080.lineage`: a network client spawned by Office, a script host or a server, or run by a
 *   daemon account; the action needs severity high (a corroborating modifier).
 */
import type { ConnectFacts, Decision, MatchedRule, Mode, PolicySnapshot } from '../types.ts';
import { type DetectionContext, detectionContext } from './context.ts';
import { baseName, identityKeyOf, isIpLiteral, processNames } from './match.ts';
import { CLIENT_TOOLS, hasUploadFlags, isDaemonAccount, lineageReason } from './process-signals.ts';
import { type Gate, type ModifierName, modifiersFor, score } from './scoring.ts';
import type { DetectionReader, DetectionState } from './state.ts';
import type { Analytic, BehaviourDetector, Finding, FindingIdentity, FlowDestinationView } from './types.ts';

/** The detectors judged at connect time, in the order they are judged. */
export const CONNECT_DETECTORS: readonly BehaviourDetector[] = Object.freeze([
  'an0081.proxyware',
  'an0081.scanner-tool',
  'an0080.exfil-tool',
  'an0080.lineage',
] as BehaviourDetector[]);

/** Why a connect-time detector does not judge a connection. */
export type SkipReason = 'disabled' | 'exception' | 'expected scan source';

interface Signal {
  detector: BehaviourDetector;
  analytic: Analytic;
  baseLevel: number;
  gate: Gate;
  minLevelForAction?: number;
  exclude?: ModifierName[];
  evidence: Record<string, number | string | boolean>;
  reason: string;
}

function proxywareSignal(facts: ConnectFacts, ctx: DetectionContext): Signal | null {
  const p = facts.identity.process;
  const names = processNames(p);
  if (p?.parentName) names.push(baseName(p.parentName));
  const byName = names.find((n) => ctx.proxyware.has(n));
  const cmd = (p?.cmdline ?? '').toLowerCase();
  const image = cmd ? ctx.proxywareImages.find((i) => cmd.includes(i)) : undefined;
  const domain = ctx.proxywareDomains.match(facts.destHost);
  if (!byName && !image && !domain) return null;
  const evidence: Record<string, number | string | boolean> = {};
  const why: string[] = [];
  if (byName) {
    evidence['process'] = byName;
    why.push(`process ${byName} is on the proxyware list`);
  }
  if (image) {
    evidence['image'] = image;
    why.push(`command line names proxyware image ${image}`);
  }
  if (domain) {
    evidence['providerDomain'] = domain;
    why.push(`destination ${facts.destHost} is a proxyware provider domain (${domain})`);
  }
  return { detector: 'an0081.proxyware', analytic: 'AN0081', baseLevel: 2, gate: 'config', evidence, reason: why.join('; ') };
}

function scannerSignal(facts: ConnectFacts, ctx: DetectionContext, recent: readonly BehaviourDetector[]): Signal | null {
  const p = facts.identity.process;
  if (!p) return null;
  const names = processNames(p);
  if (p.parentName) names.push(baseName(p.parentName));
  const tool = names.find((n) => ctx.scannerTools.has(n));
  if (tool) {
    return {
      detector: 'an0081.scanner-tool',
      analytic: 'AN0081',
      baseLevel: 1,
      gate: 'config',
      evidence: { tool },
      reason: `scanner / proxy-chaining tool ${tool} in the process chain`,
    };
  }
  const util = names.find((n) => ctx.networkUtilities.has(n));
  if (!util) return null;
  // nc/socat are everyday health checks: they only block once the scan behaviour corroborates.
  return {
    detector: 'an0081.scanner-tool',
    analytic: 'AN0081',
    baseLevel: 1,
    gate: recent.includes('an0081.scan') ? 'config' : 'flag',
    evidence: { tool: util },
    reason: `network utility ${util} used as a client`,
  };
}

function exfilSignal(facts: ConnectFacts, ctx: DetectionContext, isRare: boolean): Signal | null {
  const p = facts.identity.process;
  if (!p || ctx.isApprovedDestination(facts.destHost)) return null;
  const names = processNames(p);
  const storage = ctx.storageDomains.match(facts.destHost);
  const tunnelDest = ctx.tunnelDomains.match(facts.destHost);
  const ipLiteral = isIpLiteral(facts.destHost);
  const tunnel = names.find((n) => ctx.tunnelTools.has(n));
  if (tunnel) {
    return {
      detector: 'an0080.exfil-tool',
      analytic: 'AN0080',
      baseLevel: 2,
      gate: 'config',
      evidence: { tool: tunnel, toolKind: 'tunnel' },
      reason: `tunnel / relay tool ${tunnel} connecting to ${facts.destHost}`,
    };
  }
  const transfer = names.find((n) => ctx.exfilTools.has(n));
  const uploader = !transfer && names.some((n) => CLIENT_TOOLS.has(n) && hasUploadFlags(p.cmdline, n)) ? names[0] : undefined;
  const tool = transfer ?? uploader;
  if (!tool) return null;
  // scp/sftp/rsync to an IP are ordinary admin work; to a file-sharing or tunnel host they are not.
  const plainCopy = transfer !== undefined && /^(scp|sftp|rsync|ftp)$/.test(transfer);
  const damning = storage !== null || tunnelDest !== null || (!plainCopy && (ipLiteral || (uploader !== undefined && isRare)));
  const evidence: Record<string, number | string | boolean> = { tool, toolKind: transfer ? 'transfer' : 'upload-command' };
  if (storage) evidence['storageDomain'] = storage;
  if (ipLiteral) evidence['ipLiteral'] = true;
  const what = transfer ? `transfer tool ${tool}` : `${tool} with upload options`;
  return {
    detector: 'an0080.exfil-tool',
    analytic: 'AN0080',
    baseLevel: damning ? 2 : 1,
    gate: damning ? 'config' : 'flag',
    evidence,
    reason: damning
      ? `${what} to ${storage ? `file-sharing / storage host ${facts.destHost}` : tunnelDest ? 'a tunnel endpoint' : `${ipLiteral ? 'IP literal' : 'rare destination'} ${facts.destHost}`}`
      : `${what} to ${facts.destHost}`,
  };
}

function lineageSignal(facts: ConnectFacts): Signal | null {
  const p = facts.identity.process;
  if (!p) return null;
  const why = lineageReason(p);
  if (!why) return null;
  const exclude: ModifierName[] = ['lineage'];
  // The daemon account is already the signal here; do not count it again as context.
  if (isDaemonAccount(p.user)) exclude.push('context');
  return {
    detector: 'an0080.lineage',
    analytic: 'AN0080',
    baseLevel: 1,
    gate: 'config',
    minLevelForAction: 2,
    exclude,
    evidence: { process: baseName(p.name), parent: baseName(p.parentName ?? p.parentExe) || '-' },
    reason: `unusual lineage: ${why}`,
  };
}

/** The identity part of a finding. */
export function findingIdentity(identity: ConnectFacts['identity'], key: string): FindingIdentity {
  return { user: identity.user, host: identity.host, roles: identity.roles, process: identity.process, key };
}

/** Why `detector` does not judge this connection (disabled, an exception, an expected scanner), or null. */
function skipReason(ctx: DetectionContext, facts: ConnectFacts, detector: BehaviourDetector): SkipReason | null {
  if (!ctx.settings(detector).enabled) return 'disabled';
  if (ctx.isSkipped(detector, facts.identity, facts.destHost, facts.clientIp)) return 'exception';
  if (detector === 'an0081.scanner-tool' && ctx.isExpectedScanner(facts.identity, facts.clientIp)) return 'expected scan source';
  return null;
}

/** The connect-time detectors that do not judge this connection, and why (the policy dry run says so). */
export function skippedConnectDetectors(facts: ConnectFacts, snapshot: Pick<PolicySnapshot, 'config'>): Array<{ detector: BehaviourDetector; why: SkipReason }> {
  const ctx = detectionContext(snapshot);
  const out: Array<{ detector: BehaviourDetector; why: SkipReason }> = [];
  for (const detector of CONNECT_DETECTORS) {
    const why = skipReason(ctx, facts, detector);
    if (why !== null) out.push({ detector, why });
  }
  return out;
}

/**
 * Connect-time findings for a new connection: the judgement itself, reading `state` and changing
 * nothing (the policy dry run passes `DetectionState.readOnly()`). `flowId`, when known, goes into
 * `flowIds`.
 */
export function connectFindings(
  facts: ConnectFacts,
  state: DetectionReader,
  snapshot: Pick<PolicySnapshot, 'config'>,
  now: number,
  flowId?: string,
): Finding[] {
  const ctx = detectionContext(snapshot);
  const idKey = identityKeyOf(facts.identity, facts.clientIp);
  const destination: FlowDestinationView = { host: facts.destHost, ip: facts.destIp, port: facts.destPort };
  const recent = state.recentDetectors(idKey, now);
  const rareDays = ctx.settings('an0080.long-session').n['rareWithinDays'] ?? 7;
  const isRare = state.isRare(facts.destHost, now, rareDays);
  const signals: Signal[] = [];
  const pw = skipReason(ctx, facts, 'an0081.proxyware') !== null ? null : proxywareSignal(facts, ctx);
  if (pw) signals.push(pw);
  const sc = skipReason(ctx, facts, 'an0081.scanner-tool') !== null ? null : scannerSignal(facts, ctx, recent);
  if (sc) signals.push(sc);
  const ex = skipReason(ctx, facts, 'an0080.exfil-tool') !== null ? null : exfilSignal(facts, ctx, isRare);
  if (ex) signals.push(ex);
  const li = skipReason(ctx, facts, 'an0080.lineage') !== null ? null : lineageSignal(facts);
  if (li) signals.push(li);
  if (signals.length === 0) return [];

  const fired = [...recent, ...signals.map((s) => s.detector)];
  const findings: Finding[] = [];
  for (const s of signals) {
    const mods = modifiersFor({ identity: facts.identity, idKey, destination, now, state, ctx, exclude: s.exclude ?? [] });
    const sc2 = score({
      detector: s.detector,
      baseLevel: s.baseLevel,
      modifiers: mods,
      settings: ctx.settings(s.detector),
      otherDetectors: fired,
      gate: s.gate,
      ...(s.minLevelForAction !== undefined ? { minLevelForAction: s.minLevelForAction } : {}),
      connectTime: true,
    });
    findings.push({
      detector: s.detector,
      analytic: s.analytic,
      severity: sc2.severity,
      action: sc2.action,
      flowIds: flowId ? [flowId] : [],
      identity: findingIdentity(facts.identity, idKey),
      destination,
      evidence: s.evidence,
      reasons: [s.reason, ...sc2.reasons],
      key: `${s.detector}|${idKey}|${destination.host}`,
    });
  }
  return findings;
}

/**
 * Connect-time findings for a new connection (`connectFindings`), noted as fired in `state` so
 * sweep detectors see them as corroboration.
 */
export function evaluateConnect(
  facts: ConnectFacts,
  state: DetectionState,
  snapshot: Pick<PolicySnapshot, 'config'>,
  now: number,
  flowId?: string,
): Finding[] {
  const findings = connectFindings(facts, state, snapshot, now, flowId);
  for (const f of findings) state.noteDetector(f.identity.key, f.detector, now);
  return findings;
}

/**
 * What admission makes of connect-time findings in `mode`: the first that does more than flag
 * refuses the connection (enforce) or marks it would-block (monitor); null when none does.
 */
export function connectDecision(findings: readonly Finding[], mode: Mode, matchedRule: MatchedRule | null): Decision | null {
  const refusing = findings.find((f) => f.action !== 'flag');
  if (refusing === undefined) return null;
  return {
    verdict: mode === 'enforce' ? 'block' : 'would-block',
    reason: 'detector',
    detector: refusing.detector,
    mode,
    matchedRule,
    reasons: [...refusing.reasons],
  };
}
