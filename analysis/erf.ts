/**
 * Effective receptive field, by the method of RepLKNet's Appendix B (also
 * used by SLaK): for each input image, take the backbone's last feature map
 * M, sum ReLU(M[:, :, h'/2, w'/2]) over channels, back-propagate to the
 * input, keep the positive part of the gradient, and sum it over the batch
 * and the three colour channels into an h×w contribution map, averaged over
 * images. The analysis then takes log10(A + 1), scales it to [0, 1], and
 * reports the high-contribution area ratio r(t): the smallest centred square
 * of odd side 2i + 1 (i = 1, 2, …) holding more than t of the total.
 *
 * @example
 * ```ts
 * import { areaRatios } from "./erf.ts";
 * const m = new Float64Array(9 * 9).fill(0);
 * m[4 * 9 + 4] = 1; // all contribution at the centre
 * console.log(areaRatios(m, 9, 9, [0.5])); // [{ t: 0.5, side: 3, ratio: 9 / 81 }]
 * ```
 * @module
 */
import { backward, noGrad, record } from "../ops/autograd.ts";
import { relu, sum, sumAxes } from "../ops/elementwise.ts";
import { elementwiseKernel, launch } from "../ops/kernel.ts";
import { keep, scope, Tensor } from "../ops/tensor.ts";
import { accumulate } from "../ops/autograd.ts";
import type { Module } from "../models/module.ts";
import { BatchNorm2d } from "../models/layers.ts";
import { gpu } from "../ops/gpu.ts";

/** The thresholds of SLaK Table 6 / RepLKNet Table 10. */
export const ERF_THRESHOLDS: readonly number[] = [0.2, 0.3, 0.5, 0.99];

/** One area-ratio result: threshold, side of the square, and (side/h)·(side/w). */
export interface AreaRatio {
  t: number;
  side: number;
  ratio: number;
}

/**
 * Preprocess as the official analysis: log10(A + 1), then divide by the
 * maximum. Returns a new array.
 */
export function normalizeErf(a: ArrayLike<number>): Float64Array {
  const out = Float64Array.from(a, (v) => Math.log10(v + 1));
  let max = 0;
  for (const v of out) if (v > max) max = v;
  if (max > 0) { for (let i = 0; i < out.length; i++) out[i] /= max; }
  return out;
}

/**
 * High-contribution area ratios of an h×w matrix (plain TypeScript, any
 * matrix): for each t, the first i ≥ 1 whose centred square rows
 * h/2−i…h/2+i, cols w/2−i…w/2+i (integer halves) holds more than t of the
 * total. When no square below the full size does, the result is the whole
 * matrix (side = h, ratio 1). Pass the matrix already normalised (see
 * {@linkcode normalizeErf}) to reproduce the papers' tables.
 */
export function areaRatios(
  m: ArrayLike<number>,
  h: number,
  w: number,
  thresholds: readonly number[] = ERF_THRESHOLDS,
): AreaRatio[] {
  if (m.length !== h * w) throw new Error(`areaRatios: ${m.length} values for a ${h}×${w} matrix`);
  // Integral image so each square sum is O(1).
  const ii = new Float64Array((h + 1) * (w + 1));
  for (let y = 0; y < h; y++) {
    let row = 0;
    for (let x = 0; x < w; x++) {
      row += m[y * w + x];
      ii[(y + 1) * (w + 1) + x + 1] = ii[y * (w + 1) + x + 1] + row;
    }
  }
  const total = ii[h * (w + 1) + w];
  const boxSum = (y0: number, y1: number, x0: number, x1: number) =>
    ii[y1 * (w + 1) + x1] - ii[y0 * (w + 1) + x1] - ii[y1 * (w + 1) + x0] + ii[y0 * (w + 1) + x0];
  const cy = Math.floor(h / 2);
  const cx = Math.floor(w / 2);
  return thresholds.map((t) => {
    for (let i = 1; i < Math.floor(h / 2); i++) {
      const y0 = Math.max(cy - i, 0), y1 = Math.min(cy + i + 1, h);
      const x0 = Math.max(cx - i, 0), x1 = Math.min(cx + i + 1, w);
      if (boxSum(y0, y1, x0, x1) / total > t) {
        const side = 2 * i + 1;
        // Same operation order as the official analysis: side / h * side / w.
        return { t, side, ratio: ((side / h) * side) / w };
      }
    }
    return { t, side: h, ratio: 1 };
  });
}

