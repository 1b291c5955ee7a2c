/**
 * The papers' claims, reproduced by training: small models trained with one
 * recipe on data where only long-range relations decide the label (the
 * procedural "compass" set, or a user's ImageFolder with `--data`), several
 * seeds per model, each claim one CSV and one PNG with the mean top-1 ±
 * its 95% Student-t interval over seeds and whether the paper's direction
 * held (tested on the per-seed differences: every seed sees the same data for
 * every model, so differences are paired by seed).
 *
 * 1. Kernel scaling (SLaK Tables 2–4): the same SLaK-style net with 7, 13,
 *    31-29-27-13 and 51-49-47-13 kernels (each M×5 + 5×M + 5×5), and a 3×3
 *    ResNet as wide as it takes to match the 51 net's FLOPs.
 * 2. Decomposed vs full M×M at M = 51 (SLaK Table 3), and full M×M with and
 *    without the parallel 5×5 (RepLKNet's structural re-parameterisation).
 * 3. The ERF (area ratio r(t) at t = 20/30/50/99%) of trained ResNet 3×3,
 *    ConvNeXt 7×7 and SLaK 51 at equal FLOPs, next to the same nets untrained.
 * 4. Sparse-and-wide (1.3× width, 40% sparsity, dynamic sparsity) vs dense,
 *    and SLaK Table 7's sparsity–width grid at small scale.
 * 5. ShiftwiseConv (3×3 kernels and shifts) vs SLaK at equal FLOPs.
 *
 * Equal budgets: every model trains the same steps on the same images with
 * the same recipe; each row gives its params and FLOPs. A claim that does not
 * hold is reported as such.
 *
 * ```sh
 * deno run -A scripts/trends.ts --quick          # every table on llvmpipe, a smoke run (~2 min)
 * deno run -A scripts/trends.ts --table 1        # one table at the default (GPU) size, ~4–8 min
 * deno run -A scripts/trends.ts --jobs 8         # all five, runs trained in 8 processes at once
 * deno run -A scripts/trends.ts --data /data/imagenet100 --input-size 128 --epochs 5
 * ```
 *
 * @example
 * ```ts
 * import { parseTrendArgs } from "./trends.ts";
 * const s = parseTrendArgs(["--quick", "--table", "2", "--seeds", "4"]);
 * console.log(s.tables, s.seeds, s.inputSize); // [2] [0, 1, 2, 3] 32
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { Tensor } from "../ops/tensor.ts";
import { seedInit } from "../models/module.ts";
import type { Classifier } from "../models/module.ts";
import { train } from "../train/trainer.ts";
import { claimOutFolder } from "../train/out_lock.ts";
import { buildModel, presetConfig, type TrainConfig } from "../train/config.ts";
import { checkpointExists, loadCheckpoint } from "../train/checkpoint.ts";
import { openDataset } from "../train/data/mod.ts";
import type { Dataset } from "../train/data/types.ts";
import { countModel, FLOPS_RULE, maskDensities } from "../analysis/flops.ts";
import {
  areaRatios,
  calibrateBatchNorm,
  ERF_THRESHOLDS,
  ErfAccumulator,
  type ErfTransform,
  normalizeErf,
} from "../analysis/erf.ts";
import { meanCi } from "../analysis/stats.ts";
import { type Cell, writeCsv, writeFileAtomic } from "../analysis/csv.ts";
import { type Mark, PALETTE, type Panel, type Series, writeLineChart } from "../analysis/plot.ts";

/** Everything a trends run is configured by (see `--help`). */
export interface TrendSettings {
  quick: boolean;
  /** ImageFolder / CIFAR-10 folder; the procedural set when absent. */
  data?: string;
  inputSize: number;
  /** Procedural set only. */
  trainSize: number;
  valSize: number;
  epochs: number;
  batchSize: number;
  lr: number;
  /** Seeds of the table being run (`tableSeeds[t]` while table t runs). */
  seeds: number[];
  /** Seeds of each table: `--seeds N` for all, else {@linkcode DEFAULT_SEEDS} (quick: 3 each). */
  tableSeeds: Record<number, number[]>;
  /** Width factor of every model before a table widens it (1 = the `*_cpu` presets). */
  width: number;
  /** First-stage kernels of table 1; the last is the large kernel of tables 2–5. */
  kernels: number[];
  /** N: the short edge of decomposed kernels and the parallel small kernel. */
  smallKernel: number;
  /** (sparsity, width) pairs of table 4, widths relative to the dense net. */
  grid: [number, number][];
  /** Validation images each ERF is averaged over (rounded up to whole batches). */
  erfImages: number;
  /** Time the GPU kernels per model before training (as the trainer's `--tune-kernels`). */
  tune: boolean;
  /** Train every run again instead of reusing finished runs found on disk. */
  fresh: boolean;
  /** Worker processes that train the runs before the tables are assembled (1: this process). */
  jobs: number;
  /** Set in a worker process: its index and the number of workers. */
  worker?: { index: number; count: number };
  /** The command line, which `--jobs` hands to its workers. */
  argv: string[];
  tables: number[];
  out: string;
}

/**
 * Every table's number and file stem (`out/trends/<stem>.csv` and `.png`).
 *
 * @example
 * ```ts
 * import { TABLES } from "./trends.ts";
 * console.log(TABLES[3]); // 3_erf
 * ```
 */
export const TABLES: Record<number, string> = {
  1: "1_kernel_scaling",
  2: "2_decomposed_vs_full",
  3: "3_erf",
  4: "4_sparse_wide",
  5: "5_shiftwise",
};

/**
 * `--quick`: tiny images, a few dozen images, one epoch: every table on
 * llvmpipe in about 2 minutes. A smoke run of the whole pipeline, not
 * evidence. Nearly all of its time is WGSL compilation: llvmpipe compiles a
 * kernel at its first dispatch (30–400 ms each), kernels have their shapes
 * baked in, and each model family at each width compiles its ~300 kernels
 * once (15–25 s of CPU); every later run of it takes 0.3–1.5 s. So quick
 * compiles four: SLaK (dense, and sparse at the same width), and ResNet,
 * ConvNeXt and ShiftwiseConv at equal FLOPs, the least the five tables need;
 * the kernel sizes (one family compiles them in ~1 s) are the only sizes
 * that differ across tables.
 */
const QUICK = {
  inputSize: 32,
  trainSize: 32,
  valSize: 16,
  epochs: 1,
  batchSize: 16,
  width: 1,
  erfImages: 16,
  // 40% sparsity at the dense width: a new width would compile every kernel again (~20 s).
  grid: [[0.4, 1]] as [number, number][],
  // 32² images leave 8² maps in the first stage: kernels past 15 reach nothing more there.
  kernels: [5, 7, 11, 15],
  smallKernel: 3,
};
/**
 * The default, for a real GPU: 48² images, 2048 training images, 4 epochs
 * (256 steps of 32), 1024 validation images (a top-1 of 80% is then measured
 * to ±1.2 points of binomial noise), the `*_cpu` nets twice as wide. Seeds
 * per table: {@linkcode DEFAULT_SEEDS}.
 *
 * The size is the one where this budget learns the task. Measured on
 * llvmpipe with the 51-49-47-13 net of tables 2–5 (N = 5, width ×2): at 48²
 * (1536 images, a 2-epoch run) val top-1 51% after one epoch and 65% after
 * two; with 2048 images at 64², 25% (chance) after two of four epochs, and at
 * 96² 26% after one, the training loss still ln 4 ≈ 1.39 after two. At 48² the
 * trainer's recipe separates the models (H100: SLaK 87%, a ConvNeXt 7×7 of
 * its size 75%; see train/data/procedural.ts): the two key marks lie 17–30 px
 * apart, while a 7×7 kernel at stride 4 sees 28 px. Stage-1 maps are then
 * 12², which any kernel of 23 or more covers from every position, so 31 and
 * 51 can only tie in table 1.
 *
 * Fixed sizes. Measured on one H100 machine with the five tables as five
 * processes at once (the README's results): tables 1–5 took 4.4, 4.2, 4.4,
 * 7.7 and 5.3 min. A step of these nets is bound by recording its
 * dispatches, not by FLOPs (the 51-49-47-13 net is 3.1 M MACs at 48²; the
 * GPU was 10–45% busy), so a run of the SLaK net takes 17–19 s, a sparse
 * one 24–31 s, and each distinct model (family, width, kernels, sparsity)
 * compiles its kernels once per process.
 */
