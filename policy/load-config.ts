/**
 * Config text → validated Config (SPEC §3). The same function runs at start-up, on SIGHUP, on
 * `PUT /v1/policy` and in `egressgate check`, so every path reports the same errors:
 *
 * 1. parse YAML (or JSON) — syntax errors carry line:column; a key written twice is an error in both;
 * 2. validate the shape and every value against `CONFIG_SCHEMA` (unknown keys are errors);
 * 3. cross-field checks (roles referenced but not defined, duplicate names and tokens);
 * 4. merge over `defaultConfig()` (objects deeply, lists and scalars replaced) and fill per-item
 *    defaults.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CORE_SCHEMA, load, YAMLException } from 'js-yaml';
import { type Config, defaultConfig, type DetectorConfig } from './config.ts';
import { CONFIG_SCHEMA } from './config-schema.ts';
import { duplicateJsonKeys } from './json-duplicate-keys.ts';
import { addError, type ConfigError, joinPath, validate } from './schema-dsl.ts';

export type { ConfigError } from './schema-dsl.ts';

export type LoadResult = { ok: true; config: Config } | { ok: false; errors: ConfigError[] };

export interface LoadOptions {
  /** Input format; default: YAML (a superset of JSON). */
  format?: 'yaml' | 'json';
}

/** Actions a detector takes when configured without one (SPEC §3 example). */
const DEFAULT_ACTIONS: Readonly<Record<string, DetectorConfig['action']>> = {
  'an0081.proxyware': 'block',
  'an0081.scanner-tool': 'block',
  'an0081.scan': 'block',
  'an0081.sustained': 'flag',
  'an0081.proxyjack': 'kill',
  'an0080.bulk-upload': 'kill',
  'an0080.split-upload': 'block',
  'an0080.long-session': 'flag',
  'an0080.lineage': 'kill',
  'an0080.exfil-tool': 'block',
};

/** Node budget for a parsed document: YAML aliases can make a small text expand into a huge tree. */
const MAX_NODES = 2_000_000;

/** Counts values reachable from `v` (aliases counted once per use), stopping past `limit`. */
function countNodes(v: unknown, limit: number): number {
  let n = 0;
  const stack: unknown[] = [v];
  while (stack.length > 0 && n <= limit) {
    const x = stack.pop();
    n++;
    if (Array.isArray(x)) for (const item of x) stack.push(item);
    else if (typeof x === 'object' && x !== null) for (const k in x) stack.push((x as Record<string, unknown>)[k]);
  }
  return n;
}

function parseText(input: string, format: 'yaml' | 'json'): { value: unknown } | { errors: ConfigError[] } {
  // A leading byte order mark (editors on Windows write one) is no part of the document: js-yaml
  // skips it, JSON.parse refused it ("Unexpected token"), so a policy.json with one failed every reader.
  const text = input.charCodeAt(0) === 0xfeff ? input.slice(1) : input;
  if (format === 'json') {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return { errors: [{ path: '(root)', message: `invalid JSON: ${(e as Error).message}` }] };
    }
    // JSON.parse keeps a repeated key's last value; the YAML reader refuses the document, and so must this.
    const duplicates = duplicateJsonKeys(text);
    return duplicates.length > 0 ? { errors: duplicates } : { value };
  }
  // js-yaml rather than the `yaml` package here: it parses a 10,000-entry policy about ten times
  // faster, which keeps a SIGHUP reload under 100 ms and the event loop free. YAML 1.2 core schema
  // (no timestamps, no yes/no booleans); duplicate keys are errors.
  let value: unknown;
  try {
    value = load(text, { schema: CORE_SCHEMA });
  } catch (e) {
    if (e instanceof YAMLException) {
      const at = e.mark ? ` at line ${e.mark.line + 1}, column ${e.mark.column + 1}` : '';
      return { errors: [{ path: '(root)', message: `invalid YAML${at}: ${e.reason}` }] };
    }
    return { errors: [{ path: '(root)', message: `invalid YAML: ${(e as Error).message}` }] };
  }
  if (countNodes(value, MAX_NODES) > MAX_NODES) {
    return { errors: [{ path: '(root)', message: `document too large after expanding aliases (more than ${MAX_NODES} values)` }] };
  }
  return { value };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Objects merge key by key; anything else in `over` replaces `base`. */
