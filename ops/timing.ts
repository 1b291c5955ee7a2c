/**
 * The GPU timer that the planner and the benchmarks share: timestamp queries
 * around recorded work where the adapter has them, the wall clock otherwise,
 * with the work repeated back to back so that the GPU runs at its working
 * clock while it is timed.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { timeGpu } from "./timing.ts";
 * await initGpu();
 * const t = await timeGpu(() => Tensor.zeros([256]).dispose(), { runs: 1 });
 * console.log(t.ms >= 0); // true
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";

/**
 * GPU milliseconds a timed run of a tuning candidate lasts at least (the
 * candidate runs back to back as often as needed). A lone millisecond-long
 * launch after an idle gap can run at a low clock: on the H100 single FFT
 * launches timed up to ~4× slower than the same kernel inside a 24-layer
 * stack, enough to make the tuner pick the wrong algorithm.
 */
export const TUNE_MIN_MS = 15;

/**
 * GPU milliseconds of back-to-back work right before each tuning candidate is
 * timed: on the H100 the tuner's per-layer times were still ~2.6× the same
 * kernel's inside a 24-layer stack with only {@linkcode TUNE_MIN_MS} (the
 * clock falls while the next candidate compiles), and a ranking taken at a
 * ramping clock is noise (direct vs FFT filter gradient: 4.65 vs 4.68 ms).
 */
export const TUNE_WARMUP_MS = 60;

/**
 * The longest {@linkcode warmUp} keeps going, as a multiple of the asked-for
 * warm-up, when the GPU is still getting faster.
 */
export const WARMUP_MAX_FACTOR = 8;

/**
 * Keep the GPU busy with `record` for at least `minMs` and until it stops
 * getting faster: the work is submitted in chunks of about `minMs / 3`, each
 * chunk's GPU time is measured, and the warm-up ends once a chunk is no more
 * than 2% faster than the one before (the clock has settled), or after
 * {@linkcode WARMUP_MAX_FACTOR} × `minMs`. A fixed 60 ms was not enough after a
 * long idle: on the H100 the products of a benchmark then timed at the
 * 345 MHz idle clock, 3–4× slow. Returns the chunks' per-recording times, in
 * order (tests read the settling from them).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { warmUp } from "./timing.ts";
 * await initGpu();
 * const times = await warmUp(() => Tensor.zeros([1024]).dispose(), 1);
 * console.log(times.length >= 1); // true
 * ```
 */
export async function warmUp(record: () => void, minMs: number): Promise<number[]> {
  const probe = await timeGpu(record, { runs: 1, warmup: 0 });
  // Per-chunk repeats: a third of the minimum, so that the plateau test has a few chunks to see.
  const reps = Math.max(1, Math.min(1024, Math.ceil(minMs / 3 / Math.max(probe.ms, 1e-3))));
  const times: number[] = [];
  const t0 = performance.now();
  let busy = 0;
  for (;;) {
    const t = await timeGpu(record, { runs: 1, warmup: 0, reps });
    times.push(t.ms);
    busy += t.ms * reps;
    const n = times.length;
    const settled = n >= 2 && times[n - 1] >= 0.98 * times[n - 2];
    if (settled && busy >= minMs && performance.now() - t0 >= minMs) break;
    // The cap, after two chunks at least (one chunk of slow work can outlast it on its own).
    if (n >= 2 && busy >= WARMUP_MAX_FACTOR * minMs) break;
  }
  return times;
}

/** Back-to-back repeats (1–256) of a recording that takes `ms` for a timed run to last `minMs`. */
function repeatsToLast(minMs: number, ms: number): number {
  return Math.max(1, Math.min(256, Math.ceil(minMs / Math.max(ms, 1e-3))));
}

/**
 * The median of `values` (the upper of the two middle ones for an even
 * count), what every timing here reports.
 *
 * @example
 * ```ts
 * import { medianOf } from "./timing.ts";
 * console.log(medianOf([3, 1, 2]), medianOf([4, 1, 3, 2])); // 2 3
 * ```
 */
export function medianOf(values: readonly number[]): number {
  return [...values].sort((p, q) => p - q)[Math.floor(values.length / 2)];
}

/** What {@linkcode timeGpu} measured. */
export interface GpuTiming {
  /** Median milliseconds per recording. */
  ms: number;
  /** Median wall-clock milliseconds per recording. */
  wallMs: number;
  method: "timestamp" | "wall";
  /** Every timed run, per recording. */
  all: number[];
  /** Recordings per timed run. */
  reps: number;
}

