/**
 * Binary masks over a model's sparse weights (SLaK's `Masking`): one mask
 * per masked parameter, each holding an exact number of active weights (or,
 * at filter granularity, active output filters). {@linkcode Masking.apply}
 * multiplies the weights — and the optimiser's moments, so pruned weights
 * restart from zero state — by their masks on the GPU after every optimiser
 * step; nothing is read back. The CPU keeps a copy of each mask for
 * prune-and-grow (`prune_grow.ts`) and checkpoints.
 *
 * Which parameters are masked follows the official `sparse_core.py`: every
 * conv and linear weight (2-D or 4-D, stem and head included), or with
 * `only_L` only the large-kernel branches; layers whose density comes out
 * ≥ 0.99 stay dense (the official code drops their masks).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { uniformDensities } from "./density.ts";
 * import { Masking } from "./masks.ts";
 * await initGpu();
 * const model = slak(SLAK_PRESETS.slak_cpu);
 * const masking = new Masking(model, uniformDensities(model, 0.6), { seed: 0 });
 * masking.apply(); // masked weights are now exactly zero
 * console.log(masking.overallDensity()); // 0.6 (to one weight per layer)
 * ```
 * @module
 */
import { backward } from "../ops/autograd.ts";
import { gpu } from "../ops/gpu.ts";
import { multiplyByMaskInPlace } from "../ops/masked.ts";
import type { Optimizer } from "../ops/optim.ts";
import { copyInto, keep, mixSeeds, Rng, Tensor } from "../ops/tensor.ts";
import type { Module, Param } from "../models/module.ts";
import { Conv2d } from "../models/layers.ts";
import { SparseDepthwisePlan } from "../ops/sparse_depthwise.ts";

/** Mask granularity: single weights, or whole output filters (ShiftwiseConv's `magnitude_sum`). */
export type Granularity = "weight" | "filter";

/** One masked parameter. */
export interface MaskLayer {
  key: string;
  param: Param;
  granularity: Granularity;
  /** Mask units (weights, or output filters). */
  units: number;
  /** Weights per unit (1, or the size of one output filter). */
  unitSize: number;
  /** Active (1) or pruned (0) per unit: the CPU copy, source of truth. */
  mask: Uint8Array;
  /** The mask expanded to the parameter's shape, as f32 0/1 on the GPU. */
  readonly gpu: Tensor;
}

/** Options of {@linkcode Masking}. */
export interface MaskingOptions {
  /** Seed of the random initial masks. */
  seed?: number;
  /** Granularity per key (default: `weight` for every key). */
  granularity?: (key: string) => Granularity;
  /** Initial masks by key (unit masks, e.g. from a checkpoint) instead of random ones. */
  masks?: ReadonlyMap<string, Uint8Array>;
  /**
   * Run the masked stride-1 depthwise convs on the sparse kernels, which visit
   * only the active taps (default true). Their filter gradient is zero at the
   * inactive taps, so gradient growth, which ranks inactive weights by their
   * gradient, needs this off (as the official code, it then sees the dense
   * gradient).
   */
  sparseKernels?: boolean;
}

/**
 * `count` distinct indices drawn uniformly from `candidates` (a partial
 * Fisher–Yates shuffle; `candidates` is reordered).
 *
 * @example
 * ```ts
 * import { Rng } from "../ops/tensor.ts";
 * import { sampleIndices } from "./masks.ts";
 * console.log(sampleIndices([0, 1, 2, 3, 4], 2, new Rng(1)).length); // 2
 * ```
 */
export function sampleIndices(candidates: number[], count: number, rng: Rng): number[] {
  if (count > candidates.length) {
    throw new Error(`cannot draw ${count} of ${candidates.length} positions`);
  }
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(candidates.length - i);
    const t = candidates[i];
    candidates[i] = candidates[j];
    candidates[j] = t;
  }
  return candidates.slice(0, count);
}

/**
 * A random mask of `units` with exactly `round(density·units)` ones (the
 * official draws Bernoulli masks, exact only in expectation).
 *
 * @example
 * ```ts
 * import { randomMask } from "./masks.ts";
 * console.log(randomMask(10, 0.3, 7).reduce((a, b) => a + b, 0)); // 3
 * ```
 */
