/**
 * A URL in the policy (a parent proxy's, a webhook's) held to what its text says. The WHATWG URL
 * parser forgives what an operator did not mean: it drops tabs and line breaks inside, reads `\` as
 * `/` in an http(s) URL (`http://parent\evil:3128` is the host `parent`), takes `http:/parent` and
 * `http:parent` for `http://parent` (the port then stood where the text was not read for one), reads
 * `2130706433` as 127.0.0.1, and leaves a socks5 URL's host as opaque, percent-encoded text
 * (`socks5h://pä.example` has the host `p%C3%A4.example`, which no resolver knows). Each is refused
 * here with what to write instead. Messages never repeat what stands before the host (credentials).
 */
import { nameTextProblem, normalizeHost } from './host-pattern.ts';

/** Schemes whose URLs the parser reads `\` in as `/` (WHATWG "special" schemes among those the policy takes). */
const SPECIAL: ReadonlySet<string> = new Set(['http:', 'https:']);

/** The authority as written (between `//` and the first `/`, `?` or `#`) and the text after it; null without `//`. */
export function writtenAuthority(text: string): { authority: string; rest: string } | null {
  const start = text.indexOf('//');
  if (start === -1) return null;
  let end = text.length;
  for (const c of ['/', '?', '#']) {
    const i = text.indexOf(c, start + 2);
    if (i !== -1 && i < end) end = i;
  }
  return { authority: text.slice(start + 2, end), rest: text.slice(end) };
}

/** An authority's host and port as written: after the last `@`, the host's brackets kept; port null when none is written. */
export function splitAuthority(authority: string): { host: string; port: string | null } {
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1);
  const hostEnd = hostPort.startsWith('[') ? hostPort.indexOf(']') + 1 : 0;
  const colon = hostPort.indexOf(':', hostEnd);
  if (colon === -1) return { host: hostPort, port: null };
  const port = hostPort.slice(colon + 1);
  return { host: hostPort.slice(0, colon), port: port === '' ? null : port };
}

/**
 * Why `url` (parsed from `text`, trimmed) is not the URL its text says, or null: a tab or line break
 * inside, a `\` in an http(s) URL; no `//` after the scheme; a host as written that is no host name
 * or IP address, or that the parser reads as another host.
 */
export function urlTextProblem(text: string, url: URL): string | null {
  if (/[\t\n\r]/.test(text)) return 'a tab or line break inside the URL, which the URL parser drops';
  if (SPECIAL.has(url.protocol) && text.includes('\\')) {
    return `"\\" inside an ${url.protocol.slice(0, -1)} URL, which the URL parser reads as "/" (in a user name or password write %5C)`;
  }
  const written = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? writtenAuthority(text) : null;
  if (written === null) return `write the URL as ${url.protocol}//host:port ("//" after "${url.protocol}"): without it the host and port are not read where they are written`;
  const { host } = splitAuthority(written.authority);
  // A bracketed host is an IPv6 address the parser has checked (it refuses a zone id).
  if (host.startsWith('[')) return null;
  const name = normalizeHost(host);
  if (name === null) {
    const problem = nameTextProblem(host);
    return `"${host}" is not a host name or IP address${problem === null ? '' : `: ${problem}`}`;
  }
  const read = normalizeHost(url.hostname);
  if (read !== name) return `the URL's host "${host}" is read as "${url.hostname}" in a ${url.protocol.slice(0, -1)} URL: write it as ${name}`;
  return null;
}
