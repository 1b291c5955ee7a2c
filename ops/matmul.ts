/**
 * Matrix products with their backward: batched {@linkcode matmul} with
 * optional transposed operands (the backward never materialises a
 * transpose) and {@linkcode linear}, PyTorch's `nn.Linear` on the last axis
 * (ConvNeXt's pointwise convolutions on channels-last tensors, and the head).
 *
 * Products run the tiled, register-blocked kernels of `gemm_kernel.ts` (split
 * over the inner dimension when the output is small, as weight gradients
 * are). The simple kernel is kept as the fallback and the test oracle
 * (`setGemmImpl("simple")`): each 16×16 workgroup computes a 16×16 tile of
 * the output, one value per invocation, staging 16×8 slabs of both operands
 * in workgroup memory. Either way a transposed operand is loaded in another
 * element order so that neighbouring threads still read neighbouring
 * addresses.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { linear, matmul } from "./matmul.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * const b = Tensor.from([1, 0, 0, 1, 1, 1], [3, 2]);
 * console.log(await matmul(a, b).read()); // Float32Array [4, 5, 10, 11]
 * const w = Tensor.from([1, 1, 1], [1, 3]);
 * console.log(await linear(a, w, Tensor.from([0.5])).read()); // Float32Array [6.5, 15.5]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { sumAxes, sumToShape } from "./elementwise.ts";
import { columnReduce, gemm } from "./gemm_kernel.ts";
import { gemmImpl } from "./gemm_plan.ts";
import { launch, storage } from "./kernel.ts";
import { grid1d, numel, Tensor } from "./tensor.ts";

/** Options of {@linkcode matmul}: use the transpose of the last two axes of an operand. */
export interface MatmulOptions {
  /** `a` is stored as `[..., K, M]` and used transposed. */
  transA?: boolean;
  /** `b` is stored as `[..., N, K]` and used transposed. */
  transB?: boolean;
}

/** Output tile edge (the workgroup is TILE × TILE) and the k-extent staged per step. */
const TILE = 16;
const KSTEP = 8;
/** vec4s per staged row. */
const KV = KSTEP / 4;

/** Broadcast shape of two batch shapes (NumPy rules). */
function batchShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`matmul: batch shapes [${a}] and [${b}] do not broadcast`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/**
 * WGSL: the element offset of the matrix that an operand with batch shape
 * `shape` contributes to output batch `bt` (batch shape `out`), each matrix
 * holding `matrix` values.
 */
function batchOffset(shape: readonly number[], out: readonly number[], matrix: number): string {
  const count = numel(shape);
  if (count === numel(out)) return `bt * ${matrix}u`;
  if (count === 1) return "0u";
  const pad = out.length - shape.length;
  let outStride = 1;
  let inStride = 1;
  const terms: string[] = [];
  for (let d = out.length - 1; d >= 0; d--) {
    const sd = shape[d - pad] ?? 1;
    if (sd !== 1) terms.push(`((bt / ${outStride}u) % ${out[d]}u) * ${inStride * matrix}u`);
    outStride *= out[d];
    inStride *= sd;
  }
  return terms.join(" + ");
}

interface Product {
  m: number;
  k: number;
  n: number;
  transA: boolean;
  transB: boolean;
  /** Output batch shape. */
  batch: number[];
  aOffset: string;
  bOffset: string;
}

/**
 * y[bt] = op(a[bt]) · op(b[bt]) (+ bias over columns): the register-blocked
 * kernels of `gemm_kernel.ts`, or the simple one under `setGemmImpl("simple")`.
 */
function product(p: Product, a: Tensor, b: Tensor, bias: Tensor | null): Tensor {
  return gemmImpl() === "tiled" ? tiledProduct(p, a, b, bias) : simpleProduct(p, a, b, bias);
}

/** {@linkcode product} through {@linkcode gemm}. */
function tiledProduct(p: Product, a: Tensor, b: Tensor, bias: Tensor | null): Tensor {
  const { m, k, n } = p;
  const y = Tensor.empty([...p.batch, m, n]);
  if (y.size === 0) return y;
  if (k === 0) {
    y.dispose();
    return simpleProduct(p, a, b, bias);
  }
  const aAt = `${p.aOffset} + ${p.transA ? `k * ${m}u + m` : `m * ${k}u + k`}`;
  const bAt = `${p.bOffset} + ${p.transB ? `n * ${k}u + k` : `k * ${n}u + n`}`;
  // vec4 addressing needs the fast extent (and so each matrix's size) a multiple of 4.
  const aFast = p.transA ? m : k;
  const bFast = p.transB ? k : n;
  gemm({
    batch: numel(p.batch),
    m,
    n,
    k,
    inputs: { a, b },
    loadA: `return a[${aAt}];`,
    aKFast: !p.transA,
    vecA: aFast % 4 === 0 ? { input: "a", index: aAt } : undefined,
    loadB: `return b[${bAt}];`,
    bKFast: p.transB,
    vecB: bFast % 4 === 0 ? { input: "b", index: bAt } : undefined,
    outputs: bias ? { y, bias } : { y },
    store: `y[bt * ${m * n}u + m * ${n}u + n] = v${bias ? " + bias[n]" : ""};`,
  });
  return y;
}

