/**
 * What admission asks of the policy snapshot about a flow: the facts it decides on, the address it
 * knows without DNS, the parent proxy, and the policy running now for a flow admission holds.
 */
import { isIP } from 'node:net';
import type { ConnectFacts, Identity, Mode, PolicySnapshot, Protocol } from '../../policy/types.ts';
import type { GatewayContext } from '../context.ts';
import type { Flow, RoutedFlow } from '../flow/flow.ts';

/** The parent proxy egress of `roles` goes through: the first of them that names one, else the top-level one (no array per flow). */
export function upstreamOf(snapshot: PolicySnapshot, roles: readonly string[]): string | null {
  for (const r of roles) {
    const upstream = snapshot.config.roles[r]?.upstream;
    if (upstream) return upstream;
  }
  return snapshot.config.upstream;
}

/** What the policy decides on for a flow's destination (`identity`: the flow's unless given). */
export function factsOf(flow: Flow, protocol: Protocol, destHost: string, destPort: number, destIp: string | null, identity: Identity = flow.identity): ConnectFacts {
  return { protocol, clientIp: flow.client.ip, clientPort: flow.client.port, identity, destHost, destPort, destIp };
}

/**
 * `identity` with the roles `snapshot` gives its user and host (the same object when they are the
 * ones it has). Roles are the policy's (identity-resolver step 9): an identity resolved under an
 * earlier policy (a SOCKS5 login before its request, a UDP association's, its later destinations)
 * is judged with the running policy's roles, as a new connection of the same user would be.
 */
export function identityUnder(snapshot: PolicySnapshot, identity: Identity): Identity {
  const roles = snapshot.rolesFor(identity.user, identity.host);
  return sameRoles(roles, identity.roles) ? identity : { ...identity, roles };
}

/** The address of an IP literal or a `resolver.hosts` name, without DNS; null = look it up. */
export function knownAddress(snapshot: PolicySnapshot, host: string): string | null {
  if (isIP(host)) return host;
  return snapshot.staticAddress(host) ?? null;
}

/**
 * The policy running now for a flow admission holds: its snapshot and override, and the flow's roles
 * under it (roles are the policy's: identity-resolver step 9) with the mode they give.
 */
export function runningPolicy(ctx: GatewayContext, flow: RoutedFlow): { snapshot: PolicySnapshot; override: Mode | null; mode: Mode } {
  const snapshot = ctx.policy.current();
  const override = ctx.policy.modeOverride();
  const roles = snapshot.rolesFor(flow.identity.user, flow.identity.host);
  if (!sameRoles(roles, flow.identity.roles)) ctx.flows.setIdentity(flow, { ...flow.identity, roles });
  return { snapshot, override, mode: snapshot.modeFor(flow.identity.roles, override) };
}

function sameRoles(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}

/** Enforce mode's refusal before any lookup: a name no allow entry of the flow's roles can admit (step 4). */
export function isRefusedUnresolved(snapshot: PolicySnapshot, mode: Mode, flow: Flow, host: string, port: number, protocol: Protocol): boolean {
  return mode === 'enforce' && knownAddress(snapshot, host) === null && !snapshot.mayAllowName(flow.identity.roles, host, port, protocol);
}
