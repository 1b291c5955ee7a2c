/**
 * RepLKNet (Ding et al., CVPR 2022) as the official
 * DingXiaoH/RepLKNet-pytorch `replknet.py` builds it: a stem (3×3 s2 →
 * DW 3×3 → 1×1 → DW 3×3 s2, each conv-BN-ReLU), stages of interleaved RepLK
 * Blocks (BN → 1×1 conv-BN-ReLU → re-parameterisable DW large kernel → ReLU
 * → 1×1 conv-BN, residual) and ConvFFN Blocks (BN → 1×1 conv-BN → GELU →
 * 1×1 conv-BN, residual), transitions (1×1 conv-BN-ReLU → DW 3×3 s2
 * conv-BN-ReLU), then BN → global average pool → `head`.
 *
 * State-dict keys equal the official ones (`stem.0.conv.weight`,
 * `stages.2.blocks.4.large_kernel.lkb_origin.bn.running_var`,
 * `stages.2.blocks.5.pw1.conv.weight`, `transitions.0.1.bn.bias`, `norm.*`,
 * `head.*`; after {@linkcode RepLKNet.mergeKernels}
 * `…large_kernel.lkb_reparam.{weight,bias}`), so official checkpoints load by
 * their own keys. Init is PyTorch's default (the official code sets none):
 * convs and the head U(±1/√fan_in), BatchNorm weight 1 and bias 0.
 *
 * Not modelled: `out_indices` (downstream feature pyramids) and with it
 * `norm_intermediate_features` (an extra `stages.S.norm` BN that the official
 * code refuses when `num_classes` is set), and `use_checkpoint` (memory only).
 * SyncBatchNorm (`use_sync_bn`) has BatchNorm's keys and eval behaviour.
 *
 * Counts: the training-time form has the official checkpoints' parameters
 * (31B 79,864,168; 31L 172,671,016; XL 335,435,752). The paper reports the
 * inference form (kernels merged, every BN folded into a conv) and conv +
 * linear MACs: 31B 79.39M, 15.35G at 224² (paper 79.3M, 15.3G), 45.12G at
 * 384²; 31L 95.99G at 384²; XL 128.73G at 320².
 *
 * @example
 * ```ts
 * import { replknet, REPLKNET_PRESETS } from "./replknet.ts";
 * const m = replknet(REPLKNET_PRESETS.replknet_31b);
 * console.log((m.numParams() / 1e6).toFixed(2)); // 79.86 (training-time form)
 * ```
 * @module
 */
import { convBatchNorm } from "./conv_bn.ts";
import {
  Activation,
  add,
  BatchNorm2d,
  Conv2d,
  drop,
  DropPath,
  Linear,
  pipe,
  Sequential,
  type Value,
} from "./layers.ts";
import { type Classifier, Module, ModuleList } from "./module.ts";
import { GlobalAvgPool } from "./resnet.ts";
import { Tensor } from "../ops/tensor.ts";

/** Configuration of a RepLKNet (the official constructor's arguments that change the model). */
export interface RepLKNetConfig {
  /** Large depthwise kernel per stage (`large_kernel_sizes`), e.g. [31, 29, 27, 13]. */
  largeKernelSizes: number[];
  /** RepLK Blocks per stage (each followed by a ConvFFN Block), e.g. [2, 2, 18, 2]. */
  layers: number[];
  /** Channels per stage; the stem has `channels[0]`. */
  channels: number[];
  /**
   * The parallel small kernel re-parameterised into each large one (5);
   * `null` for none (RepLKNet-XL). Must not exceed any stage's large kernel.
   */
  smallKernel?: number | null;
  /** Depthwise channels of a RepLK Block = `int(C · dwRatio)` (1; XL 1.5). */
  dwRatio?: number;
  /** Internal channels of a ConvFFN Block = `int(C · ffnRatio)` (4). */
  ffnRatio?: number;
  numClasses?: number;
  /** Stochastic depth rate, linspace(0, rate) over the RepLK Blocks; a ConvFFN shares its RepLK Block's rate. */
  dropPath?: number;
  inChannels?: number;
  /** Build the large kernels already merged (`lkb_reparam` with bias), as `small_kernel_merged=True`. */
  smallKernelMerged?: boolean;
}

