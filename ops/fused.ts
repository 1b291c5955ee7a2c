/**
 * Fused cheap ops of the ConvNeXt-style block, each equal to a chain of
 * unfused ops but with fewer passes over memory:
 *
 * - {@linkcode linearGelu}: `gelu(linear(x, w, b))` with the bias add and
 *   the GELU applied in the GEMM's store (one kernel instead of two; the
 *   pre-activation is kept for the backward, as the unfused chain keeps it);
 * - {@linkcode geluLinear}: `linear(gelu(h), w, b)` with the GELU applied
 *   as the GEMM loads `h`, so that `gelu(h)` is never stored and only `h` is
 *   kept for the backward (a ConvNeXt block keeps 8 activations of its width
 *   instead of 12);
 * - {@linkcode layerNormToChannelsLast}: `layerNorm(permute(x, [0, 2, 3, 1]))`
 *   in one kernel reading NCHW and writing NHWC (the unfused chain runs
 *   three), its backward writing the NCHW gradient directly;
 * - {@linkcode layerScaleResidual}: `x + dropPath(permute(gamma · y))` with
 *   `y` channels-last and `x` NCHW, in one kernel (the unfused chain runs
 *   three or four), and its backward in two.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerScaleResidual, linearGelu } from "./fused.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 4, 3, 3], { seed: 1 });       // NCHW residual
 * const h = Tensor.randn([2, 3, 3, 4], { seed: 2 });       // channels-last branch
 * const w1 = Tensor.randn([16, 4], { seed: 3 });
 * const w2 = Tensor.randn([4, 16], { seed: 4 });
 * const zeros = (n: number) => Tensor.zeros([n]);
 * const { linear } = await import("./matmul.ts");
 * const y = linear(linearGelu(h, w1, zeros(16)), w2, zeros(4));
 * console.log(layerScaleResidual(x, y, Tensor.full([4], 1e-6), null).shape); // [2, 4, 3, 3]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { ERF_WGSL, gelu } from "./elementwise.ts";
import { columnReduce, gemm, type GemmSpec } from "./gemm_kernel.ts";
import { gemmImpl } from "./gemm_plan.ts";
import { elementwiseKernel, flatMain, launch, storage } from "./kernel.ts";
import { biasGrad, linear, matmul } from "./matmul.ts";
import { pixelInputGrad } from "./norm.ts";
import { f32, Rng, Tensor } from "./tensor.ts";

/**
 * The exact (erf) GELU of the WGSL value `hv`, as an expression; needs
 * `ERF_WGSL` (`elementwise.ts`) in the kernel.
 *
 * @example
 * ```ts
 * import { GELU_OF_HV } from "./fused.ts";
 * console.log(GELU_OF_HV.includes("erf_f32")); // true
 * ```
 */
export const GELU_OF_HV = "0.5 * hv * (1.0 + erf_f32(hv * 0.70710678118654752))";

/**
 * The derivative of {@linkcode GELU_OF_HV} at `hv`, as a WGSL expression (needs `ERF_WGSL`).
 *
 * @example
 * ```ts
 * import { GELU_GRAD_OF_HV } from "./fused.ts";
 * console.log(GELU_GRAD_OF_HV.includes("exp(")); // true
 * ```
 */
export const GELU_GRAD_OF_HV =
  "0.5 * (1.0 + erf_f32(hv * 0.70710678118654752)) + hv * 0.3989422804014327 * exp(-0.5 * hv * hv)";

/**
 * `gelu(linear(x, weight, bias))` (exact erf GELU, as `nn.GELU()`), with the
 * bias and the activation applied where the product is stored. `x` is
 * `[..., in]`, `weight` `[out, in]`, `bias` `[out]`; the result
 * `[..., out]`. Differentiable in all three. Under `setGemmImpl("simple")`
 * it runs the unfused chain.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { linearGelu } from "./fused.ts";
 * await initGpu();
 * const x = Tensor.from([1, -1], [1, 2]);
 * const y = linearGelu(x, Tensor.from([1, 0, 0, 1], [2, 2]), Tensor.zeros([2]));
 * console.log(await y.read()); // ≈ [0.841, -0.159]
 * ```
 */
