/**
 * ShiftwiseConv v2 (Li et al., CVPR 2025, "Small Convolutional Kernel with
 * Large Kernel Effect"): the paper's final model, the official
 * `ShiftWise_v2` (backbones/SW_v2_unirep.py) with UniRepLKNet's macro design.
 *
 * Each block's spatial mixer (`large_kernel`, the official
 * `ShifthWiseConv2dImplicit`) emulates SLaK's M×N + N×M + N×N kernels with
 * 3×3 convs: of the C channels, `repN = int(C·(1−G))//2·2` (G = 0.23) take the
 * SW path and the rest ("ghost") pass through. The SW channels go through
 * `N_path` = 2 parallel one-to-many 3×3 group convs (`LoRAs`, repN →
 * repN·⌈M/3⌉, padding 2, summed), then the add-shift op
 * ({@linkcode addShift}, `N_rep` = 4 shuffled shift groups) forms a
 * horizontal-strip, a vertical-strip and a small map, each with its BN
 * (`bn_lora1`, `bn_lora2`, `bn_small`); their sum plus the SW input is
 * concatenated with the ghost channels (SW channels first, ghost channels
 * after: the official channel order). The block then runs BN → SE → Linear(4C)
 * → GELU → GRN → Linear(C, no bias) → BN → LayerScale → drop path + residual.
 * Stem: conv3×3 s2 (C/2) → LN → GELU → conv3×3 s2 (C) → LN; downsampling:
 * conv3×3 s2 → LN. Key names are the official state dict's
 * (`stages.S.B.large_kernel.LoRAs.P.weight`, `…bn_lora1.*`, `…se.down.*`,
 * `…pwconv1.1.*`, `…act.1.gamma`, `…pwconv2.0.weight`, `…pwconv2.2.*`, …).
 *
 * The ghost channels are NumPy's `np.random.seed(123); choice(C, C−repN,
 * replace=False)` and the shift tables PyTorch's `torch.manual_seed(123)`
 * `randperm`/`randint` draws, both reproduced exactly here (MT19937 with the
 * two libraries' sampling rules).
 *
 * The paper's Table 3 sizes (31M/5.0G, 56M/9.4G) are those of the deployed
 * model, whose `N_path` convs are merged into one (`LoRA`, see
 * {@linkcode ShiftWise.mergeBranches} or the `merged` config).
 *
 * @example
 * ```ts
 * import { shiftwise, SHIFTWISE_PRESETS } from "./shiftwise.ts";
 * const m = shiftwise({ ...SHIFTWISE_PRESETS.sw_tiny, merged: true });
 * console.log((m.numParams() / 1e6).toFixed(2)); // 31.00
 * ```
 * @module
 */
import { add as addOp, sigmoid as sigmoidOp } from "../ops/elementwise.ts";
import { noGrad } from "../ops/autograd.ts";
import { meanHW as meanHWOp } from "../ops/pool.ts";
import { concat } from "../ops/shape.ts";
import {
  addShift,
  grn,
  selectChannels as selectChannelsOp,
  type ShiftMap,
  ShiftPlan,
  type ShiftPlanSpec,
} from "../ops/shift.ts";
import type { Tensor } from "../ops/tensor.ts";
import {
  Activation,
  add,
  BatchNorm2d,
  Conv2d,
  type Conv2dConfig,
  drop,
  DropPath,
  LayerNorm,
  Linear,
  meanHW,
  Meta,
  mul,
  permute,
  pipe,
  recordFlops,
  relu,
  Sequential,
  type Value,
  view,
} from "./layers.ts";
import { type Classifier, type Init, Module, ModuleList, type Param } from "./module.ts";

// ---------------------------------------------------------------- the official random choices

/**
 * The MT19937 generator behind both `np.random.seed(int)` and
 * `torch.manual_seed(int)` (both seed with `init_genrand`), giving its raw
 * 32-bit outputs.
 *
 * @example
 * ```ts
 * import { Mt19937 } from "./shiftwise.ts";
 * console.log(new Mt19937(5489).next()); // 3499211612, the reference first output
 * ```
 */