export function randomMask(units: number, density: number, seed: number): Uint8Array {
  const mask = new Uint8Array(units);
  const count = Math.round(density * units);
  const all = Array.from({ length: units }, (_, i) => i);
  for (const i of sampleIndices(all, count, new Rng(seed))) mask[i] = 1;
  return mask;
}

/** Binary masks over a model's sparse parameters; see the module doc. */
export class Masking {
  readonly model: Module;
  readonly layers: Map<string, MaskLayer> = new Map();
  readonly #sparseKernels: boolean;

  /**
   * Masks for the parameters named in `densities` (key → density in
   * (0, 1]); each gets exactly `round(density·units)` active units, drawn
   * at random (the official rule: SNIP/ERK/uniform decide densities, not
   * positions) unless `opts.masks` gives them.
   */
  constructor(model: Module, densities: ReadonlyMap<string, number>, opts: MaskingOptions = {}) {
    this.model = model;
    this.#sparseKernels = opts.sparseKernels ?? true;
    const params = new Map(model.namedParameters());
    let index = 0;
    for (const [key, density] of densities) {
      const param = params.get(key);
      if (!param) throw new Error(`sparse: the model has no parameter ${key}`);
      if (!(density >= 0 && density <= 1)) {
        throw new Error(`sparse: density of ${key} is ${density}, not in [0, 1]`);
      }
      const granularity = opts.granularity?.(key) ?? "weight";
      const units = granularity === "filter" ? param.shape[0] : param.size;
      const unitSize = param.size / units;
      const given = opts.masks?.get(key);
      if (given && given.length !== units) {
        throw new Error(`sparse: mask of ${key} has ${given.length} units, expected ${units}`);
      }
      const mask = given
        ? Uint8Array.from(given, (v) => (v ? 1 : 0))
        : randomMask(units, density, mixSeeds(opts.seed ?? 0, index));
      index++;
      const onGpu = keep(Tensor.empty(param.shape));
      this.layers.set(key, { key, param, granularity, units, unitSize, mask, gpu: onGpu });
      this.upload(key);
    }
  }

  /** Copy a layer's CPU mask (or `mask`, a per-unit 0/1 array) to its GPU tensor. */
  upload(key: string, mask?: Uint8Array): void {
    const l = this.layer(key);
    const m = mask ?? l.mask;
    const full = new Float32Array(l.param.size);
    for (let u = 0; u < l.units; u++) {
      if (m[u]) full.fill(1, u * l.unitSize, (u + 1) * l.unitSize);
    }
    gpu().upload(l.gpu.buffer, full);
    // A depthwise conv runs only its active taps once sparse enough: keep its plan in step.
    const conv = this.#sparseKernels ? this.#depthwiseOf(key) : null;
    if (conv) {
      if (conv.sparsePlan) conv.sparsePlan.update(full);
      else conv.sparsePlan = SparseDepthwisePlan.fromMask(full, l.param.shape);
    }
  }

  /** The stride-1 depthwise `Conv2d` whose weight is `key`, if it is one. */
  #depthwiseOf(key: string): Conv2d | null {
    if (!key.endsWith(".weight")) return null;
    const path = key.slice(0, -".weight".length);
    for (const [name, m] of this.model.namedModules()) {
      if (name !== path) continue;
      return m instanceof Conv2d && m.isDepthwise && m.stride === 1 ? m : null;
    }
    return null;
  }

  /** The layer of `key` (throws if it is not masked). */
  layer(key: string): MaskLayer {
    const l = this.layers.get(key);
    if (!l) throw new Error(`sparse: ${key} is not masked`);
    return l;
  }

  /**
   * Zero the pruned weights on the GPU, and their optimiser moments (AdamW
   * `exp_avg`/`exp_avg_sq`, SGD momentum) when `optimizer` is given. Call
   * after every optimiser step.
   */
  apply(optimizer?: Optimizer): void {
    for (const l of this.layers.values()) {
      const p = l.param.tensor;
      multiplyByMaskInPlace(l.gpu, [p, ...(optimizer?.moments?.(p) ?? [])]);
    }
  }

  /** Zero the pruned weights of another instance of the same model (the EMA copy). */
  applyTo(other: Module): void {
    const params = new Map(other.namedParameters());
    for (const l of this.layers.values()) {
      const p = params.get(l.key);
      if (p) multiplyByMaskInPlace(l.gpu, [p.tensor]);
    }
  }

  /** Active units of a layer. */
  nonzeros(key: string): number {
    let n = 0;
    for (const v of this.layer(key).mask) n += v;
    return n;
  }

  /** Density (active fraction of units) of every masked layer. */
  densities(): Map<string, number> {
    return new Map([...this.layers.keys()].map((k) => [k, this.nonzeros(k) / this.layer(k).units]));
  }

  /** Active fraction of all masked weights. */
  overallDensity(): number {
    let nz = 0;
    let n = 0;
    for (const l of this.layers.values()) {
      nz += this.nonzeros(l.key) * l.unitSize;
      n += l.param.size;
    }
    return n === 0 ? 1 : nz / n;
  }

  /** The per-unit masks (copies), e.g. for a checkpoint. */
  masks(): Map<string, Uint8Array> {
    return new Map([...this.layers].map(([k, l]) => [k, l.mask.slice()]));
  }

  /** Free the GPU masks. */
  dispose(): void {
    for (const l of this.layers.values()) {
      l.gpu.dispose();
      const conv = this.#depthwiseOf(l.key);
      conv?.sparsePlan?.dispose();
      if (conv) conv.sparsePlan = null;
    }
    this.layers.clear();
  }
}

