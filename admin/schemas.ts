/**
 * TypeBox request/response schemas of the admin API (SPEC §5/§6). They validate requests, shape
 * responses, and are the source of the OpenAPI document (admin/openapi.ts).
 * Records owned by other modules (the policy Config, an alert's evidence) are open objects here:
 * their own modules validate them; the API only passes them through.
 */
import { Type } from 'typebox';

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(t: T) => Type.Union([t, Type.Null()]);
const OpenObject = (description?: string) => Type.Object({}, { additionalProperties: true, ...(description ? { description } : {}) });

export const ErrorBody = Type.Object(
  {
    error: Type.String({ description: 'stable error code: bad-request, unauthorized, forbidden, not-found, …' }),
    message: Type.String(),
    details: Type.Optional(Type.Unknown()),
  },
  { description: 'Every error of the admin API' },
);

/**
 * A query string takes only the parameters its route names: an unknown one (a typo, `?stat=active`)
 * is 400 naming it (`querystring.stat`), as an unknown body field is, not ignored (every flow listed).
 */
const CLOSED_QUERY = { additionalProperties: false } as const;

export const ConfigIssue = Type.Object({ path: Type.String(), message: Type.String() });

export const Health = Type.Object({ status: Type.String() });

export const ProcessInfoSchema = Nullable(
  Type.Object(
    {
      pid: Type.Integer(),
      name: Type.String(),
      exe: Nullable(Type.String()),
      cmdline: Nullable(Type.String()),
      user: Nullable(Type.String()),
      uid: Type.Optional(Nullable(Type.Integer())),
      loginuid: Nullable(Type.Integer()),
      ppid: Nullable(Type.Integer()),
      parentName: Nullable(Type.String()),
      parentExe: Type.Optional(Nullable(Type.String())),
      source: Type.Optional(Type.String()),
    },
    { additionalProperties: true },
  ),
);

export const IdentitySchema = Type.Object({
  user: Nullable(Type.String()),
  host: Nullable(Type.String()),
  roles: Type.Immutable(Type.Array(Type.String())),
  process: ProcessInfoSchema,
});

const MatchedRuleSchema = Nullable(Type.Object({ role: Type.String(), index: Type.Integer(), entry: Type.String() }));

export const FlowRecordSchema = Type.Object({
  id: Type.String(),
  protocol: Type.String({ description: 'http | connect | socks5 | socks5-udp' }),
  client: Type.Object({ ip: Type.String(), port: Type.Integer() }),
  identity: IdentitySchema,
  destination: Type.Union([
    Type.Object({ host: Type.String(), ip: Nullable(Type.String()), port: Type.Integer() }),
    Type.Object({ host: Type.Null(), ip: Type.Null(), port: Type.Null() }, { description: 'none named: a SOCKS5 login refused before its request' }),
  ]),
  startedAt: Type.String({ format: 'date-time' }),
  lastActivityAt: Type.String({ format: 'date-time' }),
  endedAt: Nullable(Type.String({ format: 'date-time' })),
  durationMs: Type.Number(),
  bytesOut: Type.Number(),
  bytesIn: Type.Number(),
  verdict: Type.String({ description: 'allow | block | would-block' }),
  enforced: Type.Boolean(),
  reason: Nullable(Type.String()),
  detector: Nullable(Type.String()),
  state: Type.String({ description: 'active | closed' }),
  closeReason: Nullable(Type.String()),
  connected: Type.Boolean({ description: 'the flow reached its destination (its dial succeeded)' }),
  communityId: Nullable(Type.String()),
  matchedRule: MatchedRuleSchema,
  reasons: Type.Immutable(Type.Array(Type.String())),
  upstream: Type.Optional(Type.String({ description: 'The parent proxy that carried the flow (scheme://host:port, never credentials); absent for a direct flow' })),
  unattributed: Type.Optional(Type.Literal(true, { description: 'An agent covers the client, and none named its process within the grace period' })),
  attributedLate: Type.Optional(Type.Literal(true, { description: 'Its process was named after admission stopped waiting (local attribution)' })),
});

export const FlowQuery = Type.Object({
  state: Type.Optional(Type.Union([Type.Literal('active'), Type.Literal('closed')])),
  user: Type.Optional(Type.String()),
  host: Type.Optional(Type.String()),
  process: Type.Optional(Type.String()),
  destination: Type.Optional(Type.String({
      description:
        'destination host name or IP: an address in any spelling matches its canonical form (an IPv4-mapped address as its IPv4 address), host named or address dialled; a name matches the host named, case-insensitively, without a trailing dot',
    })),
  verdict: Type.Optional(Type.Union([Type.Literal('allow'), Type.Literal('block'), Type.Literal('would-block')])),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })),
  offset: Type.Optional(Type.Integer({
      minimum: 0,
      default: 0,
      description: 'skip this many matching flows; flows closing or opening between two requests shift the pages (walk with after instead)',
    })),
  after: Type.Optional(Type.String({
      minLength: 1,
      maxLength: 64,
      description:
        "the next of the page before, to walk the flows open or kept at the walk's first page: each once, in the state it has when its page is taken (live flows newest opened first, then closed ones newest closed first); one that closed before the walk reached it is listed on the next page, after its live flows; flows opened since are not listed, closed ones no longer kept (flowLog.keepClosed) are missing",
    })),
}, CLOSED_QUERY);

