/**
 * Natural-like images without files: per channel, octaves of smooth value
 * noise whose amplitude halves per octave (a 1/f amplitude spectrum, as
 * natural photographs have). For what needs image statistics rather than a
 * learnable task: the ERF's inputs (`scripts/erf.ts`) and the batch SNIP
 * scores (`scripts/sparsity_width.ts --snip`), where the procedural
 * dataset's flat backgrounds and sharp marks are far from ImageNet's.
 *
 * @example
 * ```ts
 * import { naturalLikeBatch } from "./natural.ts";
 * const b = naturalLikeBatch(2, 16, 0);
 * console.log(b.x.length, b.labels.length); // 1536 2
 * ```
 * @module
 */
import { Rng } from "../../ops/tensor.ts";
import { IMAGENET_MEAN, IMAGENET_STD } from "./transforms.ts";
import type { Batch } from "./types.ts";

/**
 * A deterministic natural-like image: 1/f noise (sum of octaves of smooth noise) per channel, in [0, 1].
 *
 * @example
 * ```ts
 * import { naturalLikeImage } from "./natural.ts";
 * const img = naturalLikeImage(32, 1); // [3, 32, 32]
 * console.log(img.length, img.every((v) => v >= 0 && v <= 1)); // 3072 true
 * ```
 */
export function naturalLikeImage(size: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++) {
    const plane = new Float32Array(size * size);
    let amp = 1;
    for (let cells = 2; cells <= size / 2; cells *= 2) {
      const g = Float32Array.from({ length: (cells + 1) * (cells + 1) }, () => rng.uniform() - 0.5);
      const step = size / cells;
      for (let y = 0; y < size; y++) {
        const fy = y / step, y0 = Math.floor(fy), ty = fy - y0;
        const sy = ty * ty * (3 - 2 * ty);
        for (let x = 0; x < size; x++) {
          const fx = x / step, x0 = Math.floor(fx), tx = fx - x0;
          const sx = tx * tx * (3 - 2 * tx);
          const a = g[y0 * (cells + 1) + x0], b = g[y0 * (cells + 1) + x0 + 1];
          const d = g[(y0 + 1) * (cells + 1) + x0], e = g[(y0 + 1) * (cells + 1) + x0 + 1];
          plane[y * size + x] += amp *
            ((a * (1 - sx) + b * sx) * (1 - sy) + (d * (1 - sx) + e * sx) * sy);
        }
      }
      amp *= 0.5; // halving per octave: a 1/f amplitude spectrum, like natural images
    }
    for (let i = 0; i < plane.length; i++) {
      out[c * size * size + i] = Math.min(1, Math.max(0, 0.5 + plane[i]));
    }
  }
  return out;
}

/**
 * Normalise an RGB [3, S, S] image in [0, 1] with the ImageNet mean and std, in place.
 *
 * @example
 * ```ts
 * import { normaliseImageNet } from "./natural.ts";
 * const grey = normaliseImageNet(new Float32Array(3 * 4).fill(0.5), 2);
 * console.log(grey[0].toFixed(3)); // 0.066: (0.5 − 0.485) / 0.229
 * ```
 */
export function normaliseImageNet(img: Float32Array, size: number): Float32Array {
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < size * size; i++) {
      img[c * size * size + i] = (img[c * size * size + i] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
    }
  }
  return img;
}

/**
 * A batch of `n` natural-like images (image `b` drawn with seed
 * `seed·1000 + b`, so seeds draw disjoint images while `n` ≤ 1000),
 * ImageNet-normalised, with labels drawn uniformly from `numClasses` by
 * `new Rng(seed)`: the stand-in for one ImageNet training batch where only
 * the images' statistics matter.
 */
export function naturalLikeBatch(n: number, size: number, seed: number, numClasses = 1000): Batch {
  const per = 3 * size * size;
  const x = new Float32Array(n * per);
  for (let b = 0; b < n; b++) {
    x.set(normaliseImageNet(naturalLikeImage(size, seed * 1000 + b), size), b * per);
  }
  const rng = new Rng(seed);
  const labels = Int32Array.from({ length: n }, () => rng.int(numClasses));
  return { x, labels };
}
