/**
 * Layer-wise densities for a global target sparsity, as the official SLaK
 * `sparse_core.py` (`Masking.init`) computes them: which parameters are
 * masked, `uniform`, `ERK` (with its power scale and the rule that makes a
 * layer dense when its density would exceed 1) and `snip` (connection
 * sensitivity |g ⊙ w|, one global top-k threshold, each layer's density the
 * fraction of its scores above it). Everything here is plain arithmetic on
 * shapes and score arrays; {@linkcode snipScores} in `masks.ts` gathers the
 * scores on the GPU.
 *
 * @example
 * ```ts
 * import { erkDensities, uniformLayerDensities } from "./density.ts";
 * const shapes = new Map([["a", [8, 1, 7, 7]], ["b", [32, 8]]]);
 * console.log(uniformLayerDensities(shapes, 0.6).get("a")); // 0.6
 * console.log(erkDensities(shapes, 0.6)); // density per layer; overall 0.6 of the weights
 * ```
 * @module
 */
import type { Module, Param } from "../models/module.ts";

/** Which parameters a sparse run masks: SLaK's rule (`all`), its `--only_L` (`only_L`), or a predicate. */
export type MaskSelect = "all" | "only_L" | ((key: string, param: Param) => boolean);

/** Layer-wise density methods of the official `--sparse_init`. */
export type SparseInit = "uniform" | "ERK" | "snip";

/** The official `--sparse_init` names, for flag checking. */
export const SPARSE_INITS: readonly SparseInit[] = ["uniform", "ERK", "snip"];

/**
 * The parameters the official SLaK sparse code masks (sparse_core.py,
 * `Masking.add_module`): every learnable parameter with 2 or 4 dimensions
 * (all conv and linear weights: stem, downsampling, large kernels,
 * pointwise layers, head); with `only_L`, only those whose key contains
 * `large_kernel.LoRA`.
 *
 * @example
 * ```ts
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { maskedParams } from "./density.ts";
 * const m = slak(SLAK_PRESETS.slak_cpu);
 * console.log(maskedParams(m, "only_L").length); // the LoRA1/LoRA2 kernels
 * ```
 */
export function maskedParams(model: Module, select: MaskSelect = "all"): [string, Param][] {
  const pick = typeof select === "function"
    ? select
    : (key: string) => select === "all" || key.includes("large_kernel.LoRA");
  return [...model.namedParameters()].filter(([key, p]) =>
    (p.shape.length === 2 || p.shape.length === 4) && pick(key, p)
  );
}

/**
 * The same density for every masked parameter (the official `uniform`
 * sparse init, density = 1 − sparsity). Like the official code, which
 * drops masks of density ≥ 0.99 after initialisation, a density ≥ 0.99
 * leaves the model dense (an empty map).
 *
 * @example
 * ```ts
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { uniformDensities } from "./density.ts";
 * console.log(uniformDensities(slak(SLAK_PRESETS.slak_cpu), 0.6).size > 0); // true
 * ```
 */
export function uniformDensities(
  model: Module,
  density: number,
  select: MaskSelect = "all",
): Map<string, number> {
  if (!(density > 0 && density <= 1)) throw new Error(`density ${density} is not in (0, 1]`);
  if (density >= 0.99) return new Map();
  return new Map(maskedParams(model, select).map(([k]) => [k, density]));
}

/**
 * Shapes of the masked parameters, by key (the input of the density rules).
 *
 * @example
 * ```ts
 * import { convnext, CONVNEXT_PRESETS } from "../models/convnext.ts";
 * import { maskedShapes } from "./density.ts";
 * const shapes = maskedShapes(convnext(CONVNEXT_PRESETS.convnext_cpu));
 * console.log(shapes.get("stages.0.0.dwconv.weight")); // [8, 1, 7, 7]
 * ```
 */
export function maskedShapes(model: Module, select: MaskSelect = "all"): Map<string, number[]> {
  return new Map(maskedParams(model, select).map(([k, p]) => [k, [...p.shape]]));
}

function checkDensity(density: number): void {
  if (!(density > 0 && density <= 1)) {
    throw new Error(`density ${density} is not in (0, 1] (sparsity must be in [0, 1))`);
  }
}

