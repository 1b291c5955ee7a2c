/**
 * Layers with PyTorch's parameter names, and the shape-only {@linkcode Meta}
 * values that let a model's own `forward` count its FLOPs with no GPU.
 *
 * Every layer's `forward` takes a GPU {@linkcode Tensor} or a {@linkcode Meta}
 * (a shape). On a `Meta` it computes only the output shape and, while
 * {@linkcode traceFlops} runs, records its multiply-accumulates. Model code
 * uses the functional helpers here (`gelu`, `add`, `permute`, …), which
 * accept both, so one `forward` serves training and counting.
 *
 * @example
 * ```ts
 * import { Conv2d, Meta, traceFlops } from "./layers.ts";
 * const conv = new Conv2d(3, 8, 3, { padding: 1 });
 * const records = traceFlops(() => conv.forward(new Meta([1, 3, 32, 32])));
 * console.log(records[0].macs); // 8·3·3·3 · 32·32 = 221184
 * ```
 * @module
 */
import { add as addOp, gelu as geluOp, mul as mulOp, relu as reluOp } from "../ops/elementwise.ts";
import { reshape } from "../ops/autograd.ts";
import { conv2d } from "../ops/conv.ts";
import { depthwiseConv2d } from "../ops/depthwise.ts";
import type { SparseDepthwisePlan } from "../ops/sparse_depthwise.ts";
import { depthwiseMaybeSparse } from "../ops/sparse_path.ts";
import { dropPath as dropPathOp } from "../ops/drop_path.ts";
import { dropPathScales } from "../ops/fused.ts";
import { linear } from "../ops/matmul.ts";
import { batchNorm2d, layerNorm, layerNormChannelsFirst, type StatsReducer } from "../ops/norm.ts";
import { maxPool2d as maxPoolOp, meanHW as meanHWOp } from "../ops/pool.ts";
import { permute as permuteOp } from "../ops/shape.ts";
import { numel, type Tensor } from "../ops/tensor.ts";
import { type Init, Module, type Param } from "./module.ts";
import { Meta, type Value } from "./value.ts";

// ---------------------------------------------------------------- shape-only values

export { Meta, type Value } from "./value.ts";

/** One counted operation: multiply-accumulates of a layer, as fvcore counts them. */
export interface FlopRecord {
  module: Module;
  /** "conv", "linear", "bn", "ln" (F.layer_norm), "ln_manual" (ConvNeXt's channels-first LN), "pool". */
  kind: string;
  macs: number;
  /** The weight whose density scales `macs` when the layer is sparse. */
  weight?: Param;
}

let recorder: FlopRecord[] | null = null;

/** Run `fn` (a forward on {@linkcode Meta} values) and return what its layers recorded. */
export function traceFlops(fn: () => unknown): FlopRecord[] {
  const prev = recorder;
  recorder = [];
  try {
    fn();
    return recorder;
  } finally {
    recorder = prev;
  }
}

function count(r: FlopRecord): void {
  recorder?.push(r);
}

/**
 * Record a counted operation from a model file's own Meta-aware module (while tracing).
 *
 * @example
 * ```ts
 * import { Meta, recordFlops, traceFlops } from "./layers.ts";
 * import { Module } from "./module.ts";
 * import type { Value } from "./value.ts";
 * class Gram extends Module {
 *   forward<V extends Value>(x: V): V {
 *     if (x instanceof Meta) recordFlops({ module: this, kind: "matmul", macs: x.size * x.shape[1] });
 *     return x;
 *   }
 * }
 * console.log(traceFlops(() => new Gram().forward(new Meta([4, 8])))[0].macs); // 256
 * ```
 */
export function recordFlops(r: FlopRecord): void {
  count(r);
}

function isMeta(x: Value): x is Meta {
  return x instanceof Meta;
}

// ---------------------------------------------------------------- functional helpers

/**
 * GELU (erf form) on a tensor; identity on a shape.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { gelu } from "./layers.ts";
 * await initGpu();
 * console.log(await gelu(Tensor.from([0, 10])).read()); // Float32Array [0, 10]
 * ```
 */
export function gelu<V extends Value>(x: V): V {
  return (isMeta(x) ? x : geluOp(x)) as V;
}

/**
 * ReLU on a tensor; identity on a shape.
 *
 * @example
 * ```ts
 * import { Meta, relu } from "./layers.ts";
 * console.log(relu(new Meta([2, 8])).shape); // [2, 8]
 * ```
 */
export function relu<V extends Value>(x: V): V {
  return (isMeta(x) ? x : reluOp(x)) as V;
}