/**
 * Milliseconds of GPU time that the work recorded by `record` takes, median
 * of `runs` after `warmup` runs: timestamp queries around the recorded
 * dispatches where the adapter offers `timestamp-query` (and they look sane),
 * else the wall clock around a sync. `record` only records work (it must not
 * read back). With `minMs`, each timed run records the work back to back as
 * many times (`reps`) as it takes to last that long, and the times are per
 * recording: a GPU left idle between short runs drops to a low clock (the
 * H100 sat at 345 MHz instead of 1980 MHz, timing kernels up to 5× slow).
 * `reps` fixes that count instead (a caller timing the same work again
 * skips the probe). `warmupMs` keeps the GPU busy right before the timed runs for at least that
 * long and until its speed settles ({@linkcode warmUp}), so that they start at the working clock.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { timeGpu } from "./timing.ts";
 * await initGpu();
 * const t = await timeGpu(() => Tensor.zeros([1024]).dispose(), { runs: 3 });
 * console.log(t.ms >= 0, t.method); // true "timestamp" (or "wall")
 * ```
 */
export async function timeGpu(
  record: () => void,
  { runs = 5, warmup = 1, minMs = 0, warmupMs = 0, reps: fixedReps }: {
    runs?: number;
    warmup?: number;
    minMs?: number;
    warmupMs?: number;
    reps?: number;
  } = {},
): Promise<GpuTiming> {
  const g = gpu();
  for (let i = 0; i < warmup; i++) {
    record();
    await g.sync();
  }
  let reps = fixedReps ?? 1;
  if (fixedReps === undefined && minMs > 0) {
    // Back to back until a timed run lasts minMs: the GPU stays busy, so it runs at its
    // working clock (see TUNE_MIN_MS).
    const probe = await timeGpu(record, { runs: 1, warmup: 0 });
    reps = repeatsToLast(minMs, probe.ms);
  }
  if (reps > 1) {
    const once = record;
    record = () => {
      for (let i = 0; i < reps; i++) once();
    };
    if (fixedReps === undefined) {
      record();
      await g.sync();
    }
  }
  if (warmupMs > 0) await warmUp(record, warmupMs);
  const useTs = g.features.has("timestamp-query");
  const qs = useTs ? g.device.createQuerySet({ type: "timestamp", count: 2 }) : null;
  const resolve = useTs
    ? g.device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    })
    : null;
  const ts: number[] = [];
  const walls: number[] = [];
  for (let i = 0; i < runs; i++) {
    await g.sync();
    const t0 = performance.now();
    if (qs) {
      g.encoderForCopy().beginComputePass({
        timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0 },
      }).end();
    }
    record();
    if (qs && resolve) {
      const enc = g.encoderForCopy();
      enc.beginComputePass({ timestampWrites: { querySet: qs, endOfPassWriteIndex: 1 } }).end();
      enc.resolveQuerySet(qs, 0, 2, resolve, 0);
      const bytes = await g.readBytes(resolve, 16);
      walls.push(performance.now() - t0);
      const [a, b] = new BigUint64Array(bytes);
      ts.push(Number(b - a) / 1e6);
    } else {
      await g.sync();
      walls.push(performance.now() - t0);
    }
  }
  qs?.destroy();
  resolve?.destroy();
  const median = (v: number[]) => medianOf(v) / reps;
  const wallMs = median(walls);
  if (ts.length) {
    const tsMs = median(ts);
    // Guard against adapters whose timestamps are coarse or meaningless.
    if (tsMs > 0 && tsMs <= wallMs * 1.05) {
      return { ms: tsMs, wallMs, method: "timestamp", all: ts.map((t) => t / reps), reps };
    }
  }
  return { ms: wallMs, wallMs, method: "wall", all: walls.map((t) => t / reps), reps };
}

/**
 * GPU milliseconds of several recordings measured side by side with as few
 * read-backs as possible (two or three): every read-back waits on the
 * runtime's device poll (about 10 ms under Deno, however short the work), and
 * the GPU idles meanwhile, so timing each run on its own costs more in waits
 * than in work and lets the clock fall between runs. Here one submission
 * holds a warm-up and `runs` rounds in which each recording runs in turn
 * (repeated until it lasts about `minMs`, as measured by a first probe round),
 * with a timestamp after each, and a single read-back. When the rounds still
 * sped up (the first slower than the last by more than 2 %, a clock that was
 * still rising), the rounds run once more, at most twice. `whileRunning`,
 * when given, is called once, right after the first batch of rounds is
 * submitted and before it is waited for: CPU work there (the planner
 * compiles the next key's candidates) overlaps the GPU's.
 *
 * Returns each recording's median ms per recording and its repeats, or null
 * when the adapter has no `timestamp-query` or its stamps are not credible
 * (use {@linkcode timeGpu} per recording then).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { timeInterleaved } from "./timing.ts";
 * await initGpu();
 * const a = () => Tensor.zeros([1 << 12]).dispose();
 * const b = () => Tensor.zeros([1 << 16]).dispose();
 * const t = await timeInterleaved([a, b], { runs: 3 });
 * console.log(t === null || t.ms.length === 2); // true
 * ```
 */
