/**
 * Matrix-product speed: the tiled GEMM kernels (ops/gemm_kernel.ts) against the
 * simple ones on the products of real layers: ConvNeXt-T's and SLaK-T's
 * pointwise linears (forwards, input gradient, weight gradients) at batch
 * `--n`, 224², and ResNet-101's 1×1 / 3×3 / stem convolutions (forward) at
 * `--n`, 256² (the ERF setting). Prints and writes `bench_gemm.csv`:
 * impl,case,m,n,k,ms,gflop_s,pct_fp32_peak,timing (FLOPs = 2 per
 * multiply-add). `--with-pytorch` first runs `bench/pytorch/matmul.py`
 * (`torch.matmul`, TF32 off, on the same `convnext` and `slak` cases), then
 * prints ours beside it with the ratio (ours ÷ PyTorch GFLOP/s) and writes
 * `bench_gemm_vs_pytorch.csv`.
 *
 * `--sweep` instead times every tile config of the generator on each
 * product (see `scripts/gemm_sweep.ts`) and writes `gemm_sweep*.csv`.
 *
 * ```sh
 * deno run -A scripts/bench_gemm.ts --sweep --set slak --with-pytorch --runs 3
 * deno run -A scripts/bench_gemm.ts --n 64                    # on a GPU
 * deno run -A scripts/bench_gemm.ts --n 64 --set convnext,slak --impl tiled --with-pytorch
 * deno run -A scripts/bench_gemm.ts --n 1 --set resnet --runs 1   # llvmpipe
 * ```
 *
 * @example
 * ```ts
 * import { gemmCases } from "./bench_gemm.ts";
 * console.log(gemmCases("convnext", 64).length > 0); // true
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { type Cell, type CsvRow, parseCsv, toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { noGrad } from "../ops/autograd.ts";
import { conv2d } from "../ops/conv.ts";
import { timeGpu, TUNE_WARMUP_MS } from "../ops/timing.ts";
import { setGemmImpl } from "../ops/gemm_plan.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { planCachePath, planWithCache } from "../ops/plan_cache.ts";
import { planner } from "../ops/planner.ts";
import { matmul } from "../ops/matmul.ts";
import { scope, type Tensor } from "../ops/tensor.ts";
import { randomNormal } from "../ops/random.ts";
import { CONVNEXT_PRESETS } from "../models/convnext.ts";
import { type SweepOptions, type SweepProduct, sweepProduct, sweepSummary } from "./gemm_sweep.ts";
import { SLAK_PRESETS, widenDims } from "../models/slak.ts";
import {
  anchorScript,
  csvComments,
  formatTable,
  GEMM_JOIN,
  joinAnchor,
  runAnchor,
} from "./pytorch_anchor.ts";

/** One timed product: build its operands, then `run` records it. */
export interface GemmCase {
  name: string;
  m: number;
  n: number;
  k: number;
  /**
   * How the operands are stored: "nn" (A [m, k], B [k, n]), "tn" (A stored
   * [k, m] and read transposed, as a weight gradient reads the activations),
   * or "conv" (a convolution lowered to a product).
   */
  layout: "nn" | "tn" | "conv";
  make(): { tensors: Tensor[]; run: () => Tensor };
}

function mm(name: string, m: number, n: number, k: number, transA = false): GemmCase {
  return {
    name,
    m,
    n,
    k,
    layout: transA ? "tn" : "nn",
    make() {
      const a = randomNormal(transA ? [k, m] : [m, k], { seed: 1 });
      const b = randomNormal([k, n], { seed: 2 });
      return { tensors: [a, b], run: () => matmul(a, b, { transA }) };
    },
  };
}

function conv(
  name: string,
  batch: number,
  cin: number,
  cout: number,
  size: number,
  kernel: number,
  stride: number,
): GemmCase {
  const pad = Math.floor(kernel / 2);
  const out = Math.floor((size + 2 * pad - kernel) / stride) + 1;
  return {
    name,
    m: cout,
    n: batch * out * out,
    k: cin * kernel * kernel,
    layout: "conv",
    make() {
      const x = randomNormal([batch, cin, size, size], { seed: 1 });
      const w = randomNormal([cout, cin, kernel, kernel], { seed: 2 });
      return {
        tensors: [x, w],
        run: () => conv2d(x, w, null, { stride, padding: pad }),
      };
    },
  };
}

