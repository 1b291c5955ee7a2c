/**
 * The sweep of `scripts/bench_gemm.ts --sweep`: every tile config of
 * {@linkcode gemmSweepConfigs} timed on each product, each checked against
 * the heuristic config's output (itself tested against the CPU in
 * `tests/gemm_test.ts`), so that one device run shows which configurations
 * of the generator (`ops/gemm_source.ts`) win where. A variant whose output
 * differs (relative L2 error above {@linkcode SWEEP_TOLERANCE}) or that
 * raises an error is reported and never counts as a win.
 *
 * @example
 * ```ts
 * import { sweepSummary } from "./gemm_sweep.ts";
 * const rows = [
 *   { case: "c", variant: "a", ok: true, ms: 2 },
 *   { case: "c", variant: "b", ok: true, ms: 1 },
 * ];
 * console.log(sweepSummary(rows)[0]); // { variant: "b", products: 1, wins: 1, geomean_vs_best: 1, worst_vs_best: 1 }
 * ```
 * @module
 */
import type { Cell } from "../analysis/csv.ts";
import { noGrad } from "../ops/autograd.ts";
import { mul, sub, sum } from "../ops/elementwise.ts";
import { gemmSweepConfigs, type GemmVariant } from "../ops/gemm_plan.ts";
import { gpu } from "../ops/gpu.ts";
import { planner } from "../ops/planner.ts";
import { scope, type Tensor } from "../ops/tensor.ts";
import { timeGpu, TUNE_WARMUP_MS } from "../ops/timing.ts";

/** Largest relative L2 distance from the heuristic's output that a variant may have. */
export const SWEEP_TOLERANCE = 1e-4;

/** One product of the sweep: its gemm shape and how to run it (returns the output). */
export interface SweepProduct {
  /** Every case name that runs this product (equal shapes are timed once). */
  cases: string[];
  m: number;
  n: number;
  k: number;
  layout: string;
  /** Build the operands; `run` records the product under the current plan or forced config. */
  make(): { tensors: Tensor[]; run: () => Tensor };
}

/** Options of {@linkcode sweepProduct}. */
export interface SweepOptions {
  /** Timed runs per variant (median). */
  runs: number;
  /** Each timed run repeats the product for at least this long. */
  minMs: number;
  /** Keep only variants whose name matches. */
  only?: RegExp;
  /** FP32 peak for pct_fp32_peak, TFLOP/s. */
  peakTflops: number;
}

/** √(Σ (a − b)²) / √(Σ b²) on the GPU (only two numbers are read back). */
async function relativeL2(a: Tensor, b: Tensor): Promise<number> {
  const [num, den] = noGrad(() =>
    scope(() => {
      const d = sub(a, b);
      return [sum(mul(d, d)), sum(mul(b, b))];
    })
  );
  const [nv, dv] = [(await num.read())[0], (await den.read())[0]];
  num.dispose();
  den.dispose();
  return Math.sqrt(nv) / Math.max(Math.sqrt(dv), 1e-30);
}

/**
 * The variants of a product (see {@linkcode gemmSweepConfigs}: the
 * heuristic's config, the reference, first), optionally only the heuristic
 * and those whose name matches `only`.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { sweepVariants } from "./gemm_sweep.ts";
 * await initGpu();
 * console.log(sweepVariants(64, 64, 64, /^$/).length); // 1
 * ```
 */
export function sweepVariants(m: number, n: number, k: number, only?: RegExp): GemmVariant[] {
  const all = gemmSweepConfigs(1, m, n, k);
  return only ? all.filter((v, i) => i === 0 || only.test(v.name)) : all;
}

/**
 * Time every variant of `p` (see {@linkcode sweepVariants}) and check each
 * against the heuristic's output. One row per variant: variant, config
 * (JSON), ms, tflop_s, pct_fp32_peak, rel_err, ok, error.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { matmul } from "../ops/matmul.ts";
 * import { sweepProduct } from "./gemm_sweep.ts";
 * await initGpu();
 * const rows = await sweepProduct({
 *   cases: ["tiny"], m: 8, n: 8, k: 8, layout: "nn",
 *   make() {
 *     const a = Tensor.randn([8, 8], { seed: 1 });
 *     return { tensors: [a], run: () => matmul(a, a) };
 *   },
 * }, { runs: 1, minMs: 0, peakTflops: 67, only: /^$/ });
 * console.log(rows.length, rows[0].variant, rows[0].ok); // 1 "heuristic" true
 * ```
 */
