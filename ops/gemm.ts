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
 * also applies the store (bias add, NCHW scatter).
 *
 * The tiles are a heuristic's ({@linkcode gemmConfig}) until a product is
 * autotuned: {@linkcode tuneGemm} times each product's
 * {@linkcode gemmCandidates} (tile shapes, 16-deep slabs, register
 * prefetch, splits) on its own launches inside a few real steps and keeps
 * the fastest for the process. On the H100 this took the 38 distinct
 * products of a ConvNeXt-T training step from 63.3 to 37.5 ms (one launch
 * of each).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { gemm } from "./gemm.ts";
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
import { launch, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";

/** Tile shape of one {@linkcode gemm} launch. */
export interface GemmConfig {
  /** Output tile rows and columns per workgroup. */
  bm: number;
  bn: number;
  /** Inner-dimension depth staged per step. */
  bk: number;
  /**
   * Register block per invocation (rows × columns, multiples of 4); the workgroup is
   * (bm/tm)·(bn/tn) invocations.
   */
  tm: number;
  tn: number;
  /** Split the inner dimension over this many workgroups (default: chosen from the shape). */
  splits?: number;
  /**
   * Load the next `bk`-deep slabs from global memory into registers while the
   * current ones are multiplied (software pipelining: the loads' latency
   * hides behind the arithmetic instead of stalling the workgroup).
   */
  prefetch?: boolean;
}

const gemmSources = new Map<string, string>();

/** One product for {@linkcode gemm}: `out[bt, m, n] = Σ_k A(bt, m, k) · B(bt, n, k)`. */
export interface GemmSpec {
  batch: number;
  m: number;
  n: number;
  k: number;
  /** Tensors the loaders read, by their WGSL names. */
  inputs: Record<string, Tensor>;
  /** WGSL body of `fn ldA(bt: u32, m: u32, k: u32) -> f32`; called with m < M, k < K only. */
  loadA: string;
  /** True when consecutive k are (mostly) adjacent in memory for A: decides the load order. */
  aKFast: boolean;
  /** WGSL body of `fn ldB(bt: u32, n: u32, k: u32) -> f32`; called with n < N, k < K only. */
  loadB: string;
  bKFast: boolean;
  /** Tensors the store writes or reads (output first), by WGSL name; the first is read-write. */
  outputs: Record<string, Tensor>;
  /** WGSL body of `fn st(bt: u32, m: u32, n: u32, v: f32)`: where the value goes. */
  store: string;
  /** How many leading `outputs` the store writes (default 1); the rest are read-only. */
  written?: number;
  /** WGSL helpers the loaders or the store call (e.g. `erf_f32`). */
  prelude?: string;
}

/** Which kernels matmul, linear and groups = 1 conv2d run. */
export type GemmImpl = "tiled" | "simple";

let impl: GemmImpl = "tiled";
let forced: GemmConfig | null = null;

/**
 * Choose the kernels of `matmul`, `linear` and `conv2d` (groups = 1):
 * `"tiled"` (default: these register-blocked GEMM kernels) or `"simple"`
 * (the plain kernels, kept as the fallback and as the test oracle).
 *
 * @example
 * ```ts
 * import { gemmImpl, setGemmImpl } from "./gemm.ts";
 * setGemmImpl("simple");
 * console.log(gemmImpl()); // "simple"
 * setGemmImpl("tiled");
 * ```
 */
export function setGemmImpl(which: GemmImpl): void {
  if (which !== "tiled" && which !== "simple") {
    throw new Error(`setGemmImpl: expected "tiled" or "simple", got "${which}"`);
  }
  impl = which;
}

/**
 * The current choice of {@linkcode setGemmImpl}.
 *
 * @example
 * ```ts
 * import { gemmImpl } from "./gemm.ts";
 * console.log(gemmImpl()); // "tiled"
 * ```
 */
export function gemmImpl(): GemmImpl {
  return impl;
}

/**
 * Force one tile config for every product (tests use tiny tiles and splits
 * to exercise partial tiles); `null` restores the heuristic.
 *
 * @example
 * ```ts
 * import { setGemmConfig } from "./gemm.ts";
 * setGemmConfig({ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 3 });
 * setGemmConfig(null);
 * ```
 */
export function setGemmConfig(cfg: GemmConfig | null): void {
  if (cfg && !configValid(cfg)) throw new Error(`setGemmConfig: invalid ${JSON.stringify(cfg)}`);
  forced = cfg;
}

function configValid(c: GemmConfig): boolean {
  const ok = (v: number) => Number.isInteger(v) && v > 0;
  return ok(c.bm) && ok(c.bn) && ok(c.bk) && ok(c.tm) && ok(c.tn) && c.tm % 4 === 0 &&
    c.tn % 4 === 0 && c.bm % c.tm === 0 && c.bn % c.tn === 0 &&
    (c.bm / c.tm) * (c.bn / c.tn) <= 256 &&
    (c.splits === undefined || ok(c.splits));
}

/** Inner-dimension extent below which a split is not worth a second kernel. */
const MIN_CHUNK = 256;

/**
 * The tile config {@linkcode gemm} uses for an `m × n × k` product over
 * `batch` matrices: 128×128 tiles with 8×8 register blocks on big products
 * of a hardware GPU, 64×64 with 4×4 on the others; on a software adapter
 * 64×64 with 8×8 blocks of 64 invocations for big products (about twice as
 * fast there as 32×32 with 4×4, ~1.3 s to compile cold) and 32×32 with 4×4
 * for small ones (~0.6 s; larger workgroup arrays compile superlinearly
 * slower on llvmpipe); products of at most 16 rows get tiles of 4 or 16
 * rows. `k` is split when the output tiles alone would leave most of the GPU
 * idle.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmConfig } from "./gemm.ts";
 * await initGpu();
 * console.log(gemmConfig(1, 96, 384, 200704).splits! > 1); // true: a weight gradient
 * ```
 */
export function gemmConfig(batch: number, m: number, n: number, k: number): GemmConfig {
  const g = gpu();
  let cfg: GemmConfig;
  if (forced) cfg = { ...forced };
  // Few rows (the late stages of a small input, batch 1): a tile as short as the product, not
  // 32–128 rows of which all but m are padding (a 1024→4096 linear on 4 rows took 230 ms on llvmpipe).
  else if (m <= 16) cfg = { bm: m <= 4 ? 4 : 16, bn: 64, bk: 8, tm: 4, tn: 4 };
  else if (!g.isFallback && m >= 128 && n >= 128) cfg = { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };
  else if (!g.isFallback) cfg = { bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 };
  else if (m >= 64 && n >= 64 && m * n * k >= 1 << 22) {
    cfg = { bm: 64, bn: 64, bk: 8, tm: 8, tn: 8 };
  } else cfg = { bm: 32, bn: 32, bk: 8, tm: 4, tn: 4 };
  cfg.splits ??= splitsFor(cfg, batch, m, n, k);
  return cfg;
}

// ---------------------------------------------------------------- autotuning on first use

/** Tuning state of one product (see {@linkcode startGemmTuning}). */
interface ProductTuning {
  /** `batch×m×n×k`, for reports. */
  size: string;
  candidates: GemmConfig[];
  /** GPU ms of each candidate's timed launches. */
  samples: number[][];
  /** Timed launches recorded but not read back yet, per candidate. */
  pending: number[];
  best: GemmConfig | null;
}

/** Products by key; a decided one keeps its fastest config for the process. */
const tunings = new Map<string, ProductTuning>();
/** Timed launches per read-back (two timestamps each; a query set holds at most 4096). */
const TUNE_SLOTS = 1024;
/** Timed launches each candidate gets before the fastest is chosen. */
const TUNE_SAMPLES = 2;
let tuner: {
  querySet: GPUQuerySet;
  resolve: GPUBuffer;
  slots: [ProductTuning, number][];
  /** Products this tuning has timed: what {@linkcode stopGemmTuning} reports. */
  timed: Set<ProductTuning>;
} | null = null;

/**
 * The tile configs the autotuner times for an `m × n × k` product: the
 * heuristic's ({@linkcode gemmConfig}, always first), the same with the next
 * slabs prefetched, 16-deep slabs, and the other tile shapes of a hardware
 * GPU (each with its own split of `k`). One config on a software adapter
 * (nothing to gain that is worth the compile time there) or when a config is
 * forced.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmCandidates, gemmConfig } from "./gemm.ts";
 * await initGpu();
 * const c = gemmCandidates(1, 200704, 384, 96);
 * console.log(JSON.stringify(c[0]) === JSON.stringify(gemmConfig(1, 200704, 384, 96))); // true
 * ```
 */
export function gemmCandidates(batch: number, m: number, n: number, k: number): GemmConfig[] {
  const base = gemmConfig(batch, m, n, k);
  if (forcedCandidates) return [base, ...forcedCandidates];
  if (forced || gpu().isFallback) return [base];
  const out: GemmConfig[] = [base, { ...base, prefetch: true }];
  if (k >= 16) out.push({ ...base, bk: 16 }, { ...base, bk: 16, prefetch: true });
  if (m > 16) {
    const tiles = [
      { bm: 128, bn: 128, tm: 8, tn: 8 },
      { bm: 128, bn: 64, tm: 8, tn: 8 },
      { bm: 64, bn: 128, tm: 8, tn: 8 },
      { bm: 64, bn: 64, tm: 4, tn: 4 },
    ];
    for (const t of tiles) {
      if (t.bm === base.bm && t.bn === base.bn) continue;
      // A tile twice the product's size is mostly padding.
      if (t.bm > 2 * m || t.bn > 2 * n) continue;
      const c = { ...t, bk: 8, prefetch: true };
      out.push({ ...c, splits: splitsFor(c, batch, m, n, k) });
    }
  }
  if ((base.splits ?? 1) > 1) out.push({ ...base, prefetch: true, splits: base.splits! * 2 });
  return out;
}

let forcedCandidates: GemmConfig[] | null = null;

/**
 * Make the autotuner time these configs after the heuristic's for every
 * product (tests exercise it on a software adapter with small tiles; a study
 * can time its own tile shapes); `null` restores {@linkcode gemmCandidates}.
 *
 * @example
 * ```ts
 * import { setGemmCandidates } from "./gemm.ts";
 * setGemmCandidates([{ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, prefetch: true }]);
 * setGemmCandidates(null);
 * ```
 */
export function setGemmCandidates(list: GemmConfig[] | null): void {
  for (const c of list ?? []) {
    if (!configValid(c)) throw new Error(`setGemmCandidates: invalid ${JSON.stringify(c)}`);
  }
  forcedCandidates = list && list.map((c) => ({ ...c }));
}

/** `k` split of a tile shape: enough workgroups to fill the GPU twice over (see gemmConfig). */
function splitsFor(c: GemmConfig, batch: number, m: number, n: number, k: number): number {
  const tiles = Math.ceil(m / c.bm) * Math.ceil(n / c.bn) * batch;
  // 132 SMs on an H100; a few cores on llvmpipe.
  const target = gpu().isFallback ? 8 : 264;
  return tiles >= target
    ? 1
    : Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(k / MIN_CHUNK)));
}

