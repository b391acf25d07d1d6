/**
 * The dry run behind `POST /v1/policy/evaluate`: the verdict a new connection would get under the
 * running policy, with the rule that matched and why, then the connect-time detection admission
 * would run (quarantine, proxyware, scanner and exfil tools, lineage: detection/dry-run.ts) over the
 * running gateway's detection state, read and not changed, and its refusal of a dial to its own
 * listeners. With `identity.requireAuth` on, a connection that names no user is refused
 * `auth-required` first, as admission's step 1 refuses it (unauthenticated). No DNS (a name's address comes from
 * `resolver.hosts`, or from the caller's `ip`; a name under `localhost` is 127.0.0.1, as the
 * gateway's resolver answers it without DNS), no flow opened, nothing counted, no alert raised.
 */
import { isIP } from 'node:net';
import { parseIp } from '../policy/cidr.ts';
import type { ConnectFacts, Decision, Identity, Mode, PolicySnapshot } from '../policy/types.ts';
import { ANONYMOUS, loginRefusal } from './admission/refusals.ts';
import type { EvaluateOutcome, EvaluateQuery } from './control.ts';
import { dryRunConnect, type LiveDetection } from './detection/dry-run.ts';
import { HostInventory } from './identity/host-inventory.ts';
import { parseAuthority } from './protocol/authority.ts';
import { isUnderLocalhost, LOCALHOST_NAME_ADDRESS } from './upstream/resolve.ts';

/**
 * The running gateway's self-dial refusal (admission/self-dial.ts selfDialDecision) for `ip:port`, or null;
 * none for the CLI, which has no listeners.
 */
export type SelfDial = (ip: string, port: number, mode: Mode) => Decision | null;

/**
 * The client address of a dry run that names no source (`egressgate evaluate` without --source,
 * `POST /v1/policy/evaluate` without `source`): a client with no address, which no identity.hosts
 * entry, exceptions host or expectedScanSources host names (the inventory is not consulted either).
 * The CLI used 127.0.0.1 and the API 0.0.0.0, so an exception for host 127.0.0.1 applied to one only.
 */
export const NO_SOURCE_IP = '0.0.0.0';

/**
 * Why a dry run refuses an empty user name: no account can have one (identity.users names are not
 * empty), and the gateway refuses a login naming it (407 bad-credentials) in any mode. Answered
 * `user: ""` as if logged in, evaluate said `allow` where the connection got 407.
 */
export const EMPTY_USER = 'is empty: the gateway refuses a login with an empty user name (407 bad-credentials); leave it out for a client that did not log in';

const inventories = new WeakMap<PolicySnapshot, HostInventory>();

function inventoryOf(snapshot: PolicySnapshot): HostInventory {
  let inv = inventories.get(snapshot);
  if (!inv) {
    inv = new HostInventory(snapshot.config.identity.hosts);
    inventories.set(snapshot, inv);
  }
  return inv;
}

/**
 * The address a dry run judges the name `host` (lower case, no trailing dot: parseAuthority) on
 * without DNS, and where it came from: the policy's `resolver.hosts`, else for a name under
 * `localhost` the address the gateway's resolver answers it first without asking DNS
 * (upstream/resolve.ts isUnderLocalhost), else null: only a lookup would tell.
 */
export function addressWithoutDns(snapshot: PolicySnapshot, host: string): { ip: string; source: 'resolver.hosts' | 'localhost' } | null {
  const ip = snapshot.staticAddress(host);
  if (ip !== null) return { ip, source: 'resolver.hosts' };
  return isUnderLocalhost(host) ? { ip: LOCALHOST_NAME_ADDRESS, source: 'localhost' } : null;
}