export async function timeInterleaved(
  records: (() => void)[],
  { runs = 3, minMs = 0, warmupMs = 0, whileRunning }: {
    runs?: number;
    minMs?: number;
    warmupMs?: number;
    whileRunning?: () => void;
  } = {},
): Promise<{ ms: number[]; reps: number[] } | null> {
  if (!gpu().features.has("timestamp-query") || records.length === 0) return null;
  const probe = await stampedRuns(records.map((record) => ({ record, reps: 1 })));
  if (!probe) return null;
  const reps = probe.map((ms) => minMs > 0 ? repeatsToLast(minMs, ms) : 1);
  const roundMs = probe.reduce((s, ms, i) => s + ms * reps[i], 0);
  // The probe ran at whatever clock the GPU had, so the warm-up is sized generously from it.
  let warmRounds = warmupMs > 0
    ? Math.max(1, Math.min(64, Math.ceil(warmupMs / Math.max(roundMs, 1e-3))))
    : 0;
  const k = records.length;
  let rounds: number[][] = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    const items: { record: () => void; reps: number }[] = [];
    for (let r = 0; r < warmRounds + runs; r++) {
      for (let i = 0; i < k; i++) items.push({ record: records[i], reps: reps[i] });
    }
    const ms = await stampedRuns(items, attempt === 0 ? whileRunning : undefined);
    if (!ms) return null;
    rounds = [];
    for (let r = warmRounds; r < warmRounds + runs; r++) {
      rounds.push(ms.slice(r * k, (r + 1) * k).map((t, i) => t / reps[i]));
    }
    const total = (r: number[]) => r.reduce((s, t, i) => s + t * reps[i], 0);
    if (runs < 2 || total(rounds[0]) <= 1.02 * total(rounds[runs - 1])) break;
    warmRounds = 0; // the GPU has just been busy: no warm-up before the next rounds
  }
  return { ms: records.map((_, i) => medianOf(rounds.map((r) => r[i]))), reps };
}

/** Most timestamps in one query set (the WebGPU limit). */
const MAX_STAMPS = 4096;

/**
 * Record `items` back to back (each `reps` times) with a timestamp at the end
 * of each, in one submission, and read the stamps back once: the GPU ms of
 * each item, or null when the stamps are not credible (not increasing, or
 * more time than the wall clock saw). `whileRunning` runs once they are
 * submitted, before the wait.
 */
async function stampedRuns(
  items: { record: () => void; reps: number }[],
  whileRunning?: () => void,
): Promise<number[] | null> {
  const g = gpu();
  const count = items.length + 1;
  if (count > MAX_STAMPS) {
    throw new Error(`timeInterleaved: ${items.length} runs, at most ${MAX_STAMPS - 1}`);
  }
  const qs = g.device.createQuerySet({ type: "timestamp", count });
  const resolve = g.device.createBuffer({
    size: 8 * count,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  // End-of-pass stamps only: written once everything before them has finished.
  const stamp = (i: number) =>
    g.encoderForCopy().beginComputePass({
      timestampWrites: { querySet: qs, endOfPassWriteIndex: i },
    })
      .end();
  try {
    const t0 = performance.now();
    stamp(0);
    items.forEach(({ record, reps }, i) => {
      for (let r = 0; r < reps; r++) record();
      stamp(i + 1);
    });
    g.encoderForCopy().resolveQuerySet(qs, 0, count, resolve, 0);
    const read = g.readBytes(resolve, 8 * count); // submits, then waits
    let stamps: BigUint64Array;
    try {
      whileRunning?.();
    } finally {
      stamps = new BigUint64Array(await read);
    }
    const wallMs = performance.now() - t0;
    const ms = items.map((_, i) => Number(stamps[i + 1] - stamps[i]) / 1e6);
    const gpuMs = Number(stamps[count - 1] - stamps[0]) / 1e6;
    if (!ms.every((t) => t >= 0 && Number.isFinite(t)) || !(gpuMs <= wallMs * 1.05)) return null;
    return ms;
  } finally {
    qs.destroy();
    resolve.destroy();
  }
}
