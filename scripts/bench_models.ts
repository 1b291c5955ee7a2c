/**
 * Whole-model speed: images/s for inference (eval mode, no autograd) and for
 * a full training step (forward, softmax cross-entropy, backward, AdamW
 * step, zeroing the gradients) of each model, plus the peak GPU memory held
 * by the tensor pool, on random inputs and labels. The defaults:
 * ConvNeXt-T with 7-7-7-7 and 51-49-47-13 kernels, SLaK-T and RepLKNet-31B
 * at batch 64, 224². Times are the median of `--steps`
 * after `--warmup` untimed steps: wall clock around a flushed, drained queue
 * (the headline, as PyTorch's anchor measures it) and GPU timestamps where
 * the adapter offers them. Writes `bench_models.csv`, whose leading columns
 * are those of the PyTorch anchors (`bench/pytorch/convnext.py` and
 * `official_models.py`: model,kernels,batch,res,params_m,infer_img_s,
 * train_img_s,peak_gib), so that a join on model, kernels, batch and res
 * lines the two up. `--with-pytorch` runs the anchors first, in the same
 * command (timm's ConvNeXt-T; the official SLaK-T and RepLKNet-31B given
 * their files), then prints ours beside PyTorch with the ratios (ours ÷
 * PyTorch) and writes them to `bench_models_vs_pytorch.csv`; `--anchor FILE`
 * does the same with an anchor CSV measured before.
 *
 * A model is a registry name (`deno run -A scripts/model_table.ts` lists
 * them), optionally with stage kernels after `@`: `convnext_tiny@51-49-47-13`.
 * `--sparsity 0,0.4` times each model dense and with SLaK's masks at 40 %
 * sparsity (every conv and linear weight at density 0.6, applied after each
 * optimiser step as the trainer does; the masked depthwise layers run the
 * sparse or the dense kernels, whichever the planner timed faster), and
 * reports each sparse row's speed over the dense row's (`train_vs_dense`,
 * `infer_vs_dense`).
 *
 * ```sh
 * deno run -A scripts/bench_models.ts                       # the four default models, batch 64, 224²
 * deno run -A scripts/bench_models.ts --models convnext_cpu --batch 2 --size 32 --steps 1
 * deno run -A scripts/bench_models.ts --models convnext_tiny --anchor out/torch_models.csv
 * deno run -A scripts/bench_models.ts --with-pytorch --official-dir .device/anchors   # one GPU command
 * deno run -A scripts/bench_models.ts --models slak_tiny --sparsity 0,0.4 --pass train
 * ```
 *
 * @example
 * ```ts
 * import { parseModelSpec } from "./bench_models.ts";
 * console.log(parseModelSpec("convnext_tiny@51-49-47-13"));
 * // { name: "convnext_tiny", kernels: [51, 49, 47, 13] }
 * ```
 * @module
 */
