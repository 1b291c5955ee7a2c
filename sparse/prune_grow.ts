/**
 * Dynamic sparsity: SLaK's prune-and-grow (`Masking.truncate_weights`) and
 * ShiftwiseConv's filter-level variant, plus the set-up that turns the
 * official flags (`--sparsity`, `--sparse-init`, `--sparse-type`,
 * `--only-L`) into masks.
 *
 * Every `-u` optimiser steps, each masked layer loses `ceil(p·active)` of
 * its active units with the smallest magnitude (|w|, or Σ|w| over an output
 * filter for `magnitude_sum`) and regrows exactly as many among its
 * inactive units — at random, or by largest |gradient| — so its density is
 * held exactly (the official random growth holds it only in expectation).
 * Regrown weights start at zero, with zero optimiser moments. `p` follows
 * the official cosine (`CosineDecay`, PyTorch's `CosineAnnealingLR` with
 * `eta_min` 0.005) over all training steps. The official code never stops
 * the updates (only `--fix` turns them off; the rate has decayed to 0.005 by
 * the last step), and neither does this one by default; `stopFraction` can
 * end them earlier.
 *
 * ShiftwiseConv (`--sparse-type rep_coarse`, official `add_module_sum_rep`):
 * the large-kernel branch convs (`large_kernel.LoRAs.i.weight`) get one
 * mask unit per output filter; the branches of a block share their mask at
 * initialisation and are re-synchronised every `--mask-sync` updates (the
 * official `--sparse_gap`), where the filter scores are summed over all
 * branches; in between each branch evolves alone.
 *
 * Only the update steps read the GPU back (weights, and gradients for
 * gradient growth); the other steps just apply the masks on the GPU.
 *
 * @example
 * ```ts
 * import { pruneRateAt } from "./prune_grow.ts";
 * console.log(pruneRateAt(0, 0.3, 1000), pruneRateAt(1000, 0.3, 1000)); // 0.3 0.005
 * ```
 * @module
 */
import type { Optimizer } from "../ops/optim.ts";
import { mixSeeds, Rng, type Tensor } from "../ops/tensor.ts";
import type { Module } from "../models/module.ts";
import {
  dropDenseLayers,
  erkDensities,
  maskedParams,
  snipDensities,
  type SparseInit,
  uniformLayerDensities,
} from "./density.ts";
import { type Granularity, Masking, sampleIndices, snipScores } from "./masks.ts";

/** Growth modes of the official `--growth`. */
export type Growth = "random" | "gradient";

/** The growth modes, for flag checking. */
export const GROWTH_MODES: readonly Growth[] = ["random", "gradient"];

/**
 * Mask layouts of ShiftwiseConv's `--sparse_type`: `origin` (SLaK: weight
 * masks), `coarse` (filter masks on large-kernel branches, weight masks on
 * the other conv/linear weights but downsampling), `rep_coarse` (filter masks
 * shared between a block's large-kernel branches; weight masks on the
 * pointwise layers).
 */
export type SparseType = "origin" | "coarse" | "rep_coarse";

/** The sparse types, for flag checking. */
export const SPARSE_TYPES: readonly SparseType[] = ["origin", "coarse", "rep_coarse"];

/**
 * The official prune rate after `step` optimiser steps: a cosine from
 * `rate` to `min` over `totalSteps` (PyTorch `CosineAnnealingLR`).
 *
 * @example
 * ```ts
 * import { pruneRateAt } from "./prune_grow.ts";
 * console.log(pruneRateAt(500, 0.3, 1000).toFixed(4)); // 0.1525
 * ```
 */
export function pruneRateAt(step: number, rate: number, totalSteps: number, min = 0.005): number {
  if (totalSteps <= 0) return rate;
  const t = Math.min(step, totalSteps);
  return min + (rate - min) * (1 + Math.cos((Math.PI * t) / totalSteps)) / 2;
}

/** Which parameters are masked and how, for a sparse type. */
export interface SparseLayout {
  /** Masked parameter keys, in model order. */
  keys: string[];
  granularity: (key: string) => Granularity;
  /** Groups of keys sharing a mask (first = leader); empty unless `rep_coarse`. */
  groups: string[][];
  /** SNIP threshold groups: each gets its own global top-k (the official `default_SNIP`). */
  scoreGroups: string[][];
}

