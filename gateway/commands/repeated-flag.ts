/**
 * A value flag given twice (`serve --mode monitor --mode enforce`) is ambiguous: node's parseArgs
 * keeps the last one without a word, so an operator's wrapper that appends a flag to a unit's
 * command line silently overrides it (or is overridden). Every command refuses it as a usage error
 * naming the flag. Boolean flags (`--quiet --quiet`) say the same thing twice and stay allowed;
 * INPUTs (replay) are positional and repeat by design.
 */

/** One token of `parseArgs({ tokens: true })`, as far as this reads it. */
interface ArgToken {
  readonly kind: string;
  readonly name?: string;
  readonly rawName?: string;
  readonly value?: string | undefined;
}

/**
 * `parsed` (from `parseArgs({ tokens: true, ... })`) as it is; throws, for the caller's usage-error
 * catch, when a flag that takes a value appears twice.
 */
export function withoutRepeatedFlags<T extends { readonly tokens?: readonly ArgToken[] }>(parsed: T): T {
  const seen = new Map<string, ArgToken>();
  for (const t of parsed.tokens ?? []) {
    if (t.kind !== 'option' || t.name === undefined || t.value === undefined) continue;
    const first = seen.get(t.name);
    if (first === undefined) {
      seen.set(t.name, t);
      continue;
    }
    const as = first.rawName === t.rawName ? '' : ` (as ${first.rawName} and ${t.rawName})`;
    throw new Error(`--${t.name} given twice${as}: '${first.value}', then '${t.value}'; give it once`);
  }
  return parsed;
}
