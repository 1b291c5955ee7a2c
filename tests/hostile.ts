/**
 * Helpers of the hostile-file tests: a seeded random source, byte mutators,
 * and the one check every reader must pass on every input: it returns, or it
 * throws its own error class with a one-line message naming the file, within
 * a time and memory bound.
 */
import assert from "node:assert/strict";

/** Deterministic 32-bit generator (mulberry32): the same seed, the same cases. */
export class SeededRandom {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  u32(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

/** Values that break size fields: zero, one, around signed/unsigned limits, huge. */
const NASTY_U32 = [
  0,
  1,
  2,
  7,
  8,
  255,
  256,
  0x7fff,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  0xffffffff,
];

/**
 * One random mutation of `bytes` (a new array): byte flips, a nasty 32-bit
 * value written over a size field, truncation, insertion, deletion or a
 * copied range. `hot` (optional) is the region most mutations aim at.
 */
export function mutate(
  bytes: Uint8Array,
  rng: SeededRandom,
  hot: [number, number] = [0, bytes.length],
): Uint8Array {
  const [lo, hi] = hot;
  const at = () => lo + rng.int(Math.max(1, hi - lo));
  const out = bytes.slice();
  switch (rng.int(6)) {
    case 0: { // flip a few bytes
      const n = 1 + rng.int(4);
      for (let i = 0; i < n; i++) {
        const p = at();
        if (p < out.length) out[p] ^= 1 << rng.int(8);
      }
      return out;
    }
    case 1: { // a size-like value over four bytes
      const p = at();
      const v = rng.pick(NASTY_U32);
      for (let i = 0; i < 4 && p + i < out.length; i++) out[p + i] = (v >>> (8 * i)) & 0xff;
      return out;
    }
    case 2: // truncate
      return out.subarray(0, at());
    case 3: { // insert random bytes
      const p = at();
      const extra = Uint8Array.from({ length: 1 + rng.int(8) }, () => rng.int(256));
      return Uint8Array.from([...out.subarray(0, p), ...extra, ...out.subarray(p)]);
    }
    case 4: { // delete a range
      const p = at();
      return Uint8Array.from([...out.subarray(0, p), ...out.subarray(p + 1 + rng.int(8))]);
    }
    default: { // copy a range over another
      const from = at();
      const to = at();
      const n = 1 + rng.int(16);
      out.copyWithin(to, from, from + n);
      return out;
    }
  }
}

/** Bounds every reader must keep on a malformed file of at most 1 MB. */
export const CASE_LIMITS = {
  /**
   * A hang guard (the quadratic LONG4 decoder took 45 s), generous for a
   * shared CPU under a parallel test run: cases take milliseconds, the
   * million-opcode ones a few hundred. tests/bench_readers.ts measures them.
   */
  ms: 5000,
  /** Resident memory growth while one case runs. */
  rssBytes: 100 << 20,
};

/** What {@linkcode expectReaderOutcome} saw. */
export interface Outcome<T> {
  value?: T;
  error?: Error;
}

/**
 * Run `read` on one input: it must return, or throw an instance of
 * `ErrorClass` whose message is one line starting with `prefix` (which names
 * the file), within {@linkcode CASE_LIMITS}. `label` names the case in
 * assertion messages.
 */
export function expectReaderOutcome<T>(
  label: string,
  read: () => T,
  ErrorClass: new (...args: never[]) => Error,
  prefix: string,
): Outcome<T> {
  const rss0 = Deno.memoryUsage().rss;
  const t0 = performance.now();
  let outcome: Outcome<T>;
  try {
    outcome = { value: read() };
  } catch (e) {
    assert.ok(
      e instanceof ErrorClass,
      `${label}: threw ${(e as Error)?.name}: ${(e as Error)?.message}, not ${ErrorClass.name}`,
    );
    const msg = (e as Error).message;
    assert.ok(
      // deno-lint-ignore no-control-regex -- matching control characters is the point
      !/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(msg),
      `${label}: a line break or control character in ${JSON.stringify(msg)}`,
    );
    assert.ok(msg.startsWith(prefix), `${label}: message does not name the file: ${msg}`);
    assert.ok(msg.length < 1000, `${label}: message of ${msg.length} characters`);
    outcome = { error: e as Error };
  }
  const ms = performance.now() - t0;
  const grew = Deno.memoryUsage().rss - rss0;
  assert.ok(ms < CASE_LIMITS.ms, `${label}: took ${ms.toFixed(0)} ms`);
  assert.ok(grew < CASE_LIMITS.rssBytes, `${label}: resident memory grew ${grew >> 20} MiB`);
  return outcome;
}
