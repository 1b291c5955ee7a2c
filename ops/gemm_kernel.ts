/**
 * A tiled, register-blocked matrix-product kernel generator (GEMM) for
 * products whose operands are not plain matrices: each operand is read
 * through a small WGSL loader function, so the same kernel serves batched
 * and transposed matmuls, 1×1 convolutions on NCHW tensors, and any
 * `groups = 1` convolution as an implicit GEMM (the im2col addressing lives
 * in the loader, nothing is materialised).
 *
 * A workgroup owns a `bm × bn` output tile. Per `bk`-deep step it stages a
 * `bm × bk` slab of A and a `bk × bn` slab of B in workgroup memory (zero
 * outside the matrices), then every invocation accumulates a `tm × tn`
 * register block of rows and columns taken four at a time (vec4 reads of
 * workgroup memory), the blocks of neighbouring lanes interleaved so that
 * they read and write neighbouring addresses; one staged value serves `tn`
 * (or `tm`) multiply-adds. Products with few output tiles and a long
 * inner dimension (weight gradients: `K = N·H·W`) split `K` over extra
 * workgroups and sum the partial products in a second, small kernel that
 * also applies the store (bias add, NCHW scatter). The WGSL comes from one
 * generator, `gemm_source.ts`, whose config switches (vec4 loads where the
 * spec offers vec4 addressing, unchecked interior tiles, double-buffered
 * workgroup memory, an unrolled inner loop) are what the planner's
 * candidates vary.
 *
 * The tiles are the planner's choice for the product (see `planner.ts`),
 * else the heuristic's (`gemmConfig` in `gemm_plan.ts`). The planner checks
 * every candidate against {@linkcode gemmReference}, a plain kernel that
 * runs the same loaders and store. On the H100 tuned tiles took the 38
 * distinct products of a ConvNeXt-T training step from 63.3 to 37.5 ms (one
 * launch of each).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { gemm } from "./gemm_kernel.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * const b = Tensor.from([1, 0, 0, 1, 1, 1], [3, 2]);
 * const y = Tensor.empty([2, 2]);
 * gemm({
 *   batch: 1, m: 2, n: 2, k: 3,
 *   inputs: { a, b },
 *   loadA: "return a[m * 3u + k];", aKFast: true,
 *   loadB: "return b[k * 2u + n];", bKFast: false,
 *   outputs: { y },
 *   store: "y[m * 2u + n] = v;",
 * });
 * console.log(await y.read()); // Float32Array [4, 5, 10, 11]
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { launch, storage, sumPerOutputKernel } from "./kernel.ts";
import {
  gemmCandidates,
  type GemmConfig,
  gemmConfig,
  isGemmConfig,
  withSplits,
} from "./gemm_plan.ts";
import {
  bindingsFrom,
  gemmSource,
  type GemmSourceSpec,
  type GemmVecOperand,
  kChunks,
  vecViews,
} from "./gemm_source.ts";
import { type PlanJob, planner } from "./planner.ts";
import { randomNormal } from "./random.ts";
import { grid1d, Tensor } from "./tensor.ts";

export type { GemmConfig, GemmVecOperand };

const gemmSources = new Map<string, string>();

/**
 * One product for {@linkcode gemm}: `out[bt, m, n] = Σ_k A(bt, m, k) · B(bt, n, k)`,
 * the generator's {@linkcode GemmSourceSpec} with the tensors bound by WGSL name.
 */
export interface GemmSpec extends Omit<GemmSourceSpec, "inputs" | "outputs" | "written"> {
  /** Tensors the loaders read, by their WGSL names. */
  inputs: Record<string, Tensor>;
  /** Tensors the store writes or reads (output first), by WGSL name; the first is read-write. */
  outputs: Record<string, Tensor>;
  /** How many leading `outputs` the store writes (default 1); the rest are read-only. */
  written?: number;
}

/** A short, stable id of a product's loaders and store (two 32-bit FNV-1a hashes). */
function productId(product: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < product.length; i++) {
    const c = product.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, "0") + (b >>> 0).toString(16).padStart(8, "0");
}

/** The planner's tiles for a product (a forced config gets the heuristic's split), else the heuristic's. */
function plannedConfig(spec: GemmSpec, product: string): GemmConfig {
  const { batch, m, n, k } = spec;
  const key = `${batch}x${m}x${n}x${k}:${productId(product)}`;
  const c = planner().choose("gemm", key, isGemmConfig, () => gemmJob(spec));
  return c ? withSplits(c, batch, m, n, k) : gemmConfig(batch, m, n, k);
}