/**
 * The config of a product, and the timestamp slot its launch writes (−1 for
 * none): the tuned one once decided; while tuning, the candidate with the
 * fewest timings; else the heuristic's.
 */
function tunedConfig(
  product: string,
  batch: number,
  m: number,
  n: number,
  k: number,
): [GemmConfig, number] {
  if (forced) return [gemmConfig(batch, m, n, k), -1];
  let t = tunings.get(product);
  // A plan restored from a checkpoint: decided without timing.
  const restored = !t && restoredPlans.size ? restoredPlans.get(productId(product)) : undefined;
  if (restored) tunings.set(product, t = tuningOf([restored], batch, m, n, k));
  if (t?.best) return [t.best, -1];
  if (!tuner || tuner.slots.length >= TUNE_SLOTS) return [gemmConfig(batch, m, n, k), -1];
  if (!t) {
    tunings.set(product, t = tuningOf(gemmCandidates(batch, m, n, k), batch, m, n, k));
    if (t.best) return [t.best, -1];
  }
  const tuning = t;
  const counts = tuning.samples.map((v, i) => v.length + tuning.pending[i]);
  const i = counts.indexOf(Math.min(...counts));
  tuning.pending[i]++;
  tuner.slots.push([tuning, i]);
  tuner.timed.add(tuning);
  return [tuning.candidates[i], tuner.slots.length - 1];
}

