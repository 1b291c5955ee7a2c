/**
 * ConvNeXt (Liu et al., 2022) with per-stage kernel sizes, the macro design
 * that SLaK builds on. Key names follow the official code
 * (`downsample_layers.*`, `stages.S.B.dwconv`, `norm`, `pwconv1`, `pwconv2`,
 * `gamma`, `head`), so official checkpoints load by their own keys.
 *
 * The block's spatial mixer is pluggable: ConvNeXt's `dwconv` (a depthwise
 * K×K conv with bias) here, SLaK's `large_kernel` in `slak.ts`.
 *
 * @example
 * ```ts
 * import { convnext, CONVNEXT_PRESETS } from "./convnext.ts";
 * const m = convnext({ ...CONVNEXT_PRESETS.convnext_tiny, kernels: [31, 29, 27, 13] });
 * console.log((m.numParams() / 1e6).toFixed(2)); // 31.93 (timm's count)
 * ```
 * @module
 */
import {
  add,
  Conv2d,
  drop,
  DropPath,
  gelu,
  LayerNorm,
  Linear,
  meanHW,
  Meta,
  mul,
  permute,
  pipe,
  Sequential,
  type Value,
} from "./layers.ts";
import { type Classifier, type Init, Module, ModuleList, type Param } from "./module.ts";
import { willRecord } from "../ops/autograd.ts";
import { layerNormLinear } from "../ops/fused_layernorm.ts";
import { geluLinearResidual } from "../ops/fused_residual.ts";
import { Tensor } from "../ops/tensor.ts";

/** Builds the spatial mixer (a module mapping [N,C,H,W] to [N,C,H,W]) of a block of width `dim` in stage `stage` (0–3). */
export type MixerFactory = (dim: number, stage: number) => Module;

/** Configuration of the ConvNeXt macro design. */
export interface ConvNeXtConfig {
  depths: number[];
  dims: number[];
  /** Kernel size per stage (ConvNeXt: 7-7-7-7). */
  kernels?: number[];
  numClasses?: number;
  inChans?: number;
  /** Stochastic depth rate, spread linearly over all blocks. */
  dropPath?: number;
  /** LayerScale init (`gamma`); ≤ 0 disables LayerScale. */
  layerScaleInit?: number;
  headInitScale?: number;
}

/** Official ConvNeXt sizes. Tiny CPU preset for tests and llvmpipe demos. */
export const CONVNEXT_PRESETS = {
  convnext_tiny: { depths: [3, 3, 9, 3], dims: [96, 192, 384, 768] },
  convnext_small: { depths: [3, 3, 27, 3], dims: [96, 192, 384, 768] },
  convnext_base: { depths: [3, 3, 27, 3], dims: [128, 256, 512, 1024] },
  convnext_cpu: { depths: [1, 1, 1, 1], dims: [8, 16, 24, 32] },
} satisfies Record<string, ConvNeXtConfig>;

const TRUNC: Init = { kind: "truncNormal", std: 0.02 };
const ZERO: Init = { kind: "zeros" };

/** ConvNeXt's layer init: trunc_normal(std=.02) weights, zero biases. */
function convLayer(
  cin: number,
  cout: number,
  k: number | [number, number],
  cfg: ConstructorParameters<typeof Conv2d>[3] = {},
) {
  return new Conv2d(cin, cout, k, { weightInit: TRUNC, biasInit: ZERO, ...cfg });
}

/**
 * ConvNeXt's `dwconv`: depthwise K×K with bias, "same" padding.
 *
 * @example
 * ```ts
 * import { depthwiseMixer } from "./convnext.ts";
 * import { Meta } from "./layers.ts";
 * const mixer = depthwiseMixer([7, 7, 7, 7])(96, 0); // stage 0 of ConvNeXt-T
 * console.log(mixer.numParams(), mixer.forward(new Meta([1, 96, 56, 56])).shape); // 4800 [1, 96, 56, 56]
 * ```
 */