const FULL = {
  inputSize: 48,
  trainSize: 2048,
  valSize: 1024,
  epochs: 4,
  batchSize: 32,
  width: 2,
  erfImages: 32,
  // SLaK Table 7's (sparsity, width) pairs.
  grid: [[0.2, 1.1], [0.4, 1.3], [0.55, 1.5], [0.7, 1.9], [0.82, 2.5]] as [number, number][],
  kernels: [7, 13, 31, 51],
  smallKernel: 5,
};

/**
 * Seeds per table at the default size (without `--seeds`): 3 where a table
 * trains many models (1 and 4), more where it trains few, so each table
 * takes about the same time and the "matches" claims (tables 2 and 5) get
 * the narrower intervals they need.
 *
 * @example
 * ```ts
 * import { DEFAULT_SEEDS, parseTrendArgs } from "./trends.ts";
 * console.log(DEFAULT_SEEDS[5], parseTrendArgs([]).tableSeeds[5].length); // 8 8
 * ```
 */
export const DEFAULT_SEEDS: Record<number, number> = { 1: 3, 2: 5, 3: 5, 4: 3, 5: 8 };

const HELP = `usage: deno run -A scripts/trends.ts [flags]

Trains small models, several seeds each, and writes one CSV and one PNG per claim
(mean top-1 ± 95% Student-t interval over seeds; params and FLOPs per row):
  1 kernel scaling 7 / 13 / 31 / 51 (+ a 3×3 ResNet of equal FLOPs)
  2 decomposed vs full 51×51, with and without the parallel 5×5
  3 ERF of trained vs untrained ResNet / ConvNeXt / SLaK at equal FLOPs
  4 sparse-and-wide (1.3×, 40%) vs dense, and the sparsity–width grid (quick: 40% at ×1 only)
  5 ShiftwiseConv vs SLaK at equal FLOPs

  --quick            smoke mode for llvmpipe: 32² images, 32 of them, 1 epoch, kernels up to 15,
                     every table in a few minutes; its numbers say nothing about the claims
  --table LIST       tables to run, e.g. 1 or 2,5 (default all)
  --seeds N          seeds per model in every table, ≥ 2 (default 3 in tables 1 and 4, 5 in 2
                     and 3, 8 in 5; quick 3): seed s draws the procedural images (or a folder's
                     order and augmentation) and the init
  --epochs N         epochs per run (default 4; quick 1)
  --steps N          optimiser steps per run instead of --epochs (rounded up to whole epochs)
  --data DIR         train on an ImageFolder (train/<class>/, val/<class>/) or CIFAR-10 folder
  --input-size N     image side (default 48; quick 32)
  --train-size N     procedural training images (default 2048; quick 32)
  --val-size N       procedural validation images (default 1024; quick 16)
  --batch-size N     (default 32; quick 16)
  --lr X             AdamW learning rate (default 0.01, the trainer's procedural recipe)
  --width X          width factor of every net before a table widens it (default 2; quick 1)
  --erf-images N     validation images per ERF, whole batches (default 32; quick 16)
  --kernels LIST     first-stage kernels of table 1, increasing; the last is the large kernel of
                     tables 2–5 (default 7,13,31,51; quick 5,7,11,15: 32² images leave 8² maps)
  --small-kernel N   N of the decomposed M×N + N×M and the parallel N×N (default 5; quick 3)
  --tune             time the GPU kernels of each model before training (off: saves minutes)
  --fresh            train every run again (default: a run whose folder holds its finished result
                     for the same configuration is reused, so a stopped command resumes)
  --jobs N           train the runs in N processes at once (each its own share, on the same GPU),
                     then assemble the tables here: for a GPU that small models leave idle and a
                     CPU with cores to spare (default 1, at most 64; the workers get --worker K/N)
  --out DIR          output folder (default out/trends)
`;

function fail(flag: string, expected: string, got: unknown): never {
  throw new Error(`--${flag}: expected ${expected}, got "${got}"`);
}

function intFlag(flag: string, v: string | undefined, min: number, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === "" || !Number.isInteger(n) || n < min) fail(flag, `an integer ≥ ${min}`, v);
  return n;
}

function numFlag(flag: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n <= 0) fail(flag, "a positive number", v);
  return n;
}

/** Most `--jobs`: each worker is a process with its own GPU device. */
const MAX_JOBS = 64;

function jobsFlag(v: string | undefined): number {
  const n = intFlag("jobs", v, 1, 1);
  if (n > MAX_JOBS) fail("jobs", `an integer from 1 to ${MAX_JOBS}`, v);
  return n;
}

/** `--worker K/N` (set by `--jobs` on the processes it starts): worker K of N, from 0. */
function workerFlag(v: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(v);
  const [index, count] = m ? [Number(m[1]), Number(m[2])] : [NaN, NaN];
  if (!(count >= 1 && index < count)) fail("worker", "K/N with 0 ≤ K < N (set by --jobs)", v);
  return { index, count };
}

function kernelList(v: string): number[] {
  const ks = v.split(",").map(Number);
  if (
    ks.length < 2 || ks.some((k, i) => !Number.isInteger(k) || k < 2 || (i > 0 && k <= ks[i - 1]))
  ) {
    fail("kernels", "2 or more increasing odd kernel sizes, e.g. 7,13,31,51", v);
  }
  if (ks.some((k) => k % 2 === 0)) fail("kernels", "odd kernel sizes", v);
  return ks;
}

/**
 * Parse and check the command line; a bad flag throws one line naming it.
 * `--steps` is resolved later (it needs the dataset's size): it is returned
 * in `steps`.
 *
 * @example
 * ```ts
 * import { parseTrendArgs } from "./trends.ts";
 * console.log(parseTrendArgs([]).epochs, parseTrendArgs(["--quick"]).epochs); // 4 1
 * ```
 */