/** A fresh tuning of a product among `candidates`; decided at once when there is one. */
function tuningOf(
  candidates: GemmConfig[],
  batch: number,
  m: number,
  n: number,
  k: number,
): ProductTuning {
  return {
    size: `${batch}×${m}×${n}×${k}`,
    candidates,
    samples: candidates.map(() => []),
    pending: candidates.map(() => 0),
    best: candidates.length === 1 ? candidates[0] : null,
  };
}

/** A short, stable id of a product key (two 32-bit FNV-1a hashes): what checkpoints store. */
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

/** Plans restored by {@linkcode setGemmPlans}, by product id, until their product runs. */
const restoredPlans = new Map<string, GemmConfig>();

/**
 * The decided tile config of every tuned product, by product id: what a
 * training checkpoint keeps so that a resumed run multiplies with the same
 * tiles (another tuning could choose others, whose rounding differs).
 *
 * @example
 * ```ts
 * import { gemmPlans, setGemmPlans } from "./gemm.ts";
 * const plans = gemmPlans();
 * setGemmPlans(plans);
 * console.log(Array.isArray(plans)); // true
 * ```
 */
export function gemmPlans(): { product: string; config: GemmConfig }[] {
  const out = new Map<string, GemmConfig>(restoredPlans);
  for (const [key, t] of tunings) {
    if (t.best && t.candidates.length > 1) out.set(productId(key), t.best);
  }
  return [...out].map(([product, config]) => ({ product, config: { ...config } }));
}

