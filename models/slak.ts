/**
 * SLaK (Liu et al., ICLR 2023): the ConvNeXt macro design with each M×M
 * depthwise kernel decomposed into M×N and N×M kernels plus an N×N kernel
 * (N = 5), each followed by BatchNorm and summed; optionally wider
 * (`widthFactor`, dims int-truncated as the official code does) and trained
 * sparse (see `sparse/`). Key names follow the official SLaK state dict
 * (`stages.S.B.large_kernel.LoRA1.conv.weight`, `…LoRA2…`, `…small_conv…`).
 *
 * The same large-kernel module also gives SLaK Table 1's baselines: the
 * "naive" full M×M kernel (`lkb_origin`) and the "RepLKNet recipe" (full
 * kernel plus a parallel 5×5, `small_conv`), and after
 * {@linkcode LargeKernelConv.merge} the single re-parameterised kernel
 * `lkb_reparam`.
 *
 * @example
 * ```ts
 * import { slak, SLAK_PRESETS } from "./slak.ts";
 * const m = slak(SLAK_PRESETS.slak_tiny);
 * console.log(m.config.dims); // [124, 249, 499, 998]
 * ```
 * @module
 */
import { add, BatchNorm2d, Conv2d, drop, type Value } from "./layers.ts";
import { convBatchNorm } from "./conv_bn.ts";
import { ConvNeXt, type ConvNeXtConfig } from "./convnext.ts";
import { Module } from "./module.ts";
import { Tensor } from "../ops/tensor.ts";

/** How the large kernel is built. */
export type LargeKernelMode =
  /** M×N + N×M + N×N (SLaK). */
  | "decomposed"
  /** M×M (+ N×N when N < M): ConvNeXt naive / RepLKNet recipe. */
  | "full"
  /** One M×M kernel with bias, after re-parameterisation. */
  | "merged";

/**
 * A depthwise conv (no bias) followed by BatchNorm: keys `conv.*`, `bn.*`.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { ConvBN } from "./slak.ts";
 * const branch = new ConvBN(8, [13, 3], 1); // one of SLaK's two decomposed 13×3 / 3×13 branches
 * console.log([...branch.namedParameters()].map(([k]) => k)); // conv.weight, bn.weight, bn.bias
 * console.log(branch.forward(new Meta([1, 8, 14, 14])).shape); // [1, 8, 14, 14]
 * ```
 */
export class ConvBN extends Module {
  readonly conv: Conv2d;
  readonly bn: BatchNorm2d;
  constructor(channels: number, kernel: [number, number], stride: number) {
    super();
    const [kh, kw] = kernel;
    this.conv = this.child(
      "conv",
      new Conv2d(channels, channels, kernel, {
        stride,
        groups: channels,
        bias: false,
        weightInit: { kind: "truncNormal", std: 0.02 },
        padding: [Math.floor(kh / 2), Math.floor(kw / 2)],
      }),
    );
    this.bn = this.child("bn", new BatchNorm2d(channels));
  }
  forward<V extends Value>(x: V): V {
    // In evaluation the BN is folded into the conv: one conv instead of conv + BN.
    return convBatchNorm(this.conv, this.bn, x);
  }

  /** The conv kernel with this BN folded in (eval-mode): [C,1,KH,KW] weights and a bias [C]. */
  async fused(): Promise<{ weight: Float32Array; bias: Float32Array }> {
    const [w, g, b, mean, variance] = await Promise.all(
      [this.conv.weight, this.bn.weight, this.bn.bias, this.bn.runningMean, this.bn.runningVar].map(
        (p) => p.tensor.read(),
      ),
    );
    const c = g.length;
    const taps = w.length / c;
    const weight = new Float32Array(w.length);
    const bias = new Float32Array(c);
    for (let ch = 0; ch < c; ch++) {
      const t = g[ch] / Math.sqrt(variance[ch] + this.bn.eps);
      for (let k = 0; k < taps; k++) weight[ch * taps + k] = w[ch * taps + k] * t;
      bias[ch] = b[ch] - mean[ch] * t;
    }
    return { weight, bias };
  }
}

/**
 * SLaK's `ReparamLargeKernelConv`: the block's spatial mixer.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { LargeKernelConv } from "./slak.ts";
 * const lk = new LargeKernelConv(8, 13, 5, "decomposed"); // 13×5 ∥ 5×13 ∥ 5×5
 * console.log(lk.forward(new Meta([1, 8, 14, 14])).shape); // [1, 8, 14, 14]
 * ```
 */
export class LargeKernelConv extends Module {
  readonly branches: ConvBN[] = [];
  reparam: Conv2d | null = null;

  constructor(
    readonly channels: number,
    readonly kernel: number,
    readonly smallKernel: number,
    readonly mode: LargeKernelMode,
    readonly stride = 1,
  ) {
    super();
    const [m, n] = [kernel, smallKernel];
    if (mode === "merged") {
      this.reparam = this.child("lkb_reparam", this.#mergedConv());
      return;
    }
    if (mode === "decomposed") {
      if (n >= m) {
        throw new Error(`SLaK: small kernel ${n} must be smaller than the large kernel ${m}`);
      }
      this.branches.push(this.child("LoRA1", new ConvBN(channels, [m, n], stride)));
      this.branches.push(this.child("LoRA2", new ConvBN(channels, [n, m], stride)));
    } else {
      this.branches.push(this.child("lkb_origin", new ConvBN(channels, [m, m], stride)));
    }
    // The parallel small kernel exists only when it is smaller (ConvNeXt runs use N = 100 > M).
    if (n < m) this.branches.push(this.child("small_conv", new ConvBN(channels, [n, n], stride)));
  }

  #mergedConv(): Conv2d {
    return new Conv2d(this.channels, this.channels, this.kernel, {
      stride: this.stride,
      groups: this.channels,
      biasInit: { kind: "zeros" },
      weightInit: { kind: "truncNormal", std: 0.02 },
    });
  }

