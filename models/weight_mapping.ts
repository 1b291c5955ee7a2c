/**
 * Explicit conversions between the key layouts of released weights, so that
 * loading can stay strict. SLaK and RepLKNet release their weights in the
 * trained form: each large-kernel module holds conv-BN branches (SLaK's
 * decomposed `LoRA1` M×N and `LoRA2` N×M, or the full `lkb_origin` M×M,
 * plus `small_conv` N×N). A model built for deployment (`mode: "merged"`,
 * the official `small_kernel_merged=True`) holds one conv with a bias,
 * `lkb_reparam`. {@linkcode mergeLargeKernelWeights} computes the second
 * from the first, exactly as the models' own `merge()` does on the GPU:
 * each branch's BatchNorm folded into its kernel (eval mode), the kernels
 * zero-padded to M×M about the centre and summed, the biases summed.
 *
 * @example
 * ```ts
 * import { mergeLargeKernelWeights } from "./weight_mapping.ts";
 * import type { Weights } from "./safetensors.ts";
 * const v = (shape: number[], x: number) => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b)).fill(x) });
 * // One channel, a 3×3 lkb_origin branch whose BatchNorm scales by 1 and shifts by 0.5.
 * const w: Weights = new Map([
 *   ["lk.lkb_origin.conv.weight", v([1, 1, 3, 3], 1)],
 *   ["lk.lkb_origin.bn.weight", v([1], 1)],
 *   ["lk.lkb_origin.bn.bias", v([1], 0.5)],
 *   ["lk.lkb_origin.bn.running_mean", v([1], 0)],
 *   ["lk.lkb_origin.bn.running_var", v([1], 1 - 1e-5)],
 * ]);
 * const merged = mergeLargeKernelWeights(w);
 * console.log([...merged.keys()]); // ["lk.lkb_reparam.weight", "lk.lkb_reparam.bias"]
 * console.log(merged.get("lk.lkb_reparam.bias")!.data); // Float32Array [0.5]
 * ```
 * @module
 */
import type { Weights } from "./safetensors.ts";

/** The conv-BN branches of a large-kernel module, in the trained form. */
const BRANCHES = ["LoRA1", "LoRA2", "lkb_origin", "small_conv"] as const;
const BN_KEYS = ["weight", "bias", "running_mean", "running_var"] as const;

/**
 * Module prefixes (ending in ".") that hold large-kernel branches in `weights`.
 *
 * @example
 * ```ts
 * import { largeKernelPrefixes } from "./weight_mapping.ts";
 * import type { Weights } from "./safetensors.ts";
 * const v = { shape: [1], data: new Float32Array(1) };
 * const w: Weights = new Map([
 *   ["stages.0.0.lk.LoRA1.conv.weight", v],
 *   ["stages.0.0.lk.LoRA2.conv.weight", v],
 *   ["stages.1.0.lk.lkb_origin.conv.weight", v],
 *   ["head.weight", v],
 * ]);
 * console.log(largeKernelPrefixes(w)); // ["stages.0.0.lk.", "stages.1.0.lk."]
 * ```
 */
export function largeKernelPrefixes(weights: Weights): string[] {
  const out = new Set<string>();
  for (const key of weights.keys()) {
    const m = /^(.*?)(LoRA1|LoRA2|lkb_origin)\.conv\.weight$/.exec(key);
    if (m) out.add(m[1]);
  }
  return [...out];
}

function entry(weights: Weights, key: string) {
  const v = weights.get(key);
  if (!v) throw new Error(`mergeLargeKernelWeights: ${key} is missing`);
  return v;
}

/**
 * Fold every large-kernel module's conv-BN branches into `lkb_reparam`
 * (weight [C, 1, M, M] and bias [C]); other keys pass through unchanged.
 * `eps` is BatchNorm's (1e-5 in both papers). Throws naming the key when a
 * branch is incomplete or its shapes disagree.
 */
export function mergeLargeKernelWeights(weights: Weights, eps = 1e-5): Weights {
  const prefixes = largeKernelPrefixes(weights);
  const out: Weights = new Map();
  const folded = new Set<string>();
  const merged = new Map<string, { weight: Float32Array; bias: Float32Array; shape: number[] }>();
  for (const p of prefixes) {
    const present = BRANCHES.filter((b) => weights.has(`${p}${b}.conv.weight`));
    // The largest branch sets M: every other kernel is padded to it about the centre.
    const shapes = present.map((b) => entry(weights, `${p}${b}.conv.weight`).shape);
    const c = shapes[0][0];
    const m = Math.max(...shapes.flatMap((s) => [s[2], s[3]]));
    const weight = new Float32Array(c * m * m);
    const bias = new Float32Array(c);
    for (const b of present) {
      const key = `${p}${b}.conv.weight`;
      const w = entry(weights, key);
      const [co, ci, kh, kw] = w.shape;
      if (w.shape.length !== 4 || co !== c || ci !== 1 || (m - kh) % 2 || (m - kw) % 2) {
        throw new Error(
          `mergeLargeKernelWeights: ${key} has shape [${w.shape}], not [${c}, 1, K, K']`,
        );
      }
      const [g, beta, mean, variance] = BN_KEYS.map((k) => {
        const v = entry(weights, `${p}${b}.bn.${k}`);
        if (v.data.length !== c) {
          throw new Error(
            `mergeLargeKernelWeights: ${p}${b}.bn.${k} has ${v.data.length} values, not ${c}`,
          );
        }
        return v.data;
      });
      const oy = (m - kh) / 2, ox = (m - kw) / 2;
      for (let ch = 0; ch < c; ch++) {
        const t = g[ch] / Math.sqrt(variance[ch] + eps);
        bias[ch] += beta[ch] - mean[ch] * t;
        for (let y = 0; y < kh; y++) {
          for (let x = 0; x < kw; x++) {
            weight[(ch * m + y + oy) * m + x + ox] += w.data[(ch * kh + y) * kw + x] * t;
          }
        }
      }
      for (const k of weights.keys()) if (k.startsWith(`${p}${b}.`)) folded.add(k);
    }
    merged.set(p, { weight, bias, shape: [c, 1, m, m] });
  }
  for (const [k, v] of weights) {
    if (folded.has(k)) {
      const p = prefixes.find((q) =>
        k.startsWith(q) && BRANCHES.some((b) => k.startsWith(`${q}${b}.`))
      )!;
      const mm = merged.get(p);
      if (mm) {
        out.set(`${p}lkb_reparam.weight`, { shape: mm.shape, data: mm.weight });
        out.set(`${p}lkb_reparam.bias`, { shape: [mm.bias.length], data: mm.bias });
        merged.delete(p);
      }
      continue;
    }
    out.set(k, v);
  }
  return out;
}
