/**
 * Composition root: the only module that wires the data plane (gateway/), the policy engine
 * (policy/) and the control plane (admin/) together. `startGateway` is what `egressgate serve`
 * (gateway/commands/serve.ts) and the integration tests run:
 *
 *  1. take a loaded config (and the flag overrides)
 *  2. open the flow log, build the FlowTable and the PolicyStore
 *  3. build the GatewayContext (identity, attribution, resolver, detection)
 *  4. bind the HTTP proxy, the SOCKS5 gateway and the admin API
 *  5. hand back reload (SIGHUP), log reopening and drain (SIGTERM) for the command to call
 */
import { newViaName } from './gateway/via.ts';
import { readFile } from 'node:fs/promises';
import type { Server as HttpServer } from 'node:http';
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { buildAdmin, generateAdminToken } from './admin/app.ts';
import { type OutsideToken, repeatsOutsideToken, tokenDigest } from './admin/auth.ts';
import { LocalAttributor } from './agent/attribution.ts';
import { refuseDialsAfterChange, refuseLookupsAfterChange, selfDialDecision } from './gateway/admission.ts';
import { attachAlertSinks } from './gateway/alerts/alert-sinks.ts';
import { AlertStore } from './gateway/alerts/alert-store.ts';
import { AuditLog } from './gateway/audit-log.ts';
import type { GatewayContext, Logger, ProcessAttributor, Resolver } from './gateway/context.ts';
import { createControlPort } from './gateway/control-port.ts';
import { GatewayStats, type ListenerLabel } from './gateway/stats.ts';
import { DescriptorShortage } from './gateway/descriptor-shortage.ts';
import { createDetectionEngine, type DetectionEngine } from './gateway/detection/detection-engine.ts';
import { FlowLog } from './gateway/flow/flow-log.ts';
import type { AppendLogEvent } from './gateway/append-log.ts';
import { FlowTable } from './gateway/flow/flow-table.ts';
import { createIdentityResolver } from './gateway/identity/identity-resolver.ts';
import { closeOriginPools, createHttpProxy, pruneOriginPools, withConnectFront } from './gateway/listeners/http-proxy.ts';
import { carryRemoteToTls, wrapWithProxyProtocol } from './gateway/listeners/proxy-protocol-front.ts';
import { readTlsFiles, TlsListenerFiles } from './gateway/listeners/tls-files.ts';
import { endHandshakes, trackHandshakes } from './gateway/listeners/tls-handshakes.ts';
import { gateConnections, SourceConnections } from './gateway/listeners/source-limit.ts';
import { createSocksServer } from './gateway/listeners/socks5.ts';
import { createLogger } from './gateway/log.ts';
import { type PolicyChange, PolicyStore } from './gateway/policy-store.ts';
import { PolicyWriter } from './gateway/policy-writer.ts';
import { restartOnlyChanges } from './gateway/restart-settings.ts';
import { createDnsResolver } from './gateway/upstream/resolve.ts';
import { UnansweredAddresses } from './gateway/upstream/unanswered.ts';
import { UdpRelayAddresses } from './gateway/udp-relay-addresses.ts';
import type { Config } from './policy/config.ts';
import { parseHostPort } from './policy/config-schema.ts';
import { configFileFormat } from './policy/load-config.ts';
import type { Alert } from './policy/detectors/types.ts';
import type { Mode } from './policy/types.ts';

export interface StartOptions {
  config: Config;
  /** The file SIGHUP reloads, if any. */
  configPath?: string | null;
  /** The config's text as loaded (kept in the policy history). */
  configText?: string | null;
  mode?: Mode;
  http?: string;
  socks?: string;
  admin?: string;
  https?: string;
  /** Extra admin token (EGRESSGATE_ADMIN_TOKEN). */
  adminToken?: string | null;
  /** Seams for tests. */
  resolver?: Resolver;
  attributor?: ProcessAttributor | null;
  log?: Logger;
  now?: () => number;
  /** Bound on the identities whose new-flow rate is tracked (FlowTable; default MAX_RATE_KEYS). */
  maxRateKeys?: number;
}