/**
 * a + b (broadcasting); on shapes, the shape of `a`.
 *
 * @example
 * ```ts
 * import { add, Meta } from "./layers.ts";
 * console.log(add(new Meta([2, 8]), new Meta([2, 8])).shape); // [2, 8]
 * ```
 */
export function add<V extends Value>(a: V, b: V): V {
  return (isMeta(a) ? a : addOp(a as Tensor, b as Tensor)) as V;
}

/**
 * a · b (broadcasting, e.g. LayerScale); on shapes, the shape of `a`.
 *
 * @example
 * ```ts
 * import { Meta, mul } from "./layers.ts";
 * console.log(mul(new Meta([2, 8, 4, 4]), new Meta([8, 1, 1])).shape); // [2, 8, 4, 4]
 * ```
 */
export function mul<V extends Value>(a: V, b: Tensor | Meta): V {
  return (isMeta(a) ? a : mulOp(a as Tensor, b as Tensor)) as V;
}

/**
 * Permute dimensions.
 *
 * @example
 * ```ts
 * import { Meta, permute } from "./layers.ts";
 * console.log(permute(new Meta([2, 8, 4, 5]), [0, 2, 3, 1]).shape); // [2, 4, 5, 8]: NCHW → NHWC
 * ```
 */
export function permute<V extends Value>(x: V, dims: readonly number[]): V {
  return (isMeta(x) ? new Meta(dims.map((d) => x.shape[d])) : permuteOp(x, dims)) as V;
}

/**
 * Reshape (free on tensors).
 *
 * @example
 * ```ts
 * import { Meta, view } from "./layers.ts";
 * console.log(view(new Meta([2, 8, 4, 4]), [2, -1]).shape); // [2, 128]
 * ```
 */
export function view<V extends Value>(x: V, shape: readonly number[]): V {
  if (isMeta(x)) {
    const s = [...shape];
    const hole = s.indexOf(-1);
    if (hole >= 0) s[hole] = x.size / numel(s.filter((_, i) => i !== hole));
    return new Meta(s) as V;
  }
  return reshape(x as Tensor, shape) as V;
}

/**
 * Global average over H, W: [N,C,H,W] → [N,C]. Not counted (fvcore skips `aten::mean`).
 *
 * @example
 * ```ts
 * import { meanHW, Meta } from "./layers.ts";
 * console.log(meanHW(new Meta([2, 8, 7, 7])).shape); // [2, 8]
 * ```
 */
export function meanHW<V extends Value>(x: V): V {
  return (isMeta(x) ? new Meta(x.shape.slice(0, 2)) : meanHWOp(x)) as V;
}

// ---------------------------------------------------------------- initialisers

/**
 * PyTorch's default Conv/Linear weight init, kaiming_uniform(a=√5): U(±1/√fan_in).
 *
 * @example
 * ```ts
 * import { torchDefaultInit } from "./layers.ts";
 * console.log(torchDefaultInit(16)); // { kind: "uniform", bound: 0.25 }
 * ```
 */
export function torchDefaultInit(fanIn: number): Init {
  return { kind: "uniform", bound: 1 / Math.sqrt(fanIn) };
}

// ---------------------------------------------------------------- layers

/** Options of {@linkcode Conv2d}. */
export interface Conv2dConfig {
  stride?: number;
  /** Symmetric padding per axis; default keeps the size for odd kernels ("same"). */
  padding?: number | [number, number];
  groups?: number;
  bias?: boolean;
  weightInit?: Init;
  biasInit?: Init;
}

/**
 * `nn.Conv2d` (keys `weight`, `bias`). A conv with one filter per channel
 * (groups = in = out) runs on the depthwise kernels.
 */
