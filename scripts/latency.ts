/**
 * Depthwise-convolution latency (RepLKNet Table 1): a stack of `--layers`
 * depthwise K×K convolutions ("same" padding, no bias, stride 1) on an
 * [N, C, R, R] fp32 tensor, forward and forward+backward (input and filter
 * gradients of every layer, loss = sum of the output), for every R and K
 * asked for, timed on the GPU (timestamp queries where the adapter offers
 * them, else the wall clock around a sync; stacks back to back for at least
 * {@linkcode STACK_MIN_MS} per timed run, see there), median of `--runs` after
 * `--warmup` runs. Writes `latency.csv` with the columns of the PyTorch
 * anchor (`bench/pytorch/dwconv.py`: impl,pass,N,C,R,K,ms_per_stack)
 * so the two join, `latency_detail.csv` (timing method, TFLOP/s and % of
 * the FP32 peak, the tile configs), and `latency.png` (ms vs K, a panel per
 * pass and R, a line per implementation). FLOPs here are 2 per
 * multiply-accumulate: forward 2·N·C·R²·K² per layer; forward+backward
 * counts three times that (input and filter gradients cost one forward each).
 *
 * ```sh
 * deno run -A scripts/latency.ts --r 32 --k 3,7,13,31 --pass fwd,fwdbwd --impl fast
 * deno run -A scripts/latency.ts --r 32 --k 31 --tune --torch out/torch.csv   # tune, join PyTorch
 * deno run -A scripts/latency.ts --plot-only --torch out/torch.csv            # redraw the PNG
 * deno run -A scripts/latency.ts --r 32 --k 3,7,13,31 --with-pytorch          # PyTorch first, same command
 * ```
 *
 * @example
 * ```ts
 * import { stackFlops } from "./latency.ts";
 * console.log(stackFlops(64, 384, 32, 31, 24) / 1e12); // ≈ 1.16 TFLOP per forward stack
 * ```
 * @module
 */