export function linearGelu(x: Tensor, weight: Tensor, bias: Tensor): Tensor {
  if (gemmImpl() !== "tiled") return gelu(linear(x, weight, bias));
  if (weight.rank !== 2) {
    throw new Error(`linearGelu: weight must be [out, in], got [${weight.shape}]`);
  }
  const [outF, inF] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== inF) {
    throw new Error(`linearGelu: input [${x.shape}] does not end in ${inF} features`);
  }
  if (bias.rank !== 1 || bias.shape[0] !== outF) {
    throw new Error(`linearGelu: bias must be [${outF}], got [${bias.shape}]`);
  }
  const rows = x.size / inF;
  const shape = [...x.shape.slice(0, -1), outF];
  const y = Tensor.empty(shape);
  const h = Tensor.empty(shape);
  gemm({
    batch: 1,
    m: rows,
    n: outF,
    k: inF,
    inputs: { x, w: weight },
    loadA: `return x[m * ${inF}u + k];`,
    aKFast: true,
    loadB: `return w[n * ${inF}u + k];`,
    bKFast: true,
    ...(inF % 4 === 0 && {
      vecA: { input: "x", index: `m * ${inF}u + k` },
      vecB: { input: "w", index: `n * ${inF}u + k` },
    }),
    outputs: { y, h, bias },
    written: 2,
    prelude: ERF_WGSL,
    store: `let hv = v + bias[n]; let at = m * ${outF}u + n; h[at] = hv; y[at] = ${GELU_OF_HV};`,
  });
  record("linearGelu", [x, weight, bias], y, [x, weight, h], (g, [sx, sw, sh]) => {
    const gh = Tensor.empty([rows, outF]);
    const body = `let hv = h[i]; y[i] = g[i] * (${GELU_GRAD_OF_HV});`;
    launch(elementwiseKernel(gh.size, ["g", "h"], body, ERF_WGSL), [g, sh, gh], gh.size);
    const gx = matmul(gh, sw).view(x.shape);
    const gw = matmul(gh, sx.view([rows, inF]), { transA: true });
    return [gx, gw, biasGrad(gh, rows, outF)];
  });
  h.dispose();
  return y;
}

/**
 * `linear(gelu(h), weight, bias)` (exact erf GELU) without storing
 * `gelu(h)`: the product applies the GELU as it loads `h`, and the backward
 * recomputes it the same way, so only `h` is kept for the backward where the
 * unfused chain keeps both `h` (for the GELU) and `gelu(h)` (for the linear).
 * `h` is `[..., in]`, `weight` `[out, in]`, `bias` `[out]`; the result
 * `[..., out]`. Differentiable in all three; the GELU's derivative is applied
 * in the store of the product that computes `h`'s gradient. Under
 * `setGemmImpl("simple")` it runs the unfused chain.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { geluLinear } from "./fused.ts";
 * await initGpu();
 * const h = Tensor.from([1, -1], [1, 2]);
 * const y = geluLinear(h, Tensor.from([1, 1], [1, 2]), Tensor.zeros([1]));
 * console.log(await y.read()); // ≈ [0.683] = gelu(1) + gelu(-1)
 * ```
 */
export function geluLinear(h: Tensor, weight: Tensor, bias: Tensor): Tensor {
  if (gemmImpl() !== "tiled") return linear(gelu(h), weight, bias);
  if (weight.rank !== 2) {
    throw new Error(`geluLinear: weight must be [out, in], got [${weight.shape}]`);
  }
  const [outF, inF] = weight.shape;
  if (h.rank < 1 || h.shape[h.rank - 1] !== inF) {
    throw new Error(`geluLinear: input [${h.shape}] does not end in ${inF} features`);
  }
  if (bias.rank !== 1 || bias.shape[0] !== outF) {
    throw new Error(`geluLinear: bias must be [${outF}], got [${bias.shape}]`);
  }
  const rows = h.size / inF;
  const y = Tensor.empty([...h.shape.slice(0, -1), outF]);
  gemm({
    ...geluLoadedProduct(h, weight),
    outputs: { y, bias },
    store: `y[m * ${outF}u + n] = v + bias[n];`,
  });
  record("geluLinear", [h, weight, bias], y, [h, weight], (g, [sh, sw]) => {
    // gh = (g · W) ⊙ gelu'(h).
    const gh = Tensor.empty([rows, inF]);
    gemm({
      batch: 1,
      m: rows,
      n: inF,
      k: outF,
      inputs: { g, w: sw },
      loadA: `return g[m * ${outF}u + k];`,
      aKFast: true,
      ...(outF % 4 === 0 && { vecA: { input: "g", index: `m * ${outF}u + k` } }),
      loadB: `return w[k * ${inF}u + n];`,
      bKFast: false,
      ...(inF % 4 === 0 && { vecB: { input: "w", index: `k * ${inF}u + n` } }),
      outputs: { gh, h: sh },
      prelude: ERF_WGSL,
      store: `let at = m * ${inF}u + n; let hv = h[at]; gh[at] = v * (${GELU_GRAD_OF_HV});`,
    });
    // gW = gᵀ · gelu(h), the GELU recomputed as h is loaded.
    const gw = Tensor.empty([outF, inF]);
    gemm({
      batch: 1,
      m: outF,
      n: inF,
      k: rows,
      inputs: { g, h: sh },
      loadA: `return g[k * ${outF}u + m];`,
      aKFast: false,
      ...(outF % 4 === 0 && { vecA: { input: "g", index: `k * ${outF}u + m` } }),
      loadB: `let hv = h[k * ${inF}u + n]; return ${GELU_OF_HV};`,
      bKFast: false,
      outputs: { gw },
      prelude: ERF_WGSL,
      store: `gw[m * ${inF}u + n] = v;`,
    });
    return [gh.view(h.shape), gw, biasGrad(g, rows, outF)];
  });
  return y;
}