const isLargeKernelBranch = (key: string) => key.includes("large_kernel.LoRA");

/**
 * The masked parameters of `model` for an official `--sparse_type` and
 * `--only_L`.
 *
 * @example
 * ```ts
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { sparseLayout } from "./prune_grow.ts";
 * const m = slak(SLAK_PRESETS.slak_cpu);
 * console.log(sparseLayout(m, "origin", true).keys.every((k) => k.includes("LoRA"))); // true
 * ```
 */
export function sparseLayout(model: Module, type: SparseType, onlyL: boolean): SparseLayout {
  const weights = maskedParams(model, "all").map(([k]) => k);
  if (type === "origin") {
    const keys = onlyL ? weights.filter(isLargeKernelBranch) : weights;
    return { keys, granularity: () => "weight", groups: [], scoreGroups: [keys] };
  }
  const lk = weights.filter(isLargeKernelBranch);
  const others = onlyL ? [] : weights.filter((k) =>
    !isLargeKernelBranch(k) &&
    (type === "coarse" ? !k.includes("downsample_layers") : k.includes("pwconv"))
  );
  const groups: string[][] = [];
  if (type === "rep_coarse") {
    const byPrefix = new Map<string, string[]>();
    for (const k of lk) {
      const m = /^(.*large_kernel\.LoRAs?\.)(\d+\.)?weight$/.exec(k);
      const prefix = m ? m[1] : k;
      byPrefix.set(prefix, [...(byPrefix.get(prefix) ?? []), k]);
    }
    for (const g of byPrefix.values()) if (g.length > 1) groups.push(g);
  }
  const lkSet = new Set(lk);
  const keys = weights.filter((k) => lkSet.has(k) || others.includes(k));
  return {
    keys,
    granularity: (k) => (lkSet.has(k) ? "filter" : "weight"),
    groups,
    scoreGroups: [lk, others].filter((g) => g.length > 0),
  };
}

/** Options of {@linkcode DynamicSparsity.create}. */
export interface SparseOptions {
  /** Fraction of zeros among the masked weights (official `--sparsity`). */
  sparsity: number;
  init: SparseInit;
  type?: SparseType;
  onlyL?: boolean;
  /** Initial prune rate (official `--prune_rate`). */
  pruneRate: number;
  growth?: Growth;
  /** Optimiser steps between prune-and-grow updates (official `-u`). */
  updateFrequency: number;
  /** Updates between mask synchronisations of rep branches (official `--sparse_gap`). */
  maskSync?: number;
  /** Optimiser steps of the whole run (the cosine's length). */
  totalSteps: number;
  /** No prune-and-grow: the initial masks stay (official `--fix`). */
  fix?: boolean;
  /** Stop the updates after this fraction of `totalSteps` (default 1: the official never stops). */
  stopFraction?: number;
  seed?: number;
  /** ERK power scale (official `erk_power_scale`, 1). */
  erkPower?: number;
  /**
   * Under data parallelism, replaces the given parameters' gradients by their
   * mean over the ranks (the caller knows how); SNIP scores then use the
   * gradient of the whole global batch, so every rank builds the same masks.
   * Gradient growth needs no help: it reads the gradients after the
   * optimiser step, which the trainer has already averaged.
   */
  reduceGradients?: (params: Tensor[]) => Promise<void>;
}

/** Per-layer outcome of one update. */
export interface LayerUpdate {
  key: string;
  before: number;
  removed: number;
  grown: number;
  nonzeros: number;
  units: number;
  density: number;
}

/** What one prune-and-grow update did. */
export interface UpdateReport {
  step: number;
  update: number;
  pruneRate: number;
  synced: boolean;
  layers: LayerUpdate[];
}