export const FlowList = Type.Object({
  flows: Type.Array(FlowRecordSchema),
  count: Type.Integer({ description: 'Flows in this page (the length of flows, after the filters, offset and limit), not the number matching' }),
  next: Nullable(Type.String({ description: 'the after of the next page of this walk; null when no flow follows' })),
});

export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

export const KillResult = Type.Object({ killed: Type.Boolean(), flow: Nullable(FlowRecordSchema) });

export const PolicyViewSchema = Type.Object({
  version: Type.Integer(),
  author: Nullable(Type.String()),
  time: Nullable(Type.String()),
  mode: Type.String(),
  config: OpenObject('the running policy (SPEC §3), defaults filled in'),
});

/** PUT /v1/policy and validate: a config object (JSON) or YAML/JSON text (text/yaml, text/plain). */
export const PolicyInput = Type.Union([OpenObject('a config object'), Type.String({ description: 'YAML or JSON text' })]);

export const ValidateResult = Type.Object({
  valid: Type.Boolean(),
  summary: Type.Optional(Type.String()),
  errors: Type.Array(ConfigIssue),
});

/** How the connection arrives; allow entries with `protocol: udp` admit only socks5-udp (default connect). */
const ProtocolLiteral = Type.Union([Type.Literal('http'), Type.Literal('connect'), Type.Literal('socks5'), Type.Literal('socks5-udp')], {
  description: 'http (absolute-URI), connect, socks5 or socks5-udp; default connect',
});

export const EvaluateBody = Type.Object(
  {
    dest: Type.String({ minLength: 1, maxLength: 300, description: 'host:port, IPv6 in brackets' }),
    user: Type.Optional(Type.String({ maxLength: 256 })),
    source: Type.Optional(Type.String({ maxLength: 64, description: 'client IP: selects the host inventory entry' })),
    process: Type.Optional(Type.String({ maxLength: 256 })),
    ip: Type.Optional(Type.String({ maxLength: 64, description: 'address that would be dialled (else resolver.hosts only)' })),
    protocol: Type.Optional(ProtocolLiteral),
  },
  { additionalProperties: false },
);

export const EvaluateResult = Type.Object({
  version: Type.Integer(),
  verdict: Type.String(),
  reason: Type.String(),
  detector: Nullable(Type.String()),
  mode: Type.String(),
  matchedRule: MatchedRuleSchema,
  reasons: Type.Immutable(Type.Array(Type.String())),
  identity: Type.Object({
    user: Nullable(Type.String()),
    host: Nullable(Type.String()),
    roles: Type.Immutable(Type.Array(Type.String())),
    process: Nullable(Type.String()),
  }),
  destination: Type.Object({ host: Type.String(), ip: Nullable(Type.String()), port: Type.Integer() }),
  protocol: ProtocolLiteral,
  findings: Type.Array(
    Type.Object({
      detector: Type.String(),
      analytic: Type.String(),
      severity: Type.String(),
      action: Type.String({ description: 'the alert action under the mode: flag, block or would-block' }),
      evidence: OpenObject('the signals that fired (process, provider domain, tool, …)'),
      reasons: Type.Immutable(Type.Array(Type.String())),
    }),
    { description: 'connect-time findings the connection would raise' },
  ),
  detectors: Type.Object(
    {
      state: Type.String({ description: 'live: the running gateway\'s quarantine and detector state were read, not changed' }),
      judged: Type.Array(Type.String()),
      skipped: Type.Array(Type.Object({ detector: Type.String(), why: Type.String() })),
      notJudged: Type.Array(Type.String({ description: 'detectors of traffic after admission' })),
      quarantinedUntil: Nullable(Type.String()),
      notes: Type.Array(Type.String()),
    },
    { description: 'which detectors judged the connection' },
  ),
});

export const HistoryList = Type.Object({
  current: Type.Integer(),
  versions: Type.Array(
    Type.Object({
      version: Type.Integer(),
      author: Nullable(Type.String()),
      time: Nullable(Type.String()),
      source: Nullable(Type.String()),
      current: Type.Boolean(),
    }),
  ),
});

export const VersionParams = Type.Object({ version: Type.Integer({ minimum: 1 }) });

const ModeLiteral = Type.Union([Type.Literal('monitor'), Type.Literal('enforce')]);
export const ModeViewSchema = Type.Object({
  mode: ModeLiteral,
  configMode: ModeLiteral,
  override: Nullable(ModeLiteral),
  roleModes: Type.Record(Type.String(), ModeLiteral),
});
export const ModeBody = Type.Object(
  { mode: Nullable(ModeLiteral) },
  { additionalProperties: false, description: 'mode: null returns to the config file’s mode' },
);

