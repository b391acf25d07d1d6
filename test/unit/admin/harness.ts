/**
 * Builds the admin API over real parts (FlowTable, PolicyStore, AlertStore, AuditLog, GatewayStats,
 * AgentRegistry, createControlPort) for route tests with inject(). No sockets unless a test adds them.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { type AdminOptions, buildAdmin } from '../../../admin/app.ts';
import { AgentRegistry } from '../../../gateway/agent-registry.ts';
import { type AlertLike, AlertStore } from '../../../gateway/alerts/alert-store.ts';
import { AuditLog } from '../../../gateway/audit-log.ts';
import type { ControlPort } from '../../../gateway/control.ts';
import { createControlPort } from '../../../gateway/control-port.ts';
import type { FlowRecord } from '../../../gateway/flow/flow.ts';
import { FlowTable } from '../../../gateway/flow/flow-table.ts';
import { PolicyStore } from '../../../gateway/policy-store.ts';
import { GatewayStats } from '../../../gateway/stats.ts';
import { loadConfig } from '../../../policy/load-config.ts';

export const TOKENS = {
  admin: 'adm-token-0123456789',
  read: 'read-token-0123456789',
  agentScope: 'agent-scope-token-012345',
  ws17: 'ws17-agent-token-0123',
  env: 'env-admin-token-0123456',
} as const;

export const sha256hex = (s: string): string => createHash('sha256').update(s).digest('hex');

/** The policy every route test starts from (YAML, through the real loader). */
export const BASE_POLICY = `
mode: monitor
admin:
  maxAuthFailuresPerSource: 0      # route tests send many bad tokens from one address
  tokens:
    - { name: ops, token: "${TOKENS.admin}", scope: admin }
    - { name: soc, tokenSha256: "${sha256hex(TOKENS.read)}", scope: read }
    - { name: feeder, token: "${TOKENS.agentScope}", scope: agent }
identity:
  hosts:
    - { cidr: 10.1.0.0/16, name: build-farm, roles: [ci] }
  agents:
    - { name: ws-17, token: "${TOKENS.ws17}", sources: [10.2.3.17/32, 127.0.0.1/32] }
roles:
  developer:
    allow:
      - { host: "*.example.com", ports: [443] }
      - { host: "git.example.org", ports: [22, 443] }
  ci:
    mode: enforce
    allow: [ { host: "pkgs.example.net", ports: [80, 443] } ]
defaultRoles: [developer]
resolver:
  hosts: { "files.example.test": 127.0.0.1 }
`;

export interface Harness {
  app: FastifyInstance;
  port: ControlPort;
  flows: FlowTable;
  policy: PolicyStore;
  alerts: AlertStore<AlertLike>;
  audit: AuditLog;
  stats: GatewayStats;
  closed: FlowRecord[];
  ready: { value: boolean };
  /** Fresh flows, policy, alerts, audit and stats behind the same app. */
  reset(): void;
  close(): Promise<void>;
}

/** Headers with a Bearer token. */
export function bearer(token: string, extra: Record<string, string> = {}): Record<string, string> {
  return { authorization: `Bearer ${token}`, ...extra };
}

/** A harness over BASE_POLICY (or `policyText`). */
export async function makeHarness(opts: { policyText?: string; admin?: AdminOptions } = {}): Promise<Harness> {
  const loaded = loadConfig(opts.policyText ?? BASE_POLICY);
  if (!loaded.ok) throw new Error(`test policy invalid: ${JSON.stringify(loaded.errors)}`);
  const config = loaded.config;
  const ready = { value: true };
  const parts = () => {
    const closed: FlowRecord[] = [];
    const flows = new FlowTable({ sink: { write: (r) => void closed.push(r), flush: async () => {} } });
    const policy = new PolicyStore(structuredClone(config), { author: 'startup', source: 'startup' });
    const alerts = new AlertStore<AlertLike>({ keep: 100 });
    const audit = new AuditLog({ keep: 100 });
    const stats = new GatewayStats();
    stats.attachFlowTable(flows);
    stats.attachAlerts(alerts);
    const port = createControlPort({ flows, policy, alerts, audit, stats, agents: new AgentRegistry(), isReady: () => ready.value });
    return { closed, flows, policy, alerts, audit, stats, port };
  };
  let cur = parts();
  // Building the app compiles every schema (slow on a loaded machine): tests that need a fresh
  // gateway state call reset(), which swaps the parts behind the same app.
  const port = new Proxy({} as ControlPort, { get: (_t, key: keyof ControlPort) => cur.port[key] });
  const app = await buildAdmin(port, {
    envToken: TOKENS.env,
    heartbeatMs: 200,
    // No slow-down in route tests (its own test turns it on); free attempts keep 401 tests fast.
    failureDelay: { freeAttempts: 1_000, baseMs: 1, maxMs: 1 },
    ...opts.admin,
  });
  const h: Harness = {
    app,
    ...cur,
    port,
    ready,
    reset: () => {
      cur.flows.stop();
      cur = parts();
      Object.assign(h, { ...cur, port });
    },
    close: async () => {
      await app.close();
      cur.flows.stop();
      await cur.audit.close();
    },
  };
  return h;
}
