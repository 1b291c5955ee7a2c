/**
 * Sparse vs dense depthwise convolution speed: for each
 * kernel shape and density, a random unstructured mask per channel (exactly
 * `round(density·KH·KW)` active taps, as SLaK's masks) and one stride-1
 * "same" depthwise conv on [N, C, H, W], timed forward and forward+backward
 * (input and filter gradients and the given output gradient) with the dense
 * path (`depthwiseConv2d`: the tiled kernels of ops/depthwise_direct.ts on a
 * GPU) and the sparse one (`sparseDepthwiseConv2d`). GPU time from timestamp
 * queries where the adapter offers them, else the wall clock around a sync
 * (`timeGpu`), median of `--runs`. Defaults: SLaK-T stage 1 (width 1.3 × 96 =
 * 124 channels, 56×56 at 224² input, batch 64, kernels 51×5 and 5×51).
 * Writes `sparse_speed.csv` (impl,density,kh,kw,pass,ms,speedup; speedup =
 * dense ms / this ms) into `--out`, prints a table, the strips summed (the
 * stage's decomposed large kernel), and the density below which the sparse
 * path wins (the value for `SPARSE_DEPTHWISE_THRESHOLD` in `ops/sparse_path.ts`).
 *
 * ```sh
 * deno run -A scripts/sparse_speed.ts                           # SLaK-T stage 1, tuned, on a GPU
 * deno run -A scripts/sparse_speed.ts --n 1 --c 4 --h 12 --k 7x3 --density 1,0.4 --runs 2   # llvmpipe
 * ```
 *
 * @example
 * ```ts
 * import { crossover } from "./sparse_speed.ts";
 * console.log(crossover([[1, 0.8], [0.6, 1.2], [0.4, 2]])); // 0.8 (speedup 1 between 1.0 and 0.6)
 * ```
 * @module
 */
import { numberFlag, parseFlags } from "../train/flags.ts";
import { toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { backward, noGrad } from "../ops/autograd.ts";
import { depthwiseConv2d, samePadding } from "../ops/depthwise.ts";
import { depthwisePlan, type DepthwiseShape } from "../ops/depthwise_plan.ts";
import { timeGpu, TUNE_WARMUP_MS } from "../ops/timing.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { planCachePath, planWithCache } from "../ops/plan_cache.ts";
import { planner } from "../ops/planner.ts";
import {
  sparseDepthwiseConfigs,
  sparseDepthwiseConv2d,
  SparseDepthwisePlan,
} from "../ops/sparse_depthwise.ts";
import { scope, Tensor, trimPool } from "../ops/tensor.ts";
import { randomNormal } from "../ops/random.ts";

const HELP = `usage: deno run -A scripts/sparse_speed.ts [flags]

Dense vs sparse depthwise conv, forward and forward+backward, per density.

  --n N            batch (default 64)
  --c C            channels (default 124: SLaK-T stage 1, width 1.3)
  --h H            height (default 56); --w W width (default H)
  --k LIST         kernels KHxKW (default 51x5,5x51)
  --density LIST   mask densities (default 1.0,0.6,0.4,0.2)
  --pass LIST      fwd, fwdbwd (default fwd,fwdbwd)
  --runs N         timed runs, median reported (default 10)
  --warmup N       untimed runs first (default 2)
  --no-tune        skip tuning (default: tune dense and sparse tilings per shape on a GPU)
  --tune-max N     candidates per kernel when tuning (default 8)
  --no-plan-cache  neither read nor write the plan cache ($XDG_CACHE_HOME/largekernel/plans.json)
  --retune         plan again the kernels the plan cache already holds
  --seed S         mask seed (default 0)
  --out DIR        output folder (default out/sparse_speed/)
  --help`;

/**
 * The density at which speedup crosses 1, by linear interpolation between
 * measured points `[density, speedup]`: 1 (or more: the largest density) when
 * sparse already wins at every density measured, 0 when it never wins.
 *
 * @example
 * ```ts
 * import { crossover } from "./sparse_speed.ts";
 * console.log(crossover([[0.6, 0.9], [0.2, 0.95]])); // 0
 * ```
 */
export function crossover(points: [number, number][]): number {
  const p = [...points].sort((a, b) => b[0] - a[0]);
  if (!p.length) return 0;
  if (p[0][1] >= 1) return p[0][0];
  for (let i = 1; i < p.length; i++) {
    const [d0, s0] = p[i - 1];
    const [d1, s1] = p[i];
    if (s1 >= 1) return d1 + (d0 - d1) * (s1 - 1) / (s1 - s0);
  }
  return 0;
}

function parseKernels(s: string): [number, number][] {
  const out = s.split(",").filter(Boolean).map((k): [number, number] => {
    const m = /^(\d{1,3})x(\d{1,3})$/.exec(k);
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) {
      throw new Error(`--k: expected KHxKW like 51x5 (sides 1 to 999), got "${k}"`);
    }
    return [Number(m[1]), Number(m[2])];
  });
  if (!out.length) throw new Error(`--k: expected KHxKW like 51x5, got "${s}"`);
  return out;
}