export function depthwiseMixer(kernels: number[]): MixerFactory {
  return (dim, stage) => convLayer(dim, dim, kernels[stage], { groups: dim });
}

/**
 * A ConvNeXt block: mixer → LayerNorm → Linear(4d) → GELU → Linear(d) → LayerScale → drop path + residual.
 *
 * @example
 * ```ts
 * import { Block, depthwiseMixer } from "./convnext.ts";
 * import { Meta } from "./layers.ts";
 * const block = new Block(8, depthwiseMixer([7])(8, 0), "dwconv", 0, 1e-6);
 * console.log(block.forward(new Meta([1, 8, 14, 14])).shape); // [1, 8, 14, 14]
 * console.log([...block.namedParameters()].map(([k]) => k)[0]); // gamma
 * ```
 */
export class Block extends Module {
  readonly mixer: Module;
  readonly norm: LayerNorm;
  readonly pwconv1: Linear;
  readonly pwconv2: Linear;
  readonly gamma: Param | null;
  readonly dropPath: DropPath;

  constructor(
    dim: number,
    mixer: Module,
    mixerName: string,
    dropPath: number,
    layerScaleInit: number,
  ) {
    super();
    this.mixer = this.child(mixerName, mixer);
    this.norm = this.child("norm", new LayerNorm(dim, 1e-6));
    this.pwconv1 = this.child(
      "pwconv1",
      new Linear(dim, 4 * dim, { weightInit: TRUNC, biasInit: ZERO }),
    );
    this.pwconv2 = this.child(
      "pwconv2",
      new Linear(4 * dim, dim, { weightInit: TRUNC, biasInit: ZERO }),
    );
    this.gamma = layerScaleInit > 0
      ? this.param("gamma", [dim], { kind: "const", value: layerScaleInit })
      : null;
    this.dropPath = this.child("drop_path", new DropPath(dropPath));
  }

  forward<V extends Value>(x: V): V {
    if (x instanceof Tensor) return this.#fused(x) as V;
    let y = permute(this.mixer.forward(x), [0, 2, 3, 1]);
    y = this.pwconv2.forward(gelu(this.pwconv1.forward(this.norm.forward(y))));
    if (this.gamma) y = mul(y, x instanceof Meta ? new Meta(this.gamma.shape) : this.gamma.tensor);
    return add(x, this.dropPath.forward(permute(y, [0, 3, 1, 2])));
  }

  /**
   * The same on a tensor in two products: the first normalises (permute + LayerNorm) as it
   * loads the mixer's NCHW output, the second applies the GELU as it loads its input and
   * LayerScale, drop path, the permute back and the residual add as it stores. Neither the
   * normalised activation, nor the GELU's output, nor the branch is ever stored.
   */
  #fused(x: Tensor): Tensor {
    const n = this.norm;
    const p1 = this.pwconv1;
    const p2 = this.pwconv2;
    // Without gradients the first product stores the GELU's output and the second loads it as
    // it is: the GELU runs once per element instead of on every load.
    const params = [n.weight, n.bias, p1.weight, p1.bias, p2.weight, p2.bias, this.gamma];
    const infer = !willRecord([x, ...params.flatMap((p) => p ? [p.tensor] : [])]);
    const h = pipe(
      x,
      (v) => this.mixer.forward(v),
      (v) =>
        layerNormLinear(
          v,
          n.weight.tensor,
          n.bias.tensor,
          p1.weight.tensor,
          p1.bias?.tensor ?? null,
          n.eps,
          { gelu: infer },
        ),
    );
    const out = geluLinearResidual(
      x,
      h,
      p2.weight.tensor,
      p2.bias?.tensor ?? null,
      this.gamma?.tensor ?? null,
      this.dropPath.scales(x.shape[0]),
      { activated: infer },
    );
    drop(h, out);
    return out;
  }
}