/**
 * Masks plus the prune-and-grow schedule: what the trainer drives.
 * {@linkcode afterStep} after every optimiser step; when
 * {@linkcode isUpdateStep}, `await` {@linkcode update} before the gradients
 * are cleared.
 *
 * @example
 * ```ts
 * import { backward } from "../ops/autograd.ts";
 * import { initGpu } from "../ops/gpu.ts";
 * import { softmaxCrossEntropy } from "../ops/loss.ts";
 * import { AdamW } from "../ops/optim.ts";
 * import { scope, Tensor } from "../ops/tensor.ts";
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { DynamicSparsity } from "./prune_grow.ts";
 * await initGpu();
 * const model = slak({ ...SLAK_PRESETS.slak_cpu, numClasses: 4 });
 * const x = Tensor.randn([2, 3, 32, 32], { seed: 0 });
 * const optimizer = new AdamW(model.parameters(), { lr: 1e-3 });
 * const sparse = await DynamicSparsity.create(model, {
 *   sparsity: 0.4, init: "uniform", pruneRate: 0.3, updateFrequency: 2, totalSteps: 4,
 * });
 * for (let step = 1; step <= 4; step++) {
 *   scope(() => backward(softmaxCrossEntropy(model.forward(x), [1, 3])));
 *   optimizer.step();
 *   sparse.afterStep(optimizer);
 *   if (sparse.isUpdateStep(step)) console.log((await sparse.update(step, optimizer)).pruneRate);
 *   optimizer.zeroGrad();
 * }
 * ```
 */
export class DynamicSparsity {
  readonly masking: Masking;
  readonly opts:
    & Required<Omit<SparseOptions, "maskSync" | "reduceGradients">>
    & Pick<SparseOptions, "reduceGradients">
    & { maskSync: number };
  readonly layout: SparseLayout;

  constructor(masking: Masking, layout: SparseLayout, opts: SparseOptions) {
    this.masking = masking;
    this.layout = layout;
    this.opts = {
      type: "origin",
      onlyL: false,
      growth: "random",
      maskSync: 1,
      fix: false,
      stopFraction: 1,
      seed: 0,
      erkPower: 1,
      ...opts,
    };
    checkOptions(this.opts);
  }

  /**
   * Build the masks of a fresh run: layer densities by `opts.init` (SNIP
   * calls each of `snipLosses` once on the model; the official uses one
   * batch), layers at density ≥ 0.99 left dense, random masks with exactly
   * those densities, rep branches sharing their leader's mask; or, with
   * `masks`, the masks of a checkpoint. The masks are applied at once.
   */
  static async create(
    model: Module,
    opts: SparseOptions,
    snipLosses: Iterable<() => Tensor> = [],
    masks?: ReadonlyMap<string, Uint8Array>,
  ): Promise<DynamicSparsity> {
    checkOptions(opts);
    const layout = sparseLayout(model, opts.type ?? "origin", opts.onlyL ?? false);
    if (layout.keys.length === 0) throw new Error("sparse: the model has no parameter to mask");
    const params = new Map(model.namedParameters());
    const density = 1 - opts.sparsity;
    let densities: Map<string, number>;
    if (masks) {
      densities = new Map([...masks.keys()].map((k) => [k, 1]));
    } else {
      const members = new Set(layout.groups.flatMap((g) => g.slice(1)));
      const leaders = layout.keys.filter((k) => !members.has(k));
      const unitShape = (k: string) =>
        layout.granularity(k) === "filter" ? [params.get(k)!.shape[0]] : params.get(k)!.shape;
      if (opts.init === "uniform") {
        densities = uniformLayerDensities(new Map(leaders.map((k) => [k, unitShape(k)])), density);
      } else if (opts.init === "ERK") {
        densities = erkDensities(
          new Map(leaders.map((k) => [k, params.get(k)!.shape])),
          density,
          opts.erkPower ?? 1,
        );
      } else {
        const losses = [...snipLosses];
        if (losses.length === 0) throw new Error("sparse: SNIP needs at least one batch");
        const scores = await snipScores(
          model,
          layout.keys,
          losses,
          layout.granularity,
          opts.reduceGradients,
        );
        densities = new Map();
        for (const group of layout.scoreGroups) {
          const s = new Map<string, Float32Array>();
          for (const k of group) {
            if (members.has(k)) continue;
            const g = layout.groups.find((gr) => gr[0] === k);
            s.set(k, g ? concat(g.map((m) => scores.get(m)!)) : scores.get(k)!);
          }
          for (const [k, d] of snipDensities(s, density)) densities.set(k, d);
        }
      }
      densities = dropDenseLayers(densities);
      for (const g of layout.groups) {
        const d = densities.get(g[0]);
        if (d !== undefined) { for (const m of g.slice(1)) densities.set(m, d); }
      }
      // Model order.
      densities = new Map(
        layout.keys.filter((k) => densities.has(k)).map((k) => [k, densities.get(k)!]),
      );
    }
    const masking = new Masking(model, densities, {
      seed: opts.seed,
      granularity: layout.granularity,
      masks,
      sparseKernels: opts.growth !== "gradient",
    });
    if (!masks) {
      // Rep branches start from their leader's mask (the official deep-copies it).
      for (const g of layout.groups) {
        if (!masking.layers.has(g[0])) continue;
        for (const m of g.slice(1)) {
          masking.layer(m).mask.set(masking.layer(g[0]).mask);
          masking.upload(m);
        }
      }
    }
    masking.apply();
    const active = new Set(masking.layers.keys());
    const kept = {
      ...layout,
      groups: layout.groups.map((g) => g.filter((k) => active.has(k))).filter((g) => g.length > 1),
    };
    return new DynamicSparsity(masking, kept, opts);
  }

