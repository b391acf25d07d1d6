import { parseParentUrl } from '../../policy/upstream-url.ts';

/**
 * An unparsable parent proxy URL fit for logs (parentName's fallback): scheme and host as the URL
 * parser reads them, never the credentials; the parser leaves out a port equal to the scheme's
 * default (`http://parent:80` → `http://parent`), so a parseable URL is named by parentName, which
 * says the port dialled. Admin API readers get the URL redacted by admin/redact.ts.
 */
function parentLabel(upstream: string): string {
  try {
    const url = new URL(upstream);
    return `${url.protocol}//${url.host}`;
  } catch {
    return '[unparsable parent proxy URL]';
  }
}

/**
 * The parent a flow went through as its record names it (`upstream`): scheme, host and the port
 * dialled (the scheme's default, 3128 or 1080, when the URL has none: policy/upstream-url.ts), never
 * the credentials. The config names a few parents and every flow through one asks: each URL is
 * parsed once (the cache is cleared past 256, as dial.ts's).
 */
export function parentName(upstream: string): string {
  let name = names.get(upstream);
  if (name === undefined) {
    const endpoint = parseParentUrl(upstream);
    if ('error' in endpoint) name = parentLabel(upstream);
    else name = `${endpoint.protocol}//${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`;
    if (names.size >= 256) names.clear();
    names.set(upstream, name);
  }
  return name;
}
const names = new Map<string, string>();
