/**
 * Finding → SPEC §5 alert record. Monitor mode records what enforce mode would have done:
 * block → would-block, kill → would-kill, with `enforced: false`.
 */
import type { AlertAction, Mode } from '../types.ts';
import type { Alert, Finding, FindingAction } from './types.ts';

/** The alert action for a finding's action under `mode`. */
export function alertActionFor(action: FindingAction, mode: Mode): AlertAction {
  if (action === 'flag' || mode === 'enforce') return action;
  return action === 'block' ? 'would-block' : 'would-kill';
}

/** The SPEC §5 alert for `finding` in `mode`, stamped `now` with the caller's `id`. */
export function toAlert(finding: Finding, mode: Mode, id: string, now: number): Alert {
  const action = alertActionFor(finding.action, mode);
  return {
    id,
    time: new Date(now).toISOString(),
    detector: finding.detector,
    analytic: finding.analytic,
    severity: finding.severity,
    action,
    enforced: mode === 'enforce' && finding.action !== 'flag',
    flowIds: finding.flowIds,
    identity: {
      user: finding.identity.user,
      host: finding.identity.host,
      roles: finding.identity.roles,
      process: finding.identity.process,
    },
    destination: finding.destination,
    evidence: finding.evidence,
    reasons: finding.reasons,
  };
}