/**
 * The ConvNeXt macro design with a pluggable mixer.
 *
 * @example
 * ```ts
 * import { ConvNeXt, CONVNEXT_PRESETS } from "./convnext.ts";
 * import { Meta } from "./layers.ts";
 * const model = new ConvNeXt({ ...CONVNEXT_PRESETS.convnext_cpu, numClasses: 10 });
 * console.log(model.forwardFeatures(new Meta([1, 3, 64, 64])).shape); // [1, 32, 2, 2]
 * console.log(model.forward(new Meta([1, 3, 64, 64])).shape); // [1, 10]
 * ```
 */
export class ConvNeXt extends Module implements Classifier {
  readonly downsampleLayers: ModuleList<Sequential>;
  readonly stages: ModuleList<Sequential>;
  readonly norm: LayerNorm;
  readonly head: Linear;
  readonly config: Required<ConvNeXtConfig>;

  constructor(config: ConvNeXtConfig, mixer?: MixerFactory, mixerName = "dwconv") {
    super();
    const c: Required<ConvNeXtConfig> = {
      kernels: [7, 7, 7, 7],
      numClasses: 1000,
      inChans: 3,
      dropPath: 0,
      layerScaleInit: 1e-6,
      headInitScale: 1,
      ...config,
    };
    this.config = c;
    const { depths, dims } = c;
    if (depths.length !== 4 || dims.length !== 4 || c.kernels.length < 4) {
      throw new Error("ConvNeXt: depths, dims and kernels need one entry per stage (4)");
    }
    const makeMixer = mixer ?? depthwiseMixer(c.kernels);
    this.downsampleLayers = this.child(
      "downsample_layers",
      new ModuleList(
        dims.map((d, i) =>
          i === 0
            ? new Sequential(
              convLayer(c.inChans, d, 4, { stride: 4, padding: 0 }),
              new LayerNorm(d, 1e-6, true),
            )
            : new Sequential(
              new LayerNorm(dims[i - 1], 1e-6, true),
              convLayer(dims[i - 1], d, 2, { stride: 2, padding: 0 }),
            )
        ),
      ),
    );
    const total = depths.reduce((a, b) => a + b, 0);
    const rates = Array.from(
      { length: total },
      (_, i) => (total > 1 ? (c.dropPath * i) / (total - 1) : 0),
    );
    let k = 0;
    this.stages = this.child(
      "stages",
      new ModuleList(depths.map((depth, s) =>
        new Sequential(
          ...Array.from({ length: depth }, () =>
            new Block(dims[s], makeMixer(dims[s], s), mixerName, rates[k++], c.layerScaleInit)),
        )
      )),
    );
    this.norm = this.child("norm", new LayerNorm(dims[3], 1e-6));
    const scale = c.headInitScale;
    this.head = this.child(
      "head",
      new Linear(dims[3], c.numClasses, {
        weightInit: { kind: "truncNormal", std: 0.02 * scale },
        biasInit: ZERO,
      }),
    );
  }

  /** The last stage's feature map [N, C, H/32, W/32] (the ERF analysis uses it). */
  forwardFeatures<V extends Value>(x: V): V {
    return pipe(
      x,
      ...[0, 1, 2, 3].flatMap((i) => [
        (v: V) => this.downsampleLayers.items[i].forward(v),
        (v: V) => this.stages.items[i].forward(v),
      ]),
    );
  }

  /** Logits [N, numClasses]. */
  forward<V extends Value>(x: V): V {
    return pipe(
      x,
      (v) => this.forwardFeatures(v),
      (v) => meanHW(v),
      (v) => this.norm.forward(v),
      (v) => this.head.forward(v),
    );
  }
}

/** Build a ConvNeXt from a config (see {@linkcode CONVNEXT_PRESETS}). */
export function convnext(config: ConvNeXtConfig): ConvNeXt {
  return new ConvNeXt(config);
}