/**
 * Admission's step 1 for a dry run (`egressgate evaluate`, `POST /v1/policy/evaluate`): with
 * `identity.requireAuth` on, a connection that names no user has not logged in, and the gateway
 * refuses it `auth-required` in every mode (407, SOCKS5 method 0xFF) under the anonymous identity,
 * before any role is looked at: the host inventory's roles for its source do not admit it. Returns
 * that identity and refusal, or null when the connection gets past step 1 (a user named is taken as
 * logged in: credentials, a trusted header or a client certificate name one alike).
 */
export function unauthenticatedRefusal(snapshot: PolicySnapshot, user: string | null, modeOverride: Mode | null): { identity: Identity; decision: Decision } | null {
  if (!snapshot.config.identity.requireAuth || (user !== null && user !== '')) return null;
  const identity: Identity = { ...ANONYMOUS, roles: snapshot.rolesFor(null, null) };
  const refusal = loginRefusal(snapshot.modeFor(identity.roles, modeOverride));
  const decision: Decision = { ...refusal, reasons: [...refusal.reasons, 'identity.requireAuth is on and no user was named: the host inventory does not log a client in'] };
  return { identity, decision };
}

/**
 * Evaluate one hypothetical connection against `snapshot` at time `now`; `live` is the running
 * gateway's detection state (null: none, judged as by `egressgate evaluate`).
 */
export function evaluateConnection(
  snapshot: PolicySnapshot,
  modeOverride: Mode | null,
  q: EvaluateQuery,
  now: number,
  live: LiveDetection | null,
  selfDial: SelfDial | null = null,
): EvaluateOutcome {
  const dest = parseAuthority(q.dest);
  if (!dest) return { ok: false, message: `dest must be host:port (IPv6 in brackets), got ${JSON.stringify(q.dest)}` };
  if (q.user === '') return { ok: false, message: `user ${EMPTY_USER}` };
  if (q.source !== undefined && isIP(q.source) === 0) return { ok: false, message: 'source must be an IP address' };
  if (q.ip !== undefined && isIP(q.ip) === 0) return { ok: false, message: 'ip must be an IP address' };
  const sourceIp = q.source ?? null;
  const refused = unauthenticatedRefusal(snapshot, q.user ?? null, modeOverride);
  const parsedSource = sourceIp && !refused ? parseIp(sourceIp) : null;
  const host = parsedSource ? (inventoryOf(snapshot).lookup(parsedSource)?.name ?? null) : null;
  const user = refused ? null : (q.user ?? null);
  const identity: Identity = refused?.identity ?? {
    user,
    host,
    roles: snapshot.rolesFor(user, host),
    process: q.process
      ? {
          pid: 0,
          name: q.process,
          exe: null,
          cmdline: null,
          user: null,
          uid: null,
          loginuid: null,
          ppid: null,
          parentName: null,
          parentExe: null,
        }
      : null,
  };
  const destIp = q.ip ?? (dest.isIp ? dest.host : (addressWithoutDns(snapshot, dest.host)?.ip ?? null));
  const protocol = q.protocol ?? 'connect';
  const facts: ConnectFacts = {
    protocol,
    clientIp: sourceIp ?? NO_SOURCE_IP,
    clientPort: 0,
    identity,
    destHost: dest.host,
    destPort: dest.port,
    destIp,
  };
  // Admission refuses a dial to the gateway itself before the policy (step 6), in any mode.
  const self = refused === null && destIp !== null && selfDial ? selfDial(destIp, dest.port, snapshot.modeFor(identity.roles, modeOverride)) : null;
  const { decision, findings, detectors } = dryRunConnect(snapshot, facts, refused?.decision ?? self ?? snapshot.decide(facts, now, modeOverride), now, live);
  const reasons = [...decision.reasons];
  if (destIp === null) reasons.push('address unknown without DNS: deny ranges and CIDR entries not checked (pass "ip" to check them)');
  return {
    ok: true,
    version: snapshot.version,
    decision: { ...decision, reasons },
    identity: { user, host, roles: identity.roles, process: q.process ?? null },
    destination: { host: dest.host, ip: destIp, port: dest.port },
    protocol,
    findings,
    detectors,
  };
}