export interface RunningGateway {
  http: string;
  /** The TLS HTTP proxy listener (`listen.https` with `tls`), or null. */
  https: string | null;
  socks: string;
  admin: string;
  /** The admin token generated when none was configured (null otherwise). */
  generatedAdminToken: string | null;
  flows: FlowTable;
  policy: PolicyStore;
  alerts: AlertStore<Alert>;
  ctx: GatewayContext;
  /** Reload from the config file (SIGHUP). */
  reloadFromFile(author?: string): Promise<{ ok: boolean; errors?: Array<{ path: string; message: string }> }>;
  /** Open the flow log and audit log files again at their paths (SIGHUP; log rotation). */
  reopenLogs(): Promise<void>;
  /**
   * Stop accepting, let flows finish within graceMs, kill the rest (closeReason `killReason`,
   * default "shutdown"), flush the logs, close.
   */
  drain(graceMs?: number, killReason?: string): Promise<void>;
}

/**
 * A listener's address read as `check` and `serve`'s flags validate it (parseHostPort: surrounding
 * blanks trimmed, IPv6 in brackets): a second reading kept the blanks, so an address that passed
 * validation (`" 127.0.0.1:3128"`) failed its bind (`getaddrinfo ENOTFOUND`). `name` says what set it.
 */
function splitHostPort(text: string, name: string): { host: string; port: number } {
  const r = parseHostPort(text);
  if ('error' in r) throw new Error(`${name}: ${r.error}`);
  return r;
}