function deepMerge(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(base[k], v);
  return out;
}

function crossChecks(raw: Record<string, unknown>, errors: ConfigError[]): void {
  const roles = isPlainObject(raw['roles']) ? new Set(Object.keys(raw['roles'])) : new Set<string>();
  const checkRoles = (list: unknown, path: string) => {
    if (!Array.isArray(list)) return;
    list.forEach((r, i) => {
      if (typeof r === 'string' && !roles.has(r)) addError(errors, { path: joinPath(path, i), message: `unknown role "${r}" (define it under roles)` });
    });
  };
  const uniqueNames = (list: unknown, path: string, what: string) => {
    if (!Array.isArray(list)) return;
    const seen = new Set<string>();
    list.forEach((item, i) => {
      const name = isPlainObject(item) ? item['name'] : undefined;
      if (typeof name !== 'string') return;
      if (seen.has(name)) addError(errors, { path: joinPath(joinPath(path, i), 'name'), message: `duplicate ${what} name "${name}"` });
      seen.add(name);
    });
  };
  const identity = isPlainObject(raw['identity']) ? raw['identity'] : {};
  for (const key of ['users', 'hosts'] as const) {
    const list = identity[key];
    if (Array.isArray(list)) {
      list.forEach((u, i) => {
        if (isPlainObject(u)) checkRoles(u['roles'], joinPath(joinPath(`identity.${key}`, i), 'roles'));
      });
    }
  }
  sameRolesPerHost(identity['hosts'], errors);
  uniqueNames(identity['users'], 'identity.users', 'user');
  uniqueNames(identity['agents'], 'identity.agents', 'agent');
  if (isPlainObject(raw['admin'])) uniqueNames(raw['admin']['tokens'], 'admin.tokens', 'token');
  uniqueTokens(isPlainObject(raw['admin']) ? raw['admin']['tokens'] : undefined, identity['agents'], errors);
  checkRoles(raw['defaultRoles'], 'defaultRoles');
  httpsNeedsTls(raw, errors);
}

/**
 * `listen.https` is made only with `tls` (its certificate and key): without it `serve` made no
 * HTTPS listener and said nothing, so clients sent to that address met a closed port.
 */
function httpsNeedsTls(raw: Record<string, unknown>, errors: ConfigError[]): void {
  const https = isPlainObject(raw['listen']) ? raw['listen']['https'] : undefined;
  if (typeof https !== 'string' || (raw['tls'] !== undefined && raw['tls'] !== null)) return;
  addError(errors, { path: 'listen.https', message: 'needs tls (cert and key): the HTTPS listener serves its certificate; without tls no listener is made' });
}

/**
 * A token (clear or as its sha256) names one principal: the admin API takes the first entry that
 * matches (admin.tokens in order, then identity.agents), so a second entry with the same token
 * never authenticates and its scope is not what its holder gets. A read token listed before an
 * admin one with the same value turned every write of that admin into 403 (and, the API's only
 * admin token, locked the API until a restart, past the check that one admin token remains).
 */
function uniqueTokens(adminTokens: unknown, agents: unknown, errors: ConfigError[]): void {
  const first = new Map<string, string>();
  const check = (list: unknown, path: string): void => {
    if (!Array.isArray(list)) return;
    list.forEach((item, i) => {
      if (!isPlainObject(item)) return;
      const token = item['token'];
      const sha = item['tokenSha256'];
      let digest: string;
      let field: string;
      if (typeof token === 'string' && token !== '') {
        digest = createHash('sha256').update(token, 'utf8').digest('hex');
        field = 'token';
      } else if (typeof sha === 'string' && /^[0-9a-fA-F]{64}$/.test(sha)) {
        digest = sha.toLowerCase();
        field = 'tokenSha256';
      } else return;
      const at = joinPath(path, i);
      const seen = first.get(digest);
      if (seen === undefined) first.set(digest, at);
      else {
        addError(errors, {
          path: joinPath(at, field),
          message: `the same token as ${seen}: a token names one principal, and requests with it are ${seen}'s (this entry's scope never applies); give each entry its own token`,
        });
      }
    });
  };
  check(adminTokens, 'admin.tokens');
  check(agents, 'identity.agents');
}

