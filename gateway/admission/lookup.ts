/**
 * DNS for admission: the name's answer (the address to dial first and the others), admission's wait
 * for it (ended by a kill or a policy change), and whether a name would be looked up at all.
 */
import { isIPv4 } from 'node:net';
import type { Identity, PolicySnapshot, Protocol } from '../../policy/types.ts';
import type { GatewayContext } from '../context.ts';
import { errnoOf, GatewayError } from '../errors.ts';
import type { RoutedFlow } from '../flow/flow.ts';
import { dialOrder } from '../upstream/resolve.ts';
import { hostUnder, knownAddress } from './policy-facts.ts';
import type { LookedUp } from './types.ts';

export const NO_ALTERNATES: readonly string[] = Object.freeze([]);

/**
 * DNS for admission: the address, or the error code a refusal names. Never throws. A SOCKS5 UDP
 * association looks its new destinations up side by side with this (when needsLookUp) and hands
 * each answer to `admit` or `admitDestination` (`lookedUp`).
 */
export async function lookUp(ctx: Pick<GatewayContext, 'resolver'>, host: string, requester: string): Promise<LookedUp> {
  let ips: string[];
  try {
    ips = await ctx.resolver.lookup(host, requester);
  } catch (err) {
    return failedLookup(err);
  }
  // Prefer IPv4 when both families answer: most egress paths are v4-first. The rest are dialled
  // staggered after it, families interleaved (dialOrder).
  const ip = ips.find((a) => isIPv4(a)) ?? (ips[0] as string);
  return { ip, alternates: ips.length > 1 ? dialOrder(ips, ip) : NO_ALTERNATES, dnsError: null };
}

/**
 * A lookup's failure as admission reads it: the error's code, and for the gateway's own shortage
 * the errno its descriptor probe saw (EMFILE or ENFILE: the process's limit or the system's table),
 * which the log names.
 */
export function failedLookup(err: unknown): LookedUp {
  if (!(err instanceof GatewayError)) return { ip: null, alternates: NO_ALTERNATES, dnsError: 'EGW_DNS_FAILED' };
  if (err.code !== 'EGW_OUT_OF_DESCRIPTORS') return { ip: null, alternates: NO_ALTERNATES, dnsError: err.code };
  return { ip: null, alternates: NO_ALTERNATES, dnsError: err.code, shortage: errnoOf(err) };
}

/** What admission's wait for a lookup ends with when its flow is killed meanwhile (the answer is not used). */
const KILLED_LOOKUP: LookedUp = Object.freeze({ ip: null, alternates: NO_ALTERNATES, dnsError: null });

/** What admission's wait for a lookup ends with when the policy changed meanwhile (the lookup goes on). */
export const POLICY_CHANGED: LookedUp = Object.freeze({ ip: null, alternates: NO_ALTERNATES, dnsError: null });

/**
 * Admission's wait for `lookup`, its flow's: a kill meanwhile (FlowTable.kill calls `flow.abort`)
 * ends the wait at once, so the client is answered what the kill means then, not when the lookup
 * ends: a name whose servers do not answer held it for `resolver.timeoutMs`, and at a drain's end
 * past the process's exit (a SOCKS5 client got no reply; an HTTP CONNECT held the exit). A reload
 * or mode switch (refuseLookupsAfterChange) ends it with POLICY_CHANGED, the flow still live. One
 * closure per looked-up flow (one more per change that woke it), registered only while the lookup
 * is under way.
 */
export function lookUpUntilKilled(flow: RoutedFlow, lookup: Promise<LookedUp>): Promise<LookedUp> {
  return new Promise((resolve) => {
    const onKill = (): void => {
      flow.isLookingUp = false;
      resolve(flow.state === 'closed' ? KILLED_LOOKUP : POLICY_CHANGED);
    };
    flow.abort = onKill;
    flow.isLookingUp = true;
    void lookup.then((answer) => {
      if (flow.abort === onKill) {
        flow.abort = null;
        flow.isLookingUp = false;
      }
      resolve(answer);
    });
  });
}

/**
 * After a reload, push, rollback or mode switch: wake admission's wait of every flow whose name is
 * being looked up, so each is judged on the policy running now at once (a name it can no longer
 * admit refused then, unresolved), not when its lookup ends. O(live flows), once per change.
 */
export function refuseLookupsAfterChange(ctx: Pick<GatewayContext, 'flows'>): void {
  for (const flow of ctx.flows.activeFlows().values()) {
    if (flow.isLookingUp) flow.abort?.('policy-change');
  }
}

/**
 * Whether admission would look `host` up: not for an IP literal or a `resolver.hosts` name, nor (enforce
 * mode) for a name no allow entry of these roles can admit, which is refused unlooked-up (step 4).
 * `login`: the SOCKS5 client's address and the policy its identity was resolved under.
 */
export function needsLookUp(ctx: GatewayContext, identity: Identity, protocol: Protocol, host: string, port: number, login: { readonly clientIp: string; readonly since: PolicySnapshot }): boolean {
  const snapshot = ctx.policy.current();
  if (knownAddress(snapshot, host) !== null) return false;
  // The running policy's roles and host name: the identity may have been resolved under an earlier one.
  const roles = snapshot.rolesFor(identity.user, hostUnder(ctx, snapshot, identity, login.clientIp, login.since));
  const mode = snapshot.modeFor(roles, ctx.policy.modeOverride());
  return mode !== 'enforce' || snapshot.mayAllowName(roles, host, port, protocol);
}