/**
 * `uniform`: every layer at `density`.
 *
 * @example
 * ```ts
 * import { uniformLayerDensities } from "./density.ts";
 * console.log(uniformLayerDensities(new Map([["w", [4, 4]]]), 0.5)); // Map { "w" => 0.5 }
 * ```
 */
export function uniformLayerDensities(
  shapes: ReadonlyMap<string, readonly number[]>,
  density: number,
): Map<string, number> {
  checkDensity(density);
  return new Map([...shapes.keys()].map((k) => [k, density]));
}

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const sum = (s: readonly number[]) => s.reduce((a, b) => a + b, 0);

/**
 * ERK (Erdős–Rényi-Kernel), the official fixed-ERK rule: each layer's
 * density is ε·(Σshape / Πshape)^power, with ε chosen so that the masked
 * weights as a whole keep `density`; while the largest such density exceeds
 * 1, the layer(s) with the largest raw score are made dense (density 1) and
 * ε is recomputed over the rest.
 *
 * @example
 * ```ts
 * import { erkDensities } from "./density.ts";
 * // raw scores: a (4+4)/16 = 0.5, b (2+2)/4 = 1; ε = 6/(0.5·16 + 1·4) = 0.5
 * console.log(erkDensities(new Map([["a", [4, 4]], ["b", [2, 2]]]), 0.3)); // a 0.25, b 0.5
 * ```
 */
export function erkDensities(
  shapes: ReadonlyMap<string, readonly number[]>,
  density: number,
  power = 1,
): Map<string, number> {
  checkDensity(density);
  const dense = new Set<string>();
  const raw = new Map<string, number>();
  let epsilon = 0;
  for (;;) {
    let divisor = 0;
    let rhs = 0;
    raw.clear();
    for (const [k, shape] of shapes) {
      const n = prod(shape);
      if (dense.has(k)) {
        rhs -= n * (1 - density);
      } else {
        rhs += n * density;
        const r = (sum(shape) / n) ** power;
        raw.set(k, r);
        divisor += r * n;
      }
    }
    if (raw.size === 0) break;
    epsilon = rhs / divisor;
    const maxRaw = Math.max(...raw.values());
    if (maxRaw * epsilon <= 1) break;
    for (const [k, r] of raw) if (r === maxRaw) dense.add(k);
  }
  return new Map([...shapes.keys()].map((k) => [k, dense.has(k) ? 1 : epsilon * raw.get(k)!]));
}

/**
 * SNIP layer-wise densities from connection-sensitivity scores (|g ⊙ w| of
 * every masked weight), as the official `SNIP`: all scores concatenated,
 * the threshold is the `int(total·density)`-th largest, and a layer's
 * density is the fraction of its scores strictly above the threshold. (The
 * official code then draws each layer's mask at random with that density:
 * the scores decide densities, not positions.)
 *
 * @example
 * ```ts
 * import { snipDensities } from "./density.ts";
 * const scores = new Map([["a", Float32Array.of(4, 3, 0, 0)], ["b", Float32Array.of(5, 1)]]);
 * // keep int(6·0.5) = 3 → threshold 3 (third largest); above it: a 1 of 4, b 1 of 2
 * console.log(snipDensities(scores, 0.5)); // a 0.25, b 0.5
 * ```
 */
export function snipDensities(
  scores: ReadonlyMap<string, Float32Array>,
  density: number,
): Map<string, number> {
  checkDensity(density);
  let total = 0;
  for (const s of scores.values()) total += s.length;
  const all = new Float32Array(total);
  let o = 0;
  for (const s of scores.values()) {
    all.set(s, o);
    o += s.length;
  }
  const keep = Math.floor(total * density);
  if (keep < 1) throw new Error(`SNIP: density ${density} keeps no weight of ${total}`);
  const threshold = kthLargestNonNegative(all, keep);
  const out = new Map<string, number>();
  for (const [k, s] of scores) {
    let above = 0;
    for (let i = 0; i < s.length; i++) if (s[i] > threshold) above++;
    out.set(k, above / s.length);
  }
  return out;
}

/**
 * The `k`-th largest of `values` (1 = the largest), which must all be ≥ 0
 * (SNIP scores are |w·g|): a two-pass radix select on the float bits, which
 * order like the numbers for non-negative floats. Linear time — sorting
 * SLaK-T's 180M scores at width 2.5 took 35 s, this takes about one.
 *
 * @example
 * ```ts
 * import { kthLargestNonNegative } from "./density.ts";
 * console.log(kthLargestNonNegative(Float32Array.of(0.5, 3, 0, 2, 2), 3)); // 2
 * ```
 */