function parseDensities(s: string): number[] {
  const items = s.split(",").filter(Boolean);
  if (!items.length) throw new Error(`--density: expected numbers in [0, 1], got "${s}"`);
  return items.map((d) => numberFlag("density", d, { min: 0, max: 1 }));
}

type Pass = "fwd" | "fwdbwd";

/** The forward and backward of one conv (dense or sparse), gradients dropped. */
function convStep(x: Tensor, w: Tensor, gy: Tensor, plan: SparseDepthwisePlan | null): () => void {
  const conv = () => plan ? sparseDepthwiseConv2d(x, w, plan, null) : depthwiseConv2d(x, w, null);
  return () =>
    scope(() => {
      x.requiresGrad = w.requiresGrad = true;
      backward(conv(), gy);
      x.requiresGrad = w.requiresGrad = false;
      for (const t of [x, w]) {
        t.grad?.dispose();
        t.grad = null;
      }
    });
}

/** Median ms of one conv (dense or sparse), forward or forward+backward. */
async function timeConv(
  x: Tensor,
  w: Tensor,
  gy: Tensor,
  plan: SparseDepthwisePlan | null,
  pass: Pass,
  opts: { runs: number; warmup: number },
): Promise<{ ms: number; method: string }> {
  const conv = () => plan ? sparseDepthwiseConv2d(x, w, plan, null) : depthwiseConv2d(x, w, null);
  x.requiresGrad = w.requiresGrad = pass === "fwdbwd";
  const record = pass === "fwd" ? () => noGrad(() => scope(() => void conv())) : () =>
    scope(() => {
      backward(conv(), gy);
      for (const t of [x, w]) {
        t.grad?.dispose();
        t.grad = null;
      }
    });
  // Back to back for 20 ms per timed run: a GPU idling between short runs drops its clock.
  const t = await timeGpu(record, { ...opts, minMs: 20, warmupMs: TUNE_WARMUP_MS });
  x.requiresGrad = w.requiresGrad = false;
  return { ms: t.ms, method: t.method };
}

