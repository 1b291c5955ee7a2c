/**
 * Duplicate keys in JSON text. `JSON.parse` keeps the last of two equal keys
 * without a word; a file format whose header names each tensor once must
 * refuse such a header instead, since two readers could then disagree on
 * what the file holds.
 *
 * @example
 * ```ts
 * import { duplicateJsonKey } from "./json_keys.ts";
 * console.log(duplicateJsonKey('{"a": 1, "b": {"a": 2}}')); // null
 * console.log(duplicateJsonKey('{"a": 1, "a": 2}')); // "a"
 * ```
 * @module
 */

/**
 * The first key that appears twice in one object of `text` (valid JSON: run
 * `JSON.parse` first), or null. Linear in the length of `text`, with no
 * recursion however deep the nesting.
 *
 * @example
 * ```ts
 * import { duplicateJsonKey } from "./json_keys.ts";
 * console.log(duplicateJsonKey('[{"x": 1}, {"x": 2}]')); // null (different objects)
 * console.log(duplicateJsonKey('{"w": {"dtype": "F32", "dtype": "F16"}}')); // "dtype"
 * ```
 */
export function duplicateJsonKey(text: string): string | null {
  // One entry per open object (its keys so far) or array (null).
  const frames: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b) { // {
      frames.push(new Set());
      expectKey = true;
    } else if (c === 0x5b) { // [
      frames.push(null);
      expectKey = false;
    } else if (c === 0x7d || c === 0x5d) { // } ]
      frames.pop();
      expectKey = false;
    } else if (c === 0x2c) { // ,
      expectKey = frames[frames.length - 1] != null;
    } else if (c === 0x22) { // "
      const start = i;
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) {
        if (text.charCodeAt(i) === 0x5c) i++; // skip the escaped character
      }
      const keys = frames[frames.length - 1];
      if (expectKey && keys) {
        const raw = text.slice(start, i + 1);
        const key = raw.includes("\\") ? JSON.parse(raw) as string : raw.slice(1, -1);
        if (keys.has(key)) return key;
        keys.add(key);
        expectKey = false;
      }
    }
  }
  return null;
}