  /** Zero pruned weights and their optimiser moments (every step, GPU only). */
  afterStep(optimizer?: Optimizer): void {
    this.masking.apply(optimizer);
  }

  /** Whether prune-and-grow runs after optimiser step number `step` (1-based). */
  isUpdateStep(step: number): boolean {
    const o = this.opts;
    return !o.fix && step > 0 && step % o.updateFrequency === 0 &&
      step <= o.stopFraction * o.totalSteps;
  }

  /** The prune rate at optimiser step `step`. */
  pruneRate(step: number): number {
    return pruneRateAt(step, this.opts.pruneRate, this.opts.totalSteps);
  }

  /**
   * Prune and regrow every masked layer (see the module doc), then apply
   * the new masks to the weights and `optimizer`'s moments. Reads weights
   * (and gradients, for gradient growth) back.
   */
  async update(step: number, optimizer?: Optimizer): Promise<UpdateReport> {
    const o = this.opts;
    const rate = this.pruneRate(step);
    const update = Math.floor(step / o.updateFrequency);
    const synced = this.layout.groups.length > 0 && update % o.maskSync === 0;
    const groupOf = new Map<string, string[]>();
    if (synced) { for (const g of this.layout.groups) for (const k of g) groupOf.set(k, g); }
    const report: LayerUpdate[] = [];
    const newMasks = new Map<string, Uint8Array>();
    let index = 0;
    for (const [key, layer] of this.masking.layers) {
      const layerIndex = index++;
      const group = groupOf.get(key);
      if (group && group[0] !== key) continue; // follows its leader below
      const members = group ?? [key];
      const mags = new Float64Array(layer.units);
      for (const k of members) {
        addUnitSums(mags, await this.masking.layer(k).param.tensor.read(), layer.unitSize);
      }
      let grads: Float64Array | null = null;
      if (o.growth === "gradient") {
        grads = new Float64Array(layer.units);
        for (const k of members) {
          const g = this.masking.layer(k).param.tensor.grad;
          if (g) addUnitSums(grads, await g.read(), layer.unitSize);
        }
      }
      const before = count(layer.mask);
      const next = pruneAndGrow(
        layer.mask,
        mags,
        grads,
        rate,
        new Rng(mixSeeds(o.seed, step, layerIndex, 0x6e6f7721)),
      );
      for (const k of members) newMasks.set(k, next.mask);
      report.push({
        key,
        before,
        removed: next.removed,
        grown: next.grown,
        nonzeros: count(next.mask),
        units: layer.units,
        density: count(next.mask) / layer.units,
      });
      for (const k of members.slice(1)) {
        report.push({ ...report.at(-1)!, key: k, before: count(this.masking.layer(k).mask) });
      }
    }
    for (const [key, mask] of newMasks) {
      const layer = this.masking.layer(key);
      // Zero what is not kept (pruned weights, and any regrown one: new weights start at zero)…
      this.masking.upload(key, layer.mask.map((v, i) => v & mask[i]));
      layer.mask.set(mask);
    }
    this.masking.apply(optimizer);
    // …then the new masks, with the regrown units active (their weights are zero).
    for (const key of newMasks.keys()) this.masking.upload(key);
    return { step, update, pruneRate: rate, synced, layers: report };
  }

