/**
 * The parent proxy a config's `upstream` URL names (SPEC §3): scheme, host and port, read the same
 * way by validation and by the dial. The WHATWG URL parser drops a port equal to the scheme's
 * default (`http://parent:80` has `url.port === ''`), which would read as "no port given"; the
 * port is therefore taken from the text of the authority, and a URL whose text says another thing than
 * the parser reads (policy/url-text.ts), or that has a path, query or fragment no dial uses, is refused.
 */
import { splitAuthority, urlTextProblem, writtenAuthority } from './url-text.ts';

/** Port of a parent named without one: the usual ports of HTTP and SOCKS proxies. */
export const DEFAULT_PARENT_PORTS: Readonly<Record<string, number>> = { 'http:': 3128, 'socks5:': 1080, 'socks5h:': 1080 };

/** The parent's own credentials, from the URL's userinfo, percent-decoded (UTF-8). */
export interface ParentLogin {
  readonly username: string;
  readonly password: string;
}

export interface ParentEndpoint {
  readonly protocol: string;
  /** Host name or IP address, IPv6 without brackets. */
  readonly host: string;
  /** The port written in the URL (`:80` included), or the scheme's default parent port when none is. */
  readonly port: number;
  /** The credentials the handshake sends the parent (never anyone else), or null without userinfo. */
  readonly login: ParentLogin | null;
}

/**
 * The URL's userinfo decoded once, here: the WHATWG parser keeps a `%` that starts no escape as it is
 * (`u:50%@parent` has the password `50%`), which decodeURIComponent refuses, so such a URL is an
 * error at validation rather than at every dial. The message never repeats the credentials.
 */
function loginOf(url: URL): ParentLogin | { error: string } | null {
  if (!url.username && !url.password) return null;
  try {
    return { username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) };
  } catch {
    return { error: "the parent proxy's user name or password is not valid percent-encoding (write a literal % as %25)" };
  }
}

/** The port as written in the URL's authority (after any userinfo), or null when none is written. */
function writtenPort(text: string): string | null {
  const written = writtenAuthority(text);
  return written === null ? null : splitAuthority(written.authority).port;
}

/**
 * A URL's text fit for an error message (which reaches logs: a SIGHUP reload that fails logs its
 * errors): whatever stands before the last `@` after the scheme, the credentials of an unparsable
 * URL, is replaced. `http://u:secret@bad host:3128` → `http://[credentials]@bad host:3128`.
 */
export function urlForMessage(text: string): string {
  const at = text.lastIndexOf('@');
  if (at === -1) return text;
  const start = text.indexOf('//');
  return `${start !== -1 && start < at ? text.slice(0, start + 2) : ''}[credentials]@${text.slice(at + 1)}`;
}

/** Parses a parent proxy URL; an error message when it is not one a parent can be dialled at. */
export function parseParentUrl(text: string): ParentEndpoint | { error: string } {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    return { error: `"${urlForMessage(text)}" is not a URL` };
  }
  const fallback = DEFAULT_PARENT_PORTS[url.protocol];
  if (fallback === undefined) return { error: `unsupported parent proxy scheme ${url.protocol}` };
  const problem = urlTextProblem(text.trim(), url);
  if (problem !== null) return { error: problem };
  // Nothing after the authority is sent to a parent: `http://parent:3128/v1` named no other parent.
  const rest = writtenAuthority(text.trim())?.rest ?? '';
  if (rest !== '' && rest !== '/') return { error: 'a parent proxy URL is scheme://host:port: a path, query or fragment after it would not be used' };
  const written = writtenPort(text.trim());
  // The URL parser has checked the digits (1-5 of them, at most 65535); what is left to refuse is 0.
  const port = written === null ? fallback : Number(written);
  if (port === 0) return { error: 'port 0 is not a port a parent proxy listens on' };
  const login = loginOf(url);
  if (login !== null && 'error' in login) return login;
  // RFC 1929 carries each in one length byte: a longer login could never be sent.
  if (login !== null && url.protocol !== 'http:' && (Buffer.byteLength(login.username) > 255 || Buffer.byteLength(login.password) > 255)) {
    return { error: "a SOCKS5 parent's user name and password are at most 255 bytes each (RFC 1929)" };
  }
  return { protocol: url.protocol, host: url.hostname.replace(/^\[|\]$/g, ''), port, login };
}
