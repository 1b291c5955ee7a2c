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
 * Random weights need three choices the papers (trained weights only) never
 * make, all here and all documented where they are made: BatchNorm
 * statistics ({@linkcode calibrateBatchNorm}), LayerScale
 * ({@linkcode calibrateLayerScale}) and the map's transform
 * ({@linkcode ErfTransform}: log10(A + 1) is not scale-free, and the scale of
 * a random network's gradients is an artefact of its init); see
 * {@linkcode erfSettings} for the defaults.
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
import { backward, noGrad } from "../ops/autograd.ts";
import { centerPoint } from "../ops/center_point.ts";
import { inverseSqrtOrOne, mul, relu, scale, sub, sum, sumAxes } from "../ops/elementwise.ts";
import { concat } from "../ops/shape.ts";
import { keep, scope, Tensor } from "../ops/tensor.ts";
import { accumulate } from "../ops/autograd.ts";
import { type Classifier, type Module, Param } from "../models/module.ts";
import { BatchNorm2d, DropPath } from "../models/layers.ts";
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
 * What the contribution map A goes through before the area ratios.
 *
 * - `log`: the official analysis (`analyze_erf.py`), log10(A + 1) / max. Not
 *   scale-free: A ≫ 1 is compressed, which widens r(t), A ≪ 1 is left nearly
 *   linear. The papers' trained weights come with the scale training gave
 *   them; use it for them.
 * - `linear`: A / max, i.e. r(t) of A itself (Luo et al. 2016's ERF, and the
 *   A ≪ 1 limit of `log`). Invariant to the scale of A, which for random
 *   weights is only an artefact of each family's init: at 256² a random
 *   ResNet-101's A peaks at ~6·10³ against ConvNeXt-T's ~1.5, and the log
 *   alone moved ResNet-101's r(20%) from 8.6 % to 17.5 %.
 */
export type ErfTransform = "log" | "linear";

/**
 * Preprocess as the official analysis: log10(A + 1), then divide by the
 * maximum (`transform` "log", the default), or only divide by the maximum
 * ("linear", see {@linkcode ErfTransform}). Returns a new array.
 *
 * @example
 * ```ts
 * import { normalizeErf } from "./erf.ts";
 * console.log([...normalizeErf([0, 9, 99])]); // [0, 0.5, 1]
 * console.log([...normalizeErf([0, 9, 99], "linear")]); // [0, 0.0909…, 1]
 * ```
 */
export function normalizeErf(a: ArrayLike<number>, transform: ErfTransform = "log"): Float64Array {
  const out = Float64Array.from(a, transform === "log" ? (v) => Math.log10(v + 1) : (v) => v);
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

/**
 * Accumulates the ERF contribution map on the GPU over images; read it once
 * at the end with {@linkcode ErfAccumulator.mean}.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { createModel } from "../models/registry.ts";
 * import { ErfAccumulator } from "./erf.ts";
 * await initGpu();
 * const model = createModel("resnet_cpu");
 * const acc = new ErfAccumulator(32, 32);
 * acc.add(model, Tensor.randn([2, 3, 32, 32], { seed: 1 }));
 * const map = await acc.mean(); // 32 × 32, averaged over the 2 images
 * console.log(acc.count, map.length); // 2 1024
 * acc.dispose();
 * ```
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
  add(model: Classifier, images: Tensor): void {
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
        backward(sum(relu(centerPoint(model.forwardFeatures(x)))));
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
export async function calibrateBatchNorm(model: Classifier, batches: Tensor[]): Promise<void> {
  const norms = [...model.namedModules()]
    .map(([, m]) => m)
    .filter((m): m is BatchNorm2d => m instanceof BatchNorm2d);
  if (!norms.length) return;
  const momenta = norms.map((m) => m.momentum);
  model.train();
  try {
    for (const [i, x] of batches.entries()) {
      norms.forEach((m) => (m.momentum = 1 / (i + 1)));
      noGrad(() => scope(() => void model.forwardFeatures(x)));
      await gpu().sync();
    }
  } finally {
    norms.forEach((m, i) => (m.momentum = momenta[i]));
    model.eval();
  }
}

/** A residual block with LayerScale: `forward(x) = x + drop_path(gamma ⊙ branch(x))`, NCHW. */
interface LayerScaleBlock extends Module {
  gamma: Param;
}

/**
 * The model's LayerScale blocks (ConvNeXt's and SLaK's `Block`,
 * ShiftwiseConv's `SWBlock`): the residual modules (with a drop path) that
 * have a per-channel `gamma` parameter, in forward order (GRN's `gamma` is
 * not LayerScale). Empty for families without LayerScale (ResNet, RepLKNet).
 *
 * @example
 * ```ts
 * import { createModel } from "../models/registry.ts";
 * import { layerScaleBlocks } from "./erf.ts";
 * console.log(layerScaleBlocks(createModel("convnext_cpu")).length); // 4
 * console.log(layerScaleBlocks(createModel("resnet_cpu")).length); // 0
 * ```
 */
export function layerScaleBlocks(model: Module): Module[] {
  return [...model.namedModules()].map(([, m]) => m).filter((m) => {
    const { gamma, dropPath } = m as { gamma?: unknown; dropPath?: unknown };
    return gamma instanceof Param && gamma.shape.length === 1 && dropPath instanceof DropPath;
  });
}

/**
 * Set every LayerScale `gamma` (per channel) so that the block's residual
 * branch, measured on `batches` with every earlier block already set, has
 * unit RMS per channel: gamma_c = 1 / RMS(branch_c). Random weights only.
 *
 * Why: the official init `layer_scale_init_value = 1e-6` scales every
 * ConvNeXt/SLaK branch to ~1e-6 of the identity, so a random network's ERF is
 * only the patchify stem and downsampling layers' 32×32 patch, whatever the
 * kernels (ConvNeXt-T at 128²: r(20%) 5.1 % against 22.7 % calibrated). Even
 * gamma = 1 leaves the branches at 2–50 % of the identity's RMS (measured on
 * ConvNeXt-T; pwconv1 · GELU · pwconv2 at trunc_normal(0.02) has a gain of
 * ~0.04). Unit RMS per channel is what a calibrated ResNet's last BatchNorm
 * (`bn3`, weight 1) gives its branch, so every family is measured with
 * branches of the same strength and the ERF shows the kernels.
 * (ShiftwiseConv's branch ends in a BatchNorm too, but at random init its
 * input variance, ~1e-6, is under that BatchNorm's eps; its gammas come out
 * 1–2.5.) Trained weights bring their own gammas and need none of this.
 *
 * Runs one forward pass over all `batches` together (eval mode, every
 * block's branch run twice); calibrate BatchNorm first with gamma 1 and
 * again afterwards (SLaK's kernel BatchNorms see the new inputs). Returns the
 * number of blocks set (0: the model has no LayerScale).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { createModel } from "../models/registry.ts";
 * import { calibrateLayerScale } from "./erf.ts";
 * await initGpu();
 * const model = createModel("convnext_cpu", { layerScaleInit: 1 });
 * console.log(await calibrateLayerScale(model, [Tensor.randn([2, 3, 64, 64], { seed: 1 })])); // 4
 * ```
 */
export async function calibrateLayerScale(model: Classifier, batches: Tensor[]): Promise<number> {
  const blocks = layerScaleBlocks(model) as LayerScaleBlock[];
  if (!blocks.length || !batches.length) return 0;
  model.eval();
  const patched = blocks.map((block) => {
    const forward = block.forward.bind(block);
    const c = block.gamma.shape[0];
    // Sequential calls the instance's own `forward`: set gamma from this input, then go on.
    const calibrating = (x: Tensor) => {
      if (x.rank !== 4 || x.shape[1] !== c) {
        throw new Error(`calibrateLayerScale: block input [${x.shape}] is not [N, ${c}, H, W]`);
      }
      block.gamma.set(Tensor.ones([c]));
      scope(() => {
        const d = sub(forward(x), x);
        const meanSquare = scale(sumAxes(mul(d, d), [0, 2, 3]), c / d.size);
        block.gamma.set(inverseSqrtOrOne(meanSquare));
      });
      return forward(x);
    };
    // Blocks run on tensors here, never on shapes.
    block.forward = calibrating as typeof block.forward;
    return block;
  });
  try {
    noGrad(() =>
      scope(() => {
        const x = batches.length === 1 ? batches[0] : concat(batches, 0);
        void model.forwardFeatures(x);
      })
    );
    await gpu().sync();
  } finally {
    for (const block of patched) delete (block as { forward?: unknown }).forward;
  }
  return blocks.length;
}

/** How an ERF run treats LayerScale: calibrated, one constant for every gamma, or the checkpoint's. */
export type LayerScaleChoice = "calibrate" | "checkpoint" | number;

/** The resolved choices of an ERF run. */
export interface ErfSettings {
  layerScale: LayerScaleChoice;
  transform: ErfTransform;
}

/**
 * Defaults and checks of an ERF run's choices (`scripts/erf.ts`'s
 * `--layer-scale` and `--transform`). With trained weights: the checkpoint's
 * gammas (no `--layer-scale` allowed) and the official `log` transform.
 * With random weights: `calibrate` (see {@linkcode calibrateLayerScale}; a
 * positive number instead sets every gamma to it, e.g. 1e-6, the training
 * init) and `linear` (see {@linkcode ErfTransform}). Bad values throw a
 * one-line error naming the flag.
 *
 * @example
 * ```ts
 * import { erfSettings } from "./erf.ts";
 * console.log(erfSettings({ weights: false })); // { layerScale: "calibrate", transform: "linear" }
 * console.log(erfSettings({ weights: true })); // { layerScale: "checkpoint", transform: "log" }
 * console.log(erfSettings({ weights: false, layerScale: "1e-6", transform: "log" }).layerScale); // 0.000001
 * ```
 */
export function erfSettings(
  o: { weights: boolean; layerScale?: string; transform?: string },
): ErfSettings {
  const transform = o.transform ?? (o.weights ? "log" : "linear");
  if (transform !== "log" && transform !== "linear") {
    throw new Error(`--transform: expected log or linear, got "${transform}"`);
  }
  if (o.weights) {
    if (o.layerScale !== undefined) {
      throw new Error(
        "--layer-scale: applies to random weights only (a checkpoint has its gammas)",
      );
    }
    return { layerScale: "checkpoint", transform };
  }
  if (o.layerScale === undefined || o.layerScale === "calibrate") {
    return { layerScale: "calibrate", transform };
  }
  const v = Number(o.layerScale);
  if (o.layerScale.trim() === "" || !Number.isFinite(v) || v <= 0) {
    throw new Error(
      `--layer-scale: expected calibrate or a positive number, got "${o.layerScale}"`,
    );
  }
  return { layerScale: v, transform };
}
