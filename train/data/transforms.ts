/**
 * CPU image transforms shared by the datasets: normalisation constants,
 * torchvision's RandomResizedCrop and timm's eval resize + centre-crop
 * geometry, uint8 → normalised float CHW conversion, bilinear resampling,
 * and the seeded helpers (seed mixing, epoch order, prefetching) behind every
 * {@linkcode Dataset.batches}.
 *
 * @example
 * ```ts
 * import { evalResizeGeometry, randomResizedCropBox } from "./transforms.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * console.log(evalResizeGeometry(500, 375, 224)); // resize to 341×256, crop at (58, 16)
 * console.log(randomResizedCropBox(500, 375, new Rng(0)));
 * ```
 * @module
 */
import { Rng } from "../../ops/tensor.ts";
import type { Batch, BatchOptions, Dataset, Shard } from "./types.ts";

/** ImageNet channel means (RGB, on 0..1 values), as torchvision and timm. */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
/** ImageNet channel standard deviations. */
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;
/** CIFAR-10 training-set channel means. */
export const CIFAR10_MEAN = [0.4914, 0.4822, 0.4465] as const;
/** CIFAR-10 training-set channel standard deviations (the per-pixel ones, not the 0.2023… per-image ones). */
export const CIFAR10_STD = [0.247, 0.2435, 0.2616] as const;

/** timm's default `crop_pct` for eval: resize to size/0.875, then centre-crop size. */
export const DEFAULT_CROP_PCT = 0.875;

/**
 * A 32-bit mix of integers: independent seeds for (run seed, epoch, sample, purpose).
 *
 * @example
 * ```ts
 * import { SEED_AUGMENT, SEED_SHUFFLE, seedOf } from "./transforms.ts";
 * console.log(seedOf(0, 1, SEED_SHUFFLE) !== seedOf(0, 1, SEED_AUGMENT)); // true
 * ```
 */
export function seedOf(...xs: number[]): number {
  let h = 0x2545f491;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x9e3779b1) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}

/** Purposes mixed into seeds so that shuffles, augmentations and samples never share a stream. */
export const SEED_SHUFFLE = 0x5f1e;
export const SEED_AUGMENT = 0xa06e;

/**
 * Python's `round` (half to even), used by torchvision's crop arithmetic.
 *
 * @example
 * ```ts
 * import { roundHalfEven } from "./transforms.ts";
 * console.log(roundHalfEven(2.5), roundHalfEven(3.5), roundHalfEven(-0.5)); // 2 4 -0
 * ```
 */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** A crop rectangle in source pixels. */
export interface CropBox {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a random
 * area fraction in `scale` and log-uniform aspect ratio in `ratio`, else a
 * centre crop clamped to the ratio range.
 *
 * @example
 * ```ts
 * import { randomResizedCropBox } from "./transforms.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * const box = randomResizedCropBox(640, 480, new Rng(3));
 * console.log(box.width * box.height >= 0.08 * 640 * 480 * 0.9); // true
 * ```
 */
export function randomResizedCropBox(
  width: number,
  height: number,
  rng: Rng,
  scale: readonly [number, number] = [0.08, 1],
  ratio: readonly [number, number] = [3 / 4, 4 / 3],
): CropBox {
  const area = width * height;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * (scale[0] + (scale[1] - scale[0]) * rng.uniform());
    const aspect = Math.exp(logLo + (logHi - logLo) * rng.uniform());
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = rng.int(height - h + 1);
      const left = rng.int(width - w + 1);
      return { left, top, width: w, height: h };
    }
  }
  const inRatio = width / height;
  let w = width;
  let h = height;
  if (inRatio < ratio[0]) h = roundHalfEven(w / ratio[0]);
  else if (inRatio > ratio[1]) w = roundHalfEven(h * ratio[1]);
  return {
    left: Math.floor((width - w) / 2),
    top: Math.floor((height - h) / 2),
    width: w,
    height: h,
  };
}

/** Where timm's eval transform resizes to and crops from. */
export interface EvalGeometry {
  /** Size after `Resize(floor(size / cropPct))` of the shorter side (aspect kept, long side truncated). */
  resizeWidth: number;
  resizeHeight: number;
  /** Top-left corner of the `size`×`size` centre crop in the resized image. */
  left: number;
  top: number;
}