export function parseTrendArgs(args: string[]): TrendSettings & { steps?: number; help: boolean } {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      quick: { type: "boolean" },
      table: { type: "string" },
      seeds: { type: "string" },
      epochs: { type: "string" },
      steps: { type: "string" },
      data: { type: "string" },
      "input-size": { type: "string" },
      "train-size": { type: "string" },
      "val-size": { type: "string" },
      "batch-size": { type: "string" },
      lr: { type: "string" },
      width: { type: "string" },
      "erf-images": { type: "string" },
      kernels: { type: "string" },
      "small-kernel": { type: "string" },
      tune: { type: "boolean" },
      fresh: { type: "boolean" },
      jobs: { type: "string" },
      worker: { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const d = v.quick ? QUICK : FULL;
  if (v.epochs !== undefined && v.steps !== undefined) {
    throw new Error("--steps: give --steps or --epochs, not both");
  }
  const tables = v.table === undefined
    ? Object.keys(TABLES).map(Number)
    : v.table.split(",").map((s) => {
      const n = Number(s);
      if (!TABLES[n]) fail("table", "table numbers 1–5, comma-separated", v.table);
      return n;
    });
  const nSeeds = intFlag("seeds", v.seeds, 2, 3);
  const seedList = (n: number) => Array.from({ length: n }, (_, i) => i);
  const tableSeeds = Object.fromEntries(
    Object.keys(TABLES).map((t) => [
      t,
      seedList(v.seeds !== undefined || v.quick ? nSeeds : DEFAULT_SEEDS[Number(t)]),
    ]),
  );
  const kernels = v.kernels === undefined ? d.kernels : kernelList(v.kernels);
  const smallKernel = intFlag("small-kernel", v["small-kernel"], 1, d.smallKernel);
  if (smallKernel >= kernels[0]) {
    fail(
      "small-kernel",
      `a kernel smaller than the smallest of --kernels (${kernels[0]})`,
      smallKernel,
    );
  }
  return {
    quick: !!v.quick,
    data: v.data,
    inputSize: intFlag("input-size", v["input-size"], 16, d.inputSize),
    trainSize: intFlag("train-size", v["train-size"], 1, d.trainSize),
    valSize: intFlag("val-size", v["val-size"], 1, d.valSize),
    epochs: intFlag("epochs", v.epochs, 1, d.epochs),
    steps: v.steps === undefined ? undefined : intFlag("steps", v.steps, 1, 0),
    batchSize: intFlag("batch-size", v["batch-size"], 1, d.batchSize),
    lr: numFlag("lr", v.lr, 1e-2),
    seeds: seedList(nSeeds),
    tableSeeds,
    width: numFlag("width", v.width, d.width),
    erfImages: intFlag("erf-images", v["erf-images"], 1, d.erfImages),
    kernels,
    smallKernel,
    grid: d.grid,
    tune: !!v.tune,
    fresh: !!v.fresh,
    jobs: jobsFlag(v.jobs),
    worker: v.worker === undefined ? undefined : workerFlag(v.worker),
    argv: [...args],
    tables: [...new Set(tables)].sort(),
    out: (v.out ?? "out/trends").replace(/\/+$/, "") || "/",
    help: !!v.help,
  };
}

/** One model of a table: what is trained, with its row label. */
export interface ModelSpec {
  /** Folder name under runs/ and the key that shares a run between tables. */
  key: string;
  label: string;
  model: string;
  /** Four stage kernels and the small kernel N (as the trainer's `--kernel-size`). */
  kernelSize?: number[];
  kernelMode?: "decomposed" | "full";
  widthFactor: number;
  /** Dynamic sparsity at this sparsity (SNIP init, random growth), if any. */
  sparsity?: number;
}

/**
 * Stage kernels for a first-stage kernel K, as the papers scale them (31-29-27-13, 51-49-47-13;
 * below 31 every stage gets K).
 *
 * @example
 * ```ts
 * import { stageKernels } from "./trends.ts";
 * console.log(stageKernels(51), stageKernels(13)); // [51, 49, 47, 13] [13, 13, 13, 13]
 * ```
 */
export function stageKernels(k: number): number[] {
  return k >= 31 ? [k, k - 2, k - 4, 13] : [k, k, k, k];
}

/** The large kernel of tables 2–5: the last of table 1's. */
const largeOf = (s: TrendSettings) => s.kernels.at(-1)!;
/** Stage kernels as printed, e.g. 51-49-47-13. */
const kname = (k: number) => stageKernels(k).join("-");

/** The SLaK net of tables 2–5: the large kernel decomposed, at the base width. */
function slakNetOf(s: TrendSettings, label: string, width = s.width): ModelSpec {
  const k = largeOf(s);
  return slakSpec(k, "decomposed", s.smallKernel, width, label);
}

/** A SLaK-style net (`slak_cpu`) with first-stage kernel `k` and small kernel `n`. */
function slakSpec(
  k: number,
  mode: "decomposed" | "full",
  n: number,
  width: number,
  label: string,
): ModelSpec {
  return {
    key: `slak_k${k}_${mode}_n${n}_w${width}`,
    label,
    model: "slak_cpu",
    kernelSize: [...stageKernels(k), n],
    kernelMode: mode,
    widthFactor: width,
  };
}

/**
 * The training configuration of one (model, seed): the trainer's procedural
 * recipe (`cpu` preset) with the run's data, size, budget and the model's
 * kernels, width and sparsity.
 *
 * @example
 * ```ts
 * import { parseTrendArgs, trainConfigOf } from "./trends.ts";
 * const s = parseTrendArgs(["--quick"]);
 * const spec = { key: "k", label: "k", model: "slak_cpu", kernelSize: [15, 15, 15, 15, 3], widthFactor: 1 };
 * console.log(trainConfigOf(spec, 2, s).out); // out/trends/runs/k/seed2
 * ```
 */
export function trainConfigOf(spec: ModelSpec, seed: number, s: TrendSettings): TrainConfig {
  return {
    ...presetConfig("cpu"),
    model: spec.model,
    data: s.data,
    out: `${s.out}/runs/${spec.key}/seed${seed}`,
    epochs: s.epochs,
    batchSize: s.batchSize,
    lr: s.lr,
    warmupEpochs: Math.min(0.5, s.epochs / 2),
    inputSize: s.inputSize,
    trainSize: s.trainSize,
    valSize: s.valSize,
    seed,
    tuneKernels: s.tune,
    widthFactor: spec.widthFactor,
    ...(spec.kernelSize ? { kernelSize: spec.kernelSize } : {}),
    ...(spec.kernelMode ? { kernelMode: spec.kernelMode } : {}),
    ...(spec.sparsity !== undefined
      ? {
        sparse: true,
        sparsity: spec.sparsity,
        sparseInit: "snip" as const,
        pruneRate: 0.3,
        growth: "random" as const,
        // About 8 prune-and-grow updates per run, as a long run has hundreds.
        updateFrequency: Math.max(1, Math.floor(stepsPerEpoch(s) * s.epochs / 8)),
      }
      : {}),
  };
}

/** Training images and classes of the run's dataset (set once the dataset is opened). */
let dataInfo: { trainSize: number; numClasses: number; name: string } | null = null;

function stepsPerEpoch(s: TrendSettings): number {
  return Math.floor((dataInfo?.trainSize ?? s.trainSize) / s.batchSize);
}

/** Dense MACs of a spec's model at the run's input size. */
function macsOf(spec: ModelSpec, s: TrendSettings): number {
  const cfg = trainConfigOf(spec, 0, s);
  const model = buildModel(cfg, dataInfo?.numClasses ?? 4).model;
  return countModel(model, s.inputSize).macs;
}

/**
 * The width factor at which `spec`'s model has the MACs closest to `target`
 * (bisection: MACs grow with the width; channel counts are whole numbers, so
 * the match is as close as the nearest width allows). No GPU needed.
 *
 * @example
 * ```ts
 * import { parseTrendArgs, widthForMacs } from "./trends.ts";
 * const s = parseTrendArgs(["--quick"]);
 * const w = widthForMacs({ key: "r", label: "r", model: "resnet_cpu", widthFactor: 1 }, 2e5, s);
 * console.log(w); // the ResNet width with about 0.2 M MACs at 32²
 * ```
 */
export function widthForMacs(spec: ModelSpec, target: number, s: TrendSettings): number {
  const at = (w: number) => macsOf({ ...spec, widthFactor: w }, s);
  let lo = 0.05;
  let hi = 1;
  while (at(hi) < target) hi *= 2;
  for (let i = 0; i < 30; i++) {
    const mid = (lo + hi) / 2;
    if (at(mid) < target) lo = mid;
    else hi = mid;
  }
  const best = Math.abs(at(lo) - target) < Math.abs(at(hi) - target) ? lo : hi;
  return Math.round(best * 1000) / 1000;
}

/** What one trained (model, seed) gave. */
export interface RunResult {
  top1: number;
  steps: number;
  epochs: number;
  params: number;
  macs: number;
  imagesPerSecond: number;
  seconds: number;
  out: string;
}

/** Runs of this process by configuration, so a model shared by two tables trains once. */
const finished = new Map<string, RunResult>();

/**
 * What this process does with the runs the tables ask for: train them and
 * write the tables (`all`); only list them (`list`: a `--jobs` worker's first
 * pass over the tables); or train its share and skip the rest (`share`: its
 * second pass). Only `all` writes tables or reads checkpoints back.
 */
let role: { kind: "all" } | { kind: "list"; runs: string[] } | {
  kind: "share";
  mine: Set<string>;
} = { kind: "all" };

/** A run this process does not train: it stands in for it while the tables are walked. */
function notTrainedHere(out: string): RunResult {
  const none = NaN;
  return {
    top1: none,
    steps: none,
    epochs: none,
    params: none,
    macs: none,
    imagesPerSecond: none,
    seconds: none,
    out,
  };
}

/** The table being run: when it started, and what it trained, reused and compiled so far. */
const clock = { started: 0, pipelines: 0, trained: 0, reused: 0, onDisk: 0 };

/** Wall time, runs and kernels of the table being run, as its CSV header and log print them. */
function clockNote(): string {
  const seconds = (performance.now() - clock.started) / 1000;
  const jobs = workers
    ? `; before the tables, ${workers.count} worker processes trained the command's runs in ${
      workers.seconds.toFixed(0)
    } s`
    : "";
  return `wall time: ${seconds.toFixed(0)} s for this table in this process (${clock.trained} ` +
    `runs trained, ${clock.reused} reused from an earlier table, ${clock.onDisk} finished ` +
    `before, read from disk, ${gpu().pipelineCount - clock.pipelines} kernels compiled)${jobs}`;
}

/** Train one (model, seed) with the trainer's `train` and count the result's params and FLOPs. */
async function runOne(spec: ModelSpec, seed: number, s: TrendSettings): Promise<RunResult> {
  const cfg = trainConfigOf(spec, seed, s);
  const memoKey = JSON.stringify(cfg);
  const done = finished.get(memoKey);
  if (done) {
    clock.reused++;
    return done;
  }
  if (role.kind === "list" || (role.kind === "share" && !role.mine.has(memoKey))) {
    if (role.kind === "list") role.runs.push(memoKey);
    const stub = notTrainedHere(cfg.out);
    finished.set(memoKey, stub);
    return stub;
  }
  const saved = s.fresh ? null : await finishedRun(cfg);
  if (saved) {
    clock.onDisk++;
    console.error(`# ${spec.label}, seed ${seed}: finished before, read from ${cfg.out}`);
    finished.set(memoKey, saved);
    return saved;
  }
  clock.trained++;
  console.error(`\n# ${spec.label}, seed ${seed} → ${cfg.out}`);
  const started = performance.now();
  const result = await train(cfg);
  if (result.interrupted) throw new Error(`interrupted during ${cfg.out}; nothing more measured`);
  const seconds = (performance.now() - started) / 1000;
  const last = result.history.at(-1)!;
  const model = buildModel(cfg, dataInfo!.numClasses).model;
  const densities = cfg.sparse
    ? maskDensities((await loadCheckpoint(`${cfg.out}/checkpoint-last`)).masks ?? new Map())
    : undefined;
  const count = countModel(model, s.inputSize, { densities });
  const r: RunResult = {
    top1: last.top1,
    steps: last.step,
    epochs: last.epoch,
    params: count.params,
    macs: count.macs,
    imagesPerSecond: result.history.reduce((a, h) => a + h.images_per_s, 0) /
      result.history.length,
    seconds,
    out: cfg.out,
  };
  console.error(`  top-1 ${r.top1.toFixed(2)}% in ${seconds.toFixed(1)} s`);
  // Written last, after the checkpoint: its presence means the run finished.
  await writeFileAtomic(
    `${cfg.out}/${RUN_RESULT}`,
    JSON.stringify({ config: cfg, result: r }, null, 1) + "\n",
  );
  finished.set(memoKey, r);
  return r;
}

/** The file in a run's folder that records its configuration and result once it finished. */
export const RUN_RESULT = "trend_run.json";

/**
 * The result a finished run left in its folder, if that run had exactly this
 * configuration and its last checkpoint is still there (tables 3 and 4 read
 * it); otherwise null. A result file that is not valid JSON or lacks a
 * complete result is named in one warning and the run trains again,
 * overwriting it; a path that cannot be read at all (a directory, no
 * permission) is a one-line error naming it.
 *
 * @example
 * ```ts
 * import { finishedRun, parseTrendArgs, trainConfigOf } from "./trends.ts";
 * const s = parseTrendArgs(["--quick", "--out", "/nonexistent"]);
 * const spec = { key: "k", label: "k", model: "slak_cpu", widthFactor: 1 };
 * console.log(await finishedRun(trainConfigOf(spec, 0, s))); // null
 * ```
 */
export async function finishedRun(cfg: TrainConfig): Promise<RunResult | null> {
  const path = `${cfg.out}/${RUN_RESULT}`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new Error(`${path}: expected a finished run's result file (${RUN_RESULT}), ${why}`);
  }
  let saved: { config?: unknown; result?: Partial<RunResult> };
  try {
    saved = JSON.parse(text);
  } catch {
    console.error(`warning: ${path}: not valid JSON; training this run again`);
    return null;
  }
  const r = saved?.result;
  const numbers = ["top1", "steps", "epochs", "params", "macs", "imagesPerSecond", "seconds"];
  if (
    !r || typeof r !== "object" || numbers.some((k) => typeof r[k as keyof RunResult] !== "number")
  ) {
    console.error(`warning: ${path}: no complete result in it; training this run again`);
    return null;
  }
  if (JSON.stringify(saved.config) !== JSON.stringify(cfg)) return null;
  if (!(await checkpointExists(`${cfg.out}/checkpoint-last`))) return null;
  return { ...(r as RunResult), out: cfg.out };
}