/** y[bt] = op(a[bt]) · op(b[bt]) (+ bias over columns), one output per thread, 16×16 tiles. */
function simpleProduct(p: Product, a: Tensor, b: Tensor, bias: Tensor | null): Tensor {
  const { m, k, n, transA, transB } = p;
  const y = Tensor.empty([...p.batch, m, n]);
  if (y.size === 0) return y;
  const batches = numel(p.batch);
  const tilesN = Math.ceil(n / TILE);
  const tilesM = Math.ceil(m / TILE);
  const total = tilesN * tilesM * batches;
  // Each step stages a 16×8 slab of op(a) (by row m) and an 8×16 slab of op(b) (by column n),
  // both as vec4s along k, so the inner product is two dot products. The first 128 threads load
  // op(a), the rest op(b), with the element order chosen so that neighbouring threads read
  // neighbouring addresses whether or not the operand is stored transposed. (A k-step of 8
  // rather than 16 halves the workgroup arrays, whose size dominates compile time on llvmpipe.)
  const loadA = transA
    ? `let kk = e / ${TILE}u; let mm = e % ${TILE}u;
      let am = tm * ${TILE}u + mm; let ak = k0 + kk;
      var v = 0.0;
      if (am < ${m}u && ak < ${k}u) { v = a[aBase + ak * ${m}u + am]; }
      ta[mm * ${KV}u + kk / 4u][kk % 4u] = v;`
    : `let mm = e / ${KSTEP}u; let kk = e % ${KSTEP}u;
      let am = tm * ${TILE}u + mm; let ak = k0 + kk;
      var v = 0.0;
      if (am < ${m}u && ak < ${k}u) { v = a[aBase + am * ${k}u + ak]; }
      ta[mm * ${KV}u + kk / 4u][kk % 4u] = v;`;
  const loadB = transB
    ? `let nn = e / ${KSTEP}u; let kk = e % ${KSTEP}u;
      let bn = tn * ${TILE}u + nn; let bk = k0 + kk;
      var v = 0.0;
      if (bn < ${n}u && bk < ${k}u) { v = b[bBase + bn * ${k}u + bk]; }
      tb[nn * ${KV}u + kk / 4u][kk % 4u] = v;`
    : `let kk = e / ${TILE}u; let nn = e % ${TILE}u;
      let bn = tn * ${TILE}u + nn; let bk = k0 + kk;
      var v = 0.0;
      if (bn < ${n}u && bk < ${k}u) { v = b[bBase + bk * ${n}u + bn]; }
      tb[nn * ${KV}u + kk / 4u][kk % 4u] = v;`;
  const code = `${storage("a", "b", ...(bias ? ["bias"] : []), "y!")}
var<workgroup> ta: array<vec4f, ${TILE * KV}>;
var<workgroup> tb: array<vec4f, ${TILE * KV}>;
@compute @workgroup_size(${TILE}, ${TILE})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u, @builtin(local_invocation_index) li: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= ${total}u) { return; }
  let tn = g % ${tilesN}u;
  let tm = (g / ${tilesN}u) % ${tilesM}u;
  let bt = g / ${tilesN * tilesM}u;
  let aBase = ${p.aOffset};
  let bBase = ${p.bOffset};
  let e = li % ${TILE * KSTEP}u;
  var acc = 0.0;
  for (var k0 = 0u; k0 < ${k}u; k0 += ${KSTEP}u) {
    if (li < ${TILE * KSTEP}u) {
      ${loadA}
    } else {
      ${loadB}
    }
    workgroupBarrier();
    for (var q = 0u; q < ${KV}u; q++) { acc += dot(ta[lid.y * ${KV}u + q], tb[lid.x * ${KV}u + q]); }
    workgroupBarrier();
  }
  let row = tm * ${TILE}u + lid.y;
  let col = tn * ${TILE}u + lid.x;
  if (row < ${m}u && col < ${n}u) {
    y[bt * ${m * n}u + row * ${n}u + col] = acc${bias ? " + bias[col]" : ""};
  }
}`;
  launch(code, [a, b, ...(bias ? [bias] : []), y], grid1d(total, 1));
  return y;
}