export function kthLargestNonNegative(values: Float32Array, k: number): number {
  if (!(Number.isInteger(k) && k >= 1 && k <= values.length)) {
    throw new Error(`kthLargestNonNegative: k=${k} is not in 1..${values.length}`);
  }
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  // Pass 1: the high 16 bits. Walk buckets from the top until k is reached.
  const high = new Float64Array(65536);
  for (let i = 0; i < bits.length; i++) high[bits[i] >>> 16]++;
  let rest = k;
  let hb = 65535;
  while (high[hb] < rest) rest -= high[hb--];
  // Pass 2: the low 16 bits of the values in that bucket.
  const low = new Float64Array(65536);
  for (let i = 0; i < bits.length; i++) if (bits[i] >>> 16 === hb) low[bits[i] & 0xffff]++;
  let lb = 65535;
  while (low[lb] < rest) rest -= low[lb--];
  return new Float32Array(Uint32Array.of(((hb << 16) | lb) >>> 0).buffer)[0];
}

/**
 * Densities with the official post-initialisation rule applied: layers at
 * density ≥ 0.99 lose their mask (stay dense) and are left out.
 *
 * @example
 * ```ts
 * import { dropDenseLayers } from "./density.ts";
 * console.log(dropDenseLayers(new Map([["a", 1], ["b", 0.5]]))); // Map { "b" => 0.5 }
 * ```
 */
export function dropDenseLayers(densities: ReadonlyMap<string, number>): Map<string, number> {
  return new Map([...densities].filter(([, d]) => d < 0.99));
}

/**
 * Overall density of masked weights: Σ round(d·n) / Σ n over `shapes`
 * (layers missing from `densities` count as dense).
 *
 * @example
 * ```ts
 * import { overallDensity } from "./density.ts";
 * console.log(overallDensity(new Map([["a", [10]], ["b", [10]]]), new Map([["a", 0.5]]))); // 0.75
 * ```
 */
export function overallDensity(
  shapes: ReadonlyMap<string, readonly number[]>,
  densities: ReadonlyMap<string, number>,
): number {
  let nz = 0;
  let n = 0;
  for (const [k, s] of shapes) {
    const size = prod(s);
    n += size;
    nz += Math.round((densities.get(k) ?? 1) * size);
  }
  return n === 0 ? 1 : nz / n;
}

/**
 * SNIP's densities at initialisation as LayerScale shapes them, without
 * data: every block of a ConvNeXt-style model (`stages.*`) ends in a
 * LayerScale initialised at 1e-6, so the gradients — and the |g ⊙ w|
 * scores — of the weights inside blocks are ~1e-6 of those outside (stem,
 * downsampling, head). The global top-k therefore keeps every weight outside
 * the blocks (those layers come out dense and lose their masks) and spends
 * the rest of the budget inside the blocks, here spread uniformly. A planned
 * layout for counting; the measured SNIP (`snipScores` + {@linkcode snipDensities})
 * also varies between the blocks.
 *
 * @example
 * ```ts
 * import { slak, SLAK_PRESETS } from "../models/slak.ts";
 * import { layerScaleSnipDensities } from "./density.ts";
 * const d = layerScaleSnipDensities(slak(SLAK_PRESETS.slak_cpu), 0.6);
 * console.log([...d.keys()].every((k) => k.startsWith("stages."))); // true
 * ```
 */
export function layerScaleSnipDensities(
  model: Module,
  density: number,
  select: MaskSelect = "all",
  inBlock: (key: string) => boolean = (k) => k.startsWith("stages."),
): Map<string, number> {
  checkDensity(density);
  const shapes = maskedShapes(model, select);
  let total = 0;
  let outside = 0;
  for (const [k, s] of shapes) {
    total += prod(s);
    if (!inBlock(k)) outside += prod(s);
  }
  const inside = total - outside;
  const d = inside > 0 ? Math.max(0, (density * total - outside) / inside) : 1;
  return dropDenseLayers(
    new Map([...shapes.keys()].filter(inBlock).map((k) => [k, Math.min(d, 1)])),
  );
}