/** A model's runs over every seed. */
interface ModelRuns {
  spec: ModelSpec;
  runs: RunResult[];
}

async function runSeeds(spec: ModelSpec, s: TrendSettings): Promise<ModelRuns> {
  const runs = [];
  for (const seed of s.seeds) runs.push(await runOne(spec, seed, s));
  return { spec, runs };
}

const round = (v: number, d = 2) => Number.isFinite(v) ? Math.round(v * 10 ** d) / 10 ** d : NaN;

/** The columns every accuracy row shares: the setup, the budget and the mean ± CI. */
function accuracyRow(m: ModelRuns, s: TrendSettings): Record<string, Cell> {
  const top1 = m.runs.map((r) => r.top1);
  const ci = meanCi(top1);
  const r0 = m.runs[0];
  return {
    row: m.spec.label,
    model: m.spec.model,
    kernels: m.spec.kernelSize?.slice(0, 4).join("-") ??
      (m.spec.model === "resnet_cpu" ? "3" : "7-7-7-7"),
    small_kernel: m.spec.kernelSize?.[4] ?? "",
    kernel_mode: m.spec.kernelMode ?? "",
    width_factor: m.spec.widthFactor,
    sparsity: m.spec.sparsity ?? 0,
    params: Math.round(m.runs.reduce((a, r) => a + r.params, 0) / m.runs.length),
    mflops: round(m.runs.reduce((a, r) => a + r.macs, 0) / m.runs.length / 1e6, 3),
    data: dataInfo!.name,
    input_size: s.inputSize,
    train_images: dataInfo!.trainSize,
    epochs: r0.epochs,
    steps: r0.steps,
    batch_size: s.batchSize,
    seeds: s.seeds.length,
    top1_mean: round(ci.mean),
    top1_ci95: round(ci.half),
    top1_lo: round(ci.lo),
    top1_hi: round(ci.hi),
    top1_sd: round(ci.sd),
    top1_per_seed: top1.map((v) => round(v)).join(";"),
    img_per_s: round(m.runs.reduce((a, r) => a + r.imagesPerSecond, 0) / m.runs.length, 1),
    seconds_per_run: round(m.runs.reduce((a, r) => a + r.seconds, 0) / m.runs.length, 1),
    run_mode: s.quick ? "quick smoke" : "default",
  };
}