/**
 * What the planner needs to plan a product: its candidates, and random
 * operands of the spec's shapes (drawn on the GPU: a CPU draw of a stage-1
 * operand takes seconds, with the GPU idle) on which a candidate and
 * {@linkcode gemmReference} run. Written outputs start from the same values
 * for every checked run, since a store may read them; timed runs reuse one
 * set of outputs, so that only the product is timed.
 */
function gemmJob(spec: GemmSpec): PlanJob<GemmConfig> {
  const shapes = (r: Record<string, Tensor>): [string, readonly number[]][] =>
    Object.entries(r).map(([name, t]) => [name, [...t.shape]]);
  const inShapes = shapes(spec.inputs);
  const outShapes = shapes(spec.outputs);
  const written = spec.written ?? 1;
  const random = (list: [string, readonly number[]][], seed: number): [string, Tensor][] =>
    list.map(([name, s], i) => [name, randomNormal(s, { seed: seed + i })]);
  return {
    work: spec.batch * spec.m * spec.n * spec.k,
    candidates: (o) => gemmCandidates(spec.batch, spec.m, spec.n, spec.k, o),
    bench: () => {
      const inputs = Object.fromEntries(random(inShapes, 1));
      const kept = random(outShapes.slice(written), 50);
      let scratch: Record<string, Tensor> | null = null;
      const runWith = (record: (s: GemmSpec) => void): Tensor[] => {
        const fresh = random(outShapes.slice(0, written), 20);
        record({ ...spec, inputs, outputs: Object.fromEntries([...fresh, ...kept]) });
        return fresh.map(([, t]) => t);
      };
      return {
        run: (c) => runWith((s) => gemm(s, c)),
        reference: () => runWith(gemmReference),
        time: (c) => {
          scratch ??= Object.fromEntries([...random(outShapes.slice(0, written), 20), ...kept]);
          gemm({ ...spec, inputs, outputs: scratch }, c);
        },
        dispose: () => {
          for (const t of Object.values(inputs)) t.dispose();
          for (const [, t] of kept) t.dispose();
          for (const t of Object.values(scratch ?? {}).slice(0, written)) t.dispose();
        },
      };
    },
  };
}

/**
 * The product of `spec` by a plain kernel: one invocation per output
 * element walks the whole inner dimension through the spec's loaders and
 * calls its store. The reference that the planner checks tiled candidates
 * against.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { gemmReference } from "./gemm_kernel.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 3, 4], [2, 2]);
 * const y = Tensor.empty([2, 2]);
 * gemmReference({
 *   batch: 1, m: 2, n: 2, k: 2, inputs: { a },
 *   loadA: "return a[m * 2u + k];", aKFast: true,
 *   loadB: "return a[k * 2u + n];", bKFast: false,
 *   outputs: { y }, store: "y[m * 2u + n] = v;",
 * });
 * console.log(await y.read()); // Float32Array [7, 10, 15, 22]
 * ```
 */
export function gemmReference(spec: GemmSpec): void {
  const { batch, m, n, k } = spec;
  const total = batch * m * n;
  if (total === 0) return;
  const inNames = Object.keys(spec.inputs);
  const outNames = Object.keys(spec.outputs);
  const code = `${storage(...inNames)}
${bindingsFrom(outNames, inNames.length, spec.written ?? 1)}
${spec.prelude ?? ""}
fn ldA(bt: u32, m: u32, k: u32) -> f32 { ${spec.loadA} }
fn ldB(bt: u32, n: u32, k: u32) -> f32 { ${spec.loadB} }
fn st(bt: u32, m: u32, n: u32, v: f32) { ${spec.store} }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * 256u);
  if (i >= ${total}u) { return; }
  let row = (i / ${n}u) % ${m}u;
  let col = i % ${n}u;
  let bt = i / ${m * n}u;
  var acc = 0.0;
  for (var kk = 0u; kk < ${k}u; kk++) { acc = fma(ldA(bt, row, kk), ldB(bt, col, kk), acc); }
  st(bt, row, col, acc);
}`;
  launch(code, [...Object.values(spec.inputs), ...Object.values(spec.outputs)], total);
}