/**
 * timm's eval transform geometry: shorter side resized to
 * `floor(size / cropPct)` (torchvision `Resize(int)`: long side
 * `int(short·long/short)`), then `CenterCrop(size)` with Python rounding.
 *
 * @example
 * ```ts
 * import { evalResizeGeometry } from "./transforms.ts";
 * console.log(evalResizeGeometry(500, 375, 224)); // { resizeWidth: 341, resizeHeight: 256, left: 58, top: 16 }
 * ```
 */
export function evalResizeGeometry(
  width: number,
  height: number,
  size: number,
  cropPct = DEFAULT_CROP_PCT,
): EvalGeometry {
  const short = Math.floor(size / cropPct);
  const resizeWidth = width <= height ? short : Math.floor((short * width) / height);
  const resizeHeight = width <= height ? Math.floor((short * height) / width) : short;
  return {
    resizeWidth,
    resizeHeight,
    left: roundHalfEven((resizeWidth - size) / 2),
    top: roundHalfEven((resizeHeight - size) / 2),
  };
}

/**
 * Interleaved uint8 pixels (H×W×channels, channels 1, 3 or 4, alpha ignored)
 * into `out` at `offset` as normalised 3×H×W floats, optionally mirrored
 * left-right.
 *
 * @example
 * ```ts
 * import { hwcToNormalisedChw, IMAGENET_MEAN, IMAGENET_STD } from "./transforms.ts";
 * const out = new Float32Array(3 * 1 * 2);
 * hwcToNormalisedChw(new Uint8Array([255, 0, 0, 0, 0, 255]), 1, 2, 3, IMAGENET_MEAN, IMAGENET_STD, out, 0, false);
 * console.log(out); // R plane, G plane, B plane of 2 pixels
 * ```
 */
export function hwcToNormalisedChw(
  src: Uint8Array,
  height: number,
  width: number,
  channels: number,
  mean: readonly number[],
  std: readonly number[],
  out: Float32Array,
  offset: number,
  flip: boolean,
): void {
  const plane = height * width;
  for (let c = 0; c < 3; c++) {
    const sc = channels >= 3 ? c : 0;
    const a = 1 / (255 * std[c]);
    const b = -mean[c] / std[c];
    const base = offset + c * plane;
    for (let y = 0; y < height; y++) {
      const row = y * width;
      for (let x = 0; x < width; x++) {
        const sx = flip ? width - 1 - x : x;
        out[base + row + x] = src[(row + sx) * channels + sc] * a + b;
      }
    }
  }
}

/**
 * Bilinear sampling weights of PyTorch's `interpolate(mode="bilinear",
 * align_corners=False)` along one axis: for each output index, the two
 * source indices and the weight of the second.
 *
 * @example
 * ```ts
 * import { bilinearTaps } from "./transforms.ts";
 * const { i0, i1, w1 } = bilinearTaps(4, 2); // halve: each output sits between two inputs
 * console.log(i0, i1, w1); // Int32Array [0, 2] Int32Array [1, 3] Float32Array [0.5, 0.5]
 * ```
 */
export function bilinearTaps(
  inSize: number,
  outSize: number,
): { i0: Int32Array; i1: Int32Array; w1: Float32Array } {
  const i0 = new Int32Array(outSize);
  const i1 = new Int32Array(outSize);
  const w1 = new Float32Array(outSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const s = Math.max(0, (o + 0.5) * scale - 0.5);
    const f = Math.min(Math.floor(s), inSize - 1);
    i0[o] = f;
    i1[o] = Math.min(f + 1, inSize - 1);
    w1[o] = s - f;
  }
  return { i0, i1, w1 };
}

/** Batches of one epoch, from per-batch loaders: shared by every dataset. */
export interface EpochPlan {
  /** Dataset indices of each batch, in yield order. */
  batches: Int32Array[];
  /** Per-sample augmentation seeds (null when not augmenting). */
  augmentSeeds: ((index: number) => number) | null;
}

/**
 * The order of one epoch: a seeded Fisher–Yates shuffle when training
 * (by `seed` and `epoch`), else `0..n-1`; with `shard`, this rank's part of
 * it ({@linkcode shardOrder}); cut into batches (training drops the last
 * partial batch).
 *
 * @example
 * ```ts
 * import { epochPlan } from "./transforms.ts";
 * const plan = epochPlan(10, { batchSize: 4, epoch: 0, seed: 0, train: false });
 * console.log(plan.batches); // [Int32Array [0, 1, 2, 3], Int32Array [4, 5, 6, 7], Int32Array [8, 9]]
 * const shard = { rank: 1, world: 2 };
 * console.log(epochPlan(5, { batchSize: 2, epoch: 0, seed: 0, train: false, shard }).batches);
 * // [Int32Array [1, 3]]
 * ```
 */
