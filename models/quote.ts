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
  // JSON escapes C0 controls; DEL, C1 controls (NEL breaks lines) and U+2028/9 need oneLine too.
  return oneLine(JSON.stringify(cut));
}

/**
 * `s` (a file name, or text from a file) with line breaks and other control
 * characters escaped, so a message holding it stays one line.
 *
 * @example
 * ```ts
 * import { oneLine } from "./quote.ts";
 * console.log(oneLine("a\r\nb").includes("\n")); // false
 * ```
 */
export function oneLine(s: string): string {
  // Control characters and Unicode line separators would break or garble the line.
  return s.replace(
    // deno-lint-ignore no-control-regex -- matching control characters is the point
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) =>
      c === "\n"
        ? "\\n"
        : c === "\r"
        ? "\\r"
        : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}