/** Restore plans saved by {@linkcode gemmPlans}: their products run those tiles untimed. */
export function setGemmPlans(plans: readonly { product: string; config: GemmConfig }[]): void {
  for (const { product, config } of plans) {
    if (!configValid(config)) throw new Error(`setGemmPlans: invalid ${JSON.stringify(config)}`);
    restoredPlans.set(product, { ...config });
  }
  // Products already decided in this process follow the restored plans too.
  for (const [key, t] of tunings) {
    const best = restoredPlans.get(productId(key));
    if (best) t.best = best;
  }
}

/** Fastest candidate of a tuning by its best timing, among those timed. */
function decide(t: ProductTuning): void {
  let best = -1;
  let bestMs = Infinity;
  t.samples.forEach((v, i) => {
    const ms = v.length ? Math.min(...v) : Infinity;
    if (ms < bestMs) [best, bestMs] = [i, ms];
  });
  if (best >= 0) t.best = t.candidates[best];
}

/**
 * Start tuning every product {@linkcode gemm} records from now on with no
 * explicit config, as `cudnn.benchmark` does, but inside real work: each
 * launch of an undecided product runs one of its
 * {@linkcode gemmCandidates} in a timed compute pass (the GPU keeps its
 * working clock, unlike a tuner timing products in isolation). Call
 * {@linkcode collectGemmTuning} after each step and
 * {@linkcode stopGemmTuning} at the end. Returns false (and does nothing)
 * without the `timestamp-query` feature.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { collectGemmTuning, startGemmTuning, stopGemmTuning } from "./gemm.ts";
 * import { matmul } from "./matmul.ts";
 * await initGpu();
 * const a = Tensor.randn([64, 64], { seed: 1 });
 * if (startGemmTuning()) {
 *   for (let i = 0; i < 8; i++) {
 *     matmul(a, a).dispose();
 *     if (await collectGemmTuning() === 0) break;
 *   }
 *   stopGemmTuning();
 * }
 * ```
 */
