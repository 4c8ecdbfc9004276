/** Node 20 has String.prototype.toWellFormed; TypeScript's lib for ES2023 may not declare it. */
interface WellFormedString {
  toWellFormed(): string;
}

/** Each lone UTF-16 surrogate as U+FFFD: canonical JSON (RFC 8785) and UTF-8 refuse them. */
export function wellFormed(s: string): string {
  return (s as unknown as WellFormedString).toWellFormed();
}

/** The first `n` UTF-16 units, never ending in half a surrogate pair, made well-formed. */
export function head(s: string, n: number): string {
  if (s.length <= n) return wellFormed(s);
  let cut = s.slice(0, n);
  const last = cut.charCodeAt(cut.length - 1);
  if (last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1);
  return wellFormed(cut);
}