/**
 * The paper's models (the official `create_RepLKNet31B/31L/XL`, whose
 * drop-path default is 0.3), and a tiny preset for llvmpipe tests.
 */
export const REPLKNET_PRESETS = {
  replknet_31b: {
    largeKernelSizes: [31, 29, 27, 13],
    layers: [2, 2, 18, 2],
    channels: [128, 256, 512, 1024],
    smallKernel: 5,
    dropPath: 0.3,
  },
  replknet_31l: {
    largeKernelSizes: [31, 29, 27, 13],
    layers: [2, 2, 18, 2],
    channels: [192, 384, 768, 1536],
    smallKernel: 5,
    dropPath: 0.3,
  },
  replknet_xl: {
    largeKernelSizes: [27, 27, 27, 13],
    layers: [2, 2, 18, 2],
    channels: [256, 512, 1024, 2048],
    smallKernel: null,
    dwRatio: 1.5,
    dropPath: 0.3,
  },
  replknet_cpu: {
    largeKernelSizes: [13, 11, 9, 7],
    layers: [1, 1, 1, 1],
    channels: [8, 16, 24, 32],
    smallKernel: 5,
  },
} satisfies Record<string, RepLKNetConfig>;

/** The kernel settings of RepLKNet Table 5 ("3-3-3-3" … "31-29-27-13"). */
export const REPLKNET_TABLE5_KERNELS = [
  "3-3-3-3",
  "7-7-7-7",
  "13-13-13-13",
  "25-25-25-13",
  "31-29-27-13",
] as const;

/**
 * A RepLKNet Table 5 model: B = [2, 2, 18, 2], C = [128, 256, 512, 1024], the
 * given stage kernels and the 5×5 re-parameterisation kernel. The official
 * code refuses a small kernel larger than the large one, so 3-3-3-3 (the
 * small-kernel baseline RepLKNet-3) has no parallel kernel.
 *
 * @example
 * ```ts
 * import { replknet, replknetTable5 } from "./replknet.ts";
 * console.log(replknetTable5("13-13-13-13").largeKernelSizes); // [13, 13, 13, 13]
 * console.log((replknet(replknetTable5([3, 3, 3, 3])).numParams() / 1e6).toFixed(2)); // 71.91
 * ```
 */
export function replknetTable5(kernels: string | readonly number[]): RepLKNetConfig {
  const k = typeof kernels === "string" ? kernels.split("-").map(Number) : [...kernels];
  if (k.length !== 4 || !k.every((v) => Number.isInteger(v) && v > 0)) {
    throw new Error(`replknetTable5: need 4 positive kernel sizes, got ${JSON.stringify(kernels)}`);
  }
  return {
    ...REPLKNET_PRESETS.replknet_31b,
    largeKernelSizes: k,
    smallKernel: Math.min(...k) >= 5 ? 5 : null,
  };
}

/**
 * The official `conv_bn` / `conv_bn_relu`: a bias-free conv (`conv`), a
 * BatchNorm (`bn`) and optionally a ReLU (`nonlinear`, no parameters).
 *
 * @example
 * ```ts
 * import { RepLKConvBN } from "./replknet.ts";
 * const m = new RepLKConvBN(8, 8, 3, { stride: 2, groups: 8, relu: true });
 * console.log([...m.namedEntries()].map(([k]) => k).slice(0, 2)); // ["conv.weight", "bn.weight"]
 * ```
 */
export class RepLKConvBN extends Module {
  readonly conv: Conv2d;
  readonly bn: BatchNorm2d;
  readonly nonlinear: Activation | null;

  constructor(
    inChannels: number,
    outChannels: number,
    kernel: number,
    { stride = 1, padding = Math.floor(kernel / 2), groups = 1, relu = false }: {
      stride?: number;
      padding?: number;
      groups?: number;
      relu?: boolean;
    } = {},
  ) {
    super();
    this.conv = this.child(
      "conv",
      new Conv2d(inChannels, outChannels, kernel, { stride, padding, groups, bias: false }),
    );
    this.bn = this.child("bn", new BatchNorm2d(outChannels));
    this.nonlinear = relu ? this.child("nonlinear", new Activation("relu")) : null;
  }