export function startGemmTuning(): boolean {
  const g = gpu();
  if (!g.features.has("timestamp-query")) return false;
  if (tuner) return true;
  tuner = {
    querySet: g.device.createQuerySet({ type: "timestamp", count: 2 * TUNE_SLOTS }),
    resolve: g.device.createBuffer({
      size: 16 * TUNE_SLOTS,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    }),
    slots: [],
    timed: new Set(),
  };
  return true;
}

/**
 * Read back the timings of the launches recorded since the last call (a sync
 * point), decide every product whose candidates all have enough of them, and
 * return how many products are still undecided.
 */
export async function collectGemmTuning(): Promise<number> {
  if (!tuner) return 0;
  const slots = tuner.slots;
  if (slots.length) {
    const g = gpu();
    g.encoderForCopy().resolveQuerySet(tuner.querySet, 0, 2 * slots.length, tuner.resolve, 0);
    const ts = new BigUint64Array(await g.readBytes(tuner.resolve, 16 * slots.length));
    slots.forEach(([t, i], s) => {
      t.pending[i]--;
      const ms = Number(ts[2 * s + 1] - ts[2 * s]) / 1e6;
      // Timestamps of a pass cut short by an auto-flush or wrapped counters are dropped.
      if (ms > 0 && ms < 1e4) t.samples[i].push(ms);
    });
    tuner.slots = [];
  }
  let undecided = 0;
  for (const t of tunings.values()) {
    if (t.best) continue;
    if (t.samples.every((v) => v.length >= TUNE_SAMPLES)) decide(t);
    else undecided++;
  }
  return undecided;
}

/**
 * Stop tuning: undecided products take their fastest candidate timed so far
 * (or stay on the heuristic). Returns one row per product this tuning timed:
 * its size, the heuristic's and the chosen config's best GPU ms, and the
 * chosen config.
 */
export function stopGemmTuning(): {
  size: string;
  heuristicMs: number;
  bestMs: number;
  best: GemmConfig;
}[] {
  const timed = tuner?.timed ?? new Set<ProductTuning>();
  if (tuner) {
    tuner.querySet.destroy();
    tuner.resolve.destroy();
    tuner = null;
  }
  for (const [key, t] of tunings) {
    if (!t.best) decide(t);
    if (!t.best) tunings.delete(key);
  }
  const rows = [];
  for (const t of timed) {
    if (!t.best) continue;
    const ms = (i: number) => (t.samples[i].length ? Math.min(...t.samples[i]) : NaN);
    rows.push({
      size: t.size,
      heuristicMs: ms(0),
      bestMs: ms(t.candidates.indexOf(t.best)),
      best: t.best,
    });
  }
  return rows;
}

/** Rows of {@linkcode stopGemmTuning} / {@linkcode tuneGemm}: one per tuned product. */
export type GemmTuned = ReturnType<typeof stopGemmTuning>;

/**
 * One line on a tuning: products, and the GPU ms of one launch of each with
 * the heuristic's tiles and with the chosen ones.
 *
 * @example
 * ```ts
 * import { describeGemmTuning } from "./gemm.ts";
 * const best = { bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 };
 * console.log(describeGemmTuning([{ size: "1×64×64×64", heuristicMs: 2, bestMs: 1.5, best }]));
 * // "1 matrix products: 2.00 ms with the default tiles → 1.50 ms (one launch each)"
 * ```
 */
export function describeGemmTuning(rows: GemmTuned): string {
  const sum = (f: (r: GemmTuned[number]) => number) =>
    rows.reduce((a, r) => a + (Number.isFinite(f(r)) ? f(r) : 0), 0);
  return `${rows.length} matrix products: ${sum((r) => r.heuristicMs).toFixed(2)} ms with the ` +
    `default tiles → ${sum((r) => r.bestMs).toFixed(2)} ms (one launch each)`;
}

/**
 * Tune the products of the work `record` records (a model step): record it,
 * read the timings back, and repeat until every product is decided or
 * `rounds` are done (see {@linkcode startGemmTuning}). Returns
 * {@linkcode stopGemmTuning}'s rows, empty without timestamp queries.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { tuneGemm } from "./gemm.ts";
 * import { matmul } from "./matmul.ts";
 * await initGpu();
 * const a = Tensor.randn([64, 64], { seed: 1 });
 * const rows = await tuneGemm(() => matmul(a, a).dispose());
 * console.log(rows.length <= 1); // true: one product (none on llvmpipe)
 * ```
 */