export class Conv2d extends Module {
  readonly weight: Param;
  readonly bias: Param | null;
  readonly kernel: [number, number];
  readonly stride: number;
  readonly padding: [number, number];
  readonly groups: number;
  /**
   * Compacted active taps of a masked depthwise kernel (set by
   * `sparse/masks.ts`): below the measured density threshold the forward and
   * backward visit only these taps.
   */
  sparsePlan: SparseDepthwisePlan | null = null;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernel: number | [number, number],
    cfg: Conv2dConfig = {},
  ) {
    super();
    this.kernel = typeof kernel === "number" ? [kernel, kernel] : kernel;
    const [kh, kw] = this.kernel;
    this.stride = cfg.stride ?? 1;
    const p = cfg.padding ?? [Math.floor(kh / 2), Math.floor(kw / 2)];
    this.padding = typeof p === "number" ? [p, p] : p;
    this.groups = cfg.groups ?? 1;
    if (inChannels % this.groups || outChannels % this.groups) {
      throw new Error(
        `Conv2d: ${inChannels}→${outChannels} channels not divisible by groups ${this.groups}`,
      );
    }
    const fanIn = (inChannels / this.groups) * kh * kw;
    this.weight = this.param(
      "weight",
      [outChannels, inChannels / this.groups, kh, kw],
      cfg.weightInit ?? torchDefaultInit(fanIn),
    );
    this.bias = cfg.bias === false
      ? null
      : this.param("bias", [outChannels], cfg.biasInit ?? torchDefaultInit(fanIn));
  }

  get isDepthwise(): boolean {
    return this.groups === this.inChannels && this.groups === this.outChannels;
  }

  /** Output shape for an input shape [N, C, H, W]. */
  outShape([n, c, h, w]: readonly number[]): number[] {
    if (c !== this.inChannels) {
      throw new Error(`Conv2d: input has ${c} channels, layer expects ${this.inChannels}`);
    }
    const [kh, kw] = this.kernel;
    const [ph, pw] = this.padding;
    const s = this.stride;
    return [
      n,
      this.outChannels,
      Math.floor((h + 2 * ph - kh) / s) + 1,
      Math.floor((w + 2 * pw - kw) / s) + 1,
    ];
  }

  forward<V extends Value>(x: V): V {
    if (isMeta(x)) {
      const out = new Meta(this.outShape(x.shape));
      count({
        module: this,
        kind: "conv",
        macs: out.size * this.weight.size / this.outChannels,
        weight: this.weight,
      });
      return out as V;
    }
    return this.convolve(x as Tensor, this.weight.tensor, this.bias?.tensor ?? null) as V;
  }

  /**
   * This layer's convolution of `x` with other weights `[out, in/groups, KH, KW]` and bias
   * (e.g. with a batch norm folded in), on the kernels `forward` would use.
   */
  convolve(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
    if (this.isDepthwise && (this.stride === 1 || this.stride === 2)) {
      const opts = { stride: this.stride as 1 | 2, padding: this.padding };
      return this.sparsePlan
        ? depthwiseMaybeSparse(x, weight, this.sparsePlan, bias, opts)
        : depthwiseConv2d(x, weight, bias, opts);
    }
    return conv2d(x, weight, bias, {
      stride: this.stride,
      padding: this.padding,
      groups: this.groups,
    });
  }
}

/**
 * `nn.Linear` on the last dimension (keys `weight` [out, in], `bias`).
 *
 * @example
 * ```ts
 * import { Linear, Meta } from "./layers.ts";
 * const fc = new Linear(768, 1000);
 * console.log(fc.numParams(), fc.forward(new Meta([2, 768])).shape); // 769000 [2, 1000]
 * ```
 */
export class Linear extends Module {
  readonly weight: Param;
  readonly bias: Param | null;
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    cfg: { bias?: boolean; weightInit?: Init; biasInit?: Init } = {},
  ) {
    super();
    this.weight = this.param(
      "weight",
      [outFeatures, inFeatures],
      cfg.weightInit ?? torchDefaultInit(inFeatures),
    );
    this.bias = cfg.bias === false
      ? null
      : this.param("bias", [outFeatures], cfg.biasInit ?? torchDefaultInit(inFeatures));
  }

  forward<V extends Value>(x: V): V {
    const last = x.shape.at(-1);
    if (last !== this.inFeatures) {
      throw new Error(`Linear: input has ${last} features, layer expects ${this.inFeatures}`);
    }
    if (isMeta(x)) {
      const out = new Meta([...x.shape.slice(0, -1), this.outFeatures]);
      count({
        module: this,
        kind: "linear",
        macs: out.size * this.inFeatures,
        weight: this.weight,
      });
      return out as V;
    }
    return linear(x as Tensor, this.weight.tensor, this.bias?.tensor ?? null) as V;
  }
}

/**
 * `nn.BatchNorm2d` (keys `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`).
 *
 * @example
 * ```ts
 * import { BatchNorm2d } from "./layers.ts";
 * const bn = new BatchNorm2d(8);
 * console.log([...bn.namedEntries()].map(([k]) => k)); // weight, bias, running_mean, running_var, num_batches_tracked
 * ```
 */