export function epochPlan(n: number, opts: BatchOptions): EpochPlan {
  const { batchSize, train } = opts;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new Error(`batch size must be a positive integer, got ${batchSize}`);
  }
  let order: Int32Array = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  if (train) {
    const rng = new Rng(seedOf(opts.seed, opts.epoch, SEED_SHUFFLE));
    for (let i = n - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      const t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
  }
  if (opts.shard) order = shardOrder(order, opts.shard, train);
  const count = countBatches(order.length, batchSize, train);
  const batches: Int32Array[] = [];
  for (let b = opts.startBatch ?? 0; b < count; b++) {
    batches.push(order.subarray(b * batchSize, Math.min(order.length, (b + 1) * batchSize)));
  }
  const augmentSeeds = train
    ? (index: number) => seedOf(opts.seed, opts.epoch, index, SEED_AUGMENT)
    : null;
  return { batches, augmentSeeds };
}

/**
 * Rank `shard.rank`'s part of an epoch's `order`, as torch's
 * `DistributedSampler`: positions rank, rank + world, …; when `pad`
 * (training), the order is first padded to a multiple of `world` by
 * repeating its first indices (cyclically if `world` exceeds it), so every
 * rank holds the same number of images.
 *
 * @example
 * ```ts
 * import { shardOrder } from "./transforms.ts";
 * const order = Int32Array.from([4, 0, 3, 1, 2]);
 * console.log(shardOrder(order, { rank: 1, world: 2 }, true)); // Int32Array [0, 1, 4]
 * ```
 */
export function shardOrder(order: Int32Array, shard: Shard, pad: boolean): Int32Array {
  const { rank, world } = shard;
  if (
    !Number.isInteger(world) || world < 1 || !Number.isInteger(rank) || rank < 0 || rank >= world
  ) {
    throw new Error(
      `shard: rank must be in 0..world-1 and world ≥ 1, got rank ${rank} of ${world}`,
    );
  }
  const n = order.length;
  const count = shardSize(n, shard, pad);
  const out = new Int32Array(count);
  for (let k = 0; k < count; k++) out[k] = n === 0 ? 0 : order[(rank + k * world) % n];
  return out;
}

/**
 * Images of a split of `n` that `shard` holds: ⌈n/world⌉ padded, else its strided share.
 *
 * @example
 * ```ts
 * import { shardSize } from "./transforms.ts";
 * console.log(shardSize(5, { rank: 1, world: 2 }, true), shardSize(5, { rank: 1, world: 2 }, false)); // 3 2
 * ```
 */
export function shardSize(n: number, shard: Shard, pad: boolean): number {
  if (pad) return Math.ceil(n / shard.world);
  return Math.max(0, Math.ceil((n - shard.rank) / shard.world));
}

/** Batches per epoch: `floor` when training (drop last), `ceil` otherwise. */

/**
 * Batches per epoch: `floor` when training (drop last), `ceil` otherwise.
 *
 * @example
 * ```ts
 * import { countBatches } from "./transforms.ts";
 * console.log(countBatches(10, 4, true), countBatches(10, 4, false)); // 2 3
 * ```
 */
export function countBatches(n: number, batchSize: number, train: boolean): number {
  return train ? Math.floor(n / batchSize) : Math.ceil(n / batchSize);
}

/**
 * Yields `make(0..count-1)` in order, keeping up to `depth` of them started
 * ahead of the consumer (0: each made on demand). A `null` result is
 * skipped. Rejections surface when their turn comes; abandoned ones are
 * silenced, and `signal` aborts when the consumer stops early.
 *
 * @example
 * ```ts
 * import { prefetch } from "./transforms.ts";
 * for await (const v of prefetch(3, (i) => Promise.resolve(i * i), 2)) console.log(v); // 0 1 4
 * ```
 */
