/**
 * The start of a ConvNeXt/SLaK block as one matrix product:
 * `linear(layerNorm(permute(x, [0, 2, 3, 1])), W, b)` with `x` NCHW. A small
 * kernel computes each pixel's mean and inverse deviation over the channels;
 * the product then normalises (and applies the LayerNorm's affine) as it
 * loads `x`, reading the NCHW tensor in place. The unfused start
 * (`layerNormToChannelsLast` then `linear`) writes the normalised,
 * channels-last activation, reads it back, and keeps it for the weight
 * gradient; here it is never stored, and the weight gradient's product
 * normalises `x` again as it loads it.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNormLinear } from "./fused_layernorm.ts";
 * await initGpu();
 * const x = Tensor.from([1, 3], [1, 2, 1, 1]); // one pixel, 2 channels: normalised to [-1, 1]
 * const y = layerNormLinear(x, Tensor.ones([2]), Tensor.zeros([2]), Tensor.from([1, 2], [1, 2]), null, 0);
 * console.log(y.shape, await y.read()); // [1, 1, 1, 1] [1]
 * ```
 * @module
 */
import { record, willRecord } from "./autograd.ts";
import { ERF_WGSL, gelu as geluOp } from "./elementwise.ts";
import { GELU_OF_HV, layerNormToChannelsLast, layerNormToChannelsLastGrads } from "./fused.ts";
import { gemm } from "./gemm_kernel.ts";
import { gemmImpl } from "./gemm_plan.ts";
import { biasGrad, linear, matmul } from "./matmul.ts";
import { pixelStats } from "./norm.ts";
import { Tensor } from "./tensor.ts";

/**
 * `linear(layerNorm(permute(x, [0, 2, 3, 1]), lnWeight, lnBias, { eps }), weight, bias)`:
 * `x` NCHW `[N, C, H, W]`, normalised over C at each pixel (biased variance)
 * with affine `lnWeight`/`lnBias` `[C]`, then multiplied by `weight`
 * `[out, C]` plus `bias` `[out]` (or null); the result channels-last
 * `[N, H, W, out]`. Differentiable in all five; keeps `x` and the per-pixel
 * statistics (not the normalised activation) for the backward. Under
 * `setGemmImpl("simple")` it runs the unfused chain. With `gelu` the
 * product stores `gelu(·)` of its result instead (exact erf GELU), for a
 * forward without gradients only (inference: the next product then loads
 * the activation as it is instead of computing the GELU on every load).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNormLinear } from "./fused_layernorm.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 8, 3, 3], { seed: 1 });
 * const y = layerNormLinear(x, Tensor.ones([8]), Tensor.zeros([8]), Tensor.randn([32, 8]), Tensor.zeros([32]));
 * console.log(y.shape); // [2, 3, 3, 32]
 * ```
 */
export function layerNormLinear(
  x: Tensor,
  lnWeight: Tensor,
  lnBias: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  eps = 1e-6,
  { gelu = false }: { gelu?: boolean } = {},
): Tensor {
  const where = "layerNormLinear";
  if (x.rank !== 4) throw new Error(`${where}: x must be [N, C, H, W], got [${x.shape}]`);
  const [n, c, hh, ww] = x.shape;
  for (const [what, t] of [["lnWeight", lnWeight], ["lnBias", lnBias]] as const) {
    if (t.rank !== 1 || t.shape[0] !== c) {
      throw new Error(`${where}: ${what} must be [${c}], got [${t.shape}]`);
    }
  }
  if (weight.rank !== 2 || weight.shape[1] !== c) {
    throw new Error(`${where}: weight must be [out, ${c}], got [${weight.shape}]`);
  }
  const outF = weight.shape[0];
  if (bias && (bias.rank !== 1 || bias.shape[0] !== outF)) {
    throw new Error(`${where}: bias must be [${outF}], got [${bias.shape}]`);
  }
  const inputs = [x, lnWeight, lnBias, weight, ...(bias ? [bias] : [])];
  if (gelu && willRecord(inputs)) {
    throw new Error(`${where}: the GELU output has no backward; use it without gradients`);
  }
  if (gemmImpl() !== "tiled") {
    const y = layerNormToChannelsLast(x, lnWeight, lnBias, eps);
    const out = linear(y, weight, bias);
    y.dispose();
    if (!gelu) return out;
    const activated = geluOp(out);
    out.dispose();
    return activated;
  }
  const hw = hh * ww;
  const rows = n * hw;
  const { mean, rstd } = pixelStats(x, eps);
  // The normalised activation at pixel `r`, channel `ch`, as the products load it.
  const normalised = (r: string, ch: string) =>
    `return (x[((${r}) / ${hw}u * ${c}u + ${ch}) * ${hw}u + (${r}) % ${hw}u] - mean[${r}]) * rstd[${r}] * lw[${ch}] + lb[${ch}];`;
  const normInputs = { x, mean, rstd, lw: lnWeight, lb: lnBias };
  const y = Tensor.empty([n, hh, ww, outF]);
  gemm({
    batch: 1,
    m: rows,
    n: outF,
    k: c,
    inputs: { ...normInputs, w: weight },
    loadA: normalised("m", "k"),
    aKFast: false,
    loadB: `return w[n * ${c}u + k];`,
    bKFast: true,
    ...(c % 4 === 0 && { vecB: { input: "w", index: `n * ${c}u + k` } }),
    outputs: { y, ...(bias && { bias }) },
    ...(gelu && { prelude: ERF_WGSL }),
    store: gelu
      ? `let hv = v${bias ? " + bias[n]" : ""}; y[m * ${outF}u + n] = ${GELU_OF_HV};`
      : `y[m * ${outF}u + n] = v${bias ? " + bias[n]" : ""};`,
  });
  const saved = [x, lnWeight, lnBias, weight, mean, rstd];
  record(where, inputs, y, saved, (g, [sx, slw, slb, sw, sm, sr]) => {
    // The gradient of the normalised activation, channels-last, feeds the LayerNorm's backward.
    const gn = matmul(g.view([rows, outF]), sw);
    const [gx, glw, glb] = layerNormToChannelsLastGrads(gn, sx, slw, sm, sr);
    gn.dispose();
    // gW = gᵀ · LN(x), x normalised again as it is loaded.
    const gw = Tensor.empty([outF, c]);
    gemm({
      batch: 1,
      m: outF,
      n: c,
      k: rows,
      inputs: { g, x: sx, mean: sm, rstd: sr, lw: slw, lb: slb },
      loadA: `return g[k * ${outF}u + m];`,
      aKFast: false,
      ...(outF % 4 === 0 && { vecA: { input: "g", index: `k * ${outF}u + m` } }),
      loadB: normalised("k", "n"),
      bKFast: true,
      outputs: { gw },
      store: `gw[m * ${c}u + n] = v;`,
    });
    return [gx, glw, glb, gw, ...(bias ? [biasGrad(g, rows, outF)] : [])];
  });
  mean.dispose();
  rstd.dispose();
  return y;
}