import { parseFlags, readFlagFile, rejectTogether } from "../train/flags.ts";
import { type Cell, type CsvRow, parseCsv, toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { backward, noGrad } from "../ops/autograd.ts";
import { timeGpu } from "../ops/timing.ts";
import { setDepthwiseImpl } from "../ops/depthwise.ts";
import { setGemmImpl } from "../ops/gemm_plan.ts";
import { planCachePath, planProgress, planWithCache } from "../ops/plan_cache.ts";
import { planner, type PlanOptions, type PlanRow } from "../ops/planner.ts";
import { type KernelTime, profileKernels } from "../ops/kernel_profile.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { softmaxCrossEntropy } from "../ops/loss.ts";
import { AdamW } from "../ops/optim.ts";
import { poolStats, resetPoolPeaks, scope, Tensor, trimPool } from "../ops/tensor.ts";
import type { Classifier } from "../models/module.ts";
import { createModel, modelInfo } from "../models/registry.ts";
import { uniformDensities } from "../sparse/density.ts";
import { Masking } from "../sparse/masks.ts";
import { seedInit } from "../models/module.ts";
import {
  anchorScript,
  csvComments,
  formatTable,
  joinAnchor,
  MODEL_JOIN,
  type ModelAnchorOptions,
  modelAnchorRuns,
  runAnchor,
} from "./pytorch_anchor.ts";

/**
 * Steps per pass, at most, that tune the matrix products (each launch of an
 * undecided product times one candidate; most are decided within 4 steps,
 * the stem and downsampling products, launched once per step, take longest).
 */

const HELP = `usage: deno run -A scripts/bench_models.ts [flags]

Images/s for inference and a training step (AdamW) per model, and peak GPU memory.

  --models LIST     registry names, each optionally @k1-k2-k3-k4 (default
                    convnext_tiny,convnext_tiny@51-49-47-13,slak_tiny,replknet_31b)
  --batch N         images per step (default 64)
  --size S          input side (default 224)
  --classes N       classifier outputs (default 1000)
  --steps N         timed steps, median reported (default 5)
  --warmup N        untimed steps first (default 2)
  --pass LIST       infer, train (default infer,train)
  --depthwise IMPL  auto, fast or generic depthwise kernels (default auto)
  --gemm IMPL       tiled or simple matmul / conv kernels (default tiled)
  --sparsity LIST   fractions of masked weights to time each model at (default 0: dense); above 0,
                    every conv and linear weight is masked at density 1 − S (uniform, random
                    masks), the masks applied after each optimiser step; a row per value, the
                    sparse ones with their img/s over the dense row's (train_vs_dense,
                    infer_vs_dense)
  --tune            plan every kernel of a model's training step before timing it (depthwise,
                    sparse and matrix-product tiles; gemm_tune.csv); default on a GPU,
                    --no-tune turns it off
  --tune-max N      candidates per kernel when tuning (default 6)
  --tune-budget-s S seconds planning may take per model, heaviest kernels first; the rest run
                    on the heuristic and are planned by the next run (default: no bound)
  --no-plan-cache   neither read nor write the plan cache ($XDG_CACHE_HOME/largekernel/plans.json)
  --retune          plan again the kernels the plan cache already holds
  --profile         after timing, record one step of each pass with every dispatch timed on its
                    own and write kernel_profile.csv (GPU ms per kernel and shape, share of the
                    pass); the longest kernels are printed
  --with-pytorch    run the PyTorch anchors first (python3 bench/pytorch/convnext.py, and
                    official_models.py for slak_tiny / replknet_31b), then print ours beside
                    them with ratios and write bench_models_vs_pytorch.csv
  --official-dir D  folder holding the official SLaK.py and replknet.py (for --with-pytorch)
  --slak-py FILE    the official SLaK.py (overrides --official-dir)
  --replknet-py F   the official replknet.py (overrides --official-dir)
  --python CMD      the Python that runs the anchors (default python3)
  --anchor FILE     a PyTorch anchor CSV measured before (bench/pytorch/convnext.py or
                    official_models.py output): print the ratios too (joined on model, kernels,
                    batch and res)
  --out DIR         output folder (default out/bench_models/)
  --help`;

/** The model's stage kernels as "k1-k2-k3-k4" (what PyTorch's anchor joins on), or "". */
function stageKernels(model: Classifier): string {
  const c = (model as unknown as { config?: { kernels?: number[]; largeKernelSizes?: number[] } })
    .config;
  return (c?.kernels ?? c?.largeKernelSizes ?? []).slice(0, 4).join("-");
}

/**
 * Split `name@k1-k2-k3-k4` into the registry name and the stage kernels.
 *
 * @example
 * ```ts
 * import { parseModelSpec } from "./bench_models.ts";
 * console.log(parseModelSpec("slak_tiny")); // { name: "slak_tiny", kernels: undefined }
 * ```
 */
export function parseModelSpec(spec: string): { name: string; kernels?: number[] } {
  const [name, ks] = spec.split("@");
  if (ks === undefined) return { name, kernels: undefined };
  const kernels = ks.split("-").map(Number);
  if (![4, 5].includes(kernels.length) || kernels.some((k) => !Number.isInteger(k) || k <= 0)) {
    throw new Error(`--models: "${spec}": expected name@k1-k2-k3-k4 with positive integers`);
  }
  return { name, kernels };
}

/**
 * The `--sparsity` list: fractions in [0, 1), zero (dense) first so that the
 * sparse rows can be compared with it.
 *
 * @example
 * ```ts
 * import { parseSparsities } from "./bench_models.ts";
 * console.log(parseSparsities("0.4,0")); // [0, 0.4]
 * ```
 */
export function parseSparsities(list: string): number[] {
  const items = list.split(",").map((v) => v.trim());
  const values = items.map(Number);
  if (!items.length || values.some((v, i) => items[i] === "" || !(v >= 0 && v < 1))) {
    throw new Error(`--sparsity: expected fractions in [0, 1) separated by commas, got "${list}"`);
  }
  return [...new Set(values)].sort((a, b) => a - b);
}

/** One model's measurements. */
export interface ModelBench {
  inferMs: number | null;
  inferGpuMs: number | null;
  trainMs: number | null;
  trainGpuMs: number | null;
  timing: string;
  /** The most bytes the tensor pool held (every buffer not yet destroyed), and the most live tensor bytes. */
  peakBytes: number;
  peakLiveBytes: number;
  /** CPU milliseconds to record one step (the GPU idles meanwhile unless work is queued). */
  inferRecordMs: number | null;
  trainRecordMs: number | null;
  /** Dispatches one step records. */
  inferDispatches: number | null;
  trainDispatches: number | null;
  /** Wall ms per training step over `steps` steps recorded back to back with one sync at the end. */
  trainPipelinedMs: number | null;
  /** Kernel keys planned before timing (`plan`): heuristic vs chosen GPU ms. */
  planned: PlanRow[];
  /** Wall ms of that planning (cache read and write included), null without `plan`. */
  planMs: number | null;
  /** Keys a planning budget left unplanned (they ran on their heuristic). */
  deferred: number;
  /** With `profile`: one step of each pass, kernel by kernel (null without timestamp queries). */
  profiles: { pass: string; kernels: KernelTime[] | null }[];
}

/**
 * CPU milliseconds that `record` takes to record its work, and the number of
 * dispatches it records; then waits for the GPU.
 */
async function recordMs(record: () => void): Promise<{ ms: number; dispatches: number }> {
  await gpu().sync();
  const d0 = gpu().dispatches;
  const t0 = performance.now();
  record();
  const ms = performance.now() - t0;
  const dispatches = gpu().dispatches - d0;
  await gpu().sync();
  return { ms, dispatches };
}

/**
 * Time inference and training steps of `model` on a random batch of
 * `batch` images of `size`², as {@linkcode timeGpu} does (median of `steps`
 * after `warmup`), and report the peaks of the tensor pool's bytes and of
 * live tensor bytes over the timed passes.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { createModel } from "../models/registry.ts";
 * import { benchModel } from "./bench_models.ts";
 * await initGpu();
 * const r = await benchModel(createModel("convnext_cpu", { numClasses: 10 }), {
 *   batch: 2, size: 32, classes: 10, steps: 1, warmup: 0, passes: ["infer", "train"],
 * });
 * console.log(r.trainMs! > 0);
 * ```
 */
export async function benchModel(
  model: Classifier,
  { batch, size, classes, steps, warmup, passes, plan, profile, afterStep }: {
    batch: number;
    size: number;
    classes: number;
    steps: number;
    warmup: number;
    passes: string[];
    /** Plan the kernels of a training step first (see `planWithCache`); none when absent. */
    plan?: PlanOptions & { cachePath: string | null };
    /** Profile one step of each pass kernel by kernel after timing it (see `profileKernels`). */
    profile?: boolean;
    /** Called after each optimiser step of the training pass (the sparse masks' apply). */
    afterStep?: (opt: AdamW) => void;
  },
): Promise<ModelBench> {
  const x = Tensor.randn([batch, 3, size, size], { seed: 7 });
  const labels = Array.from({ length: batch }, (_, i) => (i * 7919) % classes);
  const out: ModelBench = {
    inferMs: null,
    inferGpuMs: null,
    trainMs: null,
    trainGpuMs: null,
    timing: "",
    peakBytes: 0,
    peakLiveBytes: 0,
    inferRecordMs: null,
    trainRecordMs: null,
    inferDispatches: null,
    trainDispatches: null,
    trainPipelinedMs: null,
    planned: [],
    planMs: null,
    deferred: 0,
    profiles: [],
  };
  const params = model.parameters();
  try {
    if (plan) {
      // One forward and backward in eval mode (nothing moves), as the trainer plans.
      model.eval();
      const pass = () => scope(() => backward(softmaxCrossEntropy(model.forward(x), labels)));
      const t0 = performance.now();
      const report = await planWithCache(planner(), pass, plan);
      out.planMs = performance.now() - t0;
      out.planned = report.planned;
      out.deferred = report.deferred?.length ?? 0;
      for (const p of params) {
        p.grad?.dispose();
        p.grad = null;
      }
    }
    // Peaks of the timed passes only (planning tries candidates that training never runs).
    resetPoolPeaks();
    if (passes.includes("infer")) {
      model.eval();
      const infer = () => noGrad(() => scope(() => void model.forward(x)));
      const t = await timeGpu(infer, { runs: steps, warmup });
      const rec = await recordMs(infer);
      out.inferRecordMs = rec.ms;
      out.inferDispatches = rec.dispatches;
      out.inferMs = t.wallMs;
      if (profile) out.profiles.push({ pass: "infer", kernels: await profileKernels(infer) });
      out.inferGpuMs = t.method === "timestamp" ? t.ms : null;
      out.timing = t.method;
    }
    if (passes.includes("train")) {
      model.train();
      const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0.05 });
      const step = () =>
        scope(() => {
          backward(softmaxCrossEntropy(model.forward(x), labels));
          opt.step();
          afterStep?.(opt);
          opt.zeroGrad();
        });
      try {
        const t = await timeGpu(step, { runs: steps, warmup });
        out.trainMs = t.wallMs;
        out.trainGpuMs = t.method === "timestamp" ? t.ms : null;
        out.timing = t.method;
        const rec = await recordMs(step);
        if (profile) out.profiles.push({ pass: "train", kernels: await profileKernels(step) });
        out.trainRecordMs = rec.ms;
        out.trainDispatches = rec.dispatches;
        // As a training loop runs: no sync between steps (the GPU may overlap the next recording).
        await gpu().sync();
        const t0 = performance.now();
        for (let i = 0; i < steps; i++) step();
        await gpu().sync();
        out.trainPipelinedMs = (performance.now() - t0) / steps;
      } finally {
        opt.dispose();
      }
    }
  } finally {
    x.dispose();
  }
  const { peakAllocatedBytes, peakLiveBytes } = poolStats();
  out.peakBytes = peakAllocatedBytes;
  out.peakLiveBytes = peakLiveBytes;
  return out;
}