/** The product's dimensions and batch layout, with errors naming both shapes. */
function plan(
  aShape: readonly number[],
  bShape: readonly number[],
  transA: boolean,
  transB: boolean,
): Product {
  if (aShape.length < 2 || bShape.length < 2) {
    throw new Error(`matmul needs operands of rank ≥ 2, got [${aShape}] and [${bShape}]`);
  }
  const [a0, a1] = aShape.slice(-2);
  const [b0, b1] = bShape.slice(-2);
  const [m, k] = transA ? [a1, a0] : [a0, a1];
  const [kb, n] = transB ? [b1, b0] : [b0, b1];
  if (k !== kb) {
    throw new Error(
      `matmul: inner dimensions differ: [${aShape}]${transA ? "ᵀ" : ""} · [${bShape}]${
        transB ? "ᵀ" : ""
      }`,
    );
  }
  const aBatch = aShape.slice(0, -2);
  const bBatch = bShape.slice(0, -2);
  const batch = batchShape(aBatch, bBatch);
  return {
    m,
    k,
    n,
    transA,
    transB,
    batch,
    aOffset: batchOffset(aBatch, batch, m * k),
    bOffset: batchOffset(bBatch, batch, k * n),
  };
}

/**
 * Matrix product `op(a) · op(b)` over the last two axes, where `op` is the
 * transpose when `opts.transA` / `opts.transB` is set: `a` is `[..., M, K]`
 * (or `[..., K, M]` transposed), `b` is `[..., K, N]` (or `[..., N, K]`), the
 * result `[..., M, N]`. Leading batch axes broadcast as NumPy's.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { matmul } from "./matmul.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 3, 4], [2, 2]);
 * console.log(await matmul(a, a, { transB: true }).read()); // a·aᵀ: Float32Array [5, 11, 11, 25]
 * ```
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const y = product(plan(a.shape, b.shape, transA, transB), a, b, null);
  record("matmul", [a, b], y, [a, b], (g, [sa, sb]) => {
    // With C = op(A)·op(B): dop(A) = G·op(B)ᵀ and dop(B) = op(A)ᵀ·G, transposed back when stored so.
    const ga = transA
      ? matmul(sb, g, { transA: transB, transB: true })
      : matmul(g, sb, { transB: !transB });
    const gb = transB
      ? matmul(g, sa, { transA: true, transB: transA })
      : matmul(sa, g, { transA: !transA });
    return [sumToShape(ga, a.shape), sumToShape(gb, b.shape)];
  });
  return y;
}

/**
 * PyTorch's `nn.Linear`: `y = x · weightᵀ + bias` on the last axis. `x` is
 * `[..., in]`, `weight` `[out, in]`, `bias` `[out]` or null; `y` is
 * `[..., out]`. The bias add is fused into the product.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { linear } from "./matmul.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 4, 4, 3], { seed: 1 }); // channels-last N, H, W, C
 * const w = Tensor.randn([8, 3], { seed: 2 });
 * console.log(linear(x, w, Tensor.zeros([8])).shape); // [2, 4, 4, 8]
 * ```
 */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  if (weight.rank !== 2) throw new Error(`linear: weight must be [out, in], got [${weight.shape}]`);
  const [outF, inF] = weight.shape;
  if (x.rank < 1 || x.shape[x.rank - 1] !== inF) {
    throw new Error(
      `linear: input [${x.shape}] does not end in ${inF} features (weight [${weight.shape}])`,
    );
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== outF)) {
    throw new Error(`linear: bias must be [${outF}], got [${bias.shape}]`);
  }
  const rows = x.size / inF;
  const outShape = [...x.shape.slice(0, -1), outF];
  const x2 = x.view([rows, inF]);
  const y2 = product(plan(x2.shape, weight.shape, false, true), x2, weight, bias);
  const y = y2.view(outShape);
  x2.dispose();
  y2.dispose();
  const inputs = bias ? [x, weight, bias] : [x, weight];
  record("linear", inputs, y, [x, weight], (g, [sx, sw]) => {
    const g2 = g.view([rows, outF]);
    const gx = matmul(g2, sw).view(x.shape);
    const gw = matmul(g2, sx.view([rows, inF]), { transA: true });
    return bias ? [gx, gw, biasGrad(g2, rows, outF)] : [gx, gw];
  });
  return y;
}

/**
 * The bias gradient of a linear layer: column sums of `g` [rows, out], with
 * coalesced strips under the tiled kernels (else `sumAxes`).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { biasGrad } from "./matmul.ts";
 * await initGpu();
 * console.log(await biasGrad(Tensor.from([1, 2, 3, 4], [2, 2]), 2, 2).read()); // [4, 6]
 * ```
 */
export function biasGrad(g: Tensor, rows: number, cols: number): Tensor {
  if (gemmImpl() !== "tiled") return sumAxes(g.view([rows, cols]), [0]).view([cols]);
  const gb = Tensor.empty([cols]);
  columnReduce({ rows, cols, inputs: { g }, term: `g[r * ${cols}u + c]` }, gb);
  return gb;
}