async function main(): Promise<void> {
  const side = { type: "int", min: 1, max: 4096 } as const;
  const a = parseFlags(Deno.args, {
    n: { ...side, default: 64 },
    c: { type: "int", min: 1, max: 65_536, default: 124 },
    h: { ...side, default: 56 },
    w: side,
    k: { type: "string", default: "51x5,5x51" },
    density: { type: "string", default: "1.0,0.6,0.4,0.2" },
    pass: { type: "choiceList", options: ["fwd", "fwdbwd"], default: ["fwd", "fwdbwd"] },
    runs: { type: "int", min: 1, max: 10_000, default: 10 },
    warmup: { type: "int", min: 0, max: 10_000, default: 2 },
    "no-tune": { type: "boolean", default: false },
    "tune-max": { type: "int", min: 1, max: 1000, default: 8 },
    "no-plan-cache": { type: "boolean", default: false },
    retune: { type: "boolean", default: false },
    seed: { type: "int", min: 0, max: 2 ** 32 - 1, default: 0 },
    out: { type: "string", default: "out/sparse_speed" },
    help: { type: "boolean", default: false },
  });
  if (a.help) {
    console.log(HELP);
    return;
  }
  const { n, c, h } = a;
  const wd = a.w ?? h;
  const kernels = parseKernels(a.k);
  const densities = parseDensities(a.density);
  const passes = a.pass as Pass[];
  const timing = { runs: a.runs, warmup: a.warmup };
  const seed = a.seed;
  await initGpu();
  const g = gpu();
  const tune = !a["no-tune"] && !g.isFallback;
  const tuneMax = a["tune-max"];
  const planOpts = {
    cachePath: a["no-plan-cache"] ? null : planCachePath(),
    retune: a.retune,
    maxCandidates: tuneMax,
  };
  console.log(
    `# sparse vs dense depthwise on ${g.description}${g.isFallback ? " (software)" : ""}`,
  );
  console.log(`# x [${n}, ${c}, ${h}, ${wd}], stride 1, same padding; tune=${tune}`);

  const rows: Record<string, string | number>[] = [];
  /** speedups[pass][density] per kernel, and summed ms over kernels. */
  const sums = new Map<string, { dense: number; sparse: number }>();
  const speedups = new Map<string, [number, number][]>();
  let method = "";
  for (const [kh, kw] of kernels) {
    const [ph, pw] = samePadding(kh, kw);
    const s: DepthwiseShape = { n, c, h, w: wd, kh, kw, ph, pw, ho: h, wo: wd };
    const x = randomNormal([n, c, h, wd], { seed: 1 });
    const gy = randomNormal([n, c, h, wd], { seed: 3 });
    const wRaw = await Tensor.randn([c, 1, kh, kw], { seed: 2 }).read();
    if (tune) {
      const w = Tensor.from(wRaw, [c, 1, kh, kw]);
      await planWithCache(planner(), convStep(x, w, gy, null), planOpts);
      w.dispose();
    }
    console.log(`# ${kh}x${kw}: dense plan ${JSON.stringify(depthwisePlan(s, 1))}`);
    const dense = new Map<Pass, number>();
    {
      const w = Tensor.from(wRaw, [c, 1, kh, kw]);
      for (const pass of passes) {
        const t = await timeConv(x, w, gy, null, pass, timing);
        method = t.method;
        dense.set(pass, t.ms);
        rows.push({ impl: "dense", density: 1, kh, kw, pass, ms: t.ms, speedup: 1 });
        console.log(`dense   ${kh}x${kw} d=1.00 ${pass.padEnd(6)} ${t.ms.toFixed(3)} ms`);
      }
      w.dispose();
    }
    for (const d of densities) {
      const mask = SparseDepthwisePlan.randomMask(c, kh, kw, d, seed);
      const plan = SparseDepthwisePlan.fromMask(mask, [c, 1, kh, kw]);
      const w = Tensor.from(wRaw.map((v, i) => v * mask[i]), [c, 1, kh, kw]);
      if (tune) await planWithCache(planner(), convStep(x, w, gy, plan), planOpts);
      console.log(
        `# ${kh}x${kw} d=${d}: sparse configs ${JSON.stringify(sparseDepthwiseConfigs(s, d))}`,
      );
      for (const pass of passes) {
        const t = await timeConv(x, w, gy, plan, pass, timing);
        const sp = dense.get(pass)! / t.ms;
        rows.push({ impl: "sparse", density: d, kh, kw, pass, ms: t.ms, speedup: sp });
        console.log(
          `sparse  ${kh}x${kw} d=${d.toFixed(2)} ${pass.padEnd(6)} ${t.ms.toFixed(3)} ms  ×${
            sp.toFixed(2)
          }`,
        );
        const key = `${pass}|${d}`;
        const acc = sums.get(key) ?? { dense: 0, sparse: 0 };
        acc.dense += dense.get(pass)!;
        acc.sparse += t.ms;
        sums.set(key, acc);
      }
      w.dispose();
      plan.dispose();
    }
    x.dispose();
    gy.dispose();
    trimPool();
  }
  console.log(`# timing: ${method}; all kernels summed (${kernels.map((k) => k.join("x"))}):`);
  for (const pass of passes) {
    for (const d of densities) {
      const acc = sums.get(`${pass}|${d}`)!;
      const sp = acc.dense / acc.sparse;
      console.log(
        `${pass.padEnd(6)} d=${d.toFixed(2)} dense ${acc.dense.toFixed(3)} ms  sparse ${
          acc.sparse.toFixed(3)
        } ms  ×${sp.toFixed(2)}`,
      );
      speedups.set(pass, [...(speedups.get(pass) ?? []), [d, sp]]);
    }
    console.log(
      `${pass}: sparse wins below density ≈ ${crossover(speedups.get(pass)!).toFixed(2)}`,
    );
  }
  const train = speedups.get("fwdbwd") ?? speedups.get(passes[0])!;
  console.log(
    `# suggested SPARSE_DEPTHWISE_THRESHOLD = ${crossover(train).toFixed(2)} (${
      speedups.has("fwdbwd") ? "fwdbwd" : passes[0]
    })`,
  );
  await Deno.mkdir(a.out!, { recursive: true });
  const path = `${a.out}/sparse_speed.csv`;
  await writeFileAtomic(path, toCsv(rows));
  console.log(`# wrote ${path}`);
}

if (import.meta.main) await runMain(main);