export async function tuneGemm(
  record: () => void,
  { rounds = 16 }: { rounds?: number } = {},
): Promise<GemmTuned> {
  if (!startGemmTuning()) return [];
  try {
    for (let i = 0; i < rounds; i++) {
      record();
      if (await collectGemmTuning() === 0) break;
    }
  } catch (e) {
    stopGemmTuning();
    throw e;
  }
  return stopGemmTuning();
}

/** Binding declarations for named tensors starting at `first`, the first `written` read-write. */
function bindings(names: string[], first: number, written: number): string {
  return storage(...names.map((n, i) => (i < written ? `${n}!` : n))).replace(
    /@binding\((\d+)\)/g,
    (_, i) => `@binding(${Number(i) + first})`,
  );
}

/**
 * Record the product described by `spec` (see {@linkcode GemmSpec}); no
 * autograd. `cfg` defaults to {@linkcode gemmConfig}.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { gemm } from "./gemm.ts";
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
  ]);
  const [c, timedSlot] = cfg ? [cfg, -1] : tunedConfig(product, batch, m, n, k);
  if (!configValid(c)) throw new Error(`gemm: invalid config ${JSON.stringify(c)}`);
  const { bm, bn, bk, tm, tn } = c;
  const chunk = Math.ceil(Math.ceil(k / (c.splits ?? 1)) / bk) * bk;
  const splits = Math.max(1, Math.ceil(k / Math.max(chunk, 1)));
  const tx = bn / tn;
  const ty = bm / tm;
  const threads = tx * ty;
  const tilesM = Math.ceil(m / bm);
  const tilesN = Math.ceil(n / bn);
  const total = tilesM * tilesN * batch * splits;
  // Workgroup-memory rows padded by 4 so that k-fast stores of 8 lanes land in distinct banks.
  const sa = bm + (spec.aKFast ? 4 : 0);
  const sb = bn + (spec.bKFast ? 4 : 0);
  const inputs = Object.values(spec.inputs);
  const partial = splits > 1 ? Tensor.empty([splits * batch * m * n]) : null;
  const storeNames = partial ? ["part"] : outNames;
  const mn = m * n;

  const storeFn = `fn st(bt: u32, m: u32, n: u32, v: f32) { ${spec.store} }`;
  // Generating the source costs more CPU than recording the dispatch: cache it per product.
  // `product` is already JSON: append to it rather than stringify (and escape) it again.
  const key = product + JSON.stringify([storeNames, c]);
  let code = gemmSources.get(key);
  if (code === undefined) {
    code = gemmSource();
    gemmSources.set(key, code);
  }
  function gemmSource(): string {
    // Each invocation moves `per` elements of each slab: fetched from global memory into
    // registers (rA0.., rB0..), then put into workgroup memory. The element → (row, k) split
    // depends on the invocation only, so it is computed once, outside the k loop.
    const slab = (
      which: "A" | "B",
      rows: number,
      stride: number,
      kFast: boolean,
      limit: number,
    ) => {
      const per = Math.ceil((rows * bk) / threads);
      const r = which === "A" ? "m" : "n";
      const decl: string[] = [];
      const fetch: string[] = [];
      const put: string[] = [];
      for (let q = 0; q < per; q++) {
        const e = `li + ${q * threads}u`;
        const id = `${which}${q}`;
        decl.push(
          kFast
            ? `let kk${id} = (${e}) % ${bk}u; let rr${id} = (${e}) / ${bk}u;`
            : `let rr${id} = (${e}) % ${rows}u; let kk${id} = (${e}) / ${rows}u;`,
          `let at${id} = kk${id} * ${stride}u + rr${id}; var r${id} = 0.0;`,
        );
        const inSlab = (q + 1) * threads > rows * bk ? `${e} < ${rows * bk}u && ` : "";
        fetch.push(`r${id} = 0.0; { let g${r} = ${r}0 + rr${id}; let gk = kf + kk${id};
      if (${inSlab}g${r} < ${limit}u && gk < kEnd) { r${id} = ld${which}(bt, g${r}, gk); } }`);
        const guard = inSlab ? `if (${e} < ${rows * bk}u) ` : "";
        put.push(`${guard}{ ${which}s[at${id} / 4u][at${id} % 4u] = r${id}; }`);
      }
      return { decl: decl.join(" "), fetch: fetch.join("\n      "), put: put.join(" ") };
    };
    const sA = slab("A", bm, sa, spec.aKFast, m);
    const sB = slab("B", bn, sb, spec.bKFast, n);
    const fetchBoth = (kf: string) => `{ let kf = ${kf};\n      ${sA.fetch}\n      ${sB.fetch} }`;
    // Register block: rows (i4·ty + tyIdx)·4 + r and columns (j4·tx + txIdx)·4 + s, read from
    // workgroup memory as vec4s (vec4 arrays also compile far faster than f32 ones on llvmpipe).
    const C = ["x", "y", "z", "w"];
    const accs: string[] = [];
    const fmas: string[] = [];
    const stores: string[] = [];
    for (let i = 0; i < tm; i++) {
      for (let j4 = 0; j4 < tn / 4; j4++) {
        accs.push(`var c${i}_${j4} = vec4f(0.0);`);
        fmas.push(`c${i}_${j4} = fma(vec4f(a${i >> 2}.${C[i & 3]}), b${j4}, c${i}_${j4});`);
        const row = `m0 + (${(i >> 2) * ty}u + ty) * 4u + ${i & 3}u`;
        const col = `n0 + (${j4 * tx}u + tx) * 4u`;
        const put = (q: number) =>
          partial
            ? `part[(ks * ${batch}u + bt) * ${mn}u + row * ${n}u + col + ${q}u] = c${i}_${j4}.${
              C[q]
            };`
            : `st(bt, row, col + ${q}u, c${i}_${j4}.${C[q]});`;
        stores.push(`{ let row = ${row}; let col = ${col};
    if (row < ${m}u) { ${
          [0, 1, 2, 3].map((q) => `if (col + ${q}u < ${n}u) { ${put(q)} }`).join(" ")
        } } }`);
      }
    }
    const aLoads = Array.from(
      { length: tm / 4 },
      (_, i4) => `let a${i4} = As[o + ${i4 * ty}u + ty];`,
    );
    const bLoads = Array.from(
      { length: tn / 4 },
      (_, j4) => `let b${j4} = Bs[p + ${j4 * tx}u + tx];`,
    );
    return `${storage(...inNames)}
${bindings(storeNames, inNames.length, partial ? 1 : written)}
${spec.prelude ?? ""}
fn ldA(bt: u32, m: u32, k: u32) -> f32 { ${spec.loadA} }
fn ldB(bt: u32, n: u32, k: u32) -> f32 { ${spec.loadB} }
${partial ? "" : storeFn}
var<workgroup> As: array<vec4f, ${(bk * sa) / 4}>;
var<workgroup> Bs: array<vec4f, ${(bk * sb) / 4}>;
@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= ${total}u) { return; }
  let m0 = ((g / ${tilesN}u) % ${tilesM}u) * ${bm}u;
  let n0 = (g % ${tilesN}u) * ${bn}u;
  let rest = g / ${tilesN * tilesM}u;
  let bt = rest % ${batch}u;
  let ks = rest / ${batch}u;
  let kBegin = ks * ${chunk}u;
  let kEnd = min(kBegin + ${chunk}u, ${k}u);
  let tx = li % ${tx}u;
  let ty = li / ${tx}u;
  ${accs.join(" ")}
  ${sA.decl}
  ${sB.decl}
  ${c.prefetch ? fetchBoth("kBegin") : ""}
  for (var k0 = kBegin; k0 < kEnd; k0 += ${bk}u) {
    ${c.prefetch ? "" : fetchBoth("k0")}
    ${sA.put}
    ${sB.put}
    workgroupBarrier();
    ${c.prefetch ? `if (k0 + ${bk}u < kEnd) ${fetchBoth(`k0 + ${bk}u`)}` : ""}
    for (var kk = 0u; kk < ${bk}u; kk++) {
      let o = kk * ${sa / 4}u;
      let p = kk * ${sb / 4}u;
      ${aLoads.join(" ")}
      ${bLoads.join(" ")}
      ${fmas.join("\n      ")}
    }
    workgroupBarrier();
  }
  ${stores.join("\n  ")}
}`;
  }
  const outputs = Object.values(spec.outputs);
  const record = () => {
    launch(code, [...inputs, ...(partial ? [partial] : outputs)], grid1d(total, 1));
    if (partial) sumSplits(partial);
  };
  if (timedSlot >= 0) gpu().timedPass(tuner!.querySet, 2 * timedSlot, record);
  else record();
  partial?.dispose();

  function sumSplits(partial: Tensor): void {
    // Sum the partial products over the splits and store them.
    const sum = `${storage("part")}
${spec.prelude ?? ""}
${bindings(outNames, 1, written)}
${storeFn}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * 256u);
  if (i >= ${batch * mn}u) { return; }
  var v = 0.0;
  for (var s = 0u; s < ${splits}u; s++) { v += part[s * ${batch * mn}u + i]; }
  st(i / ${mn}u, (i / ${n}u) % ${m}u, i % ${n}u, v);
}`;
    launch(sum, [partial, ...outputs], batch * mn);
  }
}

/** Threads that fill the GPU a few times over: what {@linkcode columnReduce} aims its split at. */
function targetThreads(): number {
  return gpu().isFallback ? 4096 : 1 << 18;
}

