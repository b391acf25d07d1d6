/**
 * A parent proxy's URL fit for logs: scheme, host and port, never the credentials it carries
 * (`http://user:pass@parent:3128` → `http://parent:3128`). Admin API readers get the URL redacted by
 * admin/redact.ts; the data plane, which may not import it, names the parent with this.
 */
export function parentLabel(upstream: string): string {
  try {
    const url = new URL(upstream);
    return `${url.protocol}//${url.host}`;
  } catch {
    return '[unparsable parent proxy URL]';
  }
}