/** One verdict: did the paper's direction hold, from differences paired by seed. */
export interface Verdict {
  claim: string;
  held: boolean;
  /** Whether the 95% interval of the paired difference excludes 0. */
  clear: boolean;
  diff: number;
  half: number;
  text: string;
}

/**
 * Judge "a beats b" (or, with `match`, "a matches or beats b") from per-seed
 * values paired by seed. `held` is the direction of the mean difference; the
 * text adds whether its 95% interval excludes zero.
 *
 * @example
 * ```ts
 * import { verdict } from "./trends.ts";
 * console.log(verdict("big > small", [80, 82, 84], [70, 71, 75]).text);
 * // big > small: held, +10.00 ± 2.48 (95% CI of the per-seed difference excludes 0)
 * ```
 */
export function verdict(claim: string, a: number[], b: number[], match = false): Verdict {
  if (a.length !== b.length) throw new Error(`verdict: ${a.length} vs ${b.length} seeds`);
  const d = meanCi(a.map((v, i) => v - b[i]));
  const clear = d.lo > 0 || d.hi < 0;
  // A "matches" claim holds unless a is clearly worse.
  const held = match ? d.mean >= 0 || !clear : d.mean > 0;
  const sign = d.mean >= 0 ? "+" : "";
  const text = `${claim}: ${held ? "held" : "NOT held"}, ${sign}${d.mean.toFixed(2)} ± ${
    d.half.toFixed(2)
  } (95% CI of the per-seed difference ${clear ? "excludes" : "includes"} 0)`;
  return { claim, held, clear, diff: d.mean, half: d.half, text };
}

const top1s = (m: ModelRuns) => m.runs.map((r) => r.top1);

/** The lines at the head of every table's CSV. */
function header(s: TrendSettings, claim: string, verdicts: Verdict[]): string[] {
  const r = [
    `claim: ${claim}`,
    `data: ${dataInfo!.name}, ${s.inputSize}² images, ${dataInfo!.trainSize} training images; ` +
    `seeds ${s.seeds.join(",")} (seed s draws ${
      s.data ? "the order, the augmentation" : "the images"
    } and the init; every model sees the same data per seed); recipe: AdamW lr ${s.lr}, batch ${s.batchSize}, ${s.epochs} ` +
    `epoch(s), the trainer's procedural recipe for every model; top1 = final validation top-1 %, ` +
    `mean ± 95% Student-t interval over seeds; ${FLOPS_RULE}`,
    ...verdicts.map((v) => `verdict: ${v.text}`),
    clockNote(),
  ];
  if (s.quick) {
    r.unshift(
      "QUICK SMOKE MODE: tiny models, images and steps on llvmpipe; the pipeline is checked, " +
        "the numbers say nothing about the claims",
    );
  }
  return r;
}

/**
 * The y axis of every top-1 panel: 0–100 with headroom above, so a model at
 * 100% (or a reference line there) is drawn inside the frame, not on it.
 */
const TOP1_AXIS = {
  yLabel: "val top-1 % (mean, 95% CI)",
  yDomain: [0, 104] as [number, number],
  yTicks: [0, 20, 40, 60, 80, 100],
};

/**
 * Mean line and dashed 95% interval lines of a set of rows over `x`. The
 * drawn interval is clipped to the possible 0–100%; the CSV keeps the
 * Student-t bounds as computed.
 */
function meanCiSeries(name: string, x: number[], rows: ModelRuns[], color: string): Series[] {
  const c = rows.map((m) => meanCi(top1s(m)));
  const clip = (v: number) => Math.min(100, Math.max(0, v));
  // The lower and upper bounds as one dashed series, broken between them by a NaN.
  return [
    { name, x, y: c.map((v) => v.mean), color, markers: true },
    {
      name: `${name}: 95% CI`,
      x: [...x, x[0], ...x],
      y: [...c.map((v) => clip(v.lo)), NaN, ...c.map((v) => clip(v.hi))],
      color,
      dash: "4 3",
    },
  ];
}

/** Size, budget and verdicts in one line ("*": the 95% interval of the difference includes 0). */
function subtitle(s: TrendSettings, verdicts: Verdict[]): string {
  const steps = stepsPerEpoch(s) * s.epochs;
  return `${s.inputSize}², ${steps} steps × ${s.seeds.length} seeds` +
    (s.quick ? " (QUICK: not evidence)" : "") + " | " +
    verdicts.map((v) => `${v.claim}: ${v.held ? "held" : "NOT held"}${v.clear ? "" : "*"}`)
      .join("; ") +
    (verdicts.some((v) => !v.clear) ? " (*: CI includes 0)" : "");
}

/** Categorical rows as marks (their labels) over a mean ± CI chart at x = 0, 1, …. */
function categoricalPanel(title: string, rows: ModelRuns[]): Panel {
  const x = rows.map((_, i) => i);
  return {
    title,
    xLabel: "model (see labels)",
    ...TOP1_AXIS,
    xTicks: x,
    xDomain: [-0.5, rows.length - 0.5],
    series: meanCiSeries("top-1", x, rows, PALETTE[0]),
    marks: rows.map((m, i): Mark => ({
      x: i,
      y: meanCi(top1s(m)).mean,
      label: m.spec.label,
      below: i % 2 === 1,
    })),
    legend: "bottom-right",
  };
}

async function writeTable(
  s: TrendSettings,
  table: number,
  claim: string,
  rows: Record<string, Cell>[],
  verdicts: Verdict[],
  panels: Panel[],
  title: string,
): Promise<void> {
  if (role.kind !== "all") return;
  const stem = `${s.out}/${TABLES[table]}`;
  await writeCsv(`${stem}.csv`, rows, { comments: header(s, claim, verdicts) });
  await writeLineChart(`${stem}.png`, {
    title,
    subtitle: subtitle(s, verdicts),
    panels,
    panelWidth: panels.length > 1 ? 600 : 1000,
  });
  console.log(`\n## table ${table}: ${claim}`);
  for (const r of rows) {
    // Table 3 has a row per ERF state and transform: name them, and their r(t) means.
    const erf = r.state === undefined
      ? ""
      : `  ${r.state} ${r.transform} r(t) ${
        ERF_THRESHOLDS.map((t) => r[`r${Math.round(t * 100)}_mean`]).join("/")
      }`;
    console.log(
      `  ${String(r.row ?? r.model).padEnd(34)} top-1 ${r.top1_mean} ± ${r.top1_ci95}  ` +
        `params ${r.params}  MFLOPs ${r.mflops}${erf}`,
    );
  }
  for (const v of verdicts) console.log(`  ${v.text}`);
  console.log(`  ${clockNote()}`);
  console.log(`  → ${stem}.csv, ${stem}.png`);
}