  forward<V extends Value>(x: V): V {
    const nonlinear = this.nonlinear;
    // In evaluation the BN is folded into the conv: one conv instead of conv + BN.
    const steps = [(v: V) => convBatchNorm(this.conv, this.bn, v)];
    if (nonlinear) steps.push((v) => nonlinear.forward(v));
    return pipe(x, ...steps);
  }

  /**
   * The conv with this BN folded in (eval mode, the official `fuse_bn`):
   * weight · γ/√(var+ε) and β − mean · γ/√(var+ε). Reads back to the CPU.
   */
  async fused(): Promise<{ weight: Float32Array; bias: Float32Array }> {
    const [w, g, b, mean, variance] = await Promise.all(
      [this.conv.weight, this.bn.weight, this.bn.bias, this.bn.runningMean, this.bn.runningVar].map(
        (p) => p.tensor.read(),
      ),
    );
    const c = g.length;
    const perFilter = w.length / c;
    const weight = new Float32Array(w.length);
    const bias = new Float32Array(c);
    for (let o = 0; o < c; o++) {
      const t = g[o] / Math.sqrt(variance[o] + this.bn.eps);
      for (let k = 0; k < perFilter; k++) weight[o * perFilter + k] = w[o * perFilter + k] * t;
      bias[o] = b[o] - mean[o] * t;
    }
    return { weight, bias };
  }
}

/**
 * The official `ReparamLargeKernelConv` (depthwise, stride 1, "same"
 * padding): `lkb_origin` (K×K conv-BN) plus `small_conv` (k×k conv-BN) when a
 * small kernel is given, or, once merged, one K×K conv with bias
 * (`lkb_reparam`).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { ReparamLargeKernelConv } from "./replknet.ts";
 * await initGpu();
 * const lk = new ReparamLargeKernelConv(4, 13, 5).eval(); // 13×13 with a parallel 5×5
 * const x = Tensor.randn([1, 4, 16, 16], { seed: 0 });
 * const before = await lk.forward(x).read();
 * await lk.merge(); // one 13×13 conv with bias
 * const after = await lk.forward(x).read();
 * console.log(lk.merged, before.every((v, i) => Math.abs(v - after[i]) < 1e-4)); // true true
 * ```
 */
export class ReparamLargeKernelConv extends Module {
  lkbOrigin: RepLKConvBN | null = null;
  smallConv: RepLKConvBN | null = null;
  lkbReparam: Conv2d | null = null;

  constructor(
    readonly channels: number,
    readonly kernel: number,
    readonly smallKernel: number | null,
    merged = false,
  ) {
    super();
    if (smallKernel !== null && smallKernel > kernel) {
      throw new Error(
        `ReparamLargeKernelConv: small kernel ${smallKernel} is larger than the large kernel ${kernel}`,
      );
    }
    if (merged) {
      this.lkbReparam = this.child("lkb_reparam", this.#reparamConv());
      return;
    }
    this.lkbOrigin = this.child(
      "lkb_origin",
      new RepLKConvBN(channels, channels, kernel, { groups: channels }),
    );
    if (smallKernel !== null) {
      this.smallConv = this.child(
        "small_conv",
        new RepLKConvBN(channels, channels, smallKernel, { groups: channels }),
      );
    }
  }

  #reparamConv(): Conv2d {
    return new Conv2d(this.channels, this.channels, this.kernel, { groups: this.channels });
  }

  get merged(): boolean {
    return this.lkbReparam !== null;
  }

  forward<V extends Value>(x: V): V {
    if (this.lkbReparam) return this.lkbReparam.forward(x);
    const y = this.lkbOrigin!.forward(x);
    if (!this.smallConv) return y;
    const small = this.smallConv.forward(x);
    const sum = add(y, small);
    drop(y, sum);
    drop(small, sum);
    return sum;
  }

