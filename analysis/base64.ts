/**
 * Base64 encoding of bytes (for images embedded in SVG), with no JSR
 * dependency.
 *
 * @example
 * ```ts
 * import { encodeBase64 } from "./base64.ts";
 * console.log(encodeBase64(new TextEncoder().encode("hi"))); // "aGk="
 * ```
 * @module
 */

/** Standard base64 (RFC 4648, with padding). */
export function encodeBase64(bytes: Uint8Array): string {
  let s = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    s += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(s);
}
