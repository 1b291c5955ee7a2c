/**
 * The whole end of a ConvNeXt/SLaK block as one matrix product:
 * `x + dropPath(permute(γ · linear(gelu(h), W, b), [0, 3, 1, 2]))`: the
 * product loads `gelu(h)` (one elementwise pass into a buffer freed right
 * after: the erf costs too much to repeat on every load) and bias,
 * LayerScale, the per-sample drop-path multiplier and the residual add are
 * applied where the product stores, straight into the NCHW block output.
 * The unfused end (`geluLinear` then `layerScaleResidual`) writes the
 * channels-last branch, reads it back and writes the output; here the
 * branch is never stored, neither for the forward nor for the backward (the
 * γ gradient is computed from the weight gradient's product instead of from
 * the branch), and only `h` is kept for the backward.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { grid1d, Tensor } from "./tensor.ts";
 * import { geluLinearResidual } from "./fused_residual.ts";
 * await initGpu();
 * const x = Tensor.zeros([1, 2, 1, 1]); // NCHW residual
 * const h = Tensor.from([1, -1], [1, 1, 1, 2]); // channels-last hidden
 * const w = Tensor.from([1, 1, 1, 0], [2, 2]);
 * const y = geluLinearResidual(x, h, w, null, Tensor.from([1, 2]), null);
 * console.log(await y.read()); // ≈ [0.683, 1.683]
 * ```
 * @module
 */
import { noGrad, record, willRecord } from "./autograd.ts";
import { ERF_WGSL, gelu } from "./elementwise.ts";
import { GELU_GRAD_OF_HV, geluLinear, layerScaleResidual } from "./fused.ts";
import { columnReduce, gemm } from "./gemm_kernel.ts";
import { gemmImpl } from "./gemm_plan.ts";
import { launch, storage } from "./kernel.ts";
import { linear } from "./matmul.ts";
import { grid1d, Tensor } from "./tensor.ts";

/**
 * `x + dropPath(permute(gamma · linear(gelu(h), weight, bias), [0, 3, 1, 2]))`
 * in one product (exact erf GELU): `x` is the NCHW residual `[N, C, H, W]`,
 * `h` the channels-last hidden activation `[N, H, W, F]`, `weight` `[C, F]`,
 * `bias` `[C]` (or null), LayerScale `gamma` `[C]` (or null) and `scales`
 * the per-sample drop-path multipliers (`dropPathScales`; null: none).
 * Differentiable in `x`, `h`, `weight`, `bias` and `gamma`; keeps only `h`
 * (and the parameters) for the backward. Under `setGemmImpl("simple")` it
 * runs the unfused chain. With `activated`, `h` already holds `gelu(h)`
 * (`layerNormLinear`'s `gelu` option) and is loaded as it is: a forward
 * without gradients only.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { grid1d, Tensor } from "./tensor.ts";
 * import { geluLinearResidual } from "./fused_residual.ts";
 * await initGpu();
 * const x = Tensor.ones([2, 1, 1, 1]);
 * const h = Tensor.from([1, 1], [2, 1, 1, 1]);
 * const y = geluLinearResidual(x, h, Tensor.ones([1, 1]), Tensor.zeros([1]), null, Float32Array.from([0, 2]));
 * console.log(await y.read()); // ≈ [1, 2.683]: sample 0 dropped, sample 1 kept and doubled
 * ```
 */
