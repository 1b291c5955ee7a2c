/**
 * Seeds derived from the run seed, so that every random draw of a run (drop
 * path, Mixup/CutMix, SNIP's forward) depends only on where it happens, and a
 * resumed run draws the same numbers as an unbroken one.
 *
 * @example
 * ```ts
 * import { mixSeed } from "./seeds.ts";
 * console.log(mixSeed(0, 5, 1) === mixSeed(0, 5, 1), mixSeed(0, 5, 1) !== mixSeed(0, 5, 2)); // true true
 * ```
 * @module
 */

/**
 * A 32-bit mix of integers (seeds derived from the run seed and a step).
 *
 * @example
 * ```ts
 * import { mixSeed } from "./seeds.ts";
 * console.log(mixSeed(1, 2)); // a fixed 32-bit integer
 * ```
 */
export function mixSeed(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h >>> 0;
}