  /** Densities of the masked layers now. */
  densities(): Map<string, number> {
    return this.masking.densities();
  }

  /** Free the masks. */
  dispose(): void {
    this.masking.dispose();
  }
}

function checkOptions(o: SparseOptions): void {
  if (!(o.sparsity >= 0 && o.sparsity < 1)) {
    throw new Error(`--sparsity: expected a value in [0, 1), got ${o.sparsity}`);
  }
  if (!(o.pruneRate >= 0 && o.pruneRate <= 1)) {
    throw new Error(`--prune-rate: expected a value in [0, 1], got ${o.pruneRate}`);
  }
  if (!(Number.isInteger(o.updateFrequency) && o.updateFrequency > 0)) {
    throw new Error(`-u: expected a positive integer, got ${o.updateFrequency}`);
  }
  if (o.maskSync !== undefined && !(Number.isInteger(o.maskSync) && o.maskSync > 0)) {
    throw new Error(`--mask-sync: expected a positive integer, got ${o.maskSync}`);
  }
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function count(mask: Uint8Array): number {
  let n = 0;
  for (const v of mask) n += v;
  return n;
}

/** Add Σ|v| over each unit of `unitSize` values into `into`. */
function addUnitSums(into: Float64Array, values: Float32Array, unitSize: number): void {
  for (let u = 0; u < into.length; u++) {
    let s = 0;
    for (let j = 0; j < unitSize; j++) s += Math.abs(values[u * unitSize + j]);
    into[u] += s;
  }
}

/**
 * One prune-and-grow of a unit mask: drop the `ceil(rate·active)` active
 * units of smallest `magnitude` (ties: lower index first), then activate as
 * many among the inactive ones (the just-pruned included, as the official):
 * those of largest `grad` when given, else uniformly at random.
 *
 * @example
 * ```ts
 * import { Rng } from "../ops/tensor.ts";
 * import { pruneAndGrow } from "./prune_grow.ts";
 * const r = pruneAndGrow(Uint8Array.of(1, 1, 1, 0), Float64Array.of(3, 1, 2, 0), null, 0.3, new Rng(0));
 * console.log(r.removed, r.mask.reduce((a, b) => a + b, 0)); // 1 3
 * ```
 */
export function pruneAndGrow(
  mask: Uint8Array,
  magnitude: ArrayLike<number>,
  grad: ArrayLike<number> | null,
  rate: number,
  rng: Rng,
): { mask: Uint8Array; removed: number; grown: number } {
  const active: number[] = [];
  for (let i = 0; i < mask.length; i++) if (mask[i]) active.push(i);
  const removeCount = Math.min(Math.ceil(rate * active.length), active.length);
  const out = mask.slice();
  if (removeCount === 0) return { mask: out, removed: 0, grown: 0 };
  active.sort((a, b) => magnitude[a] - magnitude[b] || a - b);
  for (let i = 0; i < removeCount; i++) out[active[i]] = 0;
  const inactive: number[] = [];
  for (let i = 0; i < out.length; i++) if (!out[i]) inactive.push(i);
  let chosen: number[];
  if (grad) {
    inactive.sort((a, b) => Math.abs(grad[b]) - Math.abs(grad[a]) || a - b);
    chosen = inactive.slice(0, removeCount);
  } else {
    chosen = sampleIndices(inactive, removeCount, rng);
  }
  for (const i of chosen) out[i] = 1;
  return { mask: out, removed: removeCount, grown: chosen.length };
}
