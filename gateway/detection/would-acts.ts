/**
 * Live flows a monitored sweep finding named where enforce mode would have acted (a would-kill of
 * the flow, or a would-block that quarantines its identity), each with the keys of those findings.
 *
 * The sweep's grouping (DetectionState.shouldEmit) counts every flow a finding named as acted on and
 * holds back that finding's repeats for the corroboration window (an hour) unless they name another
 * flow. Monitor mode acted on nothing, so after a change that puts the flow's identity in enforce
 * mode (PUT /v1/mode, a reload, push or rollback moving its user into an enforce role) the grouping
 * kept the flow from what the same finding does in enforce mode, for up to that hour: an upload past
 * its bulk-upload budget went on uncut, and a split upload that went on over the same flows
 * quarantined nobody (the identity's next connection admitted). `review` hands such flows back to
 * the grouping (forgotten as acted on) once the running policy puts their identity in enforce mode,
 * so the next sweep's finding acts on them as on flows it names for the first time.
 *
 * Bounded by the live flows (each forgotten at its close). Nothing per chunk; at a flow's close a
 * size check; a note per monitored finding's live flow; a review per sweep that follows a policy or
 * mode change while any flow is noted (O(noted flows)).
 */
import type { Mode, PolicySnapshot } from '../../policy/types.ts';
import type { PolicySource } from '../context.ts';
import type { Flow } from '../flow/flow.ts';

export class WouldActs {
  /** Flow id → the keys of the monitored findings that named it. */
  private readonly byFlow = new Map<string, Set<string>>();
  /** The policy and override the noted flows' modes were last read under. */
  private reviewedSnapshot: PolicySnapshot | null = null;
  private reviewedOverride: Mode | null = null;

  /** Monitor mode let `flowId` run where the finding `key` would have killed it or blocked its identity. */
  note(flowId: string, key: string, policy: PolicySource): void {
    if (this.byFlow.size === 0) {
      this.reviewedSnapshot = policy.current();
      this.reviewedOverride = policy.modeOverride();
    }
    const keys = this.byFlow.get(flowId);
    if (keys === undefined) this.byFlow.set(flowId, new Set([key]));
    else keys.add(key);
  }

  /** The flow closed: nothing more to hand back. */
  forget(flowId: string): void {
    if (this.byFlow.size > 0) this.byFlow.delete(flowId);
  }

  /**
   * Before a sweep: when the policy or the mode override changed since the last look, each noted
   * live flow whose identity the running policy puts in enforce mode (`isEnforcedNow`) is handed back
   * to the grouping (`handBack(key, flowId)` per finding key) and no longer noted.
   */
  review(policy: PolicySource, active: ReadonlyMap<string, Flow>, isEnforcedNow: (flow: Flow) => boolean, handBack: (key: string, flowId: string) => void): void {
    if (this.byFlow.size === 0) return;
    const snapshot = policy.current();
    const override = policy.modeOverride();
    if (snapshot === this.reviewedSnapshot && override === this.reviewedOverride) return;
    this.reviewedSnapshot = snapshot;
    this.reviewedOverride = override;
    for (const [flowId, keys] of this.byFlow) {
      const flow = active.get(flowId);
      if (flow === undefined || flow.state !== 'active') {
        this.byFlow.delete(flowId);
        continue;
      }
      if (!isEnforcedNow(flow)) continue;
      for (const key of keys) handBack(key, flowId);
      this.byFlow.delete(flowId);
    }
  }
}