export async function sweepProduct(
  p: SweepProduct,
  opts: SweepOptions,
): Promise<Record<string, Cell>[]> {
  const { tensors, run } = p.make();
  const rows: Record<string, Cell>[] = [];
  let ref: Tensor | null = null;
  try {
    for (const v of sweepVariants(p.m, p.n, p.k, opts.only)) {
      const row: Record<string, Cell> = {
        variant: v.name,
        config: JSON.stringify(v.config),
        ms: "",
        tflop_s: "",
        pct_fp32_peak: "",
        rel_err: "",
        ok: false,
        error: "",
      };
      rows.push(row);
      planner().force("gemm", v.config);
      try {
        const out = noGrad(run);
        await gpu().sync();
        if (!ref) {
          ref = out;
          row.rel_err = 0;
        } else {
          row.rel_err = Number((await relativeL2(out, ref)).toPrecision(3));
          out.dispose();
        }
        if (!((row.rel_err as number) <= SWEEP_TOLERANCE)) {
          row.error = "differs from the heuristic";
          continue;
        }
        const t = await timeGpu(() => noGrad(() => scope(() => void run())), {
          runs: opts.runs,
          warmup: 1,
          minMs: opts.minMs,
          // Every variant first compiles its kernel and reads its output back for the check
          // above: the GPU idles meanwhile and its clock falls, so each one warms it up again.
          warmupMs: opts.minMs > 0 ? TUNE_WARMUP_MS : 0,
        });
        const tflops = (2 * p.m * p.n * p.k) / (t.ms * 1e9);
        row.ms = Number(t.ms.toFixed(4));
        row.tflop_s = Number(tflops.toPrecision(4));
        row.pct_fp32_peak = Number(((100 * tflops) / opts.peakTflops).toPrecision(3));
        row.ok = true;
      } catch (e) {
        row.error = (e instanceof Error ? e.message : String(e)).split("\n")[0].slice(0, 200);
        if (v.name === "heuristic") throw e;
      } finally {
        planner().force("gemm", null);
      }
    }
  } finally {
    (ref as Tensor | null)?.dispose();
    for (const t of tensors) t.dispose();
  }
  return rows;
}

/**
 * Per variant over the products it ran on (rows with `case`, `variant`,
 * `ok`, `ms`): how many products it ran, how often it was the fastest, and
 * the geometric mean and worst of its time over the fastest time of each
 * product; best first.
 *
 * @example
 * ```ts
 * import { sweepSummary } from "./gemm_sweep.ts";
 * const s = sweepSummary([
 *   { case: "p", variant: "x", ok: true, ms: 1 },
 *   { case: "p", variant: "y", ok: true, ms: 4 },
 *   { case: "q", variant: "y", ok: true, ms: 1 },
 * ]);
 * console.log(s.map((r) => r.variant)); // ["x", "y"]
 * ```
 */
export function sweepSummary(rows: Record<string, Cell>[]): Record<string, Cell>[] {
  const timed = rows.filter((r) => r.ok === true && typeof r.ms === "number");
  const best = new Map<Cell, number>();
  for (const r of timed) best.set(r.case, Math.min(best.get(r.case) ?? Infinity, r.ms as number));
  const by = new Map<string, { n: number; wins: number; logs: number; worst: number }>();
  for (const r of timed) {
    const ratio = (r.ms as number) / best.get(r.case)!;
    const s = by.get(String(r.variant)) ?? { n: 0, wins: 0, logs: 0, worst: 1 };
    s.n++;
    if (ratio === 1) s.wins++;
    s.logs += Math.log(ratio);
    s.worst = Math.max(s.worst, ratio);
    by.set(String(r.variant), s);
  }
  return [...by].map(([variant, s]) => ({
    variant,
    products: s.n,
    wins: s.wins,
    geomean_vs_best: Number(Math.exp(s.logs / s.n).toPrecision(4)),
    worst_vs_best: Number(s.worst.toPrecision(4)),
  })).sort((a, b) => a.geomean_vs_best - b.geomean_vs_best || b.wins - a.wins);
}
