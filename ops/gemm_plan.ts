/**
 * The tile configs of the matrix-product kernel (`gemm_kernel.ts`): their
 * checks (the config type is the generator's, `gemm_source.ts`, re-exported
 * here), the heuristic the kernel uses until a product
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
import { type GemmConfig, slabBytes } from "./gemm_source.ts";
import type { CandidateOptions } from "./planner.ts";

export type { GemmConfig };

/** The boolean switches of a {@linkcode GemmConfig}, in the order {@linkcode gemmConfigName} lists them. */
const SWITCHES = ["prefetch", "vec", "double", "interior", "unroll", "lanes"] as const;

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
  return ok(g.bm) && ok(g.bn) && ok(g.bk) && ok(g.tm) && ok(g.tn) && g.tm % 4 === 0 &&
    slabBytes(g) <= limits.maxComputeWorkgroupStorageSize &&
    g.tn % 4 === 0 && g.bm % g.tm === 0 && g.bn % g.tn === 0 &&
    (g.bm / g.tm) * (g.bn / g.tn) <= threads &&
    (g.splits === undefined || ok(g.splits)) &&
    SWITCHES.every((f) => g[f] === undefined || typeof g[f] === "boolean") &&
    (!g.vec || g.bk % 4 === 0);
}

/**
 * A short name of a tile config: `bm×bn×bk/tm×tn`, its split when given, and
 * its switches (`pf` prefetch, `vec`, `db` double, `int` interior, `unr`
 * unroll, `lane` lane-major slabs). The sweep of `scripts/bench_gemm.ts` names its variants so.
 *
 * @example
 * ```ts
 * import { gemmConfigName } from "./gemm_plan.ts";
 * const c = { bm: 128, bn: 64, bk: 8, tm: 8, tn: 4, vec: true, double: true, splits: 4 };
 * console.log(gemmConfigName(c)); // "128x64x8/8x4 s4 vec db"
 * ```
 */
export function gemmConfigName(c: GemmConfig): string {
  const short = {
    prefetch: "pf",
    vec: "vec",
    double: "db",
    interior: "int",
    unroll: "unr",
    lanes: "lane",
  };
  return [
    `${c.bm}x${c.bn}x${c.bk}/${c.tm}x${c.tn}`,
    ...(c.splits !== undefined ? [`s${c.splits}`] : []),
    ...SWITCHES.filter((f) => c[f]).map((f) => short[f]),
  ].join(" ");
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
 * matrices until the planner has one: on a hardware GPU, products of at
 * least 64 rows and columns (96 one way) get 128×64 tiles (64×128 when there
 * are more columns than rows) with 8×8 register blocks, vec4 loads, unchecked
 * interior tiles, double buffering, the inner loop unrolled and lane-major
 * slabs. On SLaK-T's stage-1 products on an H200 the sweep timed these (before
 * lane-major slabs) at 31.7–35.7 TFLOP/s, within 5% of the fastest variant of
 * each, where the plain 128×128 tile gave 20–25 and the split weight
 * gradients' 64×64 tile 12; on an H100, lane-major slabs took the same tiles
 * from 31.6–35.6 to 33.2–38.3 TFLOP/s on SLaK-T's and ConvNeXt-T's stage-1
 * products, and stage 4's second product (3136 × 998 × 3992) from 26.1 to
 * 37.9 as 64×128 tiles (27.4 as 128×64). Smaller products get
 * 64×64 with 4×4;
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
  else if (!g.isFallback && Math.min(m, n) >= 64 && Math.max(m, n) >= 96) {
    cfg = { ...(n > m ? TILES[2] : TILES[1]), bk: 8, ...FAST_UNROLLED };
  } else if (!g.isFallback) cfg = { bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 };
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
 * The tile shapes of a hardware GPU's candidates and sweep: 256 invocations
 * with 8×8, 8×4 or 4×4 register blocks, or 128 with 8×8 (fewer, busier
 * invocations; more workgroups fit an SM).
 */
const TILES = [
  { bm: 128, bn: 128, tm: 8, tn: 8 },
  { bm: 128, bn: 64, tm: 8, tn: 8 },
  { bm: 64, bn: 128, tm: 8, tn: 8 },
  { bm: 128, bn: 64, tm: 8, tn: 4 },
  { bm: 64, bn: 128, tm: 4, tn: 8 },
  { bm: 64, bn: 64, tm: 4, tn: 4 },
];

/**
 * The switch sets of the sweep: the kernel as it was before vec4 loads
 * (register prefetch only), vec4 loads with unchecked interior tiles, that
 * double-buffered, that with the inner loop unrolled, and that with
 * lane-major slabs.
 */
const SWITCH_SETS: Partial<GemmConfig>[] = [
  { prefetch: true },
  { prefetch: true, vec: true, interior: true },
  { vec: true, interior: true, double: true },
  { vec: true, interior: true, double: true, unroll: true },
  { vec: true, interior: true, double: true, unroll: true, lanes: true },
];

/** The switches of most hardware candidates (see {@linkcode SWITCH_SETS}). */
const FAST = { vec: true, interior: true, double: true } as const;

