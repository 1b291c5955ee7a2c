/**
 * The tile configs of the matrix-product kernel (`gemm_kernel.ts`): the
 * config type and its checks, the heuristic the kernel uses until a product
 * is planned ({@linkcode gemmConfig}), and the candidates the planner times
 * for a product ({@linkcode gemmCandidates}: tile shapes, 16-deep slabs,
 * register prefetch, splits of the inner dimension). The planner keys a
 * product as `gemm|batch×m×n×k:<hash of its loaders and store>|f32`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmCandidates, gemmConfig } from "./gemm_plan.ts";
 * await initGpu();
 * const first = gemmCandidates(1, 256, 256, 256, { software: false })[0];
 * console.log(JSON.stringify(first) === JSON.stringify(gemmConfig(1, 256, 256, 256))); // true
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import type { CandidateOptions } from "./planner.ts";

/** Tile shape of one `gemm` launch. */
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

/** Which kernels matmul, linear and groups = 1 conv2d run. */
export type GemmImpl = "tiled" | "simple";

let impl: GemmImpl = "tiled";

/**
 * Choose the kernels of `matmul`, `linear` and `conv2d` (groups = 1):
 * `"tiled"` (default: the register-blocked GEMM kernels) or `"simple"`
 * (the plain kernels, kept as the fallback and as the test oracle).
 *
 * @example
 * ```ts
 * import { gemmImpl, setGemmImpl } from "./gemm_plan.ts";
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
 * import { gemmImpl } from "./gemm_plan.ts";
 * console.log(gemmImpl()); // "tiled"
 * ```
 */
export function gemmImpl(): GemmImpl {
  return impl;
}

/**
 * True when `c` is a well-formed tile config: positive integers, register
 * blocks of multiples of 4 that divide the tile, and a workgroup within the
 * adapter's invocation and workgroup-memory limits.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { isGemmConfig } from "./gemm_plan.ts";
 * await initGpu();
 * console.log(isGemmConfig({ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 }), isGemmConfig({ bm: 8 })); // true false
 * ```
 */
export function isGemmConfig(c: unknown): c is GemmConfig {
  if (typeof c !== "object" || c === null) return false;
  const g = c as GemmConfig;
  const ok = (v: unknown) => Number.isInteger(v) && (v as number) > 0 && (v as number) <= 4096;
  const limits = gpu().limits;
  const threads = Math.min(256, limits.maxComputeInvocationsPerWorkgroup);
  // The staged slabs of A and B, rows padded by 4 (see gemm_kernel.ts).
  const slabBytes = 4 * g.bk * (g.bm + 4 + g.bn + 4);
  return ok(g.bm) && ok(g.bn) && ok(g.bk) && ok(g.tm) && ok(g.tn) && g.tm % 4 === 0 &&
    slabBytes <= limits.maxComputeWorkgroupStorageSize &&
    g.tn % 4 === 0 && g.bm % g.tm === 0 && g.bn % g.tn === 0 &&
    (g.bm / g.tm) * (g.bn / g.tn) <= threads &&
    (g.splits === undefined || ok(g.splits)) &&
    (g.prefetch === undefined || typeof g.prefetch === "boolean");
}

/** Inner-dimension extent below which a split is not worth a second kernel. */
const MIN_CHUNK = 256;

/**
 * Workgroups that the untuned split of `k` aims for: enough to keep a large
 * GPU busy about twice over (a few on a software adapter). WebGPU does not
 * report how many workgroups an adapter runs at once, so this is only the
 * heuristic's guess; the planner times half and double the splits and keeps
 * what measures fastest.
 */
function workgroupTarget(): number {
  return gpu().isFallback ? 8 : 256;
}

/**
 * The tile config `gemm` uses for an `m × n × k` product over `batch`
 * matrices until the planner has one: 128×128 tiles with 8×8 register
 * blocks on big products of a hardware GPU, 64×64 with 4×4 on the others;
 * on a software adapter 64×64 with 8×8 blocks of 64 invocations for big
 * products (about twice as fast there as 32×32 with 4×4, ~1.3 s to compile
 * cold) and 32×32 with 4×4 for small ones (~0.6 s; larger workgroup arrays
 * compile superlinearly slower on llvmpipe); products of at most 16 rows get
 * tiles of 4 or 16 rows. `k` is split when the output tiles alone would
 * leave most of the GPU idle.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmConfig } from "./gemm_plan.ts";
 * await initGpu();
 * console.log(gemmConfig(1, 96, 384, 200704).splits! > 1); // true: a weight gradient
 * ```
 */
export function gemmConfig(batch: number, m: number, n: number, k: number): GemmConfig {
  const g = gpu();
  let cfg: GemmConfig;
  // Few rows (the late stages of a small input, batch 1): a tile as short as the product, not
  // 32–128 rows of which all but m are padding (a 1024→4096 linear on 4 rows took 230 ms on llvmpipe).
  if (m <= 16) cfg = { bm: m <= 4 ? 4 : 16, bn: 64, bk: 8, tm: 4, tn: 4 };
  else if (!g.isFallback && m >= 128 && n >= 128) cfg = { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };
  else if (!g.isFallback) cfg = { bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 };
  else if (m >= 64 && n >= 64 && m * n * k >= 1 << 22) {
    cfg = { bm: 64, bn: 64, bk: 8, tm: 8, tn: 8 };
  } else cfg = { bm: 32, bn: 32, bk: 8, tm: 4, tn: 4 };
  cfg.splits = splitsFor(cfg, batch, m, n, k);
  return cfg;
}

/**
 * `c` with its split of `k` filled in where it has none (a forced config),
 * as the heuristic would split that tile shape.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { withSplits } from "./gemm_plan.ts";
 * await initGpu();
 * console.log(withSplits({ bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 }, 1, 8, 8, 8).splits); // 1
 * ```
 */
export function withSplits(
  c: GemmConfig,
  batch: number,
  m: number,
  n: number,
  k: number,
): GemmConfig {
  return c.splits === undefined ? { ...c, splits: splitsFor(c, batch, m, n, k) } : c;
}

/** `k` split of a tile shape: enough workgroups to reach {@linkcode workgroupTarget}. */
function splitsFor(c: GemmConfig, batch: number, m: number, n: number, k: number): number {
  const tiles = Math.ceil(m / c.bm) * Math.ceil(n / c.bn) * batch;
  const target = workgroupTarget();
  return tiles >= target
    ? 1
    : Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(k / MIN_CHUNK)));
}

/**
 * The tile configs the planner times for an `m × n × k` product: the
 * heuristic's ({@linkcode gemmConfig}, always first), the same with the next
 * slabs prefetched, 16-deep slabs, the other tile shapes of a hardware GPU
 * (each with its own split of `k`), and half and double the heuristic's
 * split. On a software adapter the heuristic and its prefetching variant
 * (small tiles compile in about a second there).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmCandidates } from "./gemm_plan.ts";
 * await initGpu();
 * console.log(gemmCandidates(1, 64, 64, 64, { software: true }).length); // 2
 * ```
 */
export function gemmCandidates(
  batch: number,
  m: number,
  n: number,
  k: number,
  { software, max }: CandidateOptions,
): GemmConfig[] {
  const base = gemmConfig(batch, m, n, k);
  if (software) return [base, { ...base, prefetch: true }];
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
  const splits = base.splits ?? 1;
  if (splits > 1) {
    out.push({ ...base, prefetch: true, splits: splits * 2 });
    out.push({ ...base, prefetch: true, splits: Math.max(1, splits >> 1) });
  }
  return out.filter(isGemmConfig).slice(0, max ?? Infinity);
}