/**
 * The channel widths of the models whose pointwise products the `convnext`
 * and `slak` sets time: ConvNeXt-T, and SLaK-T (ConvNeXt-T's widths × 1.3,
 * truncated as the official code does).
 */
export const POINTWISE_DIMS: Record<string, number[]> = {
  convnext: CONVNEXT_PRESETS.convnext_tiny.dims,
  slak: widenDims(SLAK_PRESETS.slak_tiny.dims, SLAK_PRESETS.slak_tiny.widthFactor),
};

/**
 * The products of one block's two pointwise linears (dim → 4·dim → dim) on
 * `rows` pixels: both forwards, the input gradient of the first and both
 * weight gradients. The second linear's input gradient has the first's
 * forward shape (rows × 4·dim × dim), so it is not timed twice.
 */
function pointwiseCases(prefix: string, rows: number, dim: number): GemmCase[] {
  return [
    mm(`${prefix} fc1 fwd`, rows, 4 * dim, dim),
    mm(`${prefix} fc2 fwd`, rows, dim, 4 * dim),
    mm(`${prefix} fc1 dgrad`, rows, dim, 4 * dim),
    mm(`${prefix} fc1 wgrad`, 4 * dim, dim, rows, true),
    mm(`${prefix} fc2 wgrad`, dim, 4 * dim, rows, true),
  ];
}

/**
 * The cases of a set: `convnext` or `slak` (the pointwise linears of every
 * stage of ConvNeXt-T or SLaK-T at 224², see {@linkcode POINTWISE_DIMS}:
 * forward, input gradient, weight gradients), or `resnet` (ResNet-101
 * convolutions at 256²), for `batch` images. `bench/pytorch/matmul.py`
 * lists the same `convnext` and `slak` cases under the same names.
 *
 * @example
 * ```ts
 * import { gemmCases } from "./bench_gemm.ts";
 * console.log(gemmCases("resnet", 1).map((c) => c.name)[0]); // "resnet 1x1 256->64 @64"
 * const [c] = gemmCases("slak", 64);
 * console.log(c.name, c.m, c.n, c.k, c.layout); // "slak s1 fc1 fwd" 200704 496 124 "nn"
 * ```
 */
export function gemmCases(set: string, batch: number): GemmCase[] {
  const dims = POINTWISE_DIMS[set];
  if (dims) {
    // Stage s works on (224 / 4 / 2^s)² pixels per image.
    return dims.flatMap((dim, s) =>
      pointwiseCases(`${set} s${s + 1}`, batch * (56 >> s) ** 2, dim)
    );
  }
  if (set === "resnet") {
    return [
      conv("resnet 1x1 256->64 @64", batch, 256, 64, 64, 1, 1),
      conv("resnet 1x1 64->256 @64", batch, 64, 256, 64, 1, 1),
      conv("resnet 1x1 1024->256 @16", batch, 1024, 256, 16, 1, 1),
      conv("resnet 3x3 256->256 @16", batch, 256, 256, 16, 3, 1),
      conv("resnet 7x7/2 3->64 @256", batch, 3, 64, 256, 7, 2),
    ];
  }
  throw new Error(`--set: expected convnext, slak or resnet, got "${set}"`);
}