/**
 * Which of table 1's kernels the largest is compared with: the smallest and,
 * when there are more than two, the next largest (each comparison once).
 *
 * @example
 * ```ts
 * import { scalingComparisons } from "./trends.ts";
 * console.log(scalingComparisons([7, 13, 31, 51]), scalingComparisons([7, 51])); // [0, 2] [0]
 * ```
 */
export function scalingComparisons(kernels: readonly number[]): number[] {
  return kernels.length > 2 ? [0, kernels.length - 2] : [0];
}

/** Table 1: kernel scaling, and a 3×3 ResNet of the 51 net's FLOPs. */
async function kernelScaling(s: TrendSettings): Promise<void> {
  const ks = s.kernels;
  const n = s.smallKernel;
  const nets: ModelRuns[] = [];
  for (const k of ks) {
    const label = `K=${kname(k)} (M×${n}+${n}×M+${n}×${n})`;
    nets.push(await runSeeds(slakSpec(k, "decomposed", n, s.width, label), s));
  }
  const big = nets.at(-1)!;
  const resnetSpec = equalFlopsSpec("resnet_cpu", "ResNet 3×3", big.spec, s);
  const res = await runSeeds(resnetSpec, s);
  const verdicts = [
    ...scalingComparisons(ks).map((i) =>
      verdict(`${ks.at(-1)} > ${ks[i]}`, top1s(big), top1s(nets[i]))
    ),
    verdict(`${ks.at(-1)} > ResNet 3×3 of equal FLOPs`, top1s(big), top1s(res)),
  ];
  const rc = meanCi(top1s(res));
  await writeTable(
    s,
    1,
    `larger kernels help (SLaK Tables 2–4): ${ks.join(" < ")} (every net decomposed M×${n} + ` +
      `${n}×M + ${n}×${n}); a 3×3 ResNet of the largest net's FLOPs does worse`,
    [...nets, res].map((m) => accuracyRow(m, s)),
    verdicts,
    [{
      title: "val top-1 vs first-stage kernel",
      xLabel: "kernel size K (stages K…13)",
      ...TOP1_AXIS,
      xTicks: ks,
      series: meanCiSeries("SLaK-style net", ks, nets, PALETTE[0]),
      lines: [{ y: rc.mean, label: `ResNet 3×3, equal FLOPs: ${rc.mean.toFixed(1)}%` }],
      legend: "bottom-right",
    }],
    "Kernel scaling (trained)",
  );
}

/** A spec of `model` widened to the dense FLOPs of `ref`. */
function equalFlopsSpec(model: string, name: string, ref: ModelSpec, s: TrendSettings): ModelSpec {
  const base: ModelSpec = { key: "", label: "", model, widthFactor: 1 };
  const w = widthForMacs(base, macsOf(ref, s), s);
  return { ...base, key: `${model}_eqflops_w${w}`, label: `${name} (width ×${w})`, widthFactor: w };
}

/** Table 2: decomposed vs full M×M, with and without the parallel small kernel. */
async function decomposedVsFull(s: TrendSettings): Promise<void> {
  const [k, n] = [largeOf(s), s.smallKernel];
  // A small kernel past every stage kernel means none (as the official `7 7 7 7 100`).
  const naive = await runSeeds(slakSpec(k, "full", 1000, s.width, `full ${k}×${k} alone`), s);
  const replk = await runSeeds(slakSpec(k, "full", n, s.width, `full ${k}×${k} + ${n}×${n}`), s);
  const dec = await runSeeds(slakNetOf(s, `K=${kname(k)} (M×${n}+${n}×M+${n}×${n})`), s);
  const verdicts = [
    verdict(`decomposed ≥ full+${n}×${n} (SLaK)`, top1s(dec), top1s(replk), true),
    verdict(`full+${n}×${n} > full alone (RepLKNet)`, top1s(replk), top1s(naive)),
  ];
  const rows = [naive, replk, dec];
  await writeTable(
    s,
    2,
    `at M = ${k}, decomposing M×M into M×${n} + ${n}×M (+ ${n}×${n}) loses nothing (SLaK ` +
      "Table 3); a parallel small kernel helps a full large kernel train (RepLKNet)",
    rows.map((m) => accuracyRow(m, s)),
    verdicts,
    [categoricalPanel(`val top-1 by large-kernel construction (${kname(k)})`, rows)],
    "Decomposed vs full large kernels (trained)",
  );
}

/** ERF area ratios of `model` on the first `n` validation images (rounded up to whole batches). */
async function erfRatios(
  model: Classifier,
  data: Dataset,
  n: number,
  seed: number,
  batchSize: number,
): Promise<{ images: number } & Record<ErfTransform, number[]>> {
  const size = data.imageSize;
  const acc = new ErfAccumulator(size, size);
  try {
    // Whole validation batches of the training batch size: the kernels are compiled per shape,
    // and these shapes already ran in training and evaluation.
    for await (const b of data.batches("val", { batchSize, epoch: 0, seed, train: false })) {
      const x = Tensor.from(b.x, [b.labels.length, 3, size, size]);
      acc.add(model, x);
      x.dispose();
      if (acc.count >= n) break;
    }
    const mean = await acc.mean();
    const out = { images: acc.count } as { images: number } & Record<ErfTransform, number[]>;
    for (const t of ["linear", "log"] as const) {
      out[t] = areaRatios(normalizeErf(mean, t), size, size, ERF_THRESHOLDS).map((r) => r.ratio);
    }
    return out;
  } finally {
    acc.dispose();
  }
}

/** First validation images as tensors (BatchNorm calibration of untrained nets). */
async function calibrationBatches(data: Dataset, seed: number, n: number): Promise<Tensor[]> {
  const out: Tensor[] = [];
  const size = data.imageSize;
  for await (const b of data.batches("val", { batchSize: n, epoch: 0, seed, train: false })) {
    out.push(Tensor.from(b.x, [b.labels.length, 3, size, size]));
    break;
  }
  return out;
}