function formatAddress(addr: AddressInfo | string | null): string {
  if (!addr || typeof addr === 'string') return String(addr);
  return addr.family === 'IPv6' ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`;
}

/**
 * A listener that could not bind (EADDRINUSE, EACCES, EADDRNOTAVAIL), its message led by what set its
 * address: `--socks: listen EADDRINUSE: address already in use 127.0.0.1:1080`. node's message names
 * the address only, and with three listeners on one host the operator had to guess which to move.
 * The errno code stays on the error.
 */
function listenError(err: unknown, name: string): Error {
  if (!(err instanceof Error)) return new Error(`${name}: ${String(err)}`);
  return Object.assign(new Error(`${name}: ${err.message}`, { cause: err }), { code: (err as NodeJS.ErrnoException).code });
}

/** What set a listener's address: the serve flag when given (StartOptions), else the config key. */
function listenerName(key: 'http' | 'socks' | 'admin', fromFlag: string | undefined): string {
  return fromFlag === undefined ? `listen.${key}` : `--${key}`;
}

function listen(server: NetServer | HttpServer, where: string, name: string): Promise<string> {
  const { host, port } = splitHostPort(where, name);
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(listenError(err, name));
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.removeListener('error', onError);
      resolve(formatAddress(server.address()));
    });
  });
}

/** How long the drain waits for the flow log to take the last records at least, its grace over or not. */
const LOG_MOMENT_MS = 1000;
/** How long the drain's end waits for the admin API's requests under way before it closes their connections. */
const ADMIN_CLOSE_MS = 1000;

/** Close reasons of failed upstream connects → the closed label set of gw_upstream_cx_connect_fail_total. */
const CONNECT_FAIL: Record<string, 'timeout' | 'refused' | 'unreachable' | 'dns' | 'reset' | 'upstream-proxy'> = {
  'connect-timeout': 'timeout',
  'connection-refused': 'refused',
  unreachable: 'unreachable',
  'dns-failed': 'dns',
  'upstream-reset': 'reset',
  'upstream-proxy': 'upstream-proxy',
};

/** gw_downstream_cx_total / _active{listener} for every connection `server` accepts. */
function countConnections(stats: GatewayStats, server: NetServer | HttpServer, label: ListenerLabel): void {
  server.on('connection', (socket: NodeJS.EventEmitter) => {
    stats.downstreamOpened(label);
    socket.once('close', () => stats.downstreamClosed(label));
  });
}

/** One metrics registry fed by the flow table, the alert store, the identity resolver and the listeners. */
function createStats(
  flows: FlowTable,
  alerts: AlertStore<Alert>,
  identity: ReturnType<typeof createIdentityResolver>,
  servers: ReadonlyArray<readonly [NetServer | HttpServer, ListenerLabel]>,
): GatewayStats {
  const stats = new GatewayStats();
  stats.attachFlowTable(flows);
  stats.attachAlerts(alerts);
  stats.attachIdentity(identity);
  for (const [server, label] of servers) countConnections(stats, server, label);
  flows.on('close', (flow: { closeReason: string | null; isConnected: boolean }) => {
    const type = flow.isConnected ? undefined : CONNECT_FAIL[flow.closeReason ?? ''];
    if (type) stats.upstreamConnectFailed(type);
  });
  return stats;
}

/**
 * One log line per change of state of the flow log or the audit log (append-log.ts). `consequence`
 * says what a failure means for traffic (the flow log's onError); the audit log has none.
 */
function logAppendLogEvent(log: Logger, what: 'flow log' | 'audit log', e: AppendLogEvent, consequence: (willRetry: boolean) => { text: string; fields: Record<string, unknown> }): void {
  switch (e.event) {
    case 'failed': {
      const c = consequence(e.willRetry);
      log.error({ path: e.path, code: e.error, why: e.message, ...c.fields }, `${what} write failed: records are held in memory${c.text}`);
      return;
    }
    case 'recovered':
      log.info({ path: e.path, records: e.records, failedForMs: e.failedForMs }, `${what} writable again: held records written`);
      return;
    case 'dropping':
      log.error({ path: e.path, backlogBytes: e.backlogBytes }, `${what} backlog full: further records are dropped until it recovers`);
      return;
    case 'lost':
      log.error({ path: e.path, records: e.records }, `${what} still failing at shutdown: records not written`);
      return;
    case 'reopened':
      log.info({ path: e.path }, `${what} reopened`);
      return;
    case 'unlocked':
      log.warn({ path: e.path, why: e.error }, `${what} not locked (${e.path}.lock could not be made): another gateway writing the same file would not be noticed`);
      return;
    case 'replaced':
      // Records written to a file removed from under us were lost without an error: say so, and how many came back.
      log.warn({ path: e.path, records: e.records, unreadBytes: e.unreadBytes }, `${what} file was removed: writing to a new file at its path, with the records written to the removed one since it was last seen`);
      return;
  }
}

/**
 * A log file opened at start, its failure named by the config key that gave its path: `flowLog.path:
 * /tmp` said only `cannot start: EISDIR: illegal operation on a directory, open '/tmp'`.
 */
async function openedAt<T>(key: string, open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (err) {
    throw new Error(`${key}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** What a flow-log failure means for new flows, by the policy's flowLog.onError. */
function flowLogConsequence(policy: PolicyStore | null, willRetry: boolean): { text: string; fields: Record<string, unknown> } {
  const onError = policy?.current().config.flowLog.onError ?? 'refuse';
  const until = willRetry ? 'until it recovers (reopened every second)' : 'until the gateway is restarted (stdout cannot be reopened)';
  const then = onError === 'refuse' ? `new flows are refused (503) ${until}` : 'new flows are still admitted (flowLog.onError: admit)';
  return { text: `; ${then}`, fields: { onError } };
}

const NO_CONSEQUENCE = (): { text: string; fields: Record<string, unknown> } => ({ text: '', fields: {} });

/** Start a gateway in this process. Used by `serve` and by the integration tests. */
export async function startGateway(opts: StartOptions): Promise<RunningGateway> {
  const config = opts.config;
  const log = opts.log ?? createLogger('info');
  // An entry repeating EGRESSGATE_ADMIN_TOKEN would never be its own principal (the env token
  // authenticates first): refused before anything is bound, as the file's reload refuses it.
  const outsideTokens: OutsideToken[] = opts.adminToken ? [{ label: 'EGRESSGATE_ADMIN_TOKEN', digest: tokenDigest(opts.adminToken) }] : [];
  const repeated = repeatsOutsideToken(config, outsideTokens);
  if (repeated.length > 0) throw new Error(`invalid policy: ${repeated.map((e) => `${e.path}: ${e.message}`).join('; ')}`);
  // 2. flow log, flow table, policy
  // The policy store exists by the time a write can fail; its current onError is what applies.
  let policyRef: PolicyStore | null = null;
  // A log file belongs to one gateway (log-lock.ts): another live one holding it stops the start.
  const flowLog = await openedAt('flowLog.path', () =>
    FlowLog.open(config.flowLog.path, { lock: true, onStateChange: (e) => logAppendLogEvent(log, 'flow log', e, (r) => flowLogConsequence(policyRef, r)) }),
  );
  const flows = new FlowTable({
    sink: flowLog,
    keepClosed: config.flowLog.keepClosed,
    interimSec: config.flowLog.interimSec,
    sampleIntervalMs: config.detection.sampleIntervalMs,
    now: opts.now,
    maxRateKeys: opts.maxRateKeys,
  });
  const policy = new PolicyStore(config, { author: 'startup', source: opts.configPath ? 'file' : 'startup', text: opts.configText ?? null });
  policyRef = policy;
  if (opts.mode) policy.setMode(opts.mode);
  // Event ids start above the start time (ms): a stream resumed with an id of an earlier run gets this run's alerts.
  const alerts = new AlertStore<Alert>({ keep: config.alerts.keep, firstEventId: Date.now() });
  // Read at each alert: a reload or an API push that changes the webhooks or syslog applies at once.
  const sinks = attachAlertSinks(alerts, { webhooks: [], syslog: null, current: () => policy.current().config.alerts, log });
  // 3. context
  let draining = false;
  const selfAddresses = new Set<string>();
  let detection: DetectionEngine | null = null;
  // The test clock, if any, is the one signed tokens expire on too.
  const identity = createIdentityResolver(opts.now ? { now: opts.now } : {});
  const ctx: GatewayContext = {
    flows,
    policy,
    identity,
    attributor: opts.attributor === undefined ? new LocalAttributor({ timeoutMs: 500 }) : opts.attributor,
    // Read at each lookup: a reload or push that changes resolver.timeoutMs, cacheTtlSec or
    // negativeCacheTtlSec applies to the next one.
    resolver:
      opts.resolver ??
      createDnsResolver({
        timeoutMs: () => policy.current().config.resolver.timeoutMs,
        cacheTtlMs: () => policy.current().config.resolver.cacheTtlSec * 1000,
        negativeTtlMs: () => policy.current().config.resolver.negativeCacheTtlSec * 1000,
      }),
    get detection() {
      return detection;
    },
    log,
    selfAddresses,
    udpRelays: new UdpRelayAddresses(),
    unanswered: new UnansweredAddresses(() => policy.current().config.resolver.rememberUnansweredMs),
    via: newViaName(),
    isDraining: () => draining,
    isRefusingUnrecorded: () => flowLog.isFailing && policy.current().config.flowLog.onError === 'refuse',
    flowLogBacklog: () => flowLog.status().backlogRecords,
    descriptors: new DescriptorShortage(log),
  };
  detection = await createDetectionEngine({ flows, policy, alerts, log, statePath: config.state.path });
  flows.start(config.detection.sampleIntervalMs, config.flowLog.interimSec);
  // The sweep's timing follows the running policy (a reload, PUT /v1/policy, a rollback).
  policy.on('change', ({ snapshot, previous }: PolicyChange) => {
    flows.retime(snapshot.config.detection.sampleIntervalMs, snapshot.config.flowLog.interimSec);
    // How many alerts GET /v1/alerts and a stream's resume can reach: the running policy's.
    alerts.resize(snapshot.config.alerts.keep);
    // Flows whose names are being looked up are not established: judged on the new policy at once.
    refuseLookupsAfterChange(ctx);
    // Nor are flows being dialled: one the new policy refuses is killed with that refusal.
    refuseDialsAfterChange(ctx);
    // Records still go where the flow log was opened: whoever moved flowLog.path must hear it.
    const restartOnly = restartOnlyChanges(previous.config, snapshot.config, config);
    if (restartOnly.length > 0) {
      log.warn({ settings: restartOnly, version: snapshot.version, flowLog: config.flowLog.path }, 'these settings apply at the next restart; the running gateway keeps its listeners, logs and state where they are');
    }
  });
  // PUT /v1/mode too: a name enforce mode can never admit is refused, as for a new flow, and a flow
  // being dialled that enforce mode refuses is killed with that refusal.
  policy.on('mode', () => {
    refuseLookupsAfterChange(ctx);
    refuseDialsAfterChange(ctx);
  });
  // 4. listeners
  const httpServer = createHttpProxy(ctx);
  const socksServer = createSocksServer(ctx);
  // Behind a TCP load balancer (SPEC §8): a PROXY protocol front per listener, only when trustedSources is set.
  // No one source may hold every descriptor (limits.maxConnectionsPerSource; after PROXY headers,
  // an untrusted peer's from its accept by the front).
  const sources = new SourceConnections(() => policy.current().config.limits.maxConnectionsPerSource, log);
  const proxyProtocol = {
    trustedSources: () => policy.current().config.proxyProtocol.trustedSources,
    headerTimeoutMs: () => policy.current().config.limits.headerTimeoutMs,
    holdUntrusted: (socket: Socket) => sources.hold(socket),
    log,
  };
  // The CONNECT fast path takes plain CONNECT heads itself and hands every other connection to httpServer.
  const httpFront = withConnectFront(httpServer);
  gateConnections(httpFront, sources, 'http');
  gateConnections(socksServer, sources, 'socks');
  const http = await listen(wrapWithProxyProtocol(httpFront, { ...proxyProtocol, listener: 'http' }), opts.http ?? config.listen.http, listenerName('http', opts.http));
  selfAddresses.add(http);
  const socks = await listen(wrapWithProxyProtocol(socksServer, { ...proxyProtocol, listener: 'socks' }), opts.socks ?? config.listen.socks, listenerName('socks', opts.socks));
  selfAddresses.add(socks);
  // Optional TLS listener for the HTTP proxy, so credentials never cross the network in clear.
  let httpsServer: ReturnType<typeof createHttpProxy> | null = null;
  let https: string | null = null;
  const httpsWhere = opts.https ?? config.listen.https ?? null;
  let tlsFiles: TlsListenerFiles | null = null;
  if (httpsWhere && config.tls) {
    // Checked as a reload checks them (tls-files.ts): each error names its path and file.
    const files = await readTlsFiles(config.tls);
    if (!files.ok) throw new Error(files.errors.map((e) => `${e.path}: ${e.message}`).join('; '));
    const { cert, key, ca, requestCert } = files.material;
    httpsServer = createHttpProxy(ctx, { tls: { cert, key, ...(ca ? { ca } : {}), requestCert } });
    tlsFiles = new TlsListenerFiles(httpsServer as TlsServer, files.material);
    // Behind a load balancer the PROXY header comes first, then the TLS handshake.
    trackHandshakes(httpsServer as TlsServer);
    gateConnections(httpsServer, sources, 'https');
    const httpsFront = wrapWithProxyProtocol(httpsServer, { ...proxyProtocol, listener: 'https' });
    carryRemoteToTls(httpsServer as TlsServer);
    https = await listen(httpsFront, httpsWhere, 'listen.https');
    selfAddresses.add(https);
  }
  // A reload closes the absolute-URI path's pools to the parent proxy URLs it no longer names
  // (credentials rotated, a parent removed), once their requests in flight have finished.
  policy.on('change', ({ snapshot }: PolicyChange) => {
    pruneOriginPools(httpServer, snapshot.config);
    if (httpsServer) pruneOriginPools(httpsServer, snapshot.config);
  });
  const audit = await openedAt('flowLog.path (its audit log, PATH.audit.jsonl)', () =>
    AuditLog.open(config.flowLog.path && config.flowLog.path !== '-' ? `${config.flowLog.path}.audit.jsonl` : null, {
      onStateChange: (e) => logAppendLogEvent(log, 'audit log', e, NO_CONSEQUENCE),
    }),
  );
  let ready = false;
  const stats = createStats(flows, alerts, identity, [
    // The front sees every HTTP connection; httpServer only those the front hands over.
    [httpFront, 'http'],
    [socksServer, 'socks'],
    ...(httpsServer ? [[httpsServer, 'https'] as const] : []),
  ]);
  flows.on('sweep', () => stats.sweepObserved(detection?.lastSweepMs ?? 0));
  stats.attachFlowLog(() => flowLog.status());
  stats.attachSourceLimit(() => sources.stats());
  stats.attachSocksUdp(() => socksServer.udp.stats());
  // Not ready while new flows are refused for want of a flow log: a balancer sends them elsewhere.
  // Reloads, pushes and rollbacks take the TLS files the policy names with it (policy-writer.ts).
  const writer = new PolicyWriter(policy, tlsFiles, log);
  const control = createControlPort({ flows, policy: writer, alerts, audit, stats, identity, log, detection, selfDial: (ip, port, mode) => selfDialDecision(ctx, ip, port, 'connect', mode), udpRelayPorts: ctx.udpRelays, ...(opts.now ? { now: opts.now } : {}), isReady: () => ready && !draining && ctx.isRefusingUnrecorded?.() !== true, proxyAddress: () => http });
  const envToken = opts.adminToken ?? null;
  const hasToken = config.admin.tokens.length > 0 || Boolean(envToken);
  const generatedAdminToken = hasToken ? null : generateAdminToken();
  if (generatedAdminToken) outsideTokens.push({ label: 'the admin token generated at start', digest: tokenDigest(generatedAdminToken) });
  const app: FastifyInstance = await buildAdmin(control, {
    tokens: config.admin.tokens,
    agents: config.identity.agents,
    envToken: envToken ?? undefined,
    generatedToken: generatedAdminToken ?? undefined,
    headerTimeoutMs: () => policy.current().config.limits.headerTimeoutMs,
  });
  // Built after the stats: its connections (those over admin.maxConnectionsPerSource too) counted here.
  countConnections(stats, app.server, 'admin');
  const adminWhere = splitHostPort(opts.admin ?? config.listen.admin, listenerName('admin', opts.admin));
  try {
    await app.listen({ host: adminWhere.host, port: adminWhere.port });
  } catch (err) {
    throw listenError(err, listenerName('admin', opts.admin));
  }
  const admin = formatAddress(app.server.address());
  // `localhost` binds every address it resolves to (fastify listens on 127.0.0.1 and ::1 when both
  // answer): each is the gateway's own, not only the one the listening line names.
  for (const a of app.addresses()) selfAddresses.add(formatAddress(a));
  ready = true;

  const reloadFromFile = async (author = 'SIGHUP'): Promise<{ ok: boolean; errors?: Array<{ path: string; message: string }> }> => {
    if (!opts.configPath) return { ok: false, errors: [{ path: '', message: 'no config file to reload' }] };
    let text: string;
    try {
      text = await readFile(opts.configPath, 'utf8');
    } catch (err) {
      // A file moved or unreadable mid-deploy: the running policy stays, as for an invalid one.
      const message = `cannot read ${opts.configPath}: ${(err as Error).message}`;
      stats.configReloaded('failure');
      log.warn({ errors: [{ path: '', message }] }, 'policy reload failed; the running policy is unchanged');
      return { ok: false, errors: [{ path: '', message }] };
    }
    // Read as at start-up (serve.ts): a .json file is JSON, so a key written twice is named by its path.
    const format = configFileFormat(opts.configPath);
    // A text that says what is running (log rotation signals SIGHUP too) makes no new version; the
    // writer compares it in its own turn, after any write queued before (policy-writer.ts).
    const result = await writer.reloadFile(text, { author, source: 'file', format, check: (c) => repeatsOutsideToken(c, outsideTokens) });
    stats.configReloaded(result.ok ? 'success' : 'failure');
    if (result.ok) log.info({ version: result.version, author }, result.isUnchanged ? 'config file unchanged; the running policy stays' : 'policy reloaded');
    else log.warn({ errors: result.errors }, 'policy reload failed; the running policy is unchanged');
    return result;
  };

  // One drain per gateway. A second call returns the first one's promise; with graceMs 0 (a fatal
  // error during a SIGTERM drain) it also cuts the grace period short, with its own kill reason.
  let drained: Promise<void> | null = null;
  let isCutShort = false;
  let killReasonNow = 'shutdown';
  const drain = (graceMs = policy.current().config.limits.drainGraceMs, killReason = 'shutdown'): Promise<void> => {
    if (drained) {
      if (graceMs === 0 && !isCutShort) {
        isCutShort = true;
        killReasonNow = killReason;
      }
      return drained;
    }
    killReasonNow = killReason;
    drained = runDrain(graceMs);
    return drained;
  };
  const runDrain = async (graceMs: number): Promise<void> => {
    draining = true;
    ready = false;
    // 1. stop accepting
    const servers = [httpServer, socksServer, ...(httpsServer ? [httpsServer] : [])];
    const closed = Promise.all(servers.map((srv) => new Promise<void>((r) => srv.close(() => r()))));
    httpServer.closeIdleConnections();
    httpsServer?.closeIdleConnections();
    // A TLS handshake under way is a connection with no request yet, closed as the plain listener's
    // are (node:http knows it only once the handshake is done).
    if (httpsServer) endHandshakes(httpsServer as TlsServer);
    // 2. let live flows finish, up to the grace period. A credential check under way (a throttled
    // login, a scrypt derivation) is a flow about to open, or a refused login about to be recorded:
    // waited for too. Before, a drain with no live flow ended at once, and such a request was closed
    // unanswered and unrecorded.
    const deadline = Date.now() + graceMs;
    while ((flows.activeCount > 0 || identity.checksUnderWay() > 0) && Date.now() < deadline && !isCutShort) {
      await new Promise((r) => setTimeout(r, 50));
      // node:http leaves a keep-alive connection open once its answer (under way at SIGTERM, so
      // without `connection: close`) is done: close it as soon as it is idle, not at the grace's end.
      httpServer.closeIdleConnections();
      httpsServer?.closeIdleConnections();
    }
    const isGraceOver = flows.activeCount > 0;
    for (const id of [...flows.activeFlows().keys()]) flows.kill(id, killReasonNow);
    // A flow killed while admission awaited its DNS lookup is answered by its listener (0x01, 503)
    // in the promise callbacks the kill set off: let them run before the connections are closed.
    if (isGraceOver) await new Promise<void>((r) => setImmediate(r));
    httpServer.closeAllConnections();
    httpsServer?.closeAllConnections();
    if (httpsServer) endHandshakes(httpsServer as TlsServer);
    // SOCKS5 handshakes under way at SIGTERM whose request never came (one that came was refused).
    socksServer.closeAllConnections();
    // The origin pools of absolute-URI requests: closed only now, after the flows (closing them when
    // the servers close would abort every request in flight), and at once if the grace ran out.
    const poolGraceMs = isGraceOver || isCutShort ? 0 : Math.max(0, deadline - Date.now());
    const pools = Promise.all([httpServer, ...(httpsServer ? [httpsServer] : [])].map((srv) => closeOriginPools(srv, poolGraceMs)));
    // Every flow has its record now: hand them to the log before anything else can hold us up. A
    // write waiting for room in a pipe (a FIFO whose reader stopped) is waited for within the grace
    // (and LOG_MOMENT_MS at least, for the records of flows its end killed), then given up: what the
    // log holds is lost, logged and counted at its close. Before, the drain waited for the write's
    // stall limit (10 s) whatever its grace: exit 9.9 s after SIGTERM with a 1 s grace.
    let isFlushed = false;
    const flushed = flowLog.flush().then(() => {
      isFlushed = true;
    });
    const momentEnds = Date.now() + LOG_MOMENT_MS;
    const logWaitEnds = Math.max(deadline, momentEnds);
    while (!isFlushed && Date.now() < (isCutShort ? momentEnds : logWaitEnds)) await new Promise((r) => setTimeout(r, 50));
    if (!isFlushed) flowLog.giveUpWaitForRoom();
    await flushed;
    // A file log that cannot take them (disk full, quota) holds them, and what it still holds at exit
    // is lost: the rest of the grace period is its to recover in (it reopens its path every second).
    if (flowLog.isFailing && config.flowLog.path !== '-' && !isCutShort && Date.now() < deadline) {
      log.warn({ records: flowLog.status().backlogRecords, graceLeftMs: deadline - Date.now() }, 'draining: waiting for the flow log to take the records it holds');
      while (flowLog.isFailing && Date.now() < deadline && !isCutShort) await new Promise((r) => setTimeout(r, 50));
    }
    await closed;
    await pools;
    // 3. final sweep, persist detector state, flush every record
    flows.stop();
    await detection?.close();
    await sinks.close();
    // The admin API answers through the drain. Its close waits for every connection, and node checks
    // no header timeout on a closed server: a request whose head or body never came in full held the
    // exit for ever (an admin client that stalled mid-head, or mid-body: requestTimeout is off). An
    // answer under way has ADMIN_CLOSE_MS; then what is left is cut.
    const adminClosed = app.close();
    const adminCut = setTimeout(() => app.server.closeAllConnections(), ADMIN_CLOSE_MS);
    await adminClosed;
    clearTimeout(adminCut);
    await audit.close();
    await flowLog.close();
  };

  const reopenLogs = async (): Promise<void> => {
    for (const [what, reopen] of [
      ['flow log', () => flowLog.reopenFile()],
      ['audit log', () => audit.reopenFile()],
    ] as const) {
      try {
        await reopen();
      } catch (err) {
        // Tried again every second (AppendLog.reopen); the switch, when it comes, is logged `reopened`.
        log.error({ err: (err as Error).message }, `${what} could not be reopened; still writing to the open file, and trying again every second`);
      }
    }
  };

  return { http, socks, https, admin, generatedAdminToken, flows, policy, alerts, ctx, reloadFromFile, reopenLogs, drain };
}
