/**
 * Batch norm folded into the convolution before it, for inference: with the
 * running statistics, `bn(conv(x, w, b))` equals `conv(x, w', b')` where
 * `w' = w · γ/σ` (per output channel) and `b' = β + (b − μ) · γ/σ`,
 * `σ = √(var + ε)`. {@linkcode foldBatchNorm} computes `w'` and `b'` on the
 * GPU in one small kernel over the weights, so an evaluation forward runs the
 * conv alone instead of the conv, the statistics kernel and a normalising
 * pass over the activations. The fold is differentiable (in `w`, `b`, `γ`
 * and `β`), so gradients taken through an evaluation forward (the ERF
 * analysis) reach the same parameters with the same values as through the
 * unfused chain.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { foldBatchNorm } from "./fold_bn.ts";
 * await initGpu();
 * const bn = { weight: Tensor.from([2]), bias: Tensor.from([1]), mean: Tensor.from([3]), variance: Tensor.from([4]) };
 * const f = foldBatchNorm(Tensor.from([1, 1], [1, 1, 1, 2]), null, bn, 0);
 * console.log(await f.weight.read(), await f.bias.read()); // [1, 1] [-2]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { f32, Tensor } from "./tensor.ts";
import { flatMain, launch, storage } from "./kernel.ts";

/** A batch norm's affine parameters and running statistics, each `[C]`. */
export interface BatchNormTensors {
  weight: Tensor;
  bias: Tensor;
  mean: Tensor;
  variance: Tensor;
}

/**
 * The weights `[C, …]` and bias `[C]` of one convolution equal to
 * `batchNorm2d(conv(x, weight, convBias), bn…, { training: false, eps })`
 * (see the module documentation). `convBias` may be null (no bias).
 * Differentiable in `weight`, `convBias`, `bn.weight` and `bn.bias`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { foldBatchNorm } from "./fold_bn.ts";
 * await initGpu();
 * const ones = Tensor.ones([2]);
 * const bn = { weight: ones, bias: Tensor.zeros([2]), mean: Tensor.zeros([2]), variance: ones };
 * const f = foldBatchNorm(Tensor.ones([2, 3, 1, 1]), Tensor.from([1, 2]), bn, 1e-5);
 * console.log(f.weight.shape, f.bias.shape); // [2, 3, 1, 1] [2]
 * ```
 */
export function foldBatchNorm(
  weight: Tensor,
  convBias: Tensor | null,
  bn: BatchNormTensors,
  eps: number,
): { weight: Tensor; bias: Tensor } {
  const c = weight.shape[0];
  if (weight.rank < 1 || c === 0) {
    throw new Error(`foldBatchNorm: weight must be [C, …], got [${weight.shape}]`);
  }
  const tensors = { convBias, ...bn };
  for (const [what, t] of Object.entries(tensors)) {
    if (t && (t.rank !== 1 || t.shape[0] !== c)) {
      throw new Error(`foldBatchNorm: ${what} must be [${c}], got [${t.shape}]`);
    }
  }
  const taps = weight.size / c;
  const e = f32(eps);
  const w2 = Tensor.empty(weight.shape);
  const b2 = Tensor.empty([c]);
  const cb = convBias ? "cb" : "";
  const code = `${storage("w", ...(cb ? [cb] : []), "g", "b", "m", "v", "w2!", "b2!")}
${flatMain(weight.size)}
  let c = i / ${taps}u;
  let t = g[c] / sqrt(v[c] + ${e});
  w2[i] = w[i] * t;
  if (i % ${taps}u == 0u) { b2[c] = b[c] + (${cb ? "cb[c] - " : "-"}m[c]) * t; }
}`;
  const { weight: g, bias: b, mean: m, variance: v } = bn;
  launch(code, [weight, ...(convBias ? [convBias] : []), g, b, m, v, w2, b2], weight.size);

  // w' = w · γ/σ: gw = gw' · γ/σ, gγ = Σ_taps gw' · w / σ.
  record("foldBatchNorm.weight", [weight, g], w2, [weight, g, v], (gw2, [sw, sg, sv]) => {
    const gw = Tensor.empty(weight.shape);
    const gg = Tensor.empty([c]);
    const back = `${storage("gw2", "w", "g", "v", "gw!", "gg!")}
${flatMain(c)}
  let r = 1.0 / sqrt(v[i] + ${e});
  var acc = 0.0;
  for (var k = i * ${taps}u; k < (i + 1u) * ${taps}u; k++) {
    gw[k] = gw2[k] * g[i] * r;
    acc += gw2[k] * w[k];
  }
  gg[i] = acc * r;
}`;
    launch(back, [gw2, sw, sg, sv, gw, gg], c);
    return [gw, gg];
  });
  // b' = β + (b − μ) · γ/σ: gβ = gb', gγ = gb' · (b − μ)/σ, gb = gb' · γ/σ.
  const inputs = [...(convBias ? [convBias] : []), g, b];
  record("foldBatchNorm.bias", inputs, b2, [...inputs, m, v], (gb2, sv) => {
    const [scb, sg, , sm, svar] = convBias ? sv : [null, ...sv];
    const gg = Tensor.empty([c]);
    const gcb = convBias ? Tensor.empty([c]) : null;
    const back = `${
      storage("gb2", ...(scb ? ["cb"] : []), "g", "m", "v", "gg!", ...(gcb ? ["gcb!"] : []))
    }
${flatMain(c)}
  let r = 1.0 / sqrt(v[i] + ${e});
  gg[i] = gb2[i] * (${scb ? "cb[i] - " : "-"}m[i]) * r;
  ${gcb ? "gcb[i] = gb2[i] * g[i] * r;" : ""}
}`;
    launch(back, [gb2, ...(scb ? [scb] : []), sg!, sm!, svar!, gg, ...(gcb ? [gcb] : [])], c);
    return [...(gcb ? [gcb] : []), gg, gb2.view([c])];
  });
  return { weight: w2, bias: b2 };
}