/**
 * The per-sample multipliers of timm's `drop_path` exactly as
 * `dropPath(x, prob, { training: true, seed })` draws them: 0 with
 * probability `prob`, else `1 / (1 − prob)`.
 *
 * @example
 * ```ts
 * import { dropPathScales } from "./fused.ts";
 * console.log(dropPathScales(4, 0.5, 3)); // each 0 or 2
 * ```
 */
export function dropPathScales(samples: number, prob: number, seed: number): Float32Array {
  if (!(prob >= 0 && prob <= 1)) throw new Error(`dropPathScales: ${prob} is not in [0, 1]`);
  const keep = 1 - prob;
  const rng = new Rng(seed);
  const out = new Float32Array(samples);
  for (let k = 0; k < samples; k++) out[k] = rng.uniform() < keep ? 1 / keep : 0;
  return out;
}

/**
 * The end of a ConvNeXt block in one kernel:
 * `out[n, c, h, w] = x[n, c, h, w] + s[n] · gamma[c] · y[n, h, w, c]`, i.e.
 * `add(x, dropPath(permute(mul(y, gamma), [0, 3, 1, 2])))` with `x` NCHW,
 * the branch `y` channels-last, LayerScale `gamma` [C] (or null: none) and
 * per-sample drop-path multipliers `scales` (see {@linkcode dropPathScales};
 * null: none). Differentiable in `x`, `y` and `gamma`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { dropPathScales, layerScaleResidual } from "./fused.ts";
 * await initGpu();
 * const x = Tensor.zeros([2, 3, 1, 1]);
 * const y = Tensor.ones([2, 1, 1, 3]);
 * const out = layerScaleResidual(x, y, Tensor.from([1, 2, 3]), Float32Array.from([0, 2]));
 * console.log(await out.read()); // [0, 0, 0, 2, 4, 6]
 * ```
 */
