/**
 * Mixup and CutMix as timm's `Mixup` with `mode="batch"`, `prob=1`,
 * `switch_prob=0.5`, `correct_lam=True`, no `cutmix_minmax`: one λ per batch
 * from Beta(α, α); every image is mixed with the batch reversed
 * (`x.flip(0)`); CutMix pastes a box from `rand_bbox` and corrects λ to the
 * box's real area; targets are timm's `mixup_target`, label smoothing
 * folded in.
 *
 * @example
 * ```ts
 * import { mixupBatch } from "./mixup.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * const batch = { x: new Float32Array(2 * 3 * 4 * 4).fill(1), labels: Int32Array.from([0, 2]) };
 * const { targets, lam } = mixupBatch(batch, { mixup: 0.8, cutmix: 1, labelSmoothing: 0.1, numClasses: 3 }, new Rng(0));
 * console.log(lam, targets); // 2 rows of 3 soft targets, each row summing to 1
 * ```
 * @module
 */
import type { Rng } from "../../ops/tensor.ts";
import type { Batch } from "./types.ts";

/** Settings of {@linkcode mixupBatch} (the official `--mixup`, `--cutmix`, `--smoothing`). */
export interface MixupOptions {
  /** Mixup α (0: off). */
  mixup: number;
  /** CutMix α (0: off). */
  cutmix: number;
  labelSmoothing: number;
  numClasses: number;
}

/** A mixed batch. */
export interface MixupResult {
  /** N×3×S×S mixed images (a new array; the batch is not modified). */
  x: Float32Array;
  /** N×K soft targets, rows summing to 1. */
  targets: Float32Array;
  /** The λ used: the Beta draw for mixup, the area-corrected one for CutMix. */
  lam: number;
  cutmix: boolean;
  /** The CutMix box `[yl, yh, xl, xh]` (half-open), null for mixup. */
  box: [number, number, number, number] | null;
}

/**
 * A Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 by the U^(1/shape) boost).
 *
 * @example
 * ```ts
 * import { Rng } from "../../ops/tensor.ts";
 * import { sampleGamma } from "./mixup.ts";
 * const rng = new Rng(0);
 * let sum = 0;
 * for (let i = 0; i < 10000; i++) sum += sampleGamma(rng, 0.8);
 * console.log((sum / 10000).toFixed(1)); // 0.8: the mean of Gamma(k, 1) is k
 * ```
 */