/** {@linkcode FAST} with the inner loop written out and lane-major slabs: the hardware heuristic's switches. */
const FAST_UNROLLED = { ...FAST, unroll: true, lanes: true } as const;

/** `c` with the heuristic's split of `k` for its tile shape. */
function split(c: GemmConfig, batch: number, m: number, n: number, k: number): GemmConfig {
  return { ...c, splits: splitsFor(c, batch, m, n, k) };
}

/** `cs` without configs the adapter cannot run and without repeats (by name: any key order), in order. */
function usable(cs: GemmConfig[]): GemmConfig[] {
  const seen = new Set<string>();
  return cs.filter((c) => {
    const key = gemmConfigName(c);
    if (!isGemmConfig(c) || seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** A tile twice the product's size is mostly padding (products of few rows keep their own tiles). */
function fits(t: { bm: number; bn: number }, m: number, n: number): boolean {
  return t.bm <= 2 * Math.max(m, 16) && t.bn <= 2 * n;
}

/**
 * The tile configs the planner times for an `m × n × k` product, most
 * likely first (a caller's `max` keeps the head of the list): the
 * heuristic's ({@linkcode gemmConfig}, always first), the sweep's runners-up
 * (the other of 128×64 and 64×128, then 128×128, switched as the heuristic), the heuristic's tile
 * with vec4 loads, unchecked interior tiles, double buffering, an unrolled
 * inner loop and lane-major slabs, the same with flat slabs, the same
 * rolled, a 128×128 tile 16 deep with register
 * prefetch, the switched tile 16 deep, half and double the heuristic's split
 * of `k`, and a switched 64×64 tile. On a software
 * adapter the heuristic and its prefetching variant (small tiles compile in
 * about a second there). `scripts/bench_gemm.ts --sweep` times the wider
 * set of {@linkcode gemmSweepConfigs} to choose these.
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
  const fast = { ...base, ...FAST_UNROLLED };
  const out: GemmConfig[] = [base];
  // The runners-up of the sweep (see gemmConfig), then the other tiles and switches.
  if (m > 16) {
    for (const t of [TILES[1], TILES[2], TILES[0]]) {
      if (fits(t, m, n)) out.push(split({ ...t, bk: 8, ...FAST_UNROLLED }, batch, m, n, k));
    }
  }
  out.push(fast, { ...fast, lanes: undefined }, { ...fast, unroll: undefined });
  if (m > 16 && fits(TILES[0], m, n)) {
    out.push(split({ ...TILES[0], bk: 16, prefetch: true }, batch, m, n, k));
  }
  if (k >= 16) out.push({ ...fast, bk: 16 });
  const splits = base.splits ?? 1;
  if (splits > 1) {
    out.push({ ...fast, splits: splits * 2 }, { ...fast, splits: Math.max(1, splits >> 1) });
  }
  if (m > 16 && fits(TILES[5], m, n)) {
    out.push(split({ ...TILES[5], bk: 8, ...FAST }, batch, m, n, k));
  }
  return usable(out).slice(0, max ?? Infinity);
}

/** One config of the sweep, with the name it goes by across products. */
export interface GemmVariant {
  /**
   * {@linkcode gemmConfigName} without the split of `k` (each product has its own), and for the
   * variants that scale the heuristic's split, the factor (`split×2`).
   */
  name: string;
  config: GemmConfig;
}

/**
 * Every tile config that `scripts/bench_gemm.ts --sweep` times for an
 * `m × n × k` product on a hardware GPU: the heuristic's first (named
 * `heuristic`), then each tile shape that fits the product × `bk` 8 and 16
 * × each switch set (each with the heuristic's split of `k` for its tile),
 * and for a split product ¼, ½, 2 and 4 times the split of the heuristic
 * tile, switched. Those the adapter cannot run (workgroup memory,
 * invocations) are left out.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { gemmSweepConfigs } from "./gemm_plan.ts";
 * await initGpu();
 * const v = gemmSweepConfigs(1, 256, 256, 256);
 * console.log(v[0].name, v.length > 10); // "heuristic" true
 * ```
 */
export function gemmSweepConfigs(batch: number, m: number, n: number, k: number): GemmVariant[] {
  const base = gemmConfig(batch, m, n, k);
  const named = (c: GemmConfig, suffix = "") => ({
    name: gemmConfigName({ ...c, splits: undefined }) + suffix,
    config: c,
  });
  const out: GemmVariant[] = [{ name: "heuristic", config: base }];
  for (const t of TILES) {
    if (!fits(t, m, n)) continue;
    for (const bk of [8, 16]) {
      if (bk > 8 && k < 16) continue;
      for (const s of SWITCH_SETS) out.push(named(split({ ...t, bk, ...s }, batch, m, n, k)));
    }
  }
  const splits = base.splits ?? 1;
  if (splits > 1) {
    for (const f of [2, 4, 0.5, 0.25]) {
      const c = { ...base, ...FAST, splits: Math.max(1, Math.round(splits * f)) };
      out.push(named(c, ` split×${f}`));
    }
  }
  const seen = new Set<string>();
  return out.filter((v) => {
    const key = JSON.stringify(v.config);
    if (!isGemmConfig(v.config) || seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