export async function* prefetch<T>(
  count: number,
  make: (i: number, signal: AbortSignal) => Promise<T | null>,
  depth: number,
): AsyncGenerator<T> {
  const abort = new AbortController();
  if (depth <= 0) {
    for (let i = 0; i < count; i++) {
      const v = await make(i, abort.signal);
      if (v !== null) yield v;
    }
    return;
  }
  const pending: Promise<T | null>[] = [];
  let next = 0;
  const start = () => {
    const p = make(next++, abort.signal);
    p.catch(() => {}); // handled when awaited in turn; silences ones abandoned by an early break
    pending.push(p);
  };
  try {
    while (next < count && pending.length < depth) start();
    while (pending.length > 0) {
      const v = await pending.shift()!;
      while (next < count && pending.length < depth) start();
      if (v !== null) yield v;
    }
  } finally {
    abort.abort(); // an early exit cancels work not yet started
    pending.length = 0;
  }
}

/**
 * Runs synchronous batch assembly in a later macrotask: with `prefetch`
 * depth 1 the next batch is built whenever the consumer waits on something
 * else (a GPU read-back), instead of only when it asks. Resolves null,
 * without running `f`, once `signal` aborts (no timer outlives the pass).
 *
 * @example
 * ```ts
 * import { deferred } from "./transforms.ts";
 * const stop = new AbortController();
 * console.log(await deferred(() => 42, stop.signal)); // 42
 * stop.abort();
 * console.log(await deferred(() => 42, stop.signal)); // null
 * ```
 */
export function deferred<T>(f: () => T, signal: AbortSignal): Promise<T | null> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return resolve(null);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(null);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      try {
        resolve(f());
      } catch (e) {
        reject(e);
      }
    }, 0);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * One pass over `n` samples whose batches are assembled synchronously
 * (in-memory or drawn images): the pass's order ({@linkcode epochPlan}),
 * and each batch built by `build` one macrotask ahead of the consumer, so
 * that assembly fills the time the trainer waits on GPU read-backs
 * ({@linkcode deferred}).
 *
 * @example
 * ```ts
 * import { allocBatch, assembledBatches } from "./transforms.ts";
 * const build = (indices: Int32Array) => {
 *   const b = allocBatch(indices.length, 2);
 *   b.labels.set(indices);
 *   return b;
 * };
 * for await (const b of assembledBatches(5, { batchSize: 2, train: false, epoch: 0, seed: 0 }, build)) {
 *   console.log(b.labels); // Int32Array [0, 1], then [2, 3], then [4]
 * }
 * ```
 */
export function assembledBatches(
  n: number,
  opts: BatchOptions,
  build: (indices: Int32Array, augmentSeed: ((index: number) => number) | null) => Batch,
): AsyncIterable<Batch> {
  const plan = epochPlan(n, opts);
  const make = (b: number, signal: AbortSignal) =>
    deferred(() => build(plan.batches[b], plan.augmentSeeds), signal);
  return prefetch(plan.batches.length, make, 1);
}

/**
 * Checks a split name (a one-line error for typos from untyped callers).
 *
 * @example
 * ```ts
 * import { checkSplit } from "./transforms.ts";
 * try {
 *   checkSplit("valid");
 * } catch (e) {
 *   console.log((e as Error).message); // split must be "train" or "val", got "valid"
 * }
 * ```
 */
export function checkSplit(split: string): asserts split is "train" | "val" {
  if (split !== "train" && split !== "val") {
    throw new Error(`split must be "train" or "val", got "${split}"`);
  }
}

/**
 * Shared `batchesPerEpoch` of datasets that know their split sizes.
 *
 * @example
 * ```ts
 * import { batchesPerEpochOf } from "./transforms.ts";
 * console.log(batchesPerEpochOf({ trainSize: 100, valSize: 30 }, "val", 8, false)); // 4
 * ```
 */
export function batchesPerEpochOf(
  data: Pick<Dataset, "trainSize" | "valSize">,
  split: "train" | "val",
  batchSize: number,
  train: boolean,
  shard?: Shard,
): number {
  checkSplit(split);
  const n = split === "train" ? data.trainSize : data.valSize;
  return countBatches(shard ? shardSize(n, shard, train) : n, batchSize, train);
}

/**
 * An empty batch of `n` images of side `size`.
 *
 * @example
 * ```ts
 * import { allocBatch } from "./transforms.ts";
 * const b = allocBatch(2, 32);
 * console.log(b.x.length, b.labels.length); // 6144 2
 * ```
 */
export function allocBatch(n: number, size: number): Batch {
  return { x: new Float32Array(n * 3 * size * size), labels: new Int32Array(n) };
}
