/**
 * Text that is no policy at all: empty, only blank lines, comments and YAML document markers, or a
 * null scalar alone (`null`, `~`). It parses to nothing, and nothing is the built-in defaults (no
 * role, user or token; monitor mode). `serve` may start on such a file; a write that replaces a
 * running policy refuses it (PUT /v1/policy, a SIGHUP reload: a file caught half-written, truncated
 * before its text came, is such a text).
 */

/** YAML's null document: a null scalar alone. */
const NULL_SCALAR = /^(?:null|Null|NULL|~)$/;
const BLANK_OR_COMMENT = /^\s*(?:#.*)?$/;
const DOCUMENT_MARKER = /^(?:---|\.\.\.)\s*(?:#.*)?$/;

/** Whether `text` says nothing (see the module comment). */
export function isNoPolicyText(text: string): boolean {
  const t = text.trim();
  return NULL_SCALAR.test(t) || t.split(/\r?\n/).every((line) => BLANK_OR_COMMENT.test(line) || DOCUMENT_MARKER.test(line));
}