/**
 * Column sums `out[c] = Σ_{r < rows} term(r, c)` for `c < cols`, where
 * `term` is a WGSL expression in `r`, `c` and the named `inputs` (not named
 * `group`, `strip`, `acc`, `r0` or `r1`, the kernel's own locals): bias,
 * LayerNorm-affine and LayerScale gradients of channels-last tensors.
 * Neighbouring invocations take neighbouring columns (coalesced reads of
 * row-major `[rows, cols]` data), each summing a strip of rows; a second
 * small kernel adds the strips. No autograd.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { columnReduce } from "./gemm.ts";
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
  const strips = Math.max(
    1,
    Math.min(Math.ceil(rows / 32), Math.ceil(targetThreads() / Math.max(cols, 1))),
  );
  const per = Math.ceil(rows / strips);
  const stripsUsed = Math.max(1, Math.ceil(rows / Math.max(per, 1)));
  const partial = stripsUsed > 1 ? Tensor.empty([stripsUsed * cols]) : null;
  const wg = 64;
  const colGroups = Math.ceil(cols / wg);
  const code = `${storage(...names, partial ? "part!" : "out!")}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let group = wid.x + wid.y * nwg.x;
  if (group >= ${colGroups * stripsUsed}u) { return; }
  let c = (group % ${colGroups}u) * ${wg}u + li;
  let strip = group / ${colGroups}u;
  if (c >= ${cols}u) { return; }
  let r0 = strip * ${per}u;
  let r1 = min(r0 + ${per}u, ${rows}u);
  var acc = 0.0;
  for (var r = r0; r < r1; r++) { acc += ${spec.term}; }
  ${partial ? `part[strip * ${cols}u + c] = acc;` : "out[c] = acc;"}
}`;
  launch(code, [...inputs, partial ?? out], grid1d(colGroups * stripsUsed, 1));
  if (!partial) return;
  const sum = `${storage("part", "out!")}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = gid.x + gid.y * (nwg.x * 64u);
  if (c >= ${cols}u) { return; }
  var acc = 0.0;
  for (var s = 0u; s < ${stripsUsed}u; s++) { acc += part[s * ${cols}u + c]; }
  out[c] = acc;
}`;
  launch(sum, [partial, out], grid1d(cols, 64));
  partial.dispose();
}