export class BatchNorm2d extends Module {
  readonly weight: Param;
  readonly bias: Param;
  readonly runningMean: Param;
  readonly runningVar: Param;
  readonly numBatchesTracked: Param;
  /**
   * Synchronised batch norm in training: the reducer that sums the batch
   * statistics over the replicas of a data-parallel run (see
   * sync_batch_norm.ts); null normalises each replica's own batch.
   */
  statsReducer: StatsReducer | null = null;
  constructor(
    readonly channels: number,
    readonly eps = 1e-5,
    /** Weight of the newest batch in the running statistics (changeable, e.g. to calibrate). */
    public momentum = 0.1,
    weightInit: Init = { kind: "ones" },
  ) {
    super();
    this.weight = this.param("weight", [channels], weightInit);
    this.bias = this.param("bias", [channels], { kind: "zeros" });
    this.runningMean = this.buffer("running_mean", [channels], { kind: "zeros" });
    this.runningVar = this.buffer("running_var", [channels], { kind: "ones" });
    // Kept for key compatibility with PyTorch state dicts; unused with a fixed momentum.
    this.numBatchesTracked = this.buffer("num_batches_tracked", [], { kind: "zeros" });
  }

  forward<V extends Value>(x: V): V {
    if (isMeta(x)) {
      count({ module: this, kind: "bn", macs: 2 * x.size });
      return x;
    }
    return batchNorm2d(
      x as Tensor,
      this.weight.tensor,
      this.bias.tensor,
      this.runningMean.tensor,
      this.runningVar.tensor,
      {
        training: this.training,
        momentum: this.momentum,
        eps: this.eps,
        reducer: this.statsReducer ?? undefined,
      },
    ) as V;
  }
}

/**
 * LayerNorm with affine `weight`/`bias`: over the last dimension
 * (`nn.LayerNorm`), or over C of [N,C,H,W] (`channelsFirst`, ConvNeXt's own
 * LayerNorm class, which fvcore does not count because it is written out of
 * elementary ops).
 *
 * @example
 * ```ts
 * import { LayerNorm, Meta } from "./layers.ts";
 * const ln = new LayerNorm(8, 1e-6, true); // over C of [N, C, H, W]
 * console.log(ln.forward(new Meta([2, 8, 4, 4])).shape, ln.numParams()); // [2, 8, 4, 4] 16
 * ```
 */
export class LayerNorm extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(readonly channels: number, readonly eps = 1e-6, readonly channelsFirst = false) {
    super();
    this.weight = this.param("weight", [channels], { kind: "ones" });
    this.bias = this.param("bias", [channels], { kind: "zeros" });
  }

  forward<V extends Value>(x: V): V {
    const c = this.channelsFirst ? x.shape[1] : x.shape.at(-1);
    if (c !== this.channels) {
      throw new Error(`LayerNorm: input has ${c} channels, layer expects ${this.channels}`);
    }
    if (isMeta(x)) {
      count({ module: this, kind: this.channelsFirst ? "ln_manual" : "ln", macs: 5 * x.size });
      return x;
    }
    const f = this.channelsFirst ? layerNormChannelsFirst : layerNorm;
    return f(x as Tensor, this.weight.tensor, this.bias.tensor, { eps: this.eps }) as V;
  }
}

let forwardSeed = 0;
let dropCalls = 0;

/**
 * Seed the stochastic layers of the next forward (drop path): the trainer
 * calls this once per step with a value derived from `--seed` and the step,
 * so a resumed run draws exactly what the uninterrupted run drew.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { DropPath, setForwardSeed } from "./layers.ts";
 * await initGpu();
 * const drop = new DropPath(0.5);
 * const x = Tensor.ones([8, 1, 1, 1]);
 * setForwardSeed(1);
 * const a = await drop.forward(x).read();
 * setForwardSeed(1);
 * const b = await drop.forward(x).read();
 * console.log(a.every((v, i) => v === b[i])); // true: the same samples are dropped
 * ```
 */
export function setForwardSeed(seed: number): void {
  forwardSeed = seed >>> 0;
  dropCalls = 0;
}

/**
 * Per-sample stochastic depth (timm's `DropPath`); no parameters.
 *
 * @example
 * ```ts
 * import { DropPath, Meta } from "./layers.ts";
 * const drop = new DropPath(0.1);
 * drop.eval(); // identity in evaluation
 * console.log(drop.forward(new Meta([2, 8, 4, 4])).shape); // [2, 8, 4, 4]
 * ```
 */
export class DropPath extends Module {
  constructor(readonly prob: number) {
    super();
  }
  forward<V extends Value>(x: V): V {
    if (isMeta(x) || !this.training || this.prob === 0) return x;
    return dropPathOp(x as Tensor, this.prob, { training: true, seed: nextDropSeed() }) as V;
  }

