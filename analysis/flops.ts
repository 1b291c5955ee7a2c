/**
 * Parameters and FLOPs of a model, counted without a GPU from its own
 * `forward` on shape-only {@linkcode Meta} values.
 *
 * FLOPs = multiply-accumulates, fvcore rules (the convention of the SLaK,
 * RepLKNet, ConvNeXt and ShiftwiseConv papers): a conv counts
 * out-elements × (in-channels/groups) × KH × KW, a linear layer out-elements ×
 * in-features, eval-mode BatchNorm 2 per element, `F.layer_norm` 5 per
 * element, adaptive average pooling 1 per input element; element-wise ops,
 * activations, `aten::mean` and ConvNeXt's hand-written channels-first
 * LayerNorm (kind `ln_manual`) count nothing. Biases are not counted.
 *
 * Sparse-aware: with `densities`, a masked parameter counts its non-zeros and
 * the MACs of the layer that owns it scale by the same fraction, as SLaK
 * reports its sparse models. Densities come from actual masks
 * ({@linkcode maskDensities}, or a run's `Masking.densities()`) or from a
 * plan (`uniformDensities`, `erkDensities`, `layerScaleSnipDensities`, …).
 *
 * @example
 * ```ts
 * import { convnext, CONVNEXT_PRESETS } from "../models/convnext.ts";
 * import { countModel, uniformDensities } from "./flops.ts";
 * const m = convnext(CONVNEXT_PRESETS.convnext_tiny);
 * const dense = countModel(m, [1, 3, 224, 224]);
 * console.log((dense.params / 1e6).toFixed(2), (dense.macs / 1e9).toFixed(2)); // 28.59 4.47
 * const sparse = countModel(m, [1, 3, 224, 224], { densities: uniformDensities(m, 0.6) });
 * console.log((sparse.macs / 1e9).toFixed(2)); // 2.68
 * ```
 * @module
 */
import { Meta, traceFlops } from "../models/layers.ts";
import type { Module, Param } from "../models/module.ts";

/** The counting convention, for every table and figure header. */
export const FLOPS_RULE = "FLOPs = multiply-accumulates, fvcore rules";

/** Recorded kinds that fvcore does not count (ConvNeXt's channels-first LayerNorm is element-wise ops). */
export const FVCORE_SKIPPED_KINDS: readonly string[] = ["ln_manual"];

/**
 * Density per parameter key (fraction of non-zeros, 0–1): a map from
 * state-dict key, or a function returning the density or `undefined` (dense).
 */
export type Densities =
  | ReadonlyMap<string, number>
  | ((key: string, param: Param) => number | undefined);

/** Options of {@linkcode countModel}. */
export interface CountOptions {
  /** Count only these kinds (default: every recorded kind but {@linkcode FVCORE_SKIPPED_KINDS}). */
  includeKinds?: readonly string[];
  /** Kinds not to count (default {@linkcode FVCORE_SKIPPED_KINDS}; ignored when `includeKinds` is given). */
  excludeKinds?: readonly string[];
  /** Sparse parameters and their densities. */
  densities?: Densities;
  /** Stage of a module or parameter name (default {@linkcode defaultStageOf}). */
  stageOf?: (name: string) => string;
}

/** One counted operation. */
export interface LayerCount {
  /** Dotted module name (`stages.0.1.large_kernel.LoRA1.conv`). */
  name: string;
  kind: string;
  /** MACs after sparsity. */
  macs: number;
  denseMacs: number;
  /** Learnable parameters of the module (non-zeros where sparse). */
  params: number;
  /** Density of the weight that scales `macs` (1 when dense). */
  density: number;
}

/** Totals of one stage. */
export interface StageCount {
  stage: string;
  /** Learnable parameters, non-zeros where sparse. */
  params: number;
  denseParams: number;
  macs: number;
  denseMacs: number;
}