export function layerScaleResidual(
  x: Tensor,
  y: Tensor,
  gamma: Tensor | null,
  scales: Float32Array | null,
): Tensor {
  if (x.rank !== 4) throw new Error(`layerScaleResidual: x must be [N, C, H, W], got [${x.shape}]`);
  const [n, c, hh, ww] = x.shape;
  const hw = hh * ww;
  if (
    y.rank !== 4 || y.shape[0] !== n || y.shape[1] !== hh || y.shape[2] !== ww || y.shape[3] !== c
  ) {
    throw new Error(`layerScaleResidual: y must be [${n}, ${hh}, ${ww}, ${c}], got [${y.shape}]`);
  }
  if (gamma && (gamma.rank !== 1 || gamma.shape[0] !== c)) {
    throw new Error(`layerScaleResidual: gamma must be [${c}], got [${gamma.shape}]`);
  }
  if (scales && scales.length !== n) {
    throw new Error(`layerScaleResidual: ${scales.length} drop-path scales for ${n} samples`);
  }
  const s = scales ? Tensor.from(scales, [n]) : null;
  const names = (
    ...extra: string[]
  ) => [...extra, ...(gamma ? ["gamma"] : []), ...(s ? ["s"] : [])];
  const factor = [gamma ? "gamma[c]" : "", s ? "s[b]" : ""].filter(Boolean).join(" * ") || "1.0";
  const index = `let p = i % ${hw}u; let c = (i / ${hw}u) % ${c}u; let b = i / ${c * hw}u;`;
  const out = Tensor.empty(x.shape);
  launch(
    elementwiseKernel(
      out.size,
      names("x", "br"),
      `${index} y[i] = x[i] + ${factor} * br[(b * ${hw}u + p) * ${c}u + c];`,
    ),
    [x, y, ...(gamma ? [gamma] : []), ...(s ? [s] : []), out],
    out.size,
  );
  const saved = [y, ...(gamma ? [gamma] : []), ...(s ? [s] : [])];
  record("layerScaleResidual", gamma ? [x, y, gamma] : [x, y], out, saved, (g, sv) => {
    const [sy, sg, ss] = gamma ? sv : [sv[0], null, sv[1]];
    const tensors = [...(sg ? [sg] : []), ...(ss ? [ss] : [])];
    // gy in channels-last order: one invocation per gy element reads g across the channel planes.
    const gy = Tensor.empty(y.shape);
    const gyIndex = `let c = i % ${c}u; let p = (i / ${c}u) % ${hw}u; let b = i / ${c * hw}u;`;
    launch(
      elementwiseKernel(
        gy.size,
        names("g"),
        `${gyIndex} y[i] = ${factor} * g[(b * ${c}u + c) * ${hw}u + p];`,
      ),
      [g, ...tensors, gy],
      gy.size,
    );
    let gg: Tensor | null = null;
    if (sg) {
      gg = Tensor.empty([c]);
      columnReduce({
        rows: n * hw,
        cols: c,
        inputs: { g, br: sy, ...(ss ? { s: ss } : {}) },
        term: `${
          ss ? `s[r / ${hw}u] * ` : ""
        }br[r * ${c}u + c] * g[((r / ${hw}u) * ${c}u + c) * ${hw}u + r % ${hw}u]`,
      }, gg);
    }
    return [g.view(x.shape), gy, ...(sg ? [gg] : [])];
  });
  s?.dispose();
  return out;
}

/**
 * `layerNorm(permute(x, [0, 2, 3, 1]), weight, bias, { eps })` in one pass:
 * `x` is NCHW, the result channels-last `[N, H, W, C]`, normalised over C at
 * each pixel (biased variance) with affine `weight`/`bias` [C], as the start
 * of a ConvNeXt block. One invocation per pixel; differentiable in all three.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNormToChannelsLast } from "./fused.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 4, 0, 0], [1, 3, 1, 2]);
 * const y = layerNormToChannelsLast(x, Tensor.ones([3]), Tensor.zeros([3]));
 * console.log(y.shape, await y.read()); // [1, 1, 2, 3] ≈ [-1.22, 0, 1.22, 1.41, -0.71, -0.71]
 * ```
 */
export function layerNormToChannelsLast(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  eps = 1e-6,
): Tensor {
  if (x.rank !== 4) {
    throw new Error(`layerNormToChannelsLast: x must be [N, C, H, W], got [${x.shape}]`);
  }
  const [n, c, hh, ww] = x.shape;
  for (const [what, t] of [["weight", weight], ["bias", bias]] as const) {
    if (t.rank !== 1 || t.shape[0] !== c) {
      throw new Error(`layerNormToChannelsLast: ${what} must be [${c}], got [${t.shape}]`);
    }
  }
  const hw = hh * ww;
  const positions = n * hw;
  const y = Tensor.empty([n, hh, ww, c]);
  const mean = Tensor.empty([positions]);
  const rstd = Tensor.empty([positions]);
  // Position i = b·HW + p: channel k of x at xb + k·HW, of y at i·C + k.
  const at = `let xb = (i / ${hw}u) * ${c * hw}u + i % ${hw}u;`;
  const code = `${storage("x", "w", "b", "y!", "mean!", "rstd!")}
${flatMain(positions)}
  ${at}
${pixelMoments(c, hw)}
  let r = 1.0 / sqrt(q / ${f32(c)} + ${f32(eps)});
  mean[i] = m;
  rstd[i] = r;
  for (var k = 0u; k < ${c}u; k++) {
    y[i * ${c}u + k] = (x[xb + k * ${hw}u] - m) * r * w[k] + b[k];
  }
}`;
  launch(code, [x, weight, bias, y, mean, rstd], positions);
  record(
    "layerNormToChannelsLast",
    [x, weight, bias],
    y,
    [x, weight, mean, rstd],
    (g, [sx, sw, sm, sr]) => layerNormToChannelsLastGrads(g, sx, sw, sm, sr),
  );
  mean.dispose();
  rstd.dispose();
  return y;
}

