/**
 * Stochastic depth as timm's `drop_path`: in training, each sample of a
 * residual branch is dropped whole with probability `prob` and the
 * survivors are scaled by `1 / (1 − prob)`, so the expected value is
 * unchanged.
 *
 * The per-sample mask is drawn on the CPU from a seeded {@linkcode Rng} (N
 * values, uploaded; nothing is read back), so a run is reproducible from its
 * seeds and the backward multiplies by exactly the same mask.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { dropPath } from "./drop_path.ts";
 * await initGpu();
 * const x = Tensor.ones([4, 2]);
 * console.log(await dropPath(x, 0.5, { training: true, seed: 3 }).read()); // rows of 0 or 2
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { elementwiseKernel, launch } from "./kernel.ts";
import { Rng, Tensor } from "./tensor.ts";

/** Options of {@linkcode dropPath}. */
export interface DropPathOptions {
  /** Drop only in training; evaluation is the identity. */
  training: boolean;
  /** Seed of the per-sample draws (vary it every step). */
  seed: number;
}

/**
 * Per-sample stochastic depth of `x` `[N, ...]`: sample `n` becomes zero with
 * probability `prob`, otherwise `x[n] / (1 − prob)` (with `prob = 1` every
 * sample is zero). Returns `x` itself, not a copy, when `!training` or
 * `prob == 0`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { dropPath } from "./drop_path.ts";
 * await initGpu();
 * const x = Tensor.randn([3, 2, 2]);
 * console.log(dropPath(x, 0.2, { training: false, seed: 0 }) === x); // true
 * ```
 */
export function dropPath(x: Tensor, prob: number, opts: DropPathOptions): Tensor {
  if (!(prob >= 0 && prob <= 1)) throw new Error(`dropPath: probability ${prob} is not in [0, 1]`);
  if (!opts.training || prob === 0) return x;
  if (x.rank < 1) throw new Error("dropPath: input needs a sample axis");
  const samples = x.shape[0];
  const keepProb = 1 - prob;
  const rng = new Rng(opts.seed);
  const values = new Float32Array(samples);
  // As timm: keep with probability keepProb, and divide by it unless it is 0.
  for (let k = 0; k < samples; k++) values[k] = rng.uniform() < keepProb ? 1 / keepProb : 0;
  const mask = Tensor.from(values, [samples]);
  const perSample = samples === 0 ? 1 : x.size / samples;
  const y = Tensor.empty(x.shape);
  const body = `y[i] = x[i] * mask[i / ${perSample}u];`;
  launch(elementwiseKernel(x.size, ["x", "mask"], body), [x, mask, y], x.size);
  record("dropPath", [x], y, [mask], (g, [sMask]) => {
    const gx = Tensor.empty(x.shape);
    launch(elementwiseKernel(gx.size, ["x", "mask"], body), [g, sMask, gx], gx.size);
    return [gx];
  });
  mask.dispose();
  return y;
}