  /**
   * Structural re-parameterisation (eval-mode equivalent): fold each BN into
   * its kernel, zero-pad the small kernel by (K−k)/2 on every side, and sum
   * kernels and biases into `lkb_reparam`, which replaces both branches.
   */
  async merge(): Promise<void> {
    if (this.lkbReparam) return;
    const big = await this.lkbOrigin!.fused();
    const weight = big.weight;
    const bias = big.bias;
    if (this.smallConv) {
      const small = await this.smallConv.fused();
      const [k, s] = [this.kernel, this.smallKernel!];
      if ((k - s) % 2) {
        throw new Error(`ReparamLargeKernelConv: cannot centre a ${s}×${s} kernel in ${k}×${k}`);
      }
      const pad = (k - s) / 2;
      for (let c = 0; c < this.channels; c++) {
        bias[c] += small.bias[c];
        for (let y = 0; y < s; y++) {
          for (let x = 0; x < s; x++) {
            weight[(c * k + y + pad) * k + x + pad] += small.weight[(c * s + y) * s + x];
          }
        }
      }
    }
    const conv = this.#reparamConv();
    conv.weight.set(Tensor.from(weight, conv.weight.shape));
    conv.bias!.set(Tensor.from(bias, [this.channels]));
    this.lkbOrigin!.dispose();
    this.smallConv?.dispose();
    this.replaceChildren({ lkb_reparam: conv });
    this.lkbOrigin = null;
    this.smallConv = null;
    this.lkbReparam = conv;
  }
}

/**
 * The official `RepLKBlock`: x + drop_path(pw2(relu(large_kernel(pw1(prelkb_bn(x)))))).
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { RepLKBlock } from "./replknet.ts";
 * const block = new RepLKBlock(8, 8, 13, 5, 0); // channels, dw channels, kernel, small kernel, drop path
 * console.log(block.forward(new Meta([1, 8, 14, 14])).shape); // [1, 8, 14, 14]
 * ```
 */
export class RepLKBlock extends Module {
  readonly pw1: RepLKConvBN;
  readonly pw2: RepLKConvBN;
  readonly largeKernel: ReparamLargeKernelConv;
  readonly lkNonlinear: Activation;
  readonly prelkbBn: BatchNorm2d;
  readonly dropPath: DropPath;

  constructor(
    channels: number,
    dwChannels: number,
    kernel: number,
    smallKernel: number | null,
    dropPath: number,
    smallKernelMerged = false,
  ) {
    super();
    // Registration order is the official one, so state-dict keys come in its order.
    this.pw1 = this.child("pw1", new RepLKConvBN(channels, dwChannels, 1, { relu: true }));
    this.pw2 = this.child("pw2", new RepLKConvBN(dwChannels, channels, 1));
    this.largeKernel = this.child(
      "large_kernel",
      new ReparamLargeKernelConv(dwChannels, kernel, smallKernel, smallKernelMerged),
    );
    this.lkNonlinear = this.child("lk_nonlinear", new Activation("relu"));
    this.prelkbBn = this.child("prelkb_bn", new BatchNorm2d(channels));
    this.dropPath = this.child("drop_path", new DropPath(dropPath));
  }

  forward<V extends Value>(x: V): V {
    const y = pipe(
      x,
      (v) => this.prelkbBn.forward(v),
      (v) => this.pw1.forward(v),
      (v) => this.largeKernel.forward(v),
      (v) => this.lkNonlinear.forward(v),
      (v) => this.pw2.forward(v),
      (v) => this.dropPath.forward(v),
    );
    const out = add(x, y);
    drop(y, out);
    return out;
  }
}

/**
 * The official `ConvFFN`: x + drop_path(pw2(gelu(pw1(preffn_bn(x))))).
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { ConvFFN } from "./replknet.ts";
 * const ffn = new ConvFFN(8, 32, 0); // channels, hidden channels, drop path
 * console.log(ffn.forward(new Meta([1, 8, 7, 7])).shape); // [1, 8, 7, 7]
 * ```
 */
export class ConvFFN extends Module {
  readonly dropPath: DropPath;
  readonly preffnBn: BatchNorm2d;
  readonly pw1: RepLKConvBN;
  readonly pw2: RepLKConvBN;
  readonly nonlinear: Activation;