/**
 * Record the product described by `spec` (see {@linkcode GemmSpec}); no
 * autograd. `cfg` defaults to the planner's choice for the product, else the
 * heuristic's (`gemmConfig`).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { gemm } from "./gemm_kernel.ts";
 * await initGpu();
 * // y = xᵀ·x for x [5, 3]: A(m, k) = x[k, m], B(n, k) = x[k, n].
 * const x = Tensor.ones([5, 3]);
 * const y = Tensor.empty([3, 3]);
 * gemm({
 *   batch: 1, m: 3, n: 3, k: 5, inputs: { x },
 *   loadA: "return x[k * 3u + m];", aKFast: false,
 *   loadB: "return x[k * 3u + n];", bKFast: false,
 *   outputs: { y }, store: "y[m * 3u + n] = v;",
 * });
 * console.log(await y.read()); // Float32Array(9) [5, 5, 5, 5, 5, 5, 5, 5, 5]
 * ```
 */
export function gemm(spec: GemmSpec, cfg?: GemmConfig): void {
  const { batch, m, n, k } = spec;
  if (batch * m * n === 0) return;
  const written = spec.written ?? 1;
  const inNames = Object.keys(spec.inputs);
  const outNames = Object.keys(spec.outputs);
  // What the product is, apart from its tiles: the key of its tuning and (with the tiles) its source.
  const product = JSON.stringify([
    batch,
    m,
    n,
    k,
    spec.loadA,
    spec.aKFast,
    spec.loadB,
    spec.bKFast,
    spec.store,
    written,
    spec.prelude ?? "",
    inNames,
    outNames,
    spec.vecA ?? null,
    spec.vecB ?? null,
  ]);
  const c = cfg ?? plannedConfig(spec, product);
  if (!isGemmConfig(c)) throw new Error(`gemm: invalid config ${JSON.stringify(c)}`);
  const { splits } = kChunks(c, k);
  const partial = splits > 1 ? Tensor.empty([splits * batch * m * n]) : null;
  // Generating the source costs more CPU than recording the dispatch: cache it per product.
  // `product` is already JSON: append to it rather than stringify (and escape) it again.
  const key = product + JSON.stringify(c);
  let code = gemmSources.get(key);
  if (code === undefined) {
    code = gemmSource({ ...spec, inputs: inNames, outputs: outNames, written }, c);
    gemmSources.set(key, code);
  }
  const views = vecViews(spec, c).map((name) => spec.inputs[name]);
  const tiles = Math.ceil(m / c.bm) * Math.ceil(n / c.bn) * batch * splits;
  launch(
    code,
    [
      ...Object.values(spec.inputs),
      ...views,
      ...(partial ? [partial] : Object.values(spec.outputs)),
    ],
    grid1d(tiles, 1),
    undefined,
    { name: "gemm", config: { batch, m, n, k, cfg: c } },
  );
  if (!partial) return;
  // Sum the partial products over the splits and store them.
  const mn = m * n;
  const sum = `${storage("part")}
${spec.prelude ?? ""}
${bindingsFrom(outNames, 1, written)}
fn st(bt: u32, m: u32, n: u32, v: f32) { ${spec.store} }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * 256u);
  if (i >= ${batch * mn}u) { return; }
  var v = 0.0;
  for (var s = 0u; s < ${splits}u; s++) { v += part[s * ${batch * mn}u + i]; }
  st(i / ${mn}u, (i / ${n}u) % ${m}u, i % ${n}u, v);
}`;
  launch(sum, [partial, ...Object.values(spec.outputs)], batch * mn);
  partial.dispose();
}

/** Threads that fill the GPU a few times over: what {@linkcode columnReduce} aims its split at. */
function targetThreads(): number {
  return gpu().isFallback ? 4096 : 1 << 18;
}

/** Columns one workgroup of {@linkcode columnReduce} sums: 8 floats, one 32-byte memory sector. */
const REDUCE_COLS = 8;

/** Invocations of one workgroup of {@linkcode columnReduce}. */
const REDUCE_WG = 256;