export function sampleGamma(rng: Rng, shape: number): number {
  if (shape < 1) return sampleGamma(rng, shape + 1) * Math.pow(1 - rng.uniform(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const x = rng.normal();
    let v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const u = 1 - rng.uniform();
    if (u < 1 - 0.0331 * x * x * x * x || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) {
      return d * v;
    }
  }
}

/**
 * A Beta(a, b) draw, as `np.random.beta`.
 *
 * @example
 * ```ts
 * import { sampleBeta } from "./mixup.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * console.log(sampleBeta(new Rng(1), 0.8, 0.8)); // in [0, 1]
 * ```
 */
export function sampleBeta(rng: Rng, a: number, b: number): number {
  const x = sampleGamma(rng, a);
  const y = sampleGamma(rng, b);
  // Both underflow only for tiny α: the limit law puts all mass on 0 and 1.
  if (x + y === 0) return rng.uniform() < a / (a + b) ? 1 : 0;
  return x / (x + y);
}

/**
 * timm's `rand_bbox` (margin 0): a box of `int(H·√(1−λ))` × `int(W·√(1−λ))`
 * centred on a uniform pixel, clipped to the image; `[yl, yh, xl, xh]`.
 *
 * @example
 * ```ts
 * import { randBbox } from "./mixup.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * console.log(randBbox(32, 32, 0.75, new Rng(0))); // a box of at most 16×16
 * ```
 */
export function randBbox(
  h: number,
  w: number,
  lam: number,
  rng: Rng,
): [number, number, number, number] {
  const ratio = Math.sqrt(1 - lam);
  const cutH = Math.floor(h * ratio);
  const cutW = Math.floor(w * ratio);
  const cy = rng.int(h);
  const cx = rng.int(w);
  const clip = (v: number, hi: number) => Math.min(hi, Math.max(0, v));
  const halfH = Math.floor(cutH / 2);
  const halfW = Math.floor(cutW / 2);
  return [clip(cy - halfH, h), clip(cy + halfH, h), clip(cx - halfW, w), clip(cx + halfW, w)];
}

/**
 * timm's `mixup_target`: λ·onehot(y) + (1−λ)·onehot(y reversed), with
 * one-hots of `1 − smoothing + smoothing/K` on and `smoothing/K` off.
 *
 * @example
 * ```ts
 * import { mixupTarget } from "./mixup.ts";
 * console.log(mixupTarget(Int32Array.from([0, 1]), 2, 0.7, 0)); // [0.7, 0.3, 0.3, 0.7]
 * ```
 */
export function mixupTarget(
  labels: Int32Array,
  numClasses: number,
  lam: number,
  smoothing: number,
): Float32Array {
  const n = labels.length;
  const off = smoothing / numClasses;
  const on = 1 - smoothing + off;
  const t = new Float32Array(n * numClasses);
  for (let i = 0; i < n; i++) {
    const a = labels[i];
    const b = labels[n - 1 - i];
    if (a < 0 || a >= numClasses) {
      throw new RangeError(`label ${a} out of range 0..${numClasses - 1}`);
    }
    for (let k = 0; k < numClasses; k++) {
      t[i * numClasses + k] = lam * (k === a ? on : off) + (1 - lam) * (k === b ? on : off);
    }
  }
  return t;
}

/**
 * Mixes a batch as timm's `Mixup.__call__` in batch mode: λ ~ Beta(α, α);
 * with both α > 0, CutMix with p = 0.5, else the one enabled. Draws from
 * `rng` only, so a seeded `rng` makes it reproducible. With both α = 0 the
 * images are unchanged and the targets are the smoothed one-hots.
 *
 * @example
 * ```ts
 * import { mixupBatch } from "./mixup.ts";
 * import { Rng } from "../../ops/tensor.ts";
 * const batch = { x: new Float32Array(4 * 3 * 8 * 8), labels: Int32Array.from([0, 1, 2, 3]) };
 * const m = mixupBatch(batch, { mixup: 0, cutmix: 1, labelSmoothing: 0, numClasses: 4 }, new Rng(7));
 * console.log(m.cutmix, m.box, m.lam); // true, the pasted box, 1 − its area / 64
 * ```
 */
export function mixupBatch(batch: Batch, opts: MixupOptions, rng: Rng): MixupResult {
  const { mixup, cutmix, labelSmoothing, numClasses } = opts;
  if (!(mixup >= 0) || !(cutmix >= 0)) {
    throw new Error(`mixup and cutmix α must be ≥ 0, got ${mixup} and ${cutmix}`);
  }
  const n = batch.labels.length;
  const side = Math.round(Math.sqrt(batch.x.length / (3 * Math.max(1, n))));
  if (n === 0 || 3 * n * side * side !== batch.x.length) {
    throw new Error(
      `mixupBatch needs N×3×S×S images for ${n} labels, got ${batch.x.length} values`,
    );
  }
  let lam = 1;
  let useCutmix = false;
  if (mixup > 0 && cutmix > 0) {
    useCutmix = rng.uniform() < 0.5;
    lam = sampleBeta(rng, useCutmix ? cutmix : mixup, useCutmix ? cutmix : mixup);
  } else if (mixup > 0) {
    lam = sampleBeta(rng, mixup, mixup);
  } else if (cutmix > 0) {
    useCutmix = true;
    lam = sampleBeta(rng, cutmix, cutmix);
  }
  const x = new Float32Array(batch.x);
  let box: [number, number, number, number] | null = null;
  const image = 3 * side * side;
  if (lam !== 1) {
    if (useCutmix) {
      box = randBbox(side, side, lam, rng);
      const [yl, yh, xl, xh] = box;
      lam = 1 - ((yh - yl) * (xh - xl)) / (side * side);
      for (let i = 0; i < n; i++) {
        const dst = i * image;
        const src = (n - 1 - i) * image;
        for (let c = 0; c < 3; c++) {
          for (let y = yl; y < yh; y++) {
            const row = c * side * side + y * side;
            x.set(batch.x.subarray(src + row + xl, src + row + xh), dst + row + xl);
          }
        }
      }
    } else {
      for (let i = 0; i < n; i++) {
        const dst = i * image;
        const src = (n - 1 - i) * image;
        for (let j = 0; j < image; j++) {
          x[dst + j] = lam * batch.x[dst + j] + (1 - lam) * batch.x[src + j];
        }
      }
    }
  }
  return {
    x,
    targets: mixupTarget(batch.labels, numClasses, lam, labelSmoothing),
    lam,
    cutmix: useCutmix,
    box,
  };
}