  constructor(channels: number, internalChannels: number, dropPath: number) {
    super();
    this.dropPath = this.child("drop_path", new DropPath(dropPath));
    this.preffnBn = this.child("preffn_bn", new BatchNorm2d(channels));
    this.pw1 = this.child("pw1", new RepLKConvBN(channels, internalChannels, 1));
    this.pw2 = this.child("pw2", new RepLKConvBN(internalChannels, channels, 1));
    this.nonlinear = this.child("nonlinear", new Activation("gelu"));
  }

  forward<V extends Value>(x: V): V {
    const y = pipe(
      x,
      (v) => this.preffnBn.forward(v),
      (v) => this.pw1.forward(v),
      (v) => this.nonlinear.forward(v),
      (v) => this.pw2.forward(v),
      (v) => this.dropPath.forward(v),
    );
    const out = add(x, y);
    drop(y, out);
    return out;
  }
}

/**
 * The official `RepLKNetStage`: `blocks` = RepLK Block, ConvFFN, RepLK Block, ConvFFN, …
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { RepLKNetStage } from "./replknet.ts";
 * // 2 × (RepLK block + ConvFFN) at 8 channels, kernel 13 with a 5×5, dw ratio 1, FFN ratio 4
 * const stage = new RepLKNetStage(8, 2, 13, [0, 0], 5, 1, 4, false);
 * console.log(stage.forward(new Meta([1, 8, 14, 14])).shape); // [1, 8, 14, 14]
 * ```
 */
export class RepLKNetStage extends Module {
  readonly blocks: ModuleList<RepLKBlock | ConvFFN>;

  constructor(
    channels: number,
    numBlocks: number,
    kernel: number,
    dropPaths: number[],
    smallKernel: number | null,
    dwRatio: number,
    ffnRatio: number,
    smallKernelMerged: boolean,
  ) {
    super();
    const blocks: (RepLKBlock | ConvFFN)[] = [];
    for (let i = 0; i < numBlocks; i++) {
      blocks.push(
        new RepLKBlock(
          channels,
          Math.trunc(channels * dwRatio),
          kernel,
          smallKernel,
          dropPaths[i],
          smallKernelMerged,
        ),
        new ConvFFN(channels, Math.trunc(channels * ffnRatio), dropPaths[i]),
      );
    }
    this.blocks = this.child("blocks", new ModuleList(blocks));
  }

  forward<V extends Value>(x: V): V {
    return pipe(x, ...this.blocks.items.map((b) => (v: V) => b.forward(v)));
  }
}

/**
 * The official `RepLKNet` classifier.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { RepLKNet, REPLKNET_PRESETS } from "./replknet.ts";
 * const model = new RepLKNet({ ...REPLKNET_PRESETS.replknet_cpu, numClasses: 10 });
 * console.log(model.forward(new Meta([1, 3, 64, 64])).shape); // [1, 10]
 * ```
 */
export class RepLKNet extends Module implements Classifier {
  readonly stem: ModuleList<RepLKConvBN>;
  readonly stages: ModuleList<RepLKNetStage>;
  readonly transitions: ModuleList<Sequential>;
  readonly norm: BatchNorm2d;
  readonly avgpool: GlobalAvgPool;
  readonly head: Linear;
  readonly config: Required<RepLKNetConfig>;