/** The columns of the side-by-side table, and their headers. */
const SIDE_BY_SIDE: Record<string, string> = {
  model: "model",
  kernels: "kernels",
  batch: "batch",
  res: "res",
  infer_img_s: "infer img/s",
  pytorch_infer_img_s: "PyTorch",
  infer_img_s_ratio: "ratio",
  train_img_s: "train img/s",
  pytorch_train_img_s: "PyTorch",
  train_img_s_ratio: "ratio",
  peak_gib: "peak GiB",
  pytorch_peak_gib: "PyTorch",
  peak_gib_ratio: "ratio",
  pytorch_impl: "PyTorch model",
};

/**
 * Run the PyTorch anchors of `specs` (see `modelAnchorRuns`) before our
 * GPU work starts, and return their rows and comment lines.
 */
async function runModelAnchors(
  specs: { name: string; kernels?: number[] }[],
  o: ModelAnchorOptions & { officialDir?: string; python: string },
): Promise<{ rows: CsvRow[]; comments: string[] }> {
  const dir = o.officialDir?.replace(/\/+$/, "");
  const files = {
    "slak-py": o.slakPy ?? (dir ? `${dir}/SLaK.py` : undefined),
    "replknet-py": o.replknetPy ?? (dir ? `${dir}/replknet.py` : undefined),
  };
  for (const [flag, file] of Object.entries(files)) {
    if (file === undefined) continue;
    const given = flag === "slak-py" ? o.slakPy : o.replknetPy;
    const from = given !== undefined ? `--${flag}` : "--official-dir";
    const stat = await Deno.stat(file).catch(() => null);
    if (!stat?.isFile) throw new Error(`${from}: ${file}: no such file (the official model file)`);
  }
  const models = specs.map(({ name, kernels }) => {
    const model = createModel(name, { ...(kernels ? { kernels } : {}) });
    const slakConfig = (model as unknown as { slakConfig?: { smallKernel: number | null } })
      .slakConfig;
    return { name, kernels: stageKernels(model), smallKernel: slakConfig?.smallKernel };
  });
  const plan = modelAnchorRuns(models, {
    ...o,
    slakPy: files["slak-py"],
    replknetPy: files["replknet-py"],
  });
  for (const s of plan.skipped) console.log(`# no PyTorch anchor: ${s}`);
  const rows: CsvRow[] = [];
  const comments: string[] = [];
  for (const run of plan.runs) {
    const text = await runAnchor(o.python, anchorScript(run.script), run.args, "--with-pytorch");
    rows.push(...parseCsv(text));
    comments.push(...csvComments(text));
  }
  return { rows, comments };
}

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    models: {
      type: "string",
      default: "convnext_tiny,convnext_tiny@51-49-47-13,slak_tiny,replknet_31b",
    },
    batch: { type: "int", min: 1, max: 4096, default: 64 },
    size: { type: "int", min: 32, max: 4096, default: 224 },
    classes: { type: "int", min: 1, max: 100_000, default: 1000 },
    steps: { type: "int", min: 1, max: 10_000, default: 5 },
    warmup: { type: "int", min: 0, max: 10_000, default: 2 },
    pass: { type: "choiceList", options: ["infer", "train"], default: ["infer", "train"] },
    depthwise: { type: "choice", options: ["auto", "fast", "generic"], default: "auto" },
    gemm: { type: "choice", options: ["tiled", "simple"], default: "tiled" },
    tune: { type: "boolean" },
    "no-tune": { type: "boolean" },
    "tune-max": { type: "int", min: 1, max: 1000, default: 6 },
    sparsity: { type: "string", default: "0" },
    "tune-budget-s": { type: "number", min: 0, max: 1e6 },
    "no-plan-cache": { type: "boolean", default: false },
    retune: { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
    anchor: { type: "string" },
    "with-pytorch": { type: "boolean", default: false },
    "official-dir": { type: "string" },
    "slak-py": { type: "string" },
    "replknet-py": { type: "string" },
    python: { type: "string", default: "python3" },
    out: { type: "string", default: "out/bench_models/" },
    help: { type: "boolean", short: "h" },
  });
  rejectTogether(values, [["tune", "no-tune", "give one"]]);
  if (values.help) {
    console.log(HELP);
    return;
  }
  const specs = values.models.split(",").filter(Boolean).map(parseModelSpec);
  const sparsities = parseSparsities(values.sparsity);
  for (const s of specs) modelInfo(s.name); // unknown names fail before the GPU starts
  const { batch, size, classes, steps, warmup } = values;
  const tuneMax = values["tune-max"];
  const budget = values["tune-budget-s"];
  const passes = values.pass;
  // What every run of this command shares, ours and the PyTorch anchors.
  const run = { batch, size, classes, steps, warmup, passes };
  const out = values.out.replace(/\/+$/, "");
  const anchorText = values.anchor ? await readFlagFile("anchor", values.anchor) : "";
  const anchorComments = csvComments(anchorText);
  // Rows measured in this run come first: the first anchor row of a model wins the join.
  const anchor: CsvRow[] = [];
  if (values["with-pytorch"]) {
    const torch = await runModelAnchors(specs, {
      ...run,
      officialDir: values["official-dir"],
      slakPy: values["slak-py"],
      replknetPy: values["replknet-py"],
      python: values.python,
    });
    anchor.push(...torch.rows);
    anchorComments.unshift(...torch.comments);
    if (torch.rows.length) {
      await writeFileAtomic(
        `${out}/pytorch_models.csv`,
        toCsv(torch.rows, { comments: torch.comments }),
      );
    }
  } else {
    for (const flag of ["official-dir", "slak-py", "replknet-py"] as const) {
      if (values[flag] !== undefined) throw new Error(`--${flag}: only used with --with-pytorch`);
    }
  }
  anchor.push(...parseCsv(anchorText));

  await initGpu();
  // Tune on a GPU unless told not to (as the trainer does); llvmpipe runs the plain kernels.
  const tune = !values["no-tune"] && (values.tune ?? !gpu().isFallback);
  setDepthwiseImpl(values.depthwise as "auto" | "fast" | "generic");
  setGemmImpl(values.gemm as "tiled" | "simple");
  const adapter = gpu().description;
  console.log(`# adapter: ${adapter}; batch ${batch}, ${size}², fp32`);
  const rows: Record<string, Cell>[] = [];
  const gemmRows: Record<string, Cell>[] = [];
  const profileRows: Record<string, Cell>[] = [];
  const comments = [
    `adapter: ${adapter}`,
    `median of ${steps} after ${warmup} warm-up; img/s from the wall clock around a drained queue` +
    `, *_gpu_img_s from timestamps, *_record_ms = CPU time to record one step (of *_dispatches dispatches), train_pipelined_img_s = steps back to back with one sync; peak_gib = the most bytes the tensor pool held (buffers not yet destroyed), peak_live_gib = the most bytes of live tensors; depthwise ${values.depthwise}, gemm ${values.gemm}`,
  ];
  // Rewritten after each model too, so that a run cut short keeps the finished comparisons.
  const writeSideBySide = async () => {
    const joined = joinAnchor(rows, anchor, MODEL_JOIN);
    const notes = [...comments, ...anchorComments.map((c) => `PyTorch: ${c}`)];
    await writeFileAtomic(
      `${out}/bench_models_vs_pytorch.csv`,
      toCsv(joined, { comments: notes }),
    );
    return joined;
  };
  // Train and infer img/s of each model's dense row, for the sparse rows' ratios.
  const denseSpeed = new Map<string, { train: Cell; infer: Cell }>();
  for (const { name, kernels } of specs) {
    for (const sparsity of sparsities) {
      seedInit(0);
      const model = createModel(name, { numClasses: classes, ...(kernels ? { kernels } : {}) });
      const ks = stageKernels(model);
      const label = `${name}@${ks}${sparsity ? ` at sparsity ${sparsity}` : ""}`;
      const t0 = performance.now();
      let r: ModelBench;
      const masking = sparsity > 0
        ? new Masking(model, uniformDensities(model, 1 - sparsity), { seed: 0 })
        : null;
      masking?.apply();
      try {
        r = await benchModel(model, {
          ...run,
          plan: tune
            ? {
              cachePath: values["no-plan-cache"] ? null : planCachePath(),
              retune: values.retune,
              maxCandidates: tuneMax,
              budgetMs: budget === undefined ? undefined : budget * 1e3,
              onPlanned: planProgress(),
            }
            : undefined,
          profile: values.profile,
          afterStep: masking ? (opt) => masking.apply(opt) : undefined,
        });
        profileRows.push(...profileTable(name, ks, sparsity, r.profiles));
        for (const t of r.planned) {
          gemmRows.push({
            model: name,
            kernels: ks,
            key: t.key,
            heuristic_ms: Number(t.heuristicMs.toFixed(4)),
            best_ms: Number(t.bestMs.toFixed(4)),
            candidates: t.candidates,
            check_wall_ms: Math.round(t.checkMs),
            time_wall_ms: Math.round(t.timeMs),
            config: JSON.stringify(t.choice),
          });
        }
        if (tune) {
          console.log(
            `${label}: planned ${r.planned.length} kernel keys in ${
              ((r.planMs ?? 0) / 1e3).toFixed(1)
            } s (the rest from the plan cache${
              r.deferred ? `; ${r.deferred} left to the next run by --tune-budget-s` : ""
            })`,
          );
        }
      } catch (e) {
        console.error(`${label}: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
        continue;
      } finally {
        masking?.dispose();
        model.dispose(); // every materialised parameter and buffer, with its gradient
        trimPool();
      }
      const ips = (ms: number | null) => (ms ? Number((batch / (ms / 1e3)).toFixed(2)) : "");
      const row: Record<string, Cell> = {
        model: name,
        kernels: ks,
        batch,
        res: size,
        params_m: Number((model.numParams() / 1e6).toFixed(2)),
        infer_img_s: ips(r.inferMs),
        train_img_s: ips(r.trainMs),
        peak_gib: Number((r.peakBytes / 2 ** 30).toPrecision(4)),
        peak_live_gib: Number((r.peakLiveBytes / 2 ** 30).toPrecision(4)),
        infer_gpu_img_s: ips(r.inferGpuMs),
        train_gpu_img_s: ips(r.trainGpuMs),
        infer_ms: r.inferMs === null ? "" : Number(r.inferMs.toFixed(2)),
        train_ms: r.trainMs === null ? "" : Number(r.trainMs.toFixed(2)),
        train_pipelined_img_s: ips(r.trainPipelinedMs),
        infer_record_ms: r.inferRecordMs === null ? "" : Number(r.inferRecordMs.toFixed(2)),
        train_record_ms: r.trainRecordMs === null ? "" : Number(r.trainRecordMs.toFixed(2)),
        infer_dispatches: r.inferDispatches ?? "",
        train_dispatches: r.trainDispatches ?? "",
        plan_s: r.planMs === null ? "" : Number((r.planMs / 1e3).toFixed(2)),
        plan_keys: r.planMs === null ? "" : r.planned.length,
        plan_deferred: r.planMs === null ? "" : r.deferred,
        timing: r.timing,
        sparsity,
        train_vs_dense: "",
        infer_vs_dense: "",
      };
      const key = `${name}@${ks}`;
      if (sparsity === 0) denseSpeed.set(key, { train: row.train_img_s, infer: row.infer_img_s });
      const dense = denseSpeed.get(key);
      const over = (a: Cell, b: Cell | undefined) =>
        sparsity > 0 && typeof a === "number" && typeof b === "number"
          ? Number((a / b).toFixed(3))
          : "";
      row.train_vs_dense = over(row.train_img_s, dense?.train);
      row.infer_vs_dense = over(row.infer_img_s, dense?.infer);
      rows.push(row);
      const torch = joinAnchor([row], anchor, MODEL_JOIN)[0];
      const ratio = (ours: Cell, theirs: Cell) =>
        typeof ours === "number" && typeof theirs === "number"
          ? ` (${(ours / theirs).toFixed(2)}× PyTorch)`
          : "";
      const vsDense = typeof row.train_vs_dense === "number"
        ? `; ×${row.train_vs_dense} train, ×${row.infer_vs_dense} infer vs dense`
        : "";
      console.log(
        `${label}: infer ${row.infer_img_s} img/s${
          ratio(row.infer_img_s, torch.pytorch_infer_img_s)
        }, ` +
          `train ${row.train_img_s} img/s${ratio(row.train_img_s, torch.pytorch_train_img_s)} ` +
          `(back to back ${row.train_pipelined_img_s}${
            ratio(row.train_pipelined_img_s, torch.pytorch_train_img_s)
          }, GPU-only ${row.train_gpu_img_s}), ` +
          `peak ${row.peak_gib} GiB${vsDense} (${((performance.now() - t0) / 1e3).toFixed(1)} s)`,
      );
      await writeFileAtomic(`${out}/bench_models.csv`, toCsv(rows, { comments }));
      if (gemmRows.length) await writeFileAtomic(`${out}/gemm_tune.csv`, toCsv(gemmRows));
      if (profileRows.length) {
        await writeFileAtomic(`${out}/kernel_profile.csv`, toCsv(profileRows, { comments }));
      }
      if (anchor.length) await writeSideBySide();
    }
  }
  await writeFileAtomic(`${out}/bench_models.csv`, toCsv(rows, { comments }));
  console.log(`wrote ${out}/bench_models.csv`);
  if (anchor.length) {
    console.log(`\nours ÷ PyTorch (img/s: above 1 is faster; peak_gib: above 1 holds more)`);
    console.log(formatTable(await writeSideBySide(), Object.keys(SIDE_BY_SIDE), SIDE_BY_SIDE));
    console.log(`wrote ${out}/bench_models_vs_pytorch.csv`);
  }
  // Written after each model, with bench_models.csv.
  if (gemmRows.length) console.log(`wrote ${out}/gemm_tune.csv`);
  if (profileRows.length) console.log(`wrote ${out}/kernel_profile.csv`);
}

/** Kernels shown per pass in the printed profile (the CSV has them all). */
const PROFILE_SHOWN = 12;

/**
 * The rows of `kernel_profile.csv` for one model (model, kernels, sparsity, pass,
 * kernel, detail, calls, total_ms, mean_us, share_pct), and the longest
 * kernels of each pass printed with their share of the pass.
 */
function profileTable(
  model: string,
  kernels: string,
  sparsity: number,
  profiles: ModelBench["profiles"],
): Record<string, Cell>[] {
  const label = `${model}@${kernels}${sparsity ? ` at sparsity ${sparsity}` : ""}`;
  const rows: Record<string, Cell>[] = [];
  for (const { pass, kernels: times } of profiles) {
    if (!times) {
      console.log(`${label} ${pass}: no profile (the adapter has no timestamp queries)`);
      continue;
    }
    const total = times.reduce((s, t) => s + t.totalMs, 0);
    const these = times.map((t) => ({
      model,
      kernels,
      sparsity,
      pass,
      kernel: t.kernel,
      detail: t.detail,
      calls: t.calls,
      total_ms: Number(t.totalMs.toFixed(4)),
      mean_us: Number(((1e3 * t.totalMs) / t.calls).toFixed(2)),
      share_pct: Number(((100 * t.totalMs) / Math.max(total, 1e-9)).toFixed(2)),
    }));
    rows.push(...these);
    console.log(
      `${label} ${pass}: ${total.toFixed(2)} GPU ms over ${
        times.reduce((n, t) => n + t.calls, 0)
      } dispatches, each in a timed pass of its own; the longest:`,
    );
    const columns = ["kernel", "calls", "total_ms", "share_pct", "detail"];
    console.log(formatTable(these.slice(0, PROFILE_SHOWN), columns));
  }
  return rows;
}

if (import.meta.main) await runMain(main);