  /**
   * The per-sample multipliers that `forward` on `samples` samples would
   * apply now (drawing them as it would), or null where it is the identity:
   * for fused ops that fold the drop path into another kernel.
   */
  scales(samples: number): Float32Array | null {
    if (!this.training || this.prob === 0) return null;
    return dropPathScales(samples, this.prob, nextDropSeed());
  }
}

/** The seed of the next drop-path draw of this forward. */
function nextDropSeed(): number {
  return (Math.imul(forwardSeed ^ 0x5bd1e995, 0x27d4eb2d) + dropCalls++ * 0x9e3779b9) >>> 0;
}

/**
 * `nn.MaxPool2d(kernel, stride, padding)`.
 *
 * @example
 * ```ts
 * import { MaxPool2d, Meta } from "./layers.ts";
 * console.log(new MaxPool2d().forward(new Meta([1, 64, 112, 112])).shape); // [1, 64, 56, 56]
 * ```
 */
export class MaxPool2d extends Module {
  constructor(readonly kernel = 3, readonly stride = 2, readonly padding = 1) {
    super();
  }
  forward<V extends Value>(x: V): V {
    if (isMeta(x)) {
      const [n, c, h, w] = x.shape;
      const o = (d: number) => Math.floor((d + 2 * this.padding - this.kernel) / this.stride) + 1;
      return new Meta([n, c, o(h), o(w)]) as V;
    }
    return maxPoolOp(x as Tensor, {
      kernel: this.kernel,
      stride: this.stride,
      padding: this.padding,
    }) as V;
  }
}

/**
 * Dispose `dead`, a handle that no later code reads, unless it is one of
 * `live` (a function that returned its input unchanged). The tape holds its
 * own reference to what backward needs, so this frees an activation as soon
 * as neither the forward nor the backward needs it, as PyTorch frees a tensor
 * when its last reference goes, rather than when the enclosing scope ends.
 * A `Meta` is left alone.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { drop, gelu } from "./layers.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2]);
 * const y = gelu(x);
 * drop(x, y);
 * console.log(x.disposed, y.disposed); // true false
 * ```
 */
export function drop(dead: Value, ...live: Value[]): void {
  if (!isMeta(dead) && !live.includes(dead)) (dead as Tensor).dispose();
}

/**
 * `fns` applied in turn to `x`, each intermediate result dropped (see
 * {@linkcode drop}) once the next function has read it; `x` and the result
 * are left alone.
 *
 * @example
 * ```ts
 * import { Meta, permute, pipe } from "./layers.ts";
 * const y = pipe(new Meta([1, 2, 3, 4]), (v) => permute(v, [0, 2, 3, 1]), (v) => permute(v, [0, 3, 1, 2]));
 * console.log(y.shape); // [1, 2, 3, 4]
 * ```
 */
export function pipe<V extends Value>(x: V, ...fns: ((v: V) => V)[]): V {
  let y = x;
  for (const f of fns) {
    const next = f(y);
    if (y !== x) drop(y, next);
    y = next;
  }
  return y;
}

/**
 * `nn.Sequential`: children keyed 0, 1, 2, … applied in order.
 *
 * @example
 * ```ts
 * import { Activation, Conv2d, Meta, Sequential } from "./layers.ts";
 * const stem = new Sequential(new Conv2d(3, 8, 3, { padding: 1 }), new Activation("relu"));
 * console.log([...stem.namedParameters()].map(([k]) => k)); // ["0.weight", "0.bias"]
 * console.log(stem.forward(new Meta([1, 3, 16, 16])).shape); // [1, 8, 16, 16]
 * ```
 */
export class Sequential extends Module {
  readonly layers: Module[];
  constructor(...layers: Module[]) {
    super();
    this.layers = layers;
    layers.forEach((m, i) => this.child(i, m));
  }
  forward<V extends Value>(x: V): V {
    return pipe(x, ...this.layers.map((l) => (v: V) => l.forward(v)));
  }
}

/**
 * A parameter-free activation as a module (for `Sequential`s that mirror PyTorch's).
 *
 * @example
 * ```ts
 * import { Activation, Meta } from "./layers.ts";
 * console.log(new Activation("gelu").forward(new Meta([2, 4])).shape); // [2, 4]
 * ```
 */
export class Activation extends Module {
  constructor(readonly fn: "relu" | "gelu") {
    super();
  }
  forward<V extends Value>(x: V): V {
    return this.fn === "relu" ? relu(x) : gelu(x);
  }
}