  forward<V extends Value>(x: V): V {
    if (this.reparam) return this.reparam.forward(x);
    let y = this.branches[0].forward(x);
    for (const b of this.branches.slice(1)) {
      const branch = b.forward(x);
      const sum = add(y, branch);
      drop(y, sum);
      drop(branch, sum);
      y = sum;
    }
    return y;
  }

  /**
   * Structural re-parameterisation: fold each branch's BN into its kernel,
   * zero-pad every kernel to M×M around the centre, and sum them into one
   * conv with bias (`lkb_reparam`). Outputs are unchanged in eval mode.
   */
  async merge(): Promise<void> {
    if (this.reparam) return;
    const m = this.kernel;
    const c = this.channels;
    const weight = new Float32Array(c * m * m);
    const bias = new Float32Array(c);
    for (const branch of this.branches) {
      const { weight: w, bias: b } = await branch.fused();
      const [kh, kw] = branch.conv.kernel;
      const oy = (m - kh) / 2;
      const ox = (m - kw) / 2;
      for (let ch = 0; ch < c; ch++) {
        bias[ch] += b[ch];
        for (let y = 0; y < kh; y++) {
          for (let x = 0; x < kw; x++) {
            weight[(ch * m + y + oy) * m + x + ox] += w[(ch * kh + y) * kw + x];
          }
        }
      }
    }
    const conv = this.#mergedConv();
    conv.weight.set(Tensor.from(weight, [c, 1, m, m]));
    conv.bias!.set(Tensor.from(bias, [c]));
    for (const b of this.branches) b.dispose();
    this.replaceChildren({ lkb_reparam: conv });
    this.branches.length = 0;
    this.reparam = conv;
  }
}

/** SLaK configuration: ConvNeXt's plus the large-kernel recipe. */
export interface SLaKConfig extends ConvNeXtConfig {
  /** Large kernel per stage, e.g. [51, 49, 47, 13]. */
  kernels: number[];
  /** N: the small edge of the decomposed kernels and the parallel small kernel (5). */
  smallKernel?: number;
  /** Multiply dims (int-truncated, as `int(x * width_factor)`). */
  widthFactor?: number;
  mode?: LargeKernelMode;
}

/** Paper sizes (SLaK-T/S/B at width 1.3), and a tiny CPU preset. */
export const SLAK_PRESETS = {
  slak_tiny: {
    depths: [3, 3, 9, 3],
    dims: [96, 192, 384, 768],
    kernels: [51, 49, 47, 13],
    widthFactor: 1.3,
  },
  slak_small: {
    depths: [3, 3, 27, 3],
    dims: [96, 192, 384, 768],
    kernels: [51, 49, 47, 13],
    widthFactor: 1.3,
  },
  slak_base: {
    depths: [3, 3, 27, 3],
    dims: [128, 256, 512, 1024],
    kernels: [51, 49, 47, 13],
    widthFactor: 1.3,
  },
  slak_cpu: {
    depths: [1, 1, 1, 1],
    dims: [8, 16, 24, 32],
    kernels: [13, 11, 9, 7],
    smallKernel: 3,
  },
} satisfies Record<string, SLaKConfig>;

/**
 * The dims SLaK uses for a width factor: `int(d * factor)` (float arithmetic as Python's).
 *
 * @example
 * ```ts
 * import { widenDims } from "./slak.ts";
 * console.log(widenDims([96, 192, 384, 768], 1.3)); // [124, 249, 499, 998]
 * ```
 */
export function widenDims(dims: number[], factor: number): number[] {
  return dims.map((d) => Math.trunc(d * factor));
}

/**
 * A SLaK model: ConvNeXt with `large_kernel` mixers.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { SLaK, SLAK_PRESETS } from "./slak.ts";
 * const model = new SLaK({ ...SLAK_PRESETS.slak_cpu, numClasses: 10 });
 * console.log(model.largeKernels().length, model.forward(new Meta([1, 3, 64, 64])).shape); // 4 [1, 10]
 * ```
 */
export class SLaK extends ConvNeXt {
  readonly slakConfig: Required<Pick<SLaKConfig, "smallKernel" | "widthFactor" | "mode">>;
  constructor(config: SLaKConfig) {
    const smallKernel = config.smallKernel ?? 5;
    const widthFactor = config.widthFactor ?? 1;
    const mode = config.mode ?? "decomposed";
    const dims = widenDims(config.dims, widthFactor);
    super(
      { ...config, dims },
      (dim, stage) =>
        new LargeKernelConv(
          dim,
          config.kernels[stage],
          smallKernel,
          mode === "decomposed" && smallKernel >= config.kernels[stage] ? "full" : mode,
        ),
      "large_kernel",
    );
    this.slakConfig = { smallKernel, widthFactor, mode };
  }

  /** Every block's large-kernel module. */
  largeKernels(): LargeKernelConv[] {
    return [...this.namedModules()].map(([, m]) => m).filter((m): m is LargeKernelConv =>
      m instanceof LargeKernelConv
    );
  }

  /** Re-parameterise every large kernel (inference). */
  async mergeKernels(): Promise<void> {
    for (const lk of this.largeKernels()) await lk.merge();
  }
}

/** Build a SLaK model (see {@linkcode SLAK_PRESETS}). */
export function slak(config: SLaKConfig): SLaK {
  return new SLaK(config);
}