/** Table 3: ERF of trained vs untrained ResNet, ConvNeXt and SLaK at equal FLOPs. */
async function erfTable(s: TrendSettings): Promise<void> {
  const slakNet = slakNetOf(s, `SLaK ${kname(largeOf(s))} (width ×${s.width})`);
  const specs = [
    equalFlopsSpec("resnet_cpu", "ResNet 3×3", slakNet, s),
    equalFlopsSpec("convnext_cpu", "ConvNeXt 7×7", slakNet, s),
    slakNet,
  ];
  const rows: Record<string, Cell>[] = [];
  const ratioMeans = new Map<string, number[]>(); // `${label}|${state}|${transform}` → mean r(t)
  const trainedByModel: ModelRuns[] = [];
  for (const spec of specs) trainedByModel.push(await runSeeds(spec, s));
  // The ERFs read the trained checkpoints back: the process that writes the table does that.
  if (role.kind !== "all") return;
  for (const [mi, spec] of specs.entries()) {
    const m = trainedByModel[mi];
    const per: Record<string, number[][]> = {};
    let erfImages = 0;
    for (const [i, seed] of s.seeds.entries()) {
      const data = await openDataset({
        data: s.data,
        inputSize: s.inputSize,
        seed,
        trainSize: s.trainSize,
        valSize: s.valSize,
        keyColours: true,
      });
      const cfg = trainConfigOf(spec, seed, s);
      seedInit(seed);
      const fresh = buildModel(cfg, data.numClasses).model;
      const calib = await calibrationBatches(data, seed, s.batchSize);
      await calibrateBatchNorm(fresh, calib);
      calib.forEach((t) => t.dispose());
      const untrained = await erfRatios(fresh, data, s.erfImages, seed, s.batchSize);
      fresh.dispose();
      const trained = buildModel(cfg, data.numClasses).model;
      trained.loadStateDict((await loadCheckpoint(`${m.runs[i].out}/checkpoint-last`)).model);
      const done = await erfRatios(trained, data, s.erfImages, seed, s.batchSize);
      erfImages = done.images;
      trained.dispose();
      for (const t of ["linear", "log"] as const) {
        (per[`trained|${t}`] ??= []).push(done[t]);
        (per[`untrained|${t}`] ??= []).push(untrained[t]);
      }
    }
    const acc = accuracyRow(m, s);
    for (const [key, seeds] of Object.entries(per)) {
      const [state, transform] = key.split("|");
      const row: Record<string, Cell> = { ...acc, state, transform, erf_images: erfImages };
      const means: number[] = [];
      ERF_THRESHOLDS.forEach((t, j) => {
        const c = meanCi(seeds.map((r) => 100 * r[j]));
        const pct = Math.round(t * 100);
        row[`r${pct}_mean`] = round(c.mean);
        row[`r${pct}_ci95`] = round(c.half);
        means.push(c.mean);
      });
      ratioMeans.set(`${spec.label}|${key}`, means);
      rows.push(row);
    }
  }
  // Trained ERF order ResNet < ConvNeXt < SLaK, per threshold, log transform (the papers').
  const verdicts: Verdict[] = [];
  const trainedLog = specs.map((sp) => ratioMeans.get(`${sp.label}|trained|log`)!);
  const ordered = ERF_THRESHOLDS.filter((_, j) =>
    trainedLog[0][j] < trainedLog[1][j] && trainedLog[1][j] < trainedLog[2][j]
  ).map((t) => `${Math.round(t * 100)}%`);
  const orderHeld = ordered.length === ERF_THRESHOLDS.length;
  verdicts.push({
    claim: "trained ERF ResNet < ConvNeXt < SLaK",
    held: orderHeld,
    // An order of means, not a test of a difference: no noise mark.
    clear: true,
    diff: NaN,
    half: NaN,
    text: `trained ERF ResNet < ConvNeXt < SLaK (log transform, mean r(t)): ${
      orderHeld ? "held" : "NOT held"
    }; the order holds at ${ordered.length} of ${ERF_THRESHOLDS.length} thresholds (${
      ordered.join(", ") || "none"
    })`,
  });
  verdicts.push(
    verdict(
      "SLaK > ResNet top-1 at equal FLOPs",
      top1s(trainedByModel[2]),
      top1s(trainedByModel[0]),
    ),
  );
  const ts = ERF_THRESHOLDS.map((t) => Math.round(t * 100));
  const panels: Panel[] = (["log", "linear"] as const).map((transform) => ({
    title: `r(t), ${transform === "log" ? "log10(A+1)" : "A"} (solid trained, dashed untrained)`,
    xLabel: "threshold t %",
    yLabel: "area ratio r(t) %",
    xTicks: ts,
    series: specs.flatMap((sp, i): Series[] => [
      {
        name: sp.label,
        x: ts,
        y: ratioMeans.get(`${sp.label}|trained|${transform}`)!,
        color: PALETTE[i],
        markers: true,
      },
      {
        name: `${sp.label.split(" (")[0]}, untrained`,
        x: ts,
        y: ratioMeans.get(`${sp.label}|untrained|${transform}`)!,
        color: PALETTE[i],
        dash: "5 3",
      },
    ]),
    legend: "bottom-right",
  }));
  await writeTable(
    s,
    3,
    "trained large-kernel nets have larger ERFs: ResNet < ConvNeXt < SLaK (SLaK Table 6, RepLKNet " +
      "Table 10); r(t) = area ratio (%) of the smallest centred square holding t of the " +
      "contribution; untrained = the same init with BatchNorm statistics of the images",
    rows,
    verdicts,
    panels,
    "Effective receptive field, trained vs untrained (equal FLOPs)",
  );
}

/** Table 4: sparse-and-wide vs dense, and the sparsity–width grid. */
async function sparseWide(s: TrendSettings): Promise<void> {
  const dense = await runSeeds(slakNetOf(s, `dense ×1.0 (width ×${s.width})`), s);
  const grid: ModelRuns[] = [];
  for (const [sparsity, w] of s.grid) {
    const base = slakNetOf(s, "", round(s.width * w, 4));
    grid.push(
      await runSeeds({
        ...base,
        key: `${base.key}_s${sparsity}`,
        label: `sparsity ${sparsity}, ×${w}`,
        sparsity,
      }, s),
    );
  }
  const verdicts = grid.map((g, i) =>
    verdict(`sparsity ${s.grid[i][0]} ×${s.grid[i][1]} > dense`, top1s(g), top1s(dense))
  );
  const xs = [1, ...s.grid.map(([, w]) => w)];
  const all = [dense, ...grid];
  await writeTable(
    s,
    4,
    "sparse-and-wide beats dense at about equal FLOPs (SLaK Table 7: 1.3× width at 40% sparsity, " +
      "dynamic sparsity with SNIP init and random growth); mflops counted from each run's final masks",
    all.map((m) => accuracyRow(m, s)),
    verdicts,
    [{
      title: "val top-1 vs width (sparsity grows with width)",
      xLabel: "width factor (dense at 1.0)",
      ...TOP1_AXIS,
      xTicks: xs,
      series: meanCiSeries(`SLaK ${kname(largeOf(s))}`, xs, all, PALETTE[0]),
      marks: all.map((m, i): Mark => ({
        x: xs[i],
        y: meanCi(top1s(m)).mean,
        label: `${(m.runs[0].macs / 1e6).toFixed(1)}M FLOPs`,
        below: true,
      })),
      legend: "bottom-right",
    }],
    "Sparse-and-wide vs dense (trained)",
  );
}

/** Table 5: ShiftwiseConv (3×3 + shifts) vs SLaK at equal FLOPs. */
async function shiftwiseTable(s: TrendSettings): Promise<void> {
  const k = largeOf(s);
  const slakNet = slakNetOf(s, `SLaK ${kname(k)} (width ×${s.width})`);
  const base: ModelSpec = {
    key: "",
    label: "",
    model: "sw_cpu",
    kernelSize: [...stageKernels(k), 3],
    widthFactor: 1,
  };
  const w = widthForMacs(base, macsOf(slakNet, s), s);
  const sw = {
    ...base,
    key: `sw_k${k}_eqflops_w${w}`,
    label: `ShiftwiseConv 3×3, SW-${k} (width ×${w})`,
    widthFactor: w,
  };
  const slakRuns = await runSeeds(slakNet, s);
  const swRuns = await runSeeds(sw, s);
  const verdicts = [verdict("ShiftwiseConv ≥ SLaK", top1s(swRuns), top1s(slakRuns), true)];
  const rows = [slakRuns, swRuns];
  await writeTable(
    s,
    5,
    `ShiftwiseConv's 3×3 kernels with shifts match a ${k}×${k} large kernel (SLaK) at equal ` +
      "FLOPs (both dense here)",
    rows.map((m) => accuracyRow(m, s)),
    verdicts,
    [categoricalPanel("val top-1, ShiftwiseConv vs SLaK", rows)],
    "ShiftwiseConv vs SLaK (trained, equal FLOPs)",
  );
}

const RUNNERS: Record<number, (s: TrendSettings) => Promise<void>> = {
  1: kernelScaling,
  2: decomposedVsFull,
  3: erfTable,
  4: sparseWide,
  5: shiftwiseTable,
};

/**
 * Run the selected tables; each table's CSV and PNG is written as soon as it
 * is done, so a run that fails late keeps what it measured. `steps` (if
 * given) becomes whole epochs of the opened dataset.
 *
 * @example
 * ```ts ignore
 * import { parseTrendArgs, runTrends } from "./trends.ts";
 * await runTrends(parseTrendArgs(["--quick", "--table", "2"])); // a few minutes on llvmpipe
 * ```
 */
