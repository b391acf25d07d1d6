/**
 * The OpenAPI 3.1 document of the admin API, generated from the routes' own TypeBox schemas
 * (collected with an onRoute hook), so the document cannot drift from what is validated. 3.1
 * because it is plain JSON Schema, which is what TypeBox emits (nullable as `anyOf` with null).
 * Also a small self-contained HTML page for `/docs` (no external scripts: the admin port is
 * often on a host without internet access).
 */
import type { RouteOptions } from 'fastify';
import type { RequiredScope } from './auth.ts';

interface CollectedRoute {
  method: string;
  url: string;
  scope: RequiredScope | undefined;
  schema: Record<string, unknown> | undefined;
}

type JsonObject = Record<string, unknown>;

const STATUS_TEXT: Record<string, string> = {
  '200': 'OK',
  '400': 'Invalid request (details lists each problem with its path)',
  '401': 'No valid token',
  '403': 'Token scope too small, or an agent report outside the agent’s sources',
  '404': 'Not found',
  '412': 'If-Match does not name the current policy version',
  '503': 'Not ready',
};

function asObject(v: unknown): JsonObject | undefined {
  return v !== null && typeof v === 'object' ? (v as JsonObject) : undefined;
}

function parameters(schema: unknown, where: 'path' | 'query'): JsonObject[] {
  const s = asObject(schema);
  const props = asObject(s?.['properties']);
  if (!props) return [];
  const required = new Set(Array.isArray(s?.['required']) ? (s?.['required'] as string[]) : []);
  return Object.entries(props).map(([name, p]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    schema: p,
    ...(asObject(p)?.['description'] ? { description: asObject(p)?.['description'] } : {}),
  }));
}

/** Collects routes as they are added, and renders the OpenAPI document on demand. */
export class OpenApiCollector {
  private readonly routes: CollectedRoute[] = [];

  /** The onRoute hook. */
  readonly onRoute = (route: RouteOptions): void => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const method of methods) {
      // fastify adds a HEAD twin for every GET; it documents nothing new.
      if (method === 'HEAD' || route.url === '*' || route.url.endsWith('*')) continue;
      this.routes.push({ method, url: route.url, scope: route.config?.scope, schema: asObject(route.schema) });
    }
  };

  /** The OpenAPI 3.1 document. */
  document(version: string): JsonObject {
    const paths: Record<string, Record<string, JsonObject>> = {};
    for (const r of this.routes) {
      const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
      const s = r.schema ?? {};
      const op: JsonObject = {
        summary: s['summary'] ?? `${r.method} ${r.url}`,
        'x-scope': r.scope ?? 'none',
        security: r.scope && r.scope !== 'none' ? [{ bearer: [] }] : [],
      };
      const params = [...parameters(s['params'], 'path'), ...parameters(s['querystring'], 'query')];
      if (params.length > 0) op['parameters'] = params;
      if (s['body'] !== undefined) {
        const content: JsonObject = { 'application/json': { schema: s['body'] } };
        // The policy routes also take YAML text.
        if (r.url.startsWith('/v1/policy') && r.url !== '/v1/policy/evaluate') content['text/yaml'] = { schema: { type: 'string' } };
        op['requestBody'] = { required: true, content };
      }
      const responses: Record<string, JsonObject> = {};
      for (const [status, schema] of Object.entries(asObject(s['response']) ?? {})) {
        const media = status === '200' && r.url.endsWith('/stream') ? 'text/event-stream' : 'application/json';
        responses[status] = { description: STATUS_TEXT[status] ?? 'response', content: { [media]: { schema } } };
      }
      if (Object.keys(responses).length === 0) responses['200'] = { description: 'OK' };
      op['responses'] = responses;
      paths[path] ??= {};
      (paths[path] as Record<string, JsonObject>)[r.method.toLowerCase()] = op;
    }
    return {
      openapi: '3.1.0',
      info: {
        title: 'egressgate admin API',
        version,
        description: 'Policy, mode, live flows, alerts, quarantines, agents, metrics and audit of an egressgate gateway. Bearer tokens: read scope for reads, admin for writes, agent for reports.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      paths,
    };
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A readable, dependency-free rendering of the document for `/docs`. */
export function renderDocsHtml(doc: JsonObject): string {
  const rows: string[] = [];
  const paths = asObject(doc['paths']) ?? {};
  for (const [path, ops] of Object.entries(paths)) {
    for (const [method, op] of Object.entries(asObject(ops) ?? {})) {
      const o = asObject(op) ?? {};
      const params = Array.isArray(o['parameters']) ? (o['parameters'] as JsonObject[]).map((p) => `${String(p['name'])} (${String(p['in'])})`).join(', ') : '';
      const statuses = Object.keys(asObject(o['responses']) ?? {}).join(' ');
      rows.push(
        `<tr><td><code>${escapeHtml(method.toUpperCase())}</code></td><td><code>${escapeHtml(path)}</code></td><td>${escapeHtml(String(o['x-scope']))}</td><td>${escapeHtml(String(o['summary'] ?? ''))}</td><td>${escapeHtml(params)}</td><td>${escapeHtml(statuses)}</td></tr>`,
      );
    }
  }
  const info = asObject(doc['info']) ?? {};
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(String(info['title']))}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}code{white-space:nowrap}</style>
</head><body>
<h1>${escapeHtml(String(info['title']))} <small>${escapeHtml(String(info['version']))}</small></h1>
<p>${escapeHtml(String(info['description'] ?? ''))} The machine-readable document is at <a href="/openapi.json">/openapi.json</a>.</p>
<table><thead><tr><th>method</th><th>path</th><th>scope</th><th>does</th><th>parameters</th><th>statuses</th></tr></thead><tbody>
${rows.join('\n')}
</tbody></table></body></html>
`;
}
