/**
 * A policy write's `previousVersion` (the audit's `version A -> B`) and the view it answers with are
 * read in the write's own turn of the policy writer's queue (gateway/policy-writer.ts), not around
 * it. Real PolicyStore, PolicyWriter and control port; a SIGHUP's reload queued ahead of a PUT, and
 * one queued behind it, as main.ts queues them.
 *
 * Regression: the PUT read the running version when it was called, before it waited its turn: a
 * reload queued ahead swapped 1 -> 2, the PUT 2 -> 3, and the PUT said `previousVersion: 1`
 * (audited `version 1 -> 3`).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AgentRegistry } from '../../../gateway/agent-registry.ts';
import { AlertStore } from '../../../gateway/alerts/alert-store.ts';
import { AuditLog } from '../../../gateway/audit-log.ts';
import { createControlPort } from '../../../gateway/control-port.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import { PolicyStore } from '../../../gateway/policy-store.ts';
import { PolicyWriter } from '../../../gateway/policy-writer.ts';

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };
const flows: FlowTable[] = [];

function gateway() {
  const table = new FlowTable({ sink: { write: () => undefined, flush: async () => {} } });
  flows.push(table);
  const store = new PolicyStore('mode: monitor\n', { author: 'startup', source: 'startup' });
  const writer = new PolicyWriter(store, null, quiet);
  const port = createControlPort({ flows: table, policy: writer, alerts: new AlertStore(), audit: new AuditLog({ keep: 10 }), agents: new AgentRegistry(), isReady: () => true });
  return { writer, port };
}

afterEach(() => {
  for (const t of flows.splice(0)) t.stop();
});

describe('a policy write reads its versions in its own turn', () => {
  it('a reload queued ahead of a PUT: the PUT says 2 -> 3, not 1 -> 3', async () => {
    const { writer, port } = gateway();
    const sighup = writer.reloadFile('mode: enforce\n', { author: 'SIGHUP', source: 'file' });
    const put = port.replacePolicy({ mode: 'monitor' }, { author: 'ops' });
    expect(await sighup).toMatchObject({ ok: true, version: 2 });
    const res = await put;
    expect(res).toMatchObject({ ok: true, previousVersion: 2, policy: { version: 3, author: 'ops', mode: 'monitor' } });
  });

  it('a rollback queued behind a reload: 2 -> 3, its view its own', async () => {
    const { writer, port } = gateway();
    const sighup = writer.reloadFile('mode: enforce\n', { author: 'SIGHUP', source: 'file' });
    const rollback = port.rollbackPolicy(1, 'ops');
    await sighup;
    expect(await rollback).toMatchObject({ ok: true, previousVersion: 2, policy: { version: 3, author: 'ops', mode: 'monitor' } });
  });

  it('a reload queued behind a PUT: the PUT answers with its own version, 1 -> 2', async () => {
    const { writer, port } = gateway();
    const put = port.replacePolicy({ mode: 'enforce' }, { author: 'ops' });
    const sighup = writer.reloadFile('mode: monitor\n', { author: 'SIGHUP', source: 'file' });
    expect(await put).toMatchObject({ ok: true, previousVersion: 1, policy: { version: 2, author: 'ops', mode: 'enforce' } });
    expect(await sighup).toMatchObject({ ok: true, version: 3 });
  });
});