export const QuarantineSchema = Type.Object({
  key: Type.String({ description: 'the identity key, host|user|process as the detection engine keys it (- = not known); URL-encoded, the {key} of DELETE' }),
  host: Type.String({ description: 'host name, else the client address' }),
  user: Nullable(Type.String()),
  process: Nullable(Type.String()),
  since: Type.String({ format: 'date-time' }),
  until: Type.String({ format: 'date-time' }),
  detector: Type.String({ description: 'the detector whose finding put it there (the latest, when another extended it)' }),
  alertId: Nullable(Type.String({ description: 'that finding\'s alert (GET /v1/alerts; the group\'s last one when it was grouped), null when none is known' })),
  enforced: Type.Boolean({
    description: 'true: opened by an enforced block or kill; false: monitor mode\'s record of one enforce mode would have opened (connections recorded would-block, not refused)',
  }),
});

export const QuarantineListSchema = Type.Object({
  mode: Type.Union([Type.Literal('monitor'), Type.Literal('enforce')], { description: 'the global mode in force: in monitor, quarantines are what enforce mode would refuse' }),
  quarantines: Type.Array(QuarantineSchema),
});

export const QuarantineKeyParams = Type.Object({ key: Type.String({ minLength: 1, maxLength: 100, description: 'an identity key as GET /v1/quarantines lists it, URL-encoded (up to 100 characters: the router refuses a longer path segment, 414; use ?key=)' }) });

export const QuarantineKeyQuery = Type.Object(
  { key: Type.String({ minLength: 1, maxLength: 4096, description: 'an identity key as GET /v1/quarantines lists it, URL-encoded (any length)' }) },
  { additionalProperties: false },
);

export const ReleaseResult = Type.Object({
  released: Type.Boolean(),
  key: Type.String(),
  quarantines: Type.Array(QuarantineSchema, { description: 'what was released: the quarantine, and monitor mode\'s record of one if it had both' }),
});

export const AlertSchema = Type.Object(
  {
    id: Type.String(),
    time: Type.String(),
    detector: Type.String(),
    analytic: Type.Optional(Nullable(Type.String())),
    severity: Type.Optional(Type.String()),
    action: Type.Optional(Type.String()),
    enforced: Type.Optional(Type.Boolean()),
    flowIds: Type.Optional(Type.Array(Type.String())),
    identity: Type.Optional(Type.Unknown()),
    destination: Type.Optional(Type.Unknown()),
    evidence: Type.Optional(Type.Unknown()),
    reasons: Type.Optional(Type.Array(Type.String())),
  },
  { additionalProperties: true },
);

export const AlertQuery = Type.Object({
  since: Type.Optional(Type.String({ description: 'an event id or an ISO 8601 time' })),
  detector: Type.Optional(Type.String()),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })),
}, CLOSED_QUERY);

export const AlertList = Type.Object({ alerts: Type.Array(AlertSchema), lastEventId: Type.Integer() });

export const StreamQuery = Type.Object({
  detector: Type.Optional(Type.String()),
  lastEventId: Type.Optional(Type.Integer({ minimum: 0, description: 'same as the Last-Event-ID header' })),
}, CLOSED_QUERY);

/** Loose on purpose: agent/report.ts validates every field and reports paths (400 details). */
export const ReportBody = Type.Object({ host: Type.Unknown(), reports: Type.Unknown() }, { additionalProperties: true });

export const IngestResult = Type.Object({
  accepted: Type.Integer(),
  attributed: Type.Integer(),
  pending: Type.Integer(),
  shed: Type.Integer({ description: 'reports not kept: the agent (or all agents) had as many waiting for their flows as allowed' }),
  ignored: Type.Integer({ description: 'udp reports not kept: their remote port is no live SOCKS5 UDP relay of this gateway' }),
  udpRelayPorts: Type.Union([Type.String(), Type.Null()], {
    description: 'limits.udpRelayPorts in force ("LO-HI"), null when relays take ephemeral ports: an agent without --udp-relay-ports reports UDP sockets to these ports',
  }),
});

export const AgentList = Type.Object({
  agents: Type.Array(
    Type.Object({
      name: Type.String(),
      configured: Type.Boolean(),
      sources: Type.Array(Type.String()),
      host: Nullable(Type.String()),
      lastSeenAt: Nullable(Type.String()),
      lastSourceIp: Nullable(Type.String()),
      reports: Type.Integer(),
      attributed: Type.Integer(),
      refused: Type.Integer(),
    }),
  ),
});

export const AuditQuerySchema = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })),
  actor: Type.Optional(Type.String()),
  since: Type.Optional(Type.String({ format: 'date-time' })),
}, CLOSED_QUERY);

export const AuditList = Type.Object({
  entries: Type.Array(
    Type.Object({
      time: Type.String(),
      actor: Nullable(Type.String()),
      scope: Nullable(Type.String()),
      method: Type.String(),
      route: Type.String(),
      path: Type.String(),
      sourceIp: Type.String(),
      beforeVersion: Nullable(Type.Integer()),
      afterVersion: Nullable(Type.Integer()),
      status: Type.Integer(),
      detail: Type.Optional(Nullable(Type.String())),
    }),
  ),
});

/** The error responses every authenticated route may give. */
export const AuthErrors = { 401: ErrorBody, 403: ErrorBody, 429: ErrorBody } as const;