const HELP = `usage: deno run -A scripts/bench_gemm.ts [flags]

GFLOP/s of our matrix products on the products of real layers.

  --set LIST          convnext, slak (pointwise linears of ConvNeXt-T / SLaK-T at 224²),
                      resnet (ResNet-101 convolutions at 256²) (default convnext,slak,resnet)
  --n N               batch (default 64)
  --impl LIST         tiled, simple (default tiled,simple)
  --runs N            timed runs, median reported (default 5)
  --peak-tflops T     FP32 peak for pct_fp32_peak (default 67, an H200)
  --with-pytorch      run bench/pytorch/matmul.py first (torch.matmul, TF32 off, on the
                      convnext and slak cases), then print ours beside it with the ratios and
                      write bench_gemm_vs_pytorch.csv
  --python CMD        the Python that runs the anchor (default python3)
  --tune              plan the tiled products' tiles first (the plan cache keeps them)
  --no-plan-cache     neither read nor write the plan cache ($XDG_CACHE_HOME/largekernel/plans.json)
  --retune            plan again the products the plan cache already holds
  --sweep             time every tile config of the generator (ops/gemm_plan.ts gemmSweepConfigs)
                      on each product instead, each checked against the heuristic's output;
                      writes gemm_sweep.csv (every variant), gemm_sweep_best.csv (per case: the
                      heuristic, the fastest variant, torch) and gemm_sweep_variants.csv (per
                      variant: wins, geomean and worst time over the fastest)
  --only REGEX        with --sweep: only the variants whose name matches (the heuristic always)
  --stages LIST       with --sweep: only these stages of the convnext/slak sets (e.g. 1,4)
  --budget-s S        with --sweep: start no new product after S seconds (default 420)
  --out DIR           output folder (default out/bench_gemm/)
  --help`;

/** The columns of the side-by-side table, and their headers. */
const SIDE_BY_SIDE: Record<string, string> = {
  impl: "impl",
  case: "case",
  m: "m",
  n: "n",
  k: "k",
  tflop_s: "TFLOP/s",
  pytorch_tflop_s: "torch.matmul",
  gflop_s_ratio: "ratio",
};

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    set: { type: "string", default: "convnext,slak,resnet" },
    n: { type: "int", min: 1, max: 4096, default: 64 },
    impl: { type: "choiceList", options: ["tiled", "simple"], default: ["tiled", "simple"] },
    runs: { type: "int", min: 1, max: 10_000, default: 5 },
    "peak-tflops": { type: "number", above: 0, max: 1e6, default: 67 },
    tune: { type: "boolean" },
    "no-plan-cache": { type: "boolean" },
    retune: { type: "boolean" },
    out: { type: "string", default: "out/bench_gemm/" },
    "with-pytorch": { type: "boolean", default: false },
    python: { type: "string", default: "python3" },
    sweep: { type: "boolean" },
    only: { type: "string", default: "" },
    stages: { type: "string", default: "" },
    "budget-s": { type: "number", above: 0, max: 1e6, default: 420 },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const batch = values.n;
  const runs = values.runs;
  const peak = values["peak-tflops"];
  const impls = values.impl;
  const sets = values.set.split(",").filter(Boolean);
  for (const set of sets) gemmCases(set, 1); // unknown sets fail before the GPU starts
  const out = values.out.replace(/\/+$/, "");
  let anchor: CsvRow[] = [];
  let anchorText = "";
  if (values["with-pytorch"]) {
    const torchSets = sets.filter((s) => s in POINTWISE_DIMS);
    if (!torchSets.length) {
      throw new Error(`--with-pytorch: bench/pytorch/matmul.py times the convnext and slak sets`);
    }
    anchorText = await runAnchor(values.python, anchorScript("matmul.py"), [
      ...["--set", torchSets.join(","), "--n", `${batch}`, "--runs", `${runs}`],
      ...["--peak-tflops", `${peak}`],
    ], "--with-pytorch");
    anchor = parseCsv(anchorText);
    if (anchorText.trim()) await writeFileAtomic(`${out}/pytorch_matmul.csv`, anchorText);
  }
  await initGpu();
  console.log(`# adapter: ${gpu().description}; FLOPs = 2 per multiply-add`);
  if (values.sweep) {
    await sweep(sets.flatMap((set) => gemmCases(set, batch)), anchor, {
      runs,
      minMs: 10,
      peakTflops: peak,
      only: onlyRegex(values.only),
      stages: stageList(values.stages),
      budgetS: values["budget-s"],
      out,
    });
    return;
  }
  const rows: Record<string, Cell>[] = [];
  for (const set of sets) {
    for (const c of gemmCases(set, batch)) {
      const { tensors, run: product } = c.make();
      const run = () => void product();
      for (const impl of impls as ("tiled" | "simple")[]) {
        setGemmImpl(impl);
        if (impl === "tiled" && values.tune) {
          await planWithCache(planner(), () => noGrad(() => scope(run)), {
            cachePath: values["no-plan-cache"] ? null : planCachePath(),
            retune: values.retune,
          });
        }
        const t = await timeGpu(() => noGrad(() => scope(run)), {
          runs,
          warmup: 1,
          minMs: 20,
          warmupMs: TUNE_WARMUP_MS,
        });
        const gflops = (2 * c.m * c.n * c.k) / (t.ms * 1e6);
        rows.push({
          impl,
          case: c.name,
          m: c.m,
          n: c.n,
          k: c.k,
          ms: Number(t.ms.toFixed(3)),
          gflop_s: Number(gflops.toPrecision(4)),
          pct_fp32_peak: Number((gflops / (10 * peak)).toPrecision(3)),
          timing: t.method,
        });
        console.log(
          `${impl} ${c.name} (${c.m}×${c.n}×${c.k}): ${t.ms.toFixed(2)} ms, ${
            gflops.toPrecision(4)
          } GFLOP/s`,
        );
      }
      setGemmImpl("tiled");
      for (const t of tensors) t.dispose();
      await writeFileAtomic(`${out}/bench_gemm.csv`, toCsv(rows));
    }
  }
  console.log(`wrote ${out}/bench_gemm.csv`);
  if (anchor.length) {
    const joined = joinAnchor(rows, anchor, GEMM_JOIN);
    for (const r of joined) {
      r.tflop_s = typeof r.gflop_s === "number" ? Number((r.gflop_s / 1e3).toPrecision(3)) : "";
      r.pytorch_tflop_s = typeof r.pytorch_gflop_s === "number"
        ? Number((r.pytorch_gflop_s / 1e3).toPrecision(3))
        : "";
    }
    console.log(`\nours ÷ torch.matmul (TF32 off), GFLOP/s: above 1 is faster`);
    console.log(formatTable(joined, Object.keys(SIDE_BY_SIDE), SIDE_BY_SIDE));
    const comments = [
      `adapter: ${gpu().description}; FLOPs = 2 per multiply-add`,
      ...csvComments(anchorText).map((c) => `PyTorch: ${c}`),
    ];
    await writeFileAtomic(`${out}/bench_gemm_vs_pytorch.csv`, toCsv(joined, { comments }));
    console.log(`wrote ${out}/bench_gemm_vs_pytorch.csv`);
  }
}