/**
 * A host's roles belong to its name (a trusted header or a client certificate names a host without
 * an address), so the entries of one name must give the same roles: with different ones, a source
 * in one entry would also get the roles listed for the others, which its address is not in.
 */
function sameRolesPerHost(list: unknown, errors: ConfigError[]): void {
  if (!Array.isArray(list)) return;
  const first = new Map<string, { index: number; roles: string }>();
  list.forEach((h, i) => {
    if (!isPlainObject(h) || typeof h['name'] !== 'string') return;
    const roles = Array.isArray(h['roles']) ? [...new Set(h['roles'].map(String))].sort().join(', ') : '';
    const seen = first.get(h['name']);
    if (seen === undefined) first.set(h['name'], { index: i, roles });
    else if (seen.roles !== roles) {
      addError(errors, {
        path: joinPath(joinPath('identity.hosts', i), 'roles'),
        message: `host "${h['name']}" has roles [${seen.roles}] at identity.hosts[${seen.index}]: every entry of one host name must list the same roles (a host's roles are its name's), or use another name`,
      });
    }
  });
}

/** Per-item defaults that an object-deep merge cannot express (items of lists, record values). */
function fillItemDefaults(c: Config): void {
  for (const u of c.identity.users) u.roles ??= [];
  for (const h of c.identity.hosts) h.roles ??= [];
  for (const r of Object.values(c.roles)) r.allow ??= [];
  for (const w of c.alerts.webhooks) w.minSeverity ??= 'medium';
  if (c.alerts.syslog) c.alerts.syslog.protocol ??= 'udp';
  if (c.identity.headers.signed) c.identity.headers.signed.maxAgeSec ??= 300;
  for (const [name, d] of Object.entries(c.detection.detectors)) {
    d.enabled ??= true;
    d.corroborate ??= name === 'an0081.proxyjack';
    d.action ??= DEFAULT_ACTIONS[name] ?? 'flag';
  }
}

/**
 * Parses and validates config text. Returns the full Config (defaults filled) or every error found,
 * each with its path (`roles.dev.allow[2].ports`). Never throws on bad input.
 */
export function loadConfig(text: string, opts: LoadOptions = {}): LoadResult {
  const parsed = parseText(text, opts.format ?? 'yaml');
  if ('errors' in parsed) return { ok: false, errors: parsed.errors };
  return validateParsed(parsed.value ?? {}, true);
}

/**
 * Validates an already-parsed document (e.g. a JSON body of `PUT /v1/policy`); same rules and
 * result as `loadConfig`.
 */
export function validateConfig(value: unknown): LoadResult {
  return validateParsed(value, false);
}

/** `owned`: the value is a fresh parse nobody else holds, so it need not be copied. */
function validateParsed(value: unknown, owned: boolean): LoadResult {
  const errors: ConfigError[] = [];
  validate(CONFIG_SCHEMA, value, '', errors);
  if (isPlainObject(value)) crossChecks(value, errors);
  if (errors.length > 0) return { ok: false, errors };
  const raw = { ...(value as Record<string, unknown>) };
  delete raw['$schema'];
  const config = deepMerge(defaultConfig(), owned ? raw : structuredClone(raw)) as Config;
  fillItemDefaults(config);
  return { ok: true, config };
}

/**
 * A policy file's format from its name: `.json` in any case is JSON, anything else YAML. One rule
 * for every reader of the file (`check`, `evaluate`, `replay`, `serve`'s start and SIGHUP): replay's
 * own case-sensitive test read `POLICY.JSON` as YAML, so it ran a file the others refused.
 */
export function configFileFormat(path: string): 'json' | 'yaml' {
  return path.toLowerCase().endsWith('.json') ? 'json' : 'yaml';
}

/** Reads a config file (format from its name: configFileFormat) and loads it. */
export async function loadConfigFile(path: string): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    return { ok: false, errors: [{ path: '(file)', message: `cannot read ${path}: ${(e as Error).message}` }] };
  }
  return loadConfig(text, { format: configFileFormat(path) });
}