/** [N, C, H, W] → [N, C]: the values at (⌊H/2⌋, ⌊W/2⌋), with its backward (a scatter into zeros). */
export function centerPoint(m: Tensor): Tensor {
  const [n, c, h, w] = m.shape;
  const cy = Math.floor(h / 2), cx = Math.floor(w / 2);
  const y = Tensor.empty([n, c]);
  launch(
    elementwiseKernel(n * c, ["m"], `y[i] = m[i * ${h * w}u + ${cy * w + cx}u];`),
    [m, y],
    n * c,
  );
  record("centerPoint", [m], y, [], (g) => {
    const gm = Tensor.empty(m.shape);
    const body = `let plane = i / ${h * w}u;
  let pos = i % ${h * w}u;
  y[i] = select(0.0, g[plane], pos == ${cy * w + cx}u);`;
    launch(elementwiseKernel(m.size, ["g"], body), [g, gm], m.size);
    return [gm];
  });
  return y;
}

/** A backbone whose `features` gives the last feature map [N, C, h', w']. */
export interface FeatureModel extends Module {
  features(x: Tensor): Tensor;
}

/**
 * Accumulates the ERF contribution map on the GPU over images; read it once
 * at the end with {@linkcode ErfAccumulator.mean}.
 */
export class ErfAccumulator {
  readonly size: [number, number];
  readonly #sum: Tensor;
  count = 0;

  constructor(height: number, width: number) {
    this.size = [height, width];
    this.#sum = keep(Tensor.zeros([height, width]));
  }

  /**
   * Add the contribution of a batch `images` [n, 3, H, W] (already
   * normalised). The model runs in eval mode with its parameters frozen.
   */
  add(model: FeatureModel, images: Tensor): void {
    const [h, w] = this.size;
    if (images.shape[2] !== h || images.shape[3] !== w) {
      throw new Error(
        `ERF: images are ${images.shape[2]}×${images.shape[3]}, accumulator is ${h}×${w}`,
      );
    }
    model.eval();
    const frozen = model.parameters().filter((p) => p.requiresGrad);
    frozen.forEach((p) => (p.requiresGrad = false));
    try {
      scope(() => {
        const x = images.view(images.shape);
        x.requiresGrad = true;
        backward(sum(relu(centerPoint(model.features(x)))));
        const g = x.grad!;
        noGrad(() => accumulate(this.#sum, sumAxes(relu(g), [0, 1])));
        x.dispose();
      });
    } finally {
      frozen.forEach((p) => (p.requiresGrad = true));
    }
    this.count += images.shape[0];
  }

  /** The mean contribution map over the images added (row-major h×w). */
  async mean(): Promise<Float64Array> {
    const s = await this.#sum.read();
    return Float64Array.from(s, (v) => v / Math.max(this.count, 1));
  }

  dispose(): void {
    this.#sum.dispose();
  }
}

/**
 * Set every BatchNorm's running statistics to those of `batches` (their
 * cumulative average, as PyTorch's `momentum=None`), for random weights:
 * with the init statistics (mean 0, var 1) an eval-mode network is not
 * normalised at all, and a deep random ResNet's activations and input
 * gradients grow by ~10⁴ (measured: ResNet-101 at 1024², centre 1.0e4 vs
 * ConvNeXt-T's 0.35), which the method's log10(A + 1) then flattens into a
 * falsely wide ERF. Trained weights come with statistics of their own and
 * need no calibration. The model is left in eval mode.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { createModel } from "../models/registry.ts";
 * import { calibrateBatchNorm } from "./erf.ts";
 * await initGpu();
 * const model = createModel("resnet_cpu");
 * await calibrateBatchNorm(model as never, [Tensor.randn([2, 3, 32, 32], { seed: 1 })]);
 * ```
 */
export async function calibrateBatchNorm(model: FeatureModel, batches: Tensor[]): Promise<void> {
  const norms = [...model.namedModules()]
    .map(([, m]) => m)
    .filter((m): m is BatchNorm2d => m instanceof BatchNorm2d);
  if (!norms.length) return;
  const momenta = norms.map((m) => m.momentum);
  model.train();
  try {
    for (const [i, x] of batches.entries()) {
      norms.forEach((m) => (m.momentum = 1 / (i + 1)));
      noGrad(() => scope(() => void model.features(x)));
      await gpu().sync();
    }
  } finally {
    norms.forEach((m, i) => (m.momentum = momenta[i]));
    model.eval();
  }
}