/** What {@linkcode countModel} returns. */
export interface ModelCount {
  /** Learnable parameters (buffers excluded), sparse ones counted at their non-zeros. */
  params: number;
  /** Learnable parameters, all counted. */
  denseParams: number;
  /**
   * Non-zeros of the 2-D and 4-D parameters only (conv and linear weights):
   * what SLaK's `print_model_param_nums` prints, and the count behind its
   * sparse rows (biases, norms and LayerScale left out).
   */
  weightNonzeros: number;
  /** Counted MACs, sparse layers scaled by their weight's density. */
  macs: number;
  /** Counted MACs as if every layer were dense. */
  denseMacs: number;
  byStage: StageCount[];
  /** Counted MACs per kind. */
  byKind: Record<string, number>;
  /** MACs per kind that were recorded but not counted (e.g. `ln_manual`). */
  skipped: Record<string, number>;
  /** Every recorded operation, in forward order (skipped kinds included, with `macs` 0). */
  layers: LayerCount[];
}

/**
 * Non-zeros of a parameter of `size` values at `density`: `round(density ×
 * size)`, the count a mask holding its density exactly has (the official
 * Bernoulli masks have this many in expectation).
 *
 * @example
 * ```ts
 * import { nonzerosAt } from "./flops.ts";
 * console.log(nonzerosAt(51 * 51, 0.6)); // 1561
 * ```
 */
export function nonzerosAt(size: number, density: number): number {
  return Math.round(density * size);
}

/**
 * The stage a module or parameter name belongs to: `stem`, `stage0`…,
 * `head`. Knows ConvNeXt/SLaK (`downsample_layers.i` enters stage i,
 * `stages.i`), RepLKNet (`stem`, `stages.i`, `transitions.i` enters stage
 * i+1) and torchvision ResNet (`conv1`/`bn1` stem, `layer1…4`); anything
 * else (final norm, head, classifier) is `head`.
 *
 * @example
 * ```ts
 * import { defaultStageOf } from "./flops.ts";
 * console.log(defaultStageOf("downsample_layers.0.0.weight"), defaultStageOf("transitions.1.0.conv.weight")); // stem stage2
 * console.log(defaultStageOf("layer3.0.conv1.weight"), defaultStageOf("head.weight")); // stage2 head
 * ```
 */
export function defaultStageOf(name: string): string {
  let m = /^downsample_layers\.(\d+)(\.|$)/.exec(name);
  if (m) return m[1] === "0" ? "stem" : `stage${m[1]}`;
  if ((m = /^(?:stages|stage)\.(\d+)(\.|$)/.exec(name))) return `stage${m[1]}`;
  if ((m = /^transitions\.(\d+)(\.|$)/.exec(name))) return `stage${Number(m[1]) + 1}`;
  if ((m = /^layer(\d+)(\.|$)/.exec(name))) return `stage${Number(m[1]) - 1}`;
  if (/^(stem|conv1|bn1)(\.|$)/.test(name)) return "stem";
  return "head";
}

function stageRank(stage: string): number {
  if (stage === "stem") return -1;
  const m = /^stage(\d+)$/.exec(stage);
  return m ? Number(m[1]) : 1e9;
}

/** The density lookup of `densities`, checked: every density in [0, 1], every map key a parameter. */
function densityLookup(model: Module, densities?: Densities): (key: string, p: Param) => number {
  if (!densities) return () => 1;
  if (typeof densities === "function") {
    return (key, p) => {
      const d = densities(key, p) ?? 1;
      if (!(d >= 0 && d <= 1)) throw new Error(`density of ${key} is ${d}, not in [0, 1]`);
      return d;
    };
  }
  const keys = new Set([...model.namedParameters()].map(([k]) => k));
  const unknown = [...densities.keys()].filter((k) => !keys.has(k));
  if (unknown.length) {
    throw new Error(
      `densities name ${unknown.length} parameter(s) the model lacks: ${
        unknown.slice(0, 3).join(", ")
      }`,
    );
  }
  for (const [k, d] of densities) {
    if (!(d >= 0 && d <= 1)) throw new Error(`density of ${k} is ${d}, not in [0, 1]`);
  }
  return (key) => densities.get(key) ?? 1;
}

/**
 * Count a model's parameters and MACs (FLOPs = multiply-accumulates,
 * fvcore rules; see the module doc) by running its `forward` on a
 * {@linkcode Meta} of `inputShape` (a number n means [1, 3, n, n]). No GPU
 * is used. Module names come from `namedModules()`, so layers and stages
 * carry the official key prefixes.
 */