export class Mt19937 {
  #state = new Uint32Array(624);
  #index = 624;

  constructor(seed: number) {
    const s = this.#state;
    s[0] = seed >>> 0;
    for (let i = 1; i < 624; i++) {
      s[i] = (Math.imul(1812433253, s[i - 1] ^ (s[i - 1] >>> 30)) + i) >>> 0;
    }
  }

  /** The next 32-bit output. */
  next(): number {
    if (this.#index >= 624) this.#twist();
    let y = this.#state[this.#index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  #twist(): void {
    const s = this.#state;
    for (let k = 0; k < 624; k++) {
      const y = (s[k] & 0x80000000) | (s[(k + 1) % 624] & 0x7fffffff);
      s[k] = s[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this.#index = 0;
  }
}

/**
 * `np.random.seed(seed); np.random.choice(n, k, replace=False)` with NumPy's
 * legacy `RandomState`: the first k of `permutation(n)`, a Fisher–Yates
 * shuffle from the top drawing each index by masked rejection.
 *
 * @example
 * ```ts
 * import { numpyChoice } from "./shiftwise.ts";
 * console.log(numpyChoice(123, 16, 4).sort((a, b) => a - b)); // [0, 4, 7, 10]
 * ```
 */
export function numpyChoice(seed: number, n: number, k: number): number[] {
  const mt = new Mt19937(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i >= 1; i--) {
    let mask = i;
    for (const s of [1, 2, 4, 8, 16]) mask |= mask >>> s;
    let j: number;
    do j = (mt.next() & mask) >>> 0; while (j > i);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a.slice(0, k);
}

/**
 * `torch.randperm(n)` on the CPU generator (n < 2³²/20): Fisher–Yates from the
 * bottom, swapping position i with i + (next() mod (n − i)).
 *
 * @example
 * ```ts
 * import { Mt19937, torchRandperm } from "./shiftwise.ts";
 * console.log(torchRandperm(new Mt19937(123), 10)); // [2, 0, 8, 1, 3, 7, 4, 9, 5, 6]
 * ```
 */
export function torchRandperm(gen: Mt19937, n: number): number[] {
  const r = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < n - 1; i++) {
    const z = i + (gen.next() % (n - i));
    [r[i], r[z]] = [r[z], r[i]];
  }
  return r;
}

/**
 * The official split of C channels: `repN = int(C·(1 − ghostRatio))//2·2`
 * SW channels and the rest ghost, the ghost ones drawn with
 * `np.random.seed(123); np.random.choice(C, C − repN, replace=False)`; both
 * lists sorted (as the official code sorts them).
 *
 * @example
 * ```ts
 * import { ghostSplit } from "./shiftwise.ts";
 * console.log(ghostSplit(8, 0.23)); // { rep: [2, 3, 4, 5, 6, 7], ghost: [0, 1] }
 * ```
 */
export function ghostSplit(
  channels: number,
  ghostRatio: number,
): { rep: number[]; ghost: number[] } {
  const repN = Math.floor(Math.trunc(channels * (1 - ghostRatio)) / 2) * 2;
  const ghost = numpyChoice(123, channels, channels - repN).sort((a, b) => a - b);
  const isGhost = new Set(ghost);
  const rep = Array.from({ length: channels }, (_, i) => i).filter((i) => !isGhost.has(i));
  return { rep, ghost };
}

/**
 * The official add-shift tables (`AddShift_mp_module.shuffle_idx_2_gen_pads`)
 * for an equivalent kernel M (`bigKernel`), small kernel N, `channels` SW
 * channels and `groups` shift groups (`N_rep`): nk = ⌈M/N⌉, conv padding
 * N−1, extra padding N−1−N//2, base shifts `M//2 − (N−1) − N·i`
 * (i < nk). After `torch.manual_seed(123)`, each group draws a
 * `randperm(nk)` per channel for the horizontal shifts, then likewise for the
 * vertical ones; input channel c·nk + i takes the base shift at its position
 * in the permutation (the inverse permutation, as `sort` gives it). Last, each
 * group draws `randint(0, nk, [C])`: the conv output each channel's identity
 * map takes.
 *
 * @example
 * ```ts
 * import { officialShiftPlan } from "./shiftwise.ts";
 * const p = officialShiftPlan(13, 3, 6, 2);
 * console.log(p.nk, p.extraPad, Array.from(p.identity).slice(0, 4)); // 5 1 [4, 1, 8, 5]
 * ```
 */
export function officialShiftPlan(
  bigKernel: number,
  smallKernel: number,
  channels: number,
  groups: number,
): ShiftPlanSpec {
  const nk = Math.ceil(bigKernel / smallKernel);
  const padding = smallKernel - 1;
  const base = Array.from(
    { length: nk },
    (_, i) => Math.floor(bigKernel / 2) - i * smallKernel - padding,
  );
  const gen = new Mt19937(123);
  const draw = () =>
    Array.from(
      { length: groups },
      () => Array.from({ length: channels }, () => torchRandperm(gen, nk)),
    );
  const permsH = draw();
  const permsV = draw();
  const picks = Array.from(
    { length: groups },
    () => Array.from({ length: channels }, (_, c) => c * nk + (gen.next() % nk)),
  );
  const shifts = (perms: number[][][]) => {
    const out = new Int32Array(channels * nk * groups);
    perms.forEach((group, g) =>
      group.forEach((perm, c) => perm.forEach((i, t) => (out[(c * nk + i) * groups + g] = base[t])))
    );
    return out;
  };
  const identity = new Int32Array(channels * groups);
  picks.forEach((group, g) => group.forEach((j, c) => (identity[c * groups + g] = j)));
  return {
    channels,
    nk,
    groups,
    extraPad: padding - Math.floor(smallKernel / 2),
    padH: shifts(permsH),
    padV: shifts(permsV),
    identity,
  };
}

const plans = new Map<string, ShiftPlan>();

/** One shared plan per configuration (every block of a stage has the same tables). */
function sharedPlan(bigKernel: number, smallKernel: number, channels: number, groups: number) {
  const key = `${bigKernel}/${smallKernel}/${channels}/${groups}`;
  let plan = plans.get(key);
  if (!plan) {
    plan = new ShiftPlan(officialShiftPlan(bigKernel, smallKernel, channels, groups));
    plans.set(key, plan);
  }
  return plan;
}

// ---------------------------------------------------------------- shape-aware helpers

function isMeta(x: Value): x is Meta {
  return x instanceof Meta;
}

/** `torch.index_select(x, 1, indices)`; not counted (indexing). */
function selectChannels<V extends Value>(x: V, indices: readonly number[]): V {
  if (isMeta(x)) return new Meta([x.shape[0], indices.length, ...x.shape.slice(2)]) as V;
  return selectChannelsOp(x as Tensor, indices) as V;
}

/** `torch.cat([a, b], 1)`; not counted. */
function concatChannels<V extends Value>(a: V, b: V): V {
  if (isMeta(a)) {
    return new Meta([a.shape[0], a.shape[1] + b.shape[1], ...a.shape.slice(2)]) as V;
  }
  return concat([a as Tensor, b as Tensor], 1) as V;
}

/** One add-shift map; not counted (fvcore sees an opaque Python op; it is indexing and adds). */
function shiftMap<V extends Value>(x: V, plan: ShiftPlan, map: ShiftMap): V {
  if (isMeta(x)) {
    const [b, , h, w] = x.shape;
    const e = 2 * plan.extraPad;
    return new Meta([b, plan.channels, h - e, w - e]) as V;
  }
  return addShift(x as Tensor, plan, map) as V;
}

/** Sigmoid; not counted. */
function sigmoid<V extends Value>(x: V): V {
  return (isMeta(x) ? x : sigmoidOp(x as Tensor)) as V;
}

// ---------------------------------------------------------------- layers

const TRUNC: Init = { kind: "truncNormal", std: 0.02 };
const ZERO: Init = { kind: "zeros" };

/** The official `_init_weights`: trunc_normal(.02) weights, zero biases. */
function conv(cin: number, cout: number, k: number, cfg: Conv2dConfig = {}): Conv2d {
  return new Conv2d(cin, cout, k, { weightInit: TRUNC, biasInit: ZERO, ...cfg });
}

/**
 * `F.adaptive_avg_pool2d(x, 1)`: [N, C, H, W] → [N, C, 1, 1], counted as
 * fvcore counts it (kind `pool`, one op per input element).
 */
function globalAvgPool<V extends Value>(x: V, module: Module): V {
  const [n, c] = x.shape;
  if (isMeta(x)) {
    recordFlops({ module, kind: "pool", macs: x.size });
    return new Meta([n, c, 1, 1]) as V;
  }
  return view(meanHWOp(x as Tensor), [n, c, 1, 1]) as V;
}

/**
 * Squeeze-and-excitation (UniRepLKNet's `SEBlock`, keys `down`, `up`):
 * pool → 1×1 conv (C/4) → ReLU → 1×1 conv (C) → sigmoid → scale the input.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { SEBlock } from "./shiftwise.ts";
 * const se = new SEBlock(16, 4);
 * console.log(se.numParams(), se.forward(new Meta([2, 16, 8, 8])).shape); // 148 [2, 16, 8, 8]
 * ```
 */
export class SEBlock extends Module {
  readonly down: Conv2d;
  readonly up: Conv2d;
  constructor(channels: number, internal: number) {
    super();
    this.down = this.child("down", conv(channels, internal, 1, { padding: 0 }));
    this.up = this.child("up", conv(internal, channels, 1, { padding: 0 }));
  }
  forward<V extends Value>(x: V): V {
    const s = sigmoid(this.up.forward(relu(this.down.forward(globalAvgPool(x, this)))));
    return mul(x, s);
  }
}

/**
 * ConvNeXt-V2's GRN on NHWC with bias (the official `GRNwithNHWC`; keys `gamma`, `beta`, [1,1,1,C]); not counted.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { GRN } from "./shiftwise.ts";
 * const grn = new GRN(16); // on channels-last [N, H, W, C]
 * console.log(grn.numParams(), grn.forward(new Meta([1, 7, 7, 16])).shape); // 32 [1, 7, 7, 16]
 * ```
 */
export class GRN extends Module {
  readonly gamma: Param;
  readonly beta: Param;
  constructor(channels: number) {
    super();
    this.gamma = this.param("gamma", [1, 1, 1, channels], ZERO);
    this.beta = this.param("beta", [1, 1, 1, channels], ZERO);
  }
  forward<V extends Value>(x: V): V {
    if (isMeta(x)) return x;
    return grn(x as Tensor, this.gamma.tensor, this.beta.tensor) as V;
  }
}

/** A parameter-free permute as a module (the official `NCHWtoNHWC` / `NHWCtoNCHW`). */
class Permute extends Module {
  constructor(readonly dims: number[]) {
    super();
  }
  forward<V extends Value>(x: V): V {
    return permute(x, this.dims);
  }
}

/** Options of {@linkcode ShiftWiseConv}. */
export interface ShiftWiseConvConfig {
  /** M: the equivalent large kernel (51, 49, 47, 13). */
  bigKernel: number;
  /** N: the small kernel (3). */
  smallKernel?: number;
  /** Fraction of channels passed through untouched (0.23). */
  ghostRatio?: number;
  /** Parallel one-to-many convs summed before the shift (`N_path`, 2). */
  nPath?: number;
  /** Shift groups, each with its own shuffled shifts (`N_rep`, the paper's edges, 4). */
  nRep?: number;
  /** Build with the `N_path` convs already merged into one (`LoRA`), as after re-parameterisation. */
  merged?: boolean;
}

/**
 * The SW mixer (`ShifthWiseConv2dImplicit`), keys `LoRAs.P.weight` (or
 * `LoRA.weight` merged), `bn_lora1.*`, `bn_lora2.*`, `bn_small.*`. Maps
 * [N, C, H, W] to [N, C, H, W] with the SW channels first and the ghost
 * channels after.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { ShiftWiseConv } from "./shiftwise.ts";
 * const sw = new ShiftWiseConv(16, { bigKernel: 13, smallKernel: 3 }); // 13×13 from shifted 3×3s
 * console.log(sw.forward(new Meta([1, 16, 14, 14])).shape); // [1, 16, 14, 14]
 * ```
 */
export class ShiftWiseConv extends Module {
  readonly rep: number[];
  readonly ghost: number[];
  readonly plan: ShiftPlan;
  readonly nk: number;
  loras: Conv2d[] = [];
  lora: Conv2d | null = null;
  readonly bnLora1: BatchNorm2d;
  readonly bnLora2: BatchNorm2d;
  readonly bnSmall: BatchNorm2d;

  constructor(readonly channels: number, cfg: ShiftWiseConvConfig) {
    super();
    const k = cfg.smallKernel ?? 3;
    const nPath = cfg.nPath ?? 2;
    ({ rep: this.rep, ghost: this.ghost } = ghostSplit(channels, cfg.ghostRatio ?? 0.23));
    const repN = this.rep.length;
    this.nk = Math.ceil(cfg.bigKernel / k);
    this.plan = sharedPlan(cfg.bigKernel, k, repN, cfg.nRep ?? 4);
    if (!cfg.merged) {
      this.loras = Array.from({ length: nPath }, () => this.#groupConv(repN, k));
      this.child("LoRAs", new ModuleList(this.loras));
    }
    this.bnLora1 = this.child("bn_lora1", new BatchNorm2d(repN));
    this.bnLora2 = this.child("bn_lora2", new BatchNorm2d(repN));
    this.bnSmall = this.child("bn_small", new BatchNorm2d(repN));
    // PyTorch registers the merged conv last (it is assigned after the BNs).
    if (cfg.merged) this.lora = this.child("LoRA", this.#groupConv(repN, k));
  }

  /** One input channel to nk outputs, N×N, padding N−1 (the output is larger by N−1 each way). */
  #groupConv(repN: number, k: number): Conv2d {
    return conv(repN, repN * this.nk, k, { padding: k - 1, groups: repN, bias: false });
  }

  forward<V extends Value>(x: V): V {
    const ghost = selectChannels(x, this.ghost);
    const rep = selectChannels(x, this.rep);
    // Each intermediate is dropped once read (the tape keeps what backward needs).
    const sum = (a: V, b: V) => {
      const y = add(a, b);
      for (const t of [a, b]) if (t !== x) drop(t, y);
      return y;
    };
    let out: V;
    if (this.lora) out = this.lora.forward(rep);
    else {
      out = this.loras[0].forward(rep);
      for (const c of this.loras.slice(1)) out = sum(out, c.forward(rep));
    }
    const shifted = (map: ShiftMap, bn: BatchNorm2d) =>
      pipe(out, (v) => shiftMap(v, this.plan, map), (v) => bn.forward(v));
    let y = sum(shifted("horizontal", this.bnLora1), shifted("vertical", this.bnLora2));
    y = sum(y, shifted("identity", this.bnSmall));
    if (out !== rep) drop(out, y);
    const result = concatChannels(sum(y, rep), ghost);
    if (ghost !== x) drop(ghost, result);
    return result;
  }

  /**
   * Structural re-parameterisation (the official `merge_branches`): the
   * `N_path` convs are linear and share input and shape, so their sum is one
   * conv, `LoRA`, whose weight is the sum of theirs. Outputs are unchanged.
   */
  mergeBranches(): void {
    if (this.lora) return;
    const [first, ...others] = this.loras;
    let merged = first;
    if (others.length > 0) {
      merged = new Conv2d(first.inChannels, first.outChannels, first.kernel, {
        padding: first.padding,
        groups: first.groups,
        bias: false,
        weightInit: ZERO,
      });
      merged.weight.set(
        noGrad(() => others.reduce((w, c) => addOp(w, c.weight.tensor), first.weight.tensor)),
      );
      for (const c of this.loras) c.dispose();
    }
    this.loras = [];
    this.lora = merged;
    this.replaceChildren({
      bn_lora1: this.bnLora1,
      bn_lora2: this.bnLora2,
      bn_small: this.bnSmall,
      LoRA: merged,
    });
  }
}

/**
 * A ShiftWise_v2 block: `large_kernel` → `norm` (BN) → `se` → `pwconv1`
 * (NHWC, Linear 4C) → `act` (GELU, GRN) → `pwconv2` (Linear C without bias,
 * NCHW, BN) → `gamma` (LayerScale) → drop path + residual.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { SWBlock } from "./shiftwise.ts";
 * const block = new SWBlock(16, { bigKernel: 13 }, 0, 1e-6);
 * console.log(block.forward(new Meta([1, 16, 14, 14])).shape); // [1, 16, 14, 14]
 * ```
 */
export class SWBlock extends Module {
  readonly gamma: Param | null;
  readonly largeKernel: ShiftWiseConv;
  readonly norm: BatchNorm2d;
  readonly se: SEBlock;
  readonly pwconv1: Sequential;
  readonly act: Sequential;
  readonly pwconv2: Sequential;
  readonly dropPath: DropPath;

  constructor(
    readonly dim: number,
    mixer: ShiftWiseConvConfig,
    dropPath: number,
    layerScaleInit: number,
  ) {
    super();
    this.gamma = layerScaleInit > 0
      ? this.param("gamma", [dim], { kind: "const", value: layerScaleInit })
      : null;
    this.largeKernel = this.child("large_kernel", new ShiftWiseConv(dim, mixer));
    this.norm = this.child("norm", new BatchNorm2d(dim));
    this.se = this.child("se", new SEBlock(dim, Math.floor(dim / 4)));
    this.pwconv1 = this.child(
      "pwconv1",
      new Sequential(
        new Permute([0, 2, 3, 1]),
        new Linear(dim, 4 * dim, { weightInit: TRUNC, biasInit: ZERO }),
      ),
    );
    this.act = this.child("act", new Sequential(new Activation("gelu"), new GRN(4 * dim)));
    this.pwconv2 = this.child(
      "pwconv2",
      new Sequential(
        new Linear(4 * dim, dim, { bias: false, weightInit: TRUNC }),
        new Permute([0, 3, 1, 2]),
        new BatchNorm2d(dim),
      ),
    );
    this.dropPath = this.child("drop_path", new DropPath(dropPath));
  }

  forward<V extends Value>(x: V): V {
    const gamma = this.gamma;
    const steps = [
      (v: V) => this.largeKernel.forward(v),
      (v: V) => this.norm.forward(v),
      (v: V) => this.se.forward(v),
      (v: V) => this.pwconv1.forward(v),
      (v: V) => this.act.forward(v),
      (v: V) => this.pwconv2.forward(v),
    ];
    if (gamma) {
      steps.push((v) =>
        mul(v, isMeta(x) ? new Meta([1, this.dim, 1, 1]) : view(gamma.tensor, [1, this.dim, 1, 1]))
      );
    }
    steps.push((v) => this.dropPath.forward(v));
    const y = pipe(x, ...steps);
    const out = add(x, y);
    drop(y, out);
    return out;
  }
}

// ---------------------------------------------------------------- model

/** Configuration of a ShiftWise_v2 model. */
export interface ShiftWiseConfig {
  depths: number[];
  /** Channels per stage (C, 2C, 4C, 8C). */
  dims: number[];
  /** Equivalent large kernel M per stage (paper: [51, 49, 47, 13]). */
  kernels?: number[];
  /** N (paper: 3). */
  smallKernel?: number;
  ghostRatio?: number;
  nPath?: number;
  nRep?: number;
  /** Build the deployed form (`N_path` convs merged into `LoRA`). */
  merged?: boolean;
  numClasses?: number;
  inChans?: number;
  /** Stochastic depth, spread linearly over all blocks (official SW-tiny run: 0.2). */
  dropPath?: number;
  layerScaleInit?: number;
  headInitScale?: number;
}

/** The paper's SW-tiny and SW-small (Sec. 3.9, Table 8), and a tiny CPU preset. */
export const SHIFTWISE_PRESETS = {
  sw_tiny: { depths: [3, 3, 18, 3], dims: [80, 160, 320, 640], kernels: [51, 49, 47, 13] },
  sw_small: { depths: [3, 3, 27, 3], dims: [96, 192, 384, 768], kernels: [51, 49, 47, 13] },
  sw_cpu: { depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], kernels: [13, 11, 9, 7] },
} satisfies Record<string, ShiftWiseConfig>;

/**
 * ShiftWise_v2: stem, four stages of {@linkcode SWBlock}s, LayerNorm and a linear head.
 *
 * @example
 * ```ts
 * import { Meta } from "./layers.ts";
 * import { ShiftWise, SHIFTWISE_PRESETS } from "./shiftwise.ts";
 * const model = new ShiftWise({ ...SHIFTWISE_PRESETS.sw_cpu, numClasses: 10 });
 * console.log(model.forward(new Meta([1, 3, 64, 64])).shape); // [1, 10]
 * ```
 */
export class ShiftWise extends Module implements Classifier {
  readonly downsampleLayers: ModuleList<Sequential>;
  readonly stages: ModuleList<Sequential>;
  readonly norm: LayerNorm;
  readonly head: Linear;
  readonly config: Required<ShiftWiseConfig>;

  constructor(config: ShiftWiseConfig) {
    super();
    const c: Required<ShiftWiseConfig> = {
      kernels: [51, 49, 47, 13],
      smallKernel: 3,
      ghostRatio: 0.23,
      nPath: 2,
      nRep: 4,
      merged: false,
      numClasses: 1000,
      inChans: 3,
      dropPath: 0,
      layerScaleInit: 1e-6,
      headInitScale: 1,
      ...config,
    };
    this.config = c;
    const { depths, dims } = c;
    if (depths.length !== 4 || dims.length !== 4 || c.kernels.length !== 4) {
      throw new Error("ShiftWise: depths, dims and kernels need one entry per stage (4)");
    }
    const down = (cin: number, cout: number) => conv(cin, cout, 3, { stride: 2, padding: 1 });
    this.downsampleLayers = this.child(
      "downsample_layers",
      new ModuleList(dims.map((d, i) =>
        i === 0
          ? new Sequential(
            down(c.inChans, Math.floor(d / 2)),
            new LayerNorm(Math.floor(d / 2), 1e-6, true),
            new Activation("gelu"),
            down(Math.floor(d / 2), d),
            new LayerNorm(d, 1e-6, true),
          )
          : new Sequential(down(dims[i - 1], d), new LayerNorm(d, 1e-6, true))
      )),
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
            new SWBlock(
              dims[s],
              {
                bigKernel: c.kernels[s],
                smallKernel: c.smallKernel,
                ghostRatio: c.ghostRatio,
                nPath: c.nPath,
                nRep: c.nRep,
                merged: c.merged,
              },
              rates[k++],
              c.layerScaleInit,
            )),
        )
      )),
    );
    this.norm = this.child("norm", new LayerNorm(dims[3], 1e-6));
    this.head = this.child(
      "head",
      new Linear(dims[3], c.numClasses, {
        weightInit: { kind: "truncNormal", std: 0.02 * c.headInitScale },
        biasInit: ZERO,
      }),
    );
  }

  /** The last stage's feature map [N, 8C, H/32, W/32] (for ERF analysis). */
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

  /** Every block's SW mixer. */
  mixers(): ShiftWiseConv[] {
    return [...this.namedModules()].map(([, m]) => m).filter((m): m is ShiftWiseConv =>
      m instanceof ShiftWiseConv
    );
  }

  /** Re-parameterise every mixer's `N_path` convs into one `LoRA` (inference; exact). */
  mergeBranches(): void {
    for (const m of this.mixers()) m.mergeBranches();
  }

  /** Free the parameters and the shift tables. */
  override dispose(): void {
    super.dispose();
    for (const m of this.mixers()) m.plan.dispose();
  }
}

/** Build a ShiftWise_v2 model (see {@linkcode SHIFTWISE_PRESETS}). */
export function shiftwise(config: ShiftWiseConfig): ShiftWise {
  return new ShiftWise(config);
}