/**
 * SNIP connection sensitivity of the parameters in `keys`: the gradient of
 * the loss that `lossFn` builds (called once per batch; gradients add up
 * over calls) is taken on the model as it is, then |w ⊙ g| per weight —
 * or, for a key where `unitsOf` says `filter`, the mean of |w ⊙ g| over each
 * output filter (the official `snip_core_sum`). Buffers (BatchNorm running
 * statistics) are restored and gradients cleared afterwards, so training
 * is unaffected (the official code scores a deep copy of the network).
 * Reads the scores back: call it once, before training. Under data
 * parallelism, `reduceGradients` averages the gradients over the ranks
 * before scoring.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { softmaxCrossEntropy } from "../ops/loss.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { snipDensities } from "./density.ts";
 * import { sparseLayout } from "./prune_grow.ts";
 * import { snipScores } from "./masks.ts";
 * await initGpu();
 * const model = slak({ ...SLAK_PRESETS.slak_cpu, numClasses: 4 });
 * const x = Tensor.randn([2, 3, 32, 32], { seed: 0 });
 * const { keys } = sparseLayout(model, "origin", false);
 * const scores = await snipScores(model, keys, [() => softmaxCrossEntropy(model.forward(x), [1, 3])]);
 * const densities = snipDensities(scores, 0.6); // per key, 60% of all masked weights kept
 * console.log(densities.size === keys.length); // true
 * ```
 */
export async function snipScores(
  model: Module,
  keys: readonly string[],
  lossFns: Iterable<() => Tensor>,
  unitsOf: (key: string) => Granularity = () => "weight",
  reduceGradients?: (params: Tensor[]) => Promise<void>,
): Promise<Map<string, Float32Array>> {
  const entries = [...model.namedEntries()];
  const buffers = entries.filter(([, p]) => p.isBuffer);
  const saved = buffers.map(([, p]) => {
    const copy = keep(Tensor.empty(p.shape));
    copyInto(p.tensor, copy);
    return copy;
  });
  const params = new Map(model.namedParameters());
  const zeroGrads = () => {
    for (const [, p] of params) {
      p.tensor.grad?.dispose();
      p.tensor.grad = null;
    }
  };
  zeroGrads();
  try {
    for (const fn of lossFns) backward(fn());
    await reduceGradients?.([...params.values()].map((p) => p.tensor));
    const out = new Map<string, Float32Array>();
    for (const key of keys) {
      const t = params.get(key)?.tensor;
      if (!t) throw new Error(`SNIP: the model has no parameter ${key}`);
      const w = await t.read();
      const g = t.grad ? await t.grad.read() : new Float32Array(t.size);
      const s = new Float32Array(t.size);
      for (let i = 0; i < s.length; i++) s[i] = Math.abs(w[i] * g[i]);
      if (unitsOf(key) === "filter") {
        const units = t.shape[0];
        const per = t.size / units;
        const f = new Float32Array(units);
        for (let u = 0; u < units; u++) {
          let acc = 0;
          for (let j = 0; j < per; j++) acc += s[u * per + j];
          f[u] = acc / per;
        }
        out.set(key, f);
      } else out.set(key, s);
    }
    return out;
  } finally {
    zeroGrads();
    buffers.forEach(([, p], i) => p.set(saved[i]));
  }
}
