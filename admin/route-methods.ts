/**
 * Which methods each admin route answers, collected with an onRoute hook, so that a request for a
 * route that exists with a method it does not answer is `405 Method Not Allowed` with `Allow`
 * (RFC 9110 §15.5.6), not 404: the path is right, the method is not.
 */
import type { RouteOptions } from 'fastify';

interface RoutePattern {
  /** Path segments; `:name` matches any one non-empty segment (an empty one is no route's: app.ts answers it 404). */
  readonly segments: readonly string[];
  readonly methods: Set<string>;
}

export class RouteMethods {
  private readonly routes: RoutePattern[] = [];

  /** The onRoute hook. */
  readonly onRoute = (route: RouteOptions): void => {
    if (route.url.includes('*')) return;
    const segments = route.url.split('/');
    let pattern = this.routes.find((r) => r.segments.join('/') === route.url);
    if (!pattern) {
      pattern = { segments, methods: new Set() };
      this.routes.push(pattern);
    }
    for (const method of Array.isArray(route.method) ? route.method : [route.method]) pattern.methods.add(method);
  };

  /**
   * The methods `path` (no query) answers, sorted, for its `Allow` field; null when no route has
   * that path (a 404).
   */
  allowedFor(path: string): string[] | null {
    const parts = path.split('/');
    let allowed: Set<string> | null = null;
    for (const route of this.routes) {
      if (route.segments.length !== parts.length) continue;
      if (!route.segments.every((s, i) => (s.startsWith(':') ? parts[i] !== '' : s === parts[i]))) continue;
      allowed ??= new Set();
      for (const m of route.methods) allowed.add(m);
    }
    return allowed === null ? null : [...allowed].sort();
  }
}