/**
 * Column sums `out[c] = Σ_{r < rows} term(r, c)` for `c < cols`, where
 * `term` is a WGSL expression in `r`, `c` and the named `inputs` (not named
 * `group`, `strip`, `c0`, `li`, `half`, `a0`…`a7`, `r0`, `r1`, `part` or
 * `part_out`, the kernel's own names): bias, LayerNorm-affine and LayerScale gradients, whose terms read
 * channels-last tensors (`[rows, cols]`, column fast) and NCHW ones (row
 * fast within a sample) alike. Each workgroup takes 8 columns and a strip
 * of rows; neighbouring invocations take neighbouring rows and each adds
 * up its rows' 8 columns. So a row-fast read is coalesced across the lanes,
 * and a column-fast one reads one 32-byte sector per lane that the lane's
 * next 7 terms find in cache: neither layout strides through memory (lanes
 * on neighbouring columns, the obvious mapping, read an NCHW tensor one
 * sector per element). The workgroup then sums its invocations' partial sums
 * in workgroup memory, and a second kernel, one workgroup per column, the
 * strips'. No autograd.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { columnReduce } from "./gemm_kernel.ts";
 * await initGpu();
 * const g = Tensor.from([1, 2, 3, 4, 5, 6], [3, 2]);
 * const out = Tensor.empty([2]);
 * columnReduce({ rows: 3, cols: 2, inputs: { g }, term: "g[r * 2u + c]" }, out);
 * console.log(await out.read()); // Float32Array [9, 12]
 * ```
 */
export function columnReduce(
  spec: { rows: number; cols: number; inputs: Record<string, Tensor>; term: string },
  out: Tensor,
): void {
  const { rows, cols } = spec;
  if (cols === 0) return;
  const names = Object.keys(spec.inputs);
  const inputs = Object.values(spec.inputs);
  const blocks = Math.ceil(cols / REDUCE_COLS);
  // Enough workgroups to fill the GPU, each with at least one row per invocation.
  const strips = Math.max(
    1,
    Math.min(
      Math.ceil(rows / REDUCE_WG),
      Math.ceil(targetThreads() / REDUCE_WG / blocks),
    ),
  );
  const per = Math.ceil(rows / strips);
  const used = Math.max(1, Math.ceil(rows / Math.max(per, 1)));
  const partial = used > 1 ? Tensor.empty([used * cols]) : null;
  const ragged = cols % REDUCE_COLS !== 0;
  const cs = Array.from({ length: REDUCE_COLS }, (_, j) => j);
  const terms = cs.map((j) =>
    `{ let c = c0 + ${j}u; ${ragged ? "if (c < " + cols + "u) " : ""}{ a${j} += ${spec.term}; } }`
  );
  const dest = partial ? `part_out[strip * ${cols}u + c]` : "out[c]";
  const code = `${storage(...names, partial ? "part_out!" : "out!")}
var<workgroup> part: array<f32, ${REDUCE_COLS * REDUCE_WG}>;
@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let group = wid.x + wid.y * nwg.x;
  if (group >= ${blocks * used}u) { return; }
  let c0 = (group % ${blocks}u) * ${REDUCE_COLS}u;
  let strip = group / ${blocks}u;
  let r0 = strip * ${per}u;
  let r1 = min(r0 + ${per}u, ${rows}u);
  ${cs.map((j) => `var a${j} = 0.0;`).join(" ")}
  for (var r = r0 + li; r < r1; r += ${REDUCE_WG}u) {
    ${terms.join("\n    ")}
  }
  ${cs.map((j) => `part[${j * REDUCE_WG}u + li] = a${j};`).join(" ")}
  workgroupBarrier();
  for (var half = ${REDUCE_WG / 2}u; half > 0u; half >>= 1u) {
    if (li < half) {
      ${
    cs.map((j) => `part[${j * REDUCE_WG}u + li] += part[${j * REDUCE_WG}u + li + half];`).join(" ")
  }
    }
    workgroupBarrier();
  }
  if (li < ${REDUCE_COLS}u) {
    let c = c0 + li;
    if (c < ${cols}u) { ${dest} = part[li * ${REDUCE_WG}u]; }
  }
}`;
  launch(code, [...inputs, partial ?? out], grid1d(blocks * used, 1));
  if (!partial) return;
  // One workgroup per column: its lanes take every 64th strip, then a tree.
  const sum = sumPerOutputKernel({
    buffers: ["part_in", "out!"],
    count: cols,
    terms: used,
    setup: "",
    term: `acc += part_in[r * ${cols}u + o];`,
  });
  launch(sum, [partial, out], grid1d(cols, 1));
  partial.dispose();
}