/** `--only`: a regular expression, or none when empty. */
function onlyRegex(text: string): RegExp | undefined {
  if (!text) return undefined;
  try {
    return new RegExp(text);
  } catch {
    throw new Error(`--only: expected a regular expression, got "${text}"`);
  }
}

/** `--stages`: stage numbers 1–4, or none (all) when empty. */
function stageList(text: string): number[] | undefined {
  if (!text) return undefined;
  const out = text.split(",").map(Number);
  if (out.some((s) => !Number.isInteger(s) || s < 1 || s > 4)) {
    throw new Error(`--stages: expected stage numbers 1–4 separated by commas, got "${text}"`);
  }
  return out;
}

/** What a case computes: the forward, the input gradient (dA) or the weight gradient (dB). */
function opOf(name: string): string {
  return name.includes("wgrad") ? "dB" : name.includes("dgrad") ? "dA" : "fwd";
}

/**
 * The `--sweep` run: every variant of every distinct product of `cases`
 * (cases of equal shape and layout are timed once), written after each
 * product so that a run stopped by its budget keeps what it measured.
 */
async function sweep(
  cases: GemmCase[],
  anchor: CsvRow[],
  o: SweepOptions & { stages?: number[]; budgetS: number; out: string },
): Promise<void> {
  const started = performance.now();
  const torchMs = new Map(anchor.map((r) => [String(r.case), Number(r.ms)]));
  const products = new Map<string, SweepProduct>();
  for (const c of cases) {
    const stage = /\bs(\d)\b/.exec(c.name);
    if (o.stages && stage && !o.stages.includes(Number(stage[1]))) continue;
    const key = `${c.m}x${c.n}x${c.k}:${c.layout}`;
    const p = products.get(key);
    if (p) p.cases.push(c.name);
    else {products.set(key, {
        cases: [c.name],
        m: c.m,
        n: c.n,
        k: c.k,
        layout: c.layout,
        make: c.make,
      });}
  }
  const rows: Record<string, Cell>[] = [];
  const best: Record<string, Cell>[] = [];
  let done = 0;
  for (const p of products.values()) {
    const elapsed = (performance.now() - started) / 1e3;
    if (elapsed > o.budgetS) {
      console.log(`# --budget-s ${o.budgetS} spent after ${done} of ${products.size} products`);
      break;
    }
    const timed = await sweepProduct(p, o);
    done++;
    const flops = 2 * p.m * p.n * p.k;
    for (const name of p.cases) {
      const torch = torchMs.get(name);
      const torchTflops = torch ? flops / (torch * 1e9) : undefined;
      const caseRows: Record<string, Cell>[] = timed.map((r) => ({
        case: name,
        op: opOf(name),
        m: p.m,
        n: p.n,
        k: p.k,
        layout: p.layout,
        ...r,
        torch_ms: torch ?? "",
        torch_tflop_s: torchTflops ? Number(torchTflops.toPrecision(4)) : "",
        vs_torch: torchTflops && typeof r.tflop_s === "number"
          ? Number((r.tflop_s / torchTflops).toPrecision(3))
          : "",
      }));
      rows.push(...caseRows);
      const ok = caseRows.filter((r) => r.ok === true && typeof r.ms === "number");
      const fastest = ok.reduce((a, b) => ((b.ms as number) < (a.ms as number) ? b : a), ok[0]);
      const heuristic = caseRows[0];
      best.push({
        case: name,
        op: opOf(name),
        m: p.m,
        n: p.n,
        k: p.k,
        heuristic_ms: heuristic.ms,
        heuristic_tflop_s: heuristic.tflop_s,
        best_variant: fastest?.variant ?? "",
        best_config: fastest?.config ?? "",
        best_ms: fastest?.ms ?? "",
        best_tflop_s: fastest?.tflop_s ?? "",
        torch_tflop_s: heuristic.torch_tflop_s,
        best_vs_torch: fastest?.vs_torch ?? "",
      });
      const f = fastest;
      console.log(
        `${name} (${p.m}×${p.n}×${p.k}): heuristic ${heuristic.tflop_s} TFLOP/s, best ${
          f?.tflop_s ?? "-"
        } (${f?.variant ?? "-"})${torchTflops ? `, torch ${torchTflops.toPrecision(3)}` : ""}`,
      );
    }
    await writeFileAtomic(`${o.out}/gemm_sweep.csv`, toCsv(rows));
    await writeFileAtomic(`${o.out}/gemm_sweep_best.csv`, toCsv(best));
    await writeFileAtomic(`${o.out}/gemm_sweep_variants.csv`, toCsv(sweepSummary(rows)));
  }
  const columns = ["case", "heuristic_tflop_s", "best_tflop_s", "torch_tflop_s", "best_vs_torch"];
  console.log(`\nper case: heuristic, fastest variant and torch.matmul (TF32 off), TFLOP/s`);
  console.log(formatTable(best, [...columns, "best_variant"]));
  console.log(`\nvariants by geometric mean of time over the fastest (first 15):`);
  const summary = sweepSummary(rows);
  console.log(formatTable(summary.slice(0, 15), Object.keys(summary[0] ?? {})));
  console.log(`wrote ${o.out}/gemm_sweep.csv, gemm_sweep_best.csv, gemm_sweep_variants.csv`);
}

if (import.meta.main) await runMain(main);