export async function runTrends(s: TrendSettings & { steps?: number }): Promise<void> {
  // One command shares runs between its tables; an earlier command's runs come from disk.
  finished.clear();
  role = { kind: "all" };
  workers = null;
  await initGpu();
  const data = await openDataset({
    data: s.data,
    inputSize: s.inputSize,
    seed: 0,
    trainSize: s.trainSize,
    valSize: s.valSize,
    keyColours: true,
  });
  dataInfo = { trainSize: data.trainSize, numClasses: data.numClasses, name: data.name };
  const perEpoch = stepsPerEpoch(s);
  if (perEpoch < 1) {
    throw new Error(
      `--batch-size: ${s.batchSize} is more than the ${data.trainSize} training images of ${data.name}`,
    );
  }
  if (s.steps !== undefined) s.epochs = Math.ceil(s.steps / perEpoch);
  console.error(
    `trends: ${data.name}, ${s.inputSize}², ${data.trainSize} training images, ${s.epochs} ` +
      `epoch(s) = ${perEpoch * s.epochs} steps of ${s.batchSize}, seeds per table ${
        s.tables.map((t) => `${t}: ${s.tableSeeds[t].length}`).join(", ")
      }` + (s.quick ? " (QUICK smoke mode)" : ""),
  );
  await Deno.mkdir(s.out, { recursive: true });
  // Workers train under their parent's lock.
  if (s.worker) return await trainShare(s, s.worker);
  const release = await lockOut(s.out);
  try {
    await runTables(s);
  } finally {
    await release();
  }
}

/** The tables of `s`, after training their runs in `--jobs` workers if asked. */
async function runTables(s: TrendSettings): Promise<void> {
  if (s.jobs > 1) {
    await runWorkers(s);
    // The workers honoured --fresh; the tables read what they just trained.
    s = { ...s, fresh: false };
  }
  await walkTables(s, () =>
    Object.assign(clock, {
      started: performance.now(),
      pipelines: gpu().pipelineCount,
      trained: 0,
      reused: 0,
      onDisk: 0,
    }));
}

/** Run each table of `s` in turn with its own seeds; `beforeEach` runs before each table. */
async function walkTables(s: TrendSettings, beforeEach: () => void = () => {}): Promise<void> {
  for (const t of s.tables) {
    beforeEach();
    await RUNNERS[t]({ ...s, seeds: s.tableSeeds[t] });
  }
}

/** The file that marks an output folder as in use by a trends command. */
export const OUT_LOCK = "trends.lock";

/**
 * Claim `out` for this command: two commands on one folder would train the
 * runs they share into the same run folders at once. The lock file holds the
 * owner's pid; a lock whose process is gone (a crash, a kill) is taken over
 * with a warning. Returns the release.
 *
 * @example
 * ```ts
 * import { lockOut } from "./trends.ts";
 * const out = await Deno.makeTempDir();
 * const release = await lockOut(out);
 * await lockOut(out).catch((e) => console.log(e.message)); // names the folder and this pid
 * await release();
 * ```
 */
export function lockOut(out: string): Promise<() => Promise<void>> {
  return claimOutFolder(out, { lock: OUT_LOCK, what: "trends command" });
}

/** The `--jobs` workers of this command: how many, and how long they trained (null without). */
let workers: { count: number; seconds: number } | null = null;

/**
 * A run list's share for worker `index` of `count`: a contiguous range
 * `[start, end)`, so that a model's seeds stay together and each worker
 * compiles few models; the shares differ in length by at most one.
 *
 * @example
 * ```ts
 * import { shareOf } from "./trends.ts";
 * console.log(shareOf(10, 0, 3), shareOf(10, 1, 3), shareOf(10, 2, 3)); // [0, 3] [3, 6] [6, 10]
 * ```
 */
export function shareOf(runs: number, index: number, count: number): [number, number] {
  return [Math.floor((runs * index) / count), Math.floor((runs * (index + 1)) / count)];
}

/**
 * A `--jobs` worker: walk the tables once to list every distinct run in
 * order, then again training only its share ({@linkcode shareOf}); each run
 * it trains leaves its result on disk for the process that writes the tables.
 */
async function trainShare(s: TrendSettings, w: { index: number; count: number }): Promise<void> {
  try {
    const runs = await listRuns(s);
    const [start, end] = shareOf(runs.length, w.index, w.count);
    finished.clear();
    role = { kind: "share", mine: new Set(runs.slice(start, end)) };
    await walkTables(s);
    console.error(
      `trends worker ${w.index + 1}/${w.count}: runs ${
        start + 1
      }–${end} of ${runs.length} finished`,
    );
  } finally {
    role = { kind: "all" };
  }
}

/** Every distinct run the tables of `s` ask for, in the order they ask (nothing is trained). */
async function listRuns(s: TrendSettings): Promise<string[]> {
  const runs: string[] = [];
  finished.clear();
  role = { kind: "list", runs };
  try {
    await walkTables(s);
  } finally {
    role = { kind: "all" };
    finished.clear();
  }
  return runs;
}

/** The command line without `--jobs N` (or `--jobs=N`). */
function withoutJobs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--jobs") i++;
    else if (!argv[i].startsWith("--jobs=")) out.push(argv[i]);
  }
  return out;
}

/**
 * Start `--jobs` copies of this command as workers (`--worker K/N`), each
 * logging to `out/jobs/worker-K.log`, and wait for all of them. A failed
 * worker fails the command with its log's last lines; what the others
 * finished stays on disk for the next attempt.
 */
async function runWorkers(s: TrendSettings): Promise<void> {
  const started = performance.now();
  const dir = `${s.out}/jobs`;
  await Deno.mkdir(dir, { recursive: true });
  const script = fileURLToPath(import.meta.url);
  // No more workers than runs: each worker holds a GPU device and compiles its models.
  const count = Math.min(s.jobs, (await listRuns(s)).length);
  console.error(`trends: training in ${count} worker processes, logs in ${dir}/`);
  const results = await Promise.all(
    Array.from({ length: count }, async (_, k) => {
      const log = `${dir}/worker-${k}.log`;
      const file = await Deno.open(log, { write: true, create: true, truncate: true });
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, ...withoutJobs(s.argv), "--worker", `${k}/${count}`],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      // Both streams into one log file, each chunk whole.
      const writer = file.writable.getWriter();
      const copy = async (stream: ReadableStream<Uint8Array>) => {
        for await (const chunk of stream) await writer.write(chunk);
      };
      await Promise.all([copy(child.stdout), copy(child.stderr)]);
      await writer.close();
      const { code } = await child.status;
      console.error(
        `trends: worker ${k + 1}/${count} ${code === 0 ? "done" : `failed (exit ${code})`}`,
      );
      return { k, code, log };
    }),
  );
  const failed = results.find((r) => r.code !== 0);
  if (failed) {
    const tail = (await Deno.readTextFile(failed.log)).trimEnd().split("\n").slice(-5).join("\n  ");
    throw new Error(
      `--jobs: worker ${failed.k + 1} of ${count} failed (exit ${failed.code}); its log ` +
        `${failed.log} ends:\n  ${tail}\nthe runs that finished are kept; run the command again to resume`,
    );
  }
  workers = { count, seconds: (performance.now() - started) / 1000 };
}

async function main(): Promise<void> {
  const s = parseTrendArgs(Deno.args);
  if (s.help) {
    console.log(HELP);
    return;
  }
  await runTrends(s);
}

if (import.meta.main) await runMain(main);