export function countModel(
  model: Module,
  inputShape: number | readonly number[],
  opts: CountOptions = {},
): ModelCount {
  const shape = typeof inputShape === "number" ? [1, 3, inputShape, inputShape] : inputShape;
  const stageOf = opts.stageOf ?? defaultStageOf;
  const density = densityLookup(model, opts.densities);
  const include = opts.includeKinds ? new Set(opts.includeKinds) : null;
  const exclude = new Set(opts.excludeKinds ?? FVCORE_SKIPPED_KINDS);
  const counted = (kind: string) => (include ? include.has(kind) : !exclude.has(kind));

  const paramKey = new Map<Param, string>();
  const paramDensity = new Map<Param, number>();
  const stages = new Map<string, StageCount>();
  const stage = (name: string) => {
    const s = stageOf(name);
    let e = stages.get(s);
    if (!e) stages.set(s, e = { stage: s, params: 0, denseParams: 0, macs: 0, denseMacs: 0 });
    return e;
  };

  let params = 0;
  let denseParams = 0;
  let weightNonzeros = 0;
  for (const [key, p] of model.namedParameters()) {
    const d = density(key, p);
    const nz = d === 1 ? p.size : nonzerosAt(p.size, d);
    paramKey.set(p, key);
    paramDensity.set(p, d === 1 ? 1 : nz / p.size);
    params += nz;
    denseParams += p.size;
    if (p.shape.length === 2 || p.shape.length === 4) weightNonzeros += nz;
    const s = stage(key.slice(0, Math.max(key.lastIndexOf("."), 0)));
    s.params += nz;
    s.denseParams += p.size;
  }

  const moduleName = new Map<Module, string>();
  for (const [name, m] of model.namedModules()) if (!moduleName.has(m)) moduleName.set(m, name);
  const ownParams = (m: Module) => {
    let n = 0;
    for (const [, p] of m.namedParameters()) n += Math.round(p.size * (paramDensity.get(p) ?? 1));
    return n;
  };

  const records = traceFlops(() => model.forward(new Meta(shape)));
  const layers: LayerCount[] = [];
  const byKind: Record<string, number> = {};
  const skipped: Record<string, number> = {};
  let macs = 0;
  let denseMacs = 0;
  for (const r of records) {
    const name = moduleName.get(r.module) ?? "?";
    const d = r.weight ? paramDensity.get(r.weight) ?? 1 : 1;
    const take = counted(r.kind);
    const sparseMacs = take ? r.macs * d : 0;
    layers.push({
      name,
      kind: r.kind,
      macs: sparseMacs,
      denseMacs: take ? r.macs : 0,
      params: ownParams(r.module),
      density: d,
    });
    if (!take) {
      skipped[r.kind] = (skipped[r.kind] ?? 0) + r.macs;
      continue;
    }
    byKind[r.kind] = (byKind[r.kind] ?? 0) + sparseMacs;
    macs += sparseMacs;
    denseMacs += r.macs;
    const s = stage(name);
    s.macs += sparseMacs;
    s.denseMacs += r.macs;
  }
  const byStage = [...stages.values()].sort((a, b) => stageRank(a.stage) - stageRank(b.stage));
  return { params, denseParams, weightNonzeros, macs, denseMacs, byStage, byKind, skipped, layers };
}

// The masking rule and the uniform density live with the rest of the sparse code; re-exported here.
export { maskedParams, type MaskSelect, uniformDensities } from "../sparse/density.ts";

/**
 * Densities of actual masks, for {@linkcode countModel}: key → fraction of
 * non-zero mask entries (a mask may hold one entry per weight or one per
 * output filter, as in `masks.safetensors` of a sparse checkpoint). A live
 * run's `Masking.densities()` is already such a map; planned densities
 * (`erkDensities`, `snipDensities`, …) are too.
 *
 * @example
 * ```ts
 * import { maskDensities } from "./flops.ts";
 * console.log(maskDensities(new Map([["w", Float32Array.of(1, 0, 0, 1)]])).get("w")); // 0.5
 * ```
 */
export function maskDensities(
  masks: ReadonlyMap<string, ArrayLike<number> | { data: ArrayLike<number> }>,
): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, m] of masks) {
    const a = "data" in m ? m.data : m;
    let nz = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== 0) nz++;
    out.set(k, a.length === 0 ? 1 : nz / a.length);
  }
  return out;
}
