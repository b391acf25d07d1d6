/**
 * What admission asks of the policy snapshot about a flow: the facts it decides on, the address it
 * knows without DNS, the parent proxy, and the policy running now for a flow admission holds.
 */
import { isIP } from 'node:net';
import type { Config } from '../../policy/config.ts';
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

/**
 * Whether a config names `upstream` as a parent proxy URL (its top-level `upstream` or a role's), as
 * written, credentials included: once per pooled parent at a reload (OriginAgents.keepOnly), never per flow.
 */
export function namesUpstream(config: Readonly<Config>, upstream: string): boolean {
  if (config.upstream === upstream) return true;
  for (const role of Object.values(config.roles)) if (role.upstream === upstream) return true;
  return false;
}

/** What the policy decides on for a flow's destination (`identity`: the flow's unless given). */
export function factsOf(flow: Flow, protocol: Protocol, destHost: string, destPort: number, destIp: string | null, identity: Identity = flow.identity): ConnectFacts {
  return { protocol, clientIp: flow.client.ip, clientPort: flow.client.port, identity, destHost, destPort, destIp };
}

/**
 * `identity` with the roles `snapshot` gives its user and `host` (the same object when they are the
 * ones it has). Roles are the policy's (identity-resolver step 9): an identity resolved under an
 * earlier policy (a SOCKS5 login before its request, a UDP association's, its later destinations)
 * is judged with the running policy's roles, as a new connection of the same user would be. `host`:
 * the one the running policy's `identity.hosts` gives the client (`IdentityResolver.hostOf`) where
 * the identity's host came from there (SOCKS5's always does), else its own.
 */
export function identityUnder(snapshot: PolicySnapshot, identity: Identity, host: string | null = identity.host): Identity {
  const roles = snapshot.rolesFor(identity.user, host);
  if (host !== identity.host) return { ...identity, host, roles };
  return sameRoles(roles, identity.roles) ? identity : { ...identity, roles };
}

/**
 * The host name a SOCKS5 identity resolved under `since` (its login's policy) has under `snapshot`:
 * its own while that policy runs, else the one the running `identity.hosts` gives `clientIp` (a
 * SOCKS5 client's host comes only from there), as a new connection from that address would get.
 */
export function hostUnder(ctx: Pick<GatewayContext, 'identity'>, snapshot: PolicySnapshot, identity: Identity, clientIp: string, since: PolicySnapshot | undefined): string | null {
  return since === snapshot ? identity.host : ctx.identity.hostOf(clientIp, snapshot);
}

/** The address of an IP literal or a `resolver.hosts` name, without DNS; null = look it up. */
export function knownAddress(snapshot: PolicySnapshot, host: string): string | null {
  if (isIP(host)) return host;
  return snapshot.staticAddress(host) ?? null;
}

/**
 * The policy running now for a flow admission holds: its snapshot and override, and the flow's roles
 * under it (roles are the policy's: identity-resolver step 9) with the mode they give. `hostFrom`:
 * the policy whose `identity.hosts` gave the flow its host (no claim named one; SOCKS5's always):
 * the host becomes the running `identity.hosts`' answer for the client's address, as a new
 * connection's would be (a reload during the lookup may give it another host). Null when a claim
 * named the host: it stays.
 */
export function runningPolicy(ctx: GatewayContext, flow: RoutedFlow, hostFrom: PolicySnapshot | null): { snapshot: PolicySnapshot; override: Mode | null; mode: Mode } {
  const snapshot = ctx.policy.current();
  const override = ctx.policy.modeOverride();
  const host = hostFrom === null ? flow.identity.host : hostUnder(ctx, snapshot, flow.identity, flow.client.ip, hostFrom);
  const identity = identityUnder(snapshot, flow.identity, host);
  if (identity !== flow.identity) ctx.flows.setIdentity(flow, identity);
  return { snapshot, override, mode: snapshot.modeFor(flow.identity.roles, override) };
}

function sameRoles(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}

/** Enforce mode's refusal before any lookup: a name no allow entry of the flow's roles can admit (step 4). */
export function isRefusedUnresolved(snapshot: PolicySnapshot, mode: Mode, flow: Flow, host: string, port: number, protocol: Protocol): boolean {
  return mode === 'enforce' && knownAddress(snapshot, host) === null && !snapshot.mayAllowName(flow.identity.roles, host, port, protocol);
}