/**
 * The gradients of {@linkcode layerNormToChannelsLast} from the gradient `g`
 * of its channels-last output `[N, H, W, C]`: `[gx, gWeight, gBias]`, `gx`
 * NCHW like `x`; `mean` and `rstd` are the per-pixel statistics `[N·H·W]`
 * the forward computed. For fused ops that normalise the same way.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNormToChannelsLastGrads } from "./fused.ts";
 * await initGpu();
 * const x = Tensor.from([1, 3], [1, 2, 1, 1]);
 * const [mean, rstd] = [Tensor.from([2]), Tensor.from([1])];
 * const g = Tensor.from([1, 1], [1, 1, 1, 2]);
 * const [gx, gw, gb] = layerNormToChannelsLastGrads(g, x, Tensor.ones([2]), mean, rstd);
 * console.log(await gx.read(), await gw.read(), await gb.read()); // [0, 0] [-1, 1] [1, 1]
 * ```
 */
export function layerNormToChannelsLastGrads(
  g: Tensor,
  x: Tensor,
  weight: Tensor,
  mean: Tensor,
  rstd: Tensor,
): [Tensor, Tensor, Tensor] {
  const [n, c, hh, ww] = x.shape;
  const hw = hh * ww;
  const positions = n * hw;
  const [sx, sw, sm, sr] = [x, weight, mean, rstd];
  const gx = pixelInputGrad(g, sx, sm, sr, sw);
  // Weight and bias gradients: per channel c, sums over the positions r.
  const gw = Tensor.empty([c]);
  const gb = Tensor.empty([c]);
  columnReduce({
    rows: positions,
    cols: c,
    inputs: { g, x: sx, mean: sm, rstd: sr },
    term: `g[r * ${c}u + c] * (x[(r / ${hw}u) * ${
      c * hw
    }u + c * ${hw}u + r % ${hw}u] - mean[r]) * rstd[r]`,
  }, gw);
  columnReduce({ rows: positions, cols: c, inputs: { g }, term: `g[r * ${c}u + c]` }, gb);
  return [gx, gw, gb];
}

/**
 * The product `gelu(h) · wᵀ` as {@linkcode gemm} reads it: rows of `h`
 * [..., K] with GELU applied as they load, against `weight` [N, K] (vec4
 * loads of the weight when K allows). The caller adds `outputs` and the
 * `store` (bias, LayerScale, residual, …).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { geluLoadedProduct } from "./fused.ts";
 * await initGpu();
 * const spec = geluLoadedProduct(Tensor.zeros([6, 8]), Tensor.zeros([3, 8]));
 * console.log(spec.m, spec.n, spec.k); // 6 3 8
 * ```
 */
export function geluLoadedProduct(
  h: Tensor,
  weight: Tensor,
): Omit<GemmSpec, "outputs" | "store"> {
  const [outF, inF] = weight.shape;
  return {
    batch: 1,
    m: h.size / inF,
    n: outF,
    k: inF,
    inputs: { h, w: weight },
    loadA: `let hv = h[m * ${inF}u + k]; return ${GELU_OF_HV};`,
    aKFast: true,
    loadB: `return w[n * ${inF}u + k];`,
    bKFast: true,
    ...(inF % 4 === 0 && { vecB: { input: "w", index: `n * ${inF}u + k` } }),
    prelude: ERF_WGSL,
  };
}

/**
 * WGSL statements that leave the mean of pixel `xb`'s `c` channels of an
 * NCHW tensor `x` (channel k at `xb + k·hw`) in `m` and their centred sum of
 * squares in `q`, two-pass (no cancellation).
 *
 * @example
 * ```ts
 * import { pixelMoments } from "./fused.ts";
 * console.log(pixelMoments(4, 9).includes("let m = s / 4.0;")); // true
 * ```
 */
export function pixelMoments(c: number, hw: number): string {
  return `  var s = 0.0;
  for (var k = 0u; k < ${c}u; k++) { s += x[xb + k * ${hw}u]; }
  let m = s / ${f32(c)};
  var q = 0.0;
  for (var k = 0u; k < ${c}u; k++) {
    let d = x[xb + k * ${hw}u] - m;
    q += d * d;
  }`;
}