export function geluLinearResidual(
  x: Tensor,
  h: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  gamma: Tensor | null,
  scales: Float32Array | null,
  { activated = false }: { activated?: boolean } = {},
): Tensor {
  const where = "geluLinearResidual";
  if (x.rank !== 4) throw new Error(`${where}: x must be [N, C, H, W], got [${x.shape}]`);
  const [n, c, hh, ww] = x.shape;
  if (weight.rank !== 2 || weight.shape[0] !== c) {
    throw new Error(`${where}: weight must be [${c}, in], got [${weight.shape}]`);
  }
  const inF = weight.shape[1];
  const hShape = [n, hh, ww, inF];
  if (h.rank !== 4 || h.shape.some((d, i) => d !== hShape[i])) {
    throw new Error(`${where}: h must be [${hShape}], got [${h.shape}]`);
  }
  for (const [what, t] of [["bias", bias], ["gamma", gamma]] as const) {
    if (t && (t.rank !== 1 || t.shape[0] !== c)) {
      throw new Error(`${where}: ${what} must be [${c}], got [${t.shape}]`);
    }
  }
  if (scales && scales.length !== n) {
    throw new Error(`${where}: ${scales.length} drop-path scales for ${n} samples`);
  }
  const inputs = [x, h, weight, ...(bias ? [bias] : []), ...(gamma ? [gamma] : [])];
  if (activated && willRecord(inputs)) {
    throw new Error(`${where}: an activated h has no backward; use it without gradients`);
  }
  if (gemmImpl() !== "tiled") {
    let z: Tensor;
    if (activated) z = linear(h, weight, bias);
    else if (bias) z = geluLinear(h, weight, bias);
    else {
      const a = gelu(h);
      z = linear(a, weight, null);
      a.dispose();
    }
    const out = layerScaleResidual(x, z, gamma, scales);
    z.dispose();
    return out;
  }
  const hw = hh * ww;
  const rows = n * hw;
  const s = scales ? Tensor.from(scales, [n]) : null;
  const params = { ...(bias && { bias }), ...(gamma && { gamma }), ...(s && { s }) };
  // Where pixel `row` (pixel row % HW of sample row / HW) of channel `ch` sits in an NCHW tensor.
  const nchw = (row: string, ch: string) =>
    `((${row}) / ${hw}u * ${c}u + ${ch}) * ${hw}u + (${row}) % ${hw}u`;
  // The product runs transposed, channels by pixels (m = channel, n = pixel), so that
  // neighbouring lanes store neighbouring pixels of one NCHW channel plane. Its B operand is
  // gelu(h), computed once by an elementwise pass (unless h already holds it) and loaded as it
  // is: computed as the product loads it, the erf ran once per element per tile of channels,
  // and the product ran at a third of its speed (9.5 against 32 TFLOP/s on an H100).
  const factor = [gamma ? "gamma[m]" : "", s ? `s[n / ${hw}u]` : ""].filter(Boolean).join(" * ");
  const out = Tensor.empty(x.shape);
  const a = activated ? h : noGrad(() => gelu(h));
  gemm({
    batch: 1,
    m: c,
    n: rows,
    k: inF,
    inputs: { w: weight, a },
    loadA: `return w[m * ${inF}u + k];`,
    aKFast: true,
    ...(inF % 4 === 0 && { vecA: { input: "w", index: `m * ${inF}u + k` } }),
    loadB: `return a[n * ${inF}u + k];`,
    bKFast: true,
    ...(inF % 4 === 0 && { vecB: { input: "a", index: `n * ${inF}u + k` } }),
    outputs: { out, x, ...params },
    store: `let at = ${nchw("n", "m")}; out[at] = x[at] + ${factor || "1.0"} * (v${
      bias ? " + bias[m]" : ""
    });`,
  });
  if (a !== h) a.dispose();
  const saved = [h, weight, ...(bias ? [bias] : []), ...(gamma ? [gamma] : []), ...(s ? [s] : [])];
  record(where, inputs, out, saved, (g, sv) => {
    const [sh, sw] = sv;
    let k = 2;
    const sb = bias ? sv[k++] : null;
    const sg = gamma ? sv[k++] : null;
    const ss = s ? sv[k++] : null;
    // The branch's gradient is gz[r, j] = s[r / HW] · γ[j] · g[NCHW(r, j)]: never stored. The
    // product reads g raw (vec4 where pixels come in fours), γ goes with W, s into the store.
    const vecG = hw % 4 === 0;
    const gh = Tensor.empty(hShape);
    gemm({
      batch: 1,
      m: rows,
      n: inF,
      k: c,
      inputs: { g, w: sw, ...(sg && { gamma: sg }) },
      loadA: `return g[${nchw("m", "k")}];`,
      aKFast: false,
      ...(vecG && { vecA: { input: "g", index: nchw("m", "k") } }),
      loadB: `return ${sg ? "gamma[k] * " : ""}w[k * ${inF}u + n];`,
      bKFast: false,
      ...(!sg && inF % 4 === 0 && { vecB: { input: "w", index: `k * ${inF}u + n` } }),
      outputs: { gh, h: sh, ...(ss && { s: ss }) },
      prelude: ERF_WGSL,
      store: `let at = m * ${inF}u + n; let hv = h[at]; gh[at] = ${
        ss ? `s[m / ${hw}u] * ` : ""
      }v * (${GELU_GRAD_OF_HV});`,
    });
    // P[j, f] = Σ_r s · g[NCHW(r, j)] · gelu(h[r, f]): gW = γ[j] · P, and (as the branch before
    // LayerScale is z = gelu(h)·Wᵀ + b) gγ[j] = Σ_f W[j, f] · P[j, f] + b[j] · Σ_r s · g[NCHW(r, j)].
    const gw = Tensor.empty([c, inF]);
    const wp = sg ? Tensor.empty([c, inF]) : null;
    // gelu(h) again, once (see the forward), for the product to load as it is.
    const ga = gelu(sh);
    gemm({
      batch: 1,
      m: c,
      n: inF,
      k: rows,
      inputs: { g, a: ga, ...(ss && { s: ss }) },
      loadA: `return g[${nchw("k", "m")}];`,
      aKFast: true,
      ...(vecG && { vecA: { input: "g", index: nchw("k", "m") } }),
      loadB: `return ${ss ? `s[k / ${hw}u] * ` : ""}a[k * ${inF}u + n];`,
      bKFast: false,
      ...(!ss && inF % 4 === 0 && { vecB: { input: "a", index: `k * ${inF}u + n` } }),
      outputs: { gw, ...(wp && { wp, w: sw, gamma: sg! }) },
      written: wp ? 2 : 1,
      store: wp
        ? `let at = m * ${inF}u + n; gw[at] = gamma[m] * v; wp[at] = w[at] * v;`
        : `gw[m * ${inF}u + n] = v;`,
    });
    ga.dispose();
    // Σ_r s · g[NCHW(r, j)]: the bias gradient before LayerScale.
    const gsum = Tensor.empty([c]);
    columnReduce({
      rows,
      cols: c,
      inputs: { g, ...(ss && { s: ss }) },
      term: `${ss ? `s[r / ${hw}u] * ` : ""}g[${nchw("r", "c")}]`,
    }, gsum);
    if (!sg) return [g.view(x.shape), gh, gw, ...(sb ? [gsum] : [])];
    const gb = Tensor.empty([c]);
    const gg = Tensor.empty([c]);
    // One workgroup per channel sums its row of W ⊙ P: neighbouring lanes read neighbouring
    // columns, then a tree in workgroup memory.
    const finish = `${storage("wp", "gsum", "gamma", ...(sb ? ["b"] : []), "gb!", "gg!")}
var<workgroup> part: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let ch = wid.x + wid.y * nwg.x;
  if (ch >= ${c}u) { return; }
  var acc = 0.0;
  for (var f = li; f < ${inF}u; f += 64u) { acc += wp[ch * ${inF}u + f]; }
  part[li] = acc;
  workgroupBarrier();
  for (var half = 32u; half > 0u; half >>= 1u) {
    if (li < half) { part[li] += part[li + half]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    gg[ch] = part[0]${sb ? " + b[ch] * gsum[ch]" : ""};
    gb[ch] = gamma[ch] * gsum[ch];
  }
}`;
    launch(finish, [wp!, gsum, sg, ...(sb ? [sb] : []), gb, gg], grid1d(c, 1));
    wp!.dispose();
    gsum.dispose();
    if (!sb) gb.dispose();
    return [g.view(x.shape), gh, gw, ...(sb ? [gb] : []), gg];
  });
  s?.dispose();
  return out;
}