  constructor(config: RepLKNetConfig) {
    super();
    // `??` rather than spreading, so an explicit `undefined` (e.g. an absent override) keeps the default.
    const c: Required<RepLKNetConfig> = {
      largeKernelSizes: config.largeKernelSizes,
      layers: config.layers,
      channels: config.channels,
      smallKernel: config.smallKernel === undefined ? 5 : config.smallKernel,
      dwRatio: config.dwRatio ?? 1,
      ffnRatio: config.ffnRatio ?? 4,
      numClasses: config.numClasses ?? 1000,
      dropPath: config.dropPath ?? 0,
      inChannels: config.inChannels ?? 3,
      smallKernelMerged: config.smallKernelMerged ?? false,
    };
    this.config = c;
    const { layers, channels, largeKernelSizes } = c;
    if (
      layers.length === 0 || channels.length !== layers.length ||
      largeKernelSizes.length !== layers.length
    ) {
      throw new Error(
        `RepLKNet: layers, channels and largeKernelSizes need one entry per stage, got ` +
          `${layers.length}, ${channels.length}, ${largeKernelSizes.length}`,
      );
    }
    const base = channels[0];
    this.stem = this.child(
      "stem",
      new ModuleList([
        new RepLKConvBN(c.inChannels, base, 3, { stride: 2, padding: 1, relu: true }),
        new RepLKConvBN(base, base, 3, { padding: 1, groups: base, relu: true }),
        new RepLKConvBN(base, base, 1, { padding: 0, relu: true }),
        new RepLKConvBN(base, base, 3, { stride: 2, padding: 1, groups: base, relu: true }),
      ]),
    );
    const total = layers.reduce((a, b) => a + b, 0);
    // torch.linspace(0, rate, total) as float32 values read back with .item().
    const rates = Array.from(
      { length: total },
      (_, i) => Math.fround(total > 1 ? (c.dropPath * i) / (total - 1) : 0),
    );
    const stages: RepLKNetStage[] = [];
    const transitions: Sequential[] = [];
    let first = 0;
    layers.forEach((n, s) => {
      stages.push(
        new RepLKNetStage(
          channels[s],
          n,
          largeKernelSizes[s],
          rates.slice(first, first + n),
          c.smallKernel,
          c.dwRatio,
          c.ffnRatio,
          c.smallKernelMerged,
        ),
      );
      first += n;
      if (s < layers.length - 1) {
        const next = channels[s + 1];
        transitions.push(
          new Sequential(
            new RepLKConvBN(channels[s], next, 1, { padding: 0, relu: true }),
            new RepLKConvBN(next, next, 3, { stride: 2, padding: 1, groups: next, relu: true }),
          ),
        );
      }
    });
    this.stages = this.child("stages", new ModuleList(stages));
    this.transitions = this.child("transitions", new ModuleList(transitions));
    this.norm = this.child("norm", new BatchNorm2d(channels.at(-1)!));
    this.avgpool = this.child("avgpool", new GlobalAvgPool());
    this.head = this.child("head", new Linear(channels.at(-1)!, c.numClasses));
  }

  /**
   * The official `forward_features`: the last stage's output
   * [N, C₄, H/32, W/32], before the final BN (the map RepLKNet's ERF script uses).
   */
  forwardFeatures<V extends Value>(x: V): V {
    const steps = this.stem.items.map((layer) => (v: V) => layer.forward(v));
    this.stages.items.forEach((stage, s) => {
      steps.push((v) => stage.forward(v));
      const t = this.transitions.items[s];
      if (t) steps.push((v) => t.forward(v));
    });
    return pipe(x, ...steps);
  }

  /** Logits [N, numClasses]: features → BN → global average pool → `head`. */
  forward<V extends Value>(x: V): V {
    return pipe(
      x,
      (v) => this.forwardFeatures(v),
      (v) => this.norm.forward(v),
      (v) => this.avgpool.forward(v),
      (v) => this.head.forward(v),
    );
  }

  /** Every RepLK Block's large-kernel module. */
  largeKernels(): ReparamLargeKernelConv[] {
    return [...this.namedModules()].map(([, m]) => m).filter((m): m is ReparamLargeKernelConv =>
      m instanceof ReparamLargeKernelConv
    );
  }

  /**
   * Structural re-parameterisation of every large kernel (the official
   * `structural_reparam`): afterwards each holds only `lkb_reparam`, and
   * eval-mode outputs are unchanged.
   */
  async mergeKernels(): Promise<void> {
    for (const lk of this.largeKernels()) await lk.merge();
  }
}

/** Build a RepLKNet (see {@linkcode REPLKNET_PRESETS} and {@linkcode replknetTable5}). */
export function replknet(config: RepLKNetConfig): RepLKNet {
  return new RepLKNet(config);
}
