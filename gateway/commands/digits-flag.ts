/**
 * A numeric flag's value, digits only (`agent --interval-ms`, `replay --step-ms`): `Number()` took
 * "1e3", "0x64", " 100" and "100 " (and "" as 0), so a typo or a stray space ran with a value the
 * operator never wrote. NaN for anything else, for the caller's own range check and message.
 */
export function digitsValue(raw: string): number {
  return /^\d{1,10}$/.test(raw) ? Number(raw) : Number.NaN;
}
