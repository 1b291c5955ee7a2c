/**
 * Text from untrusted files, made safe to put in a one-line error message:
 * escaped (no raw line breaks) and cut short.
 *
 * @example
 * ```ts
 * import { oneLine, quoteName } from "./quote.ts";
 * console.log(quoteName("a\nb")); // "a\nb" (the newline escaped)
 * console.log(oneLine("/tmp/odd\nname.pth")); // /tmp/odd\nname.pth (escaped)
 * ```
 * @module
 */

/**
 * `s` quoted for a one-line message: JSON escapes (no raw newlines), at most
 * `max` characters of it.
 *
 * @example
 * ```ts
 * import { quoteName } from "./quote.ts";
 * console.log(quoteName("x".repeat(500)).length < 100); // true
 * ```
 */
export function quoteName(s: string, max = 80): string {
  const cut = s.length > max ? `${s.slice(0, max)}…` : s;
  return JSON.stringify(cut);
}

/**
 * `s` (a file name) with line breaks escaped, so a message naming it stays one line.
 *
 * @example
 * ```ts
 * import { oneLine } from "./quote.ts";
 * console.log(oneLine("a\r\nb").includes("\n")); // false
 * ```
 */
export function oneLine(s: string): string {
  return s.replace(/[\r\n]/g, (c) => (c === "\n" ? "\\n" : "\\r"));
}