import { parseFlags, readFlagFile, readFlagJson, rejectTogether } from "../train/flags.ts";
import { type Cell, parseCsv, toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { backward, noGrad } from "../ops/autograd.ts";
import { depthwiseConv2d } from "../ops/depthwise.ts";
import { depthwisePlan, type DepthwiseShape, setDepthwiseImpl } from "../ops/depthwise_plan.ts";
import { timeGpu } from "../ops/timing.ts";
import { planCachePath, planWithCache } from "../ops/plan_cache.ts";
import { planner } from "../ops/planner.ts";
import { fftFits, fftFusedBackwardFits } from "../ops/depthwise_fft.ts";
import { sum } from "../ops/elementwise.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { scope, Tensor, trimPool } from "../ops/tensor.ts";
import { anchorScript, runAnchor } from "./pytorch_anchor.ts";

const HELP = `usage: deno run -A scripts/latency.ts [flags]

RepLKNet Table 1: a stack of depthwise K×K convs on [N, C, R, R], ms per stack.

  --r LIST          resolutions (default 16,32,64)
  --k LIST          kernel sizes (default 3,5,7,9,13,17,21,27,29,31)
  --n N             batch (default 64)
  --c C             channels (default 384)
  --layers L        convs per stack (default 24)
  --pass LIST       fwd, fwdbwd (default fwd,fwdbwd)
  --impl LIST       fast, generic (default fast,generic)
  --generic-k LIST  run the generic kernels only for these K (default: all of --k)
  --generic-r LIST  … and only for these R (default: all of --r)
  --generic-pass L  … and only for these passes (default: all of --pass)
  --runs N          timed runs, median reported (default 5)
  --warmup N        untimed runs first (default 2)
  --tune            plan each shape's kernels first (the planner times candidate tilings and
                    keeps the fastest; default on a GPU without --tuned; --no-tune turns it off)
  --tune-max N      candidates per kernel when tuning (default 6)
  --tuned FILE      reuse the plans of a tuned.json written by --tune
  --no-plan-cache   neither read nor write the plan cache ($XDG_CACHE_HOME/largekernel/plans.json)
  --retune          plan again the kernels the plan cache already holds
  --check           first compare fast (direct tiles, and the FFT path of each size that
                    fits, with separate and fused gradients) and generic outputs per (R, K) on
                    N=3, C=4
  --peak-tflops X   FP32 peak for "% of peak" (default 67, H100 SXM)
  --torch FILE      PyTorch anchor CSV: print ratios, add its lines to the chart
  --anchor FILE     same as --torch
  --with-pytorch    run the PyTorch anchor (python3 bench/pytorch/dwconv.py) on the same
                    stacks first, in this command, and use it as --torch does (torch_dwconv.csv)
  --python CMD      the Python that runs it (default python3)
  --no-plot         skip the PNG (sharp is then never loaded)
  --plot-only       redraw the PNG from --out/latency.csv (and --torch), no GPU
  --out DIR         output folder (default out/latency/)
  --help`;

/** Forward FLOPs of one stack (2 per multiply-accumulate, padding taps included). */
export function stackFlops(n: number, c: number, r: number, k: number, layers: number): number {
  return 2 * n * c * r * r * k * k * layers;
}

/** CSV pass names, as in the PyTorch anchor. */
const PASS_NAME: Record<string, string> = { fwd: "forward", fwdbwd: "forward+backward" };
const IMPL_NAME: Record<string, string> = { fast: "webgpu-fast", generic: "webgpu-generic" };

/**
 * The "same"-padded stride-1 shape of one layer.
 *
 * @example
 * ```ts
 * import { layerShape } from "./latency.ts";
 * console.log(layerShape(64, 384, 32, 13)); // n 64, c 384, 32×32, 13×13 kernel padded by 6
 * ```
 */
export function layerShape(n: number, c: number, r: number, k: number): DepthwiseShape {
  const p = Math.floor(k / 2);
  return { n, c, h: r, w: r, kh: k, kw: k, ph: p, pw: p, ho: r, wo: r };
}

/**
 * Median GPU milliseconds of one stack: `layers` depthwise K×K convs on x,
 * forward only or forward + backward (x and every filter want gradients,
 * loss = sum of the output, gradients dropped after each run).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { timeStack } from "./latency.ts";
 * await initGpu();
 * const x = Tensor.randn([1, 4, 16, 16], { seed: 0 });
 * const filters = [Tensor.randn([4, 1, 7, 7], { seed: 1 }), Tensor.randn([4, 1, 7, 7], { seed: 2 })];
 * console.log(await timeStack(x, filters, "fwd", { runs: 2, warmup: 1 })); // { ms, wallMs, method, … }: ms is the median
 * ```
 */
export async function timeStack(
  x: Tensor,
  filters: Tensor[],
  pass: "fwd" | "fwdbwd",
  { runs = 5, warmup = 2 } = {},
): ReturnType<typeof timeGpu> {
  const leaves = [x, ...filters];
  for (const t of leaves) t.requiresGrad = pass === "fwdbwd";
  const forward = () => {
    let y = x;
    for (const w of filters) y = depthwiseConv2d(y, w, null);
    return y;
  };
  const record = pass === "fwd"
    ? () => noGrad(() => scope(() => void forward()))
    : () =>
      scope(() => {
        backward(sum(forward()));
        for (const t of leaves) {
          t.grad?.dispose();
          t.grad = null;
        }
      });
  return await timeGpu(record, { runs, warmup, minMs: STACK_MIN_MS });
}

/**
 * GPU milliseconds each timed run lasts at least: stacks run back to back, so
 * the GPU stays at its working clock as it does under PyTorch's asynchronous
 * launches (a GPU that idles between runs while we record can stay at its
 * idle clock; see `timeGpu`).
 */
export const STACK_MIN_MS = 100;

/** Max |a − b| / max |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 1e-30;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return Number.isFinite(num) ? num / den : Infinity;
}

/** One depthwise layer's forward and backward on random data of `shape`: what --tune plans. */
function layerStep(shape: DepthwiseShape): void {
  scope(() => {
    const x = Tensor.randn([shape.n, shape.c, shape.h, shape.w], { seed: 1 });
    const w = Tensor.randn([shape.c, 1, shape.kh, shape.kw], { seed: 2 });
    x.requiresGrad = w.requiresGrad = true;
    backward(sum(depthwiseConv2d(x, w, null, { padding: [shape.ph, shape.pw] })));
    for (const t of [x, w]) t.grad?.dispose();
  });
}

/**
 * Fast vs generic on [3, 4, R, R] (an odd batch: the FFT path's last plane pair is half empty):
 * forward, input gradient, filter gradient errors, with the direct tiles (`fft` null) or the
 * FFT path of size `fft` forced (both gradients from one kernel with `fuseBackward`).
 */
async function checkShape(
  r: number,
  k: number,
  fft: number | null,
  fuseBackward = false,
): Promise<number[]> {
  const runImpl = (which: "fast" | "generic") =>
    scope(async () => {
      setDepthwiseImpl(which);
      const f = { fft: fft ?? 0, pairs: 1 };
      const forced = which === "fast" && fft;
      for (const op of ["depthwise.forward", "depthwise.backwardInput", "depthwise.filter"]) {
        planner().force(op, forced ? f : null);
      }
      planner().force("depthwise.fuse", forced ? { fft: fuseBackward ? f : null } : null);
      const x = Tensor.randn([3, 4, r, r], { seed: 11 });
      const w = Tensor.randn([4, 1, k, k], { seed: 12, std: 1 / k });
      x.requiresGrad = true;
      w.requiresGrad = true;
      const y = depthwiseConv2d(x, w, null);
      backward(y, Tensor.randn(y.shape, { seed: 13 }));
      const out = [await y.read(), await x.grad!.read(), await w.grad!.read()];
      x.grad!.dispose();
      w.grad!.dispose();
      return out;
    });
  const want = await runImpl("generic");
  const got = await runImpl("fast");
  setDepthwiseImpl("auto");
  planner().clearForced();
  return got.map((g, i) => relErr(g, want[i]));
}

interface Row {
  impl: string;
  pass: string;
  N: number;
  C: number;
  R: number;
  K: number;
  ms_per_stack: number;
}

function readRows(text: string): Row[] {
  return parseCsv(text).filter((r) => r.ms_per_stack).map((r) => ({
    impl: r.impl,
    pass: r.pass,
    N: Number(r.N),
    C: Number(r.C),
    R: Number(r.R),
    K: Number(r.K),
    ms_per_stack: Number(r.ms_per_stack),
  }));
}

/** ms vs K: a panel per (pass, R), a line per implementation. */
async function plot(rows: Row[], path: string, title: string): Promise<void> {
  const { writeLineChart } = await import("../analysis/plot.ts");
  const passes = [...new Set(rows.map((r) => r.pass))];
  const rs = [...new Set(rows.map((r) => r.R))].sort((a, b) => a - b);
  const impls = [...new Set(rows.map((r) => r.impl))];
  const panels = passes.flatMap((pass) =>
    rs.map((R) => ({
      title: `${pass}, R=${R}`,
      xLabel: "kernel size K",
      yLabel: "ms per stack",
      series: impls.map((impl) => {
        const pts = rows.filter((r) => r.pass === pass && r.R === R && r.impl === impl)
          .sort((a, b) => a.K - b.K);
        return {
          name: impl,
          x: pts.map((p) => p.K),
          y: pts.map((p) => p.ms_per_stack),
          markers: true,
          dash: impl.startsWith("pytorch") ? "6 3" : undefined,
        };
      }).filter((s) => s.x.length > 0),
      legend: "top-left" as const,
    }))
  ).filter((p) => p.series.length > 0);
  await writeLineChart(path, { title, panels, columns: rs.length });
}

async function main(): Promise<void> {
  const sizes = { type: "intList", min: 1, max: 4096 } as const;
  const kernels = { type: "intList", min: 1, max: 255 } as const;
  const passNames = ["fwd", "fwdbwd"];
  const values = parseFlags(Deno.args, {
    r: { ...sizes, default: [16, 32, 64] },
    k: { ...kernels, default: [3, 5, 7, 9, 13, 17, 21, 27, 29, 31] },
    n: { type: "int", min: 1, max: 4096, default: 64 },
    c: { type: "int", min: 1, max: 65_536, default: 384 },
    layers: { type: "int", min: 1, max: 1000, default: 24 },
    pass: { type: "choiceList", options: passNames, default: passNames },
    impl: { type: "choiceList", options: ["fast", "generic"], default: ["fast", "generic"] },
    "generic-k": kernels,
    "generic-r": sizes,
    "generic-pass": { type: "choiceList", options: passNames },
    runs: { type: "int", min: 1, max: 10_000, default: 5 },
    warmup: { type: "int", min: 0, max: 10_000, default: 2 },
    tune: { type: "boolean" },
    "no-tune": { type: "boolean" },
    "tune-max": { type: "int", min: 1, max: 1000, default: 6 },
    tuned: { type: "string" },
    "no-plan-cache": { type: "boolean", default: false },
    retune: { type: "boolean", default: false },
    check: { type: "boolean", default: false },
    "peak-tflops": { type: "number", above: 0, max: 1e6, default: 67 },
    torch: { type: "string" },
    anchor: { type: "string" },
    "with-pytorch": { type: "boolean", default: false },
    python: { type: "string", default: "python3" },
    "no-plot": { type: "boolean", default: false },
    "plot-only": { type: "boolean", default: false },
    out: { type: "string", default: "out/latency/" },
    help: { type: "boolean", short: "h" },
  });
  rejectTogether(values, [
    ["tune", "no-tune", "give one"],
    ["torch", "anchor", "they name the same file; give one"],
  ]);
  if (values.help) {
    console.log(HELP);
    return;
  }
  const out = values.out.replace(/\/+$/, "");
  const anchorFile = values.torch ?? values.anchor;
  const torchRows = anchorFile
    ? readRows(await readFlagFile(values.torch ? "torch" : "anchor", anchorFile))
    : [];
  if (values["plot-only"]) {
    const rows = readRows(await Deno.readTextFile(`${out}/latency.csv`));
    await plot([...rows, ...torchRows], `${out}/latency.png`, "Depthwise conv stack latency");
    console.log(`wrote ${out}/latency.png`);
    return;
  }
  const { r: rList, k: kList, n, c, layers, runs, warmup } = values;
  const tuneMax = values["tune-max"];
  const peak = values["peak-tflops"];
  const passes = values.pass as ("fwd" | "fwdbwd")[];
  const impls = values.impl as ("fast" | "generic")[];
  const gK = values["generic-k"] ?? kList;
  const gR = values["generic-r"] ?? rList;
  const gPass = values["generic-pass"] ?? passes;
  if (values["with-pytorch"]) {
    // Before our GPU work starts, so the two never share the GPU.
    const text = await runAnchor(values.python, anchorScript("dwconv.py"), [
      ...["--n", `${n}`, "--c", `${c}`, "--r", rList.join(","), "--k", kList.join(",")],
      ...["--layers", `${layers}`, "--runs", `${runs}`, "--warmup", `${warmup}`],
      ...["--pass", passes.join(",")],
    ], "--with-pytorch");
    torchRows.push(...readRows(text));
    if (text.trim()) await writeFileAtomic(`${out}/torch_dwconv.csv`, text);
  }

  await initGpu();
  // Tune on a GPU unless told not to (or given --tuned); llvmpipe would compile candidates for minutes.
  const tune = !values["no-tune"] && (values.tune ?? (!gpu().isFallback && !values.tuned));
  const adapter = gpu().description;
  console.log(`# adapter: ${adapter}; N=${n} C=${c} layers=${layers}; FLOPs = 2 per MAC`);
  if (values.tuned) {
    const n = planner().load(await readFlagJson("tuned", values.tuned));
    console.log(`# reusing ${n} plans of this adapter from ${values.tuned}`);
  }

  const checks: Record<string, Cell>[] = [];
  if (values.check) {
    for (const r of rList) {
      for (const k of kList) {
        const s = layerShape(3, 4, r, k);
        const ffts = [32, 64].filter((f) => fftFits(s, { fft: f, pairs: 1 }));
        const paths: [number | null, boolean][] = [[null, false]];
        for (const f of ffts) {
          paths.push([f, false]);
          if (fftFusedBackwardFits(s, { fft: f, pairs: 1 })) paths.push([f, true]);
        }
        for (const [fft, fused] of paths) {
          const [fwd, gx, gw] = await checkShape(r, k, fft, fused);
          const path = fft ? `fft${fft}${fused ? "-fused" : ""}` : "direct";
          console.log(
            `check R=${r} K=${k} ${path}: forward ${fwd.toExponential(2)} input-grad ${
              gx.toExponential(2)
            } filter-grad ${gw.toExponential(2)}`,
          );
          checks.push({ R: r, K: k, path, forward: fwd, input_grad: gx, filter_grad: gw });
        }
      }
    }
    await writeFileAtomic(`${out}/check.csv`, toCsv(checks));
  }

  const rows: Row[] = [];
  const detail: Record<string, Cell>[] = [];
  const tuneRows: Record<string, Cell>[] = [];
  const tunedKeys: string[] = [];
  const comments = [
    `adapter: ${adapter}`,
    `${layers} depthwise KxK convs, same padding, no bias, fp32; median of ${runs} after ${warmup} warm-up`,
  ];
  const save = async () => {
    await writeFileAtomic(`${out}/latency.csv`, toCsv(rows as unknown as Record<string, Cell>[]));
    await writeFileAtomic(`${out}/latency_detail.csv`, toCsv(detail, { comments }));
    if (tuneRows.length) {
      await writeFileAtomic(`${out}/tune.csv`, toCsv(tuneRows));
      const tuned = planner().toJSON(tunedKeys);
      await writeFileAtomic(`${out}/tuned.json`, JSON.stringify(tuned, null, 1));
    }
  };
  for (const r of rList) {
    for (const k of kList) {
      const shape = layerShape(n, c, r, k);
      if (tune && impls.includes("fast")) {
        setDepthwiseImpl("fast");
        const t0 = performance.now();
        const report = await planWithCache(planner(), () => layerStep(shape), {
          cachePath: values["no-plan-cache"] ? null : planCachePath(),
          retune: values.retune,
          maxCandidates: tuneMax,
        });
        tunedKeys.push(...report.keys);
        for (const t of report.planned) {
          tuneRows.push({
            R: r,
            K: k,
            key: t.key,
            heuristic_ms: t.heuristicMs,
            ms: t.bestMs,
            rejected: t.rejected.length,
            config: JSON.stringify(t.choice),
          });
        }
        console.log(
          `plan R=${r} K=${k} (${((performance.now() - t0) / 1e3).toFixed(1)} s): ${
            report.planned.map((t) => `${t.key.split("|")[0]} ${t.bestMs.toFixed(3)} ms`).join(", ")
          }${report.reused ? ` (${report.reused} keys from the plan cache)` : ""}; plan ${
            JSON.stringify(depthwisePlan(shape, 1))
          }`,
        );
      }
      const x = Tensor.randn([n, c, r, r], { seed: 1 });
      const filters = Array.from(
        { length: layers },
        (_, i) => Tensor.randn([c, 1, k, k], { seed: 100 + i, std: 1 / k }),
      );
      for (const which of impls) {
        for (const pass of passes) {
          if (
            which === "generic" && (!gK.includes(k) || !gR.includes(r) || !gPass.includes(pass))
          ) {
            continue;
          }
          setDepthwiseImpl(which === "fast" ? "fast" : "generic");
          const t = await timeStack(x, filters, pass, { runs, warmup });
          const plan = which === "fast" ? depthwisePlan(shape, 1) : null;
          setDepthwiseImpl("auto");
          const flops = stackFlops(n, c, r, k, layers) * (pass === "fwd" ? 1 : 3);
          const tflops = flops / (t.ms * 1e-3) / 1e12;
          const row: Row = {
            impl: IMPL_NAME[which],
            pass: PASS_NAME[pass],
            N: n,
            C: c,
            R: r,
            K: k,
            ms_per_stack: Number(t.ms.toFixed(3)),
          };
          rows.push(row);
          detail.push({
            ...row,
            wall_ms: Number(t.wallMs.toFixed(3)),
            stacks_per_run: t.reps,
            timing: t.method,
            tflops: Number(tflops.toPrecision(4)),
            pct_fp32_peak: Number((100 * tflops / peak).toPrecision(3)),
            plan: plan ? JSON.stringify(plan) : "",
          });
          const torch = torchRows.find((q) =>
            q.pass === row.pass && q.R === r && q.K === k && q.N === n && q.C === c
          );
          console.log(
            `${row.impl} ${row.pass} R=${r} K=${k}: ${t.ms.toFixed(2)} ms (${t.method}; wall ${
              t.wallMs.toFixed(2)
            }), ${tflops.toPrecision(3)} TFLOP/s = ${
              (100 * tflops / peak).toPrecision(3)
            }% of peak${
              torch
                ? `, PyTorch ${torch.ms_per_stack} ms → ${(torch.ms_per_stack / t.ms).toFixed(2)}×`
                : ""
            }`,
          );
          await save();
        }
      }
      x.dispose();
      for (const w of filters) w.dispose();
      await gpu().sync();
    }
    trimPool();
  }
  await save();
  if (torchRows.length) {
    console.log("\nimpl,pass,R,K,ms,pytorch_ms,speedup_vs_pytorch,pct_fp32_peak");
    for (const [i, row] of rows.entries()) {
      const torch = torchRows.find((q) =>
        q.pass === row.pass && q.R === row.R && q.K === row.K && q.N === n && q.C === c
      );
      console.log(
        `${row.impl},${row.pass},${row.R},${row.K},${row.ms_per_stack},${
          torch?.ms_per_stack ?? ""
        },${torch ? (torch.ms_per_stack / row.ms_per_stack).toFixed(2) : ""},${
          detail[i].pct_fp32_peak
        }`,
      );
    }
  }
  if (!values["no-plot"]) {
    try {
      await plot(
        [...rows, ...torchRows],
        `${out}/latency.png`,
        `${layers} depthwise convs, N=${n} C=${c}, ${adapter.split(" (")[0]}`,
      );
      console.log(`wrote ${out}/latency.png`);
    } catch (e) {
      console.error(`skipping the PNG: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
    }
  }
  console.log(`wrote ${out}/latency.csv, ${out}/latency_detail.csv`);
}

if (import.meta.main) await runMain(main);
