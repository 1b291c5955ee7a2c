/**
 * `deno task train`: train or evaluate a model. Run with `--help` for the
 * flags. With no flags it picks a preset that suits the adapter: a small
 * SLaK on the built-in procedural dataset that finishes in minutes on a
 * software adapter, a larger one on a real GPU.
 *
 * @example
 * ```sh
 * deno task train                                   # default run for this adapter
 * deno task train --model convnext_cpu --epochs 2   # override the preset
 * deno task train --preset slak_tiny_imagenet --data /data/imagenet
 * deno task train --sparse --sparsity 0.4 --sparse-init snip --prune-rate 0.3 --growth random -u 100 --width-factor 1.3
 * ```
 * @module
 */
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { type MpiReplicas, openReplicas, RanksDisagreeError } from "./distributed.ts";
import type { Replicas } from "./parallel.ts";
import { MODEL_NAMES } from "../models/registry.ts";
import { defaultConfig, presetConfig, PRESETS, type TrainConfig } from "./config.ts";
import { train } from "./trainer.ts";
import { SPARSE_INITS, type SparseInit } from "../sparse/density.ts";
import { type Growth, GROWTH_MODES, SPARSE_TYPES, type SparseType } from "../sparse/prune_grow.ts";
import {
  describeFlag,
  type FlagSpec,
  type FlagValues,
  parseFlags,
  rejectTogether,
} from "./flags.ts";
import {
  PROCEDURAL_MAX_CLASSES,
  PROCEDURAL_MAX_DISTRACTORS,
  PROCEDURAL_MIN_CLASSES,
} from "./data/procedural.ts";

/** Largest image side the trainer accepts (the papers train at 224–320). */
const MAX_INPUT_SIZE = 2048;
/** Largest kernel side `--kernel-size` accepts (SLaK's scaling study stops at 151). */
const MAX_KERNEL = 255;
const BIG = 1_000_000_000;

/**
 * Flags with their type, range and help. Official snake_case spellings are
 * accepted too. None has a default here: the preset gives those, so a flag
 * in the parsed values was given on the command line.
 */
const FLAGS = {
  model: { type: "string", help: "model preset (see the list below)" },
  data: {
    type: "string",
    help:
      "dataset folder: ImageNet layout (train/, val/ class folders) or CIFAR-10 binaries; default: built-in procedural dataset",
  },
  epochs: { type: "int", min: 1, max: 100_000, help: "training epochs" },
  "batch-size": { type: "int", min: 1, max: 65_536, help: "images per micro-batch" },
  "update-freq": {
    type: "int",
    min: 1,
    max: 65_536,
    help: "micro-batches per optimiser step (gradient accumulation)",
  },
  lr: {
    type: "number",
    above: 0,
    max: 10,
    help: "peak learning rate (AdamW), reached after the warm-up",
  },
  "min-lr": { type: "number", min: 0, max: 10, help: "final learning rate of the cosine schedule" },
  "warmup-epochs": { type: "number", min: 0, max: 100_000, help: "linear warm-up epochs" },
  "warmup-steps": {
    type: "int",
    min: -1,
    max: BIG,
    help: "linear warm-up steps (overrides --warmup-epochs when > 0)",
  },
  "weight-decay": {
    type: "number",
    min: 0,
    max: 10,
    help: "decoupled weight decay (not applied to norms, biases, LayerScale)",
  },
  "drop-path": { type: "number", min: 0, below: 1, help: "stochastic depth rate" },
  "layer-scale-init": {
    type: "number",
    min: -1000,
    max: 1000,
    help: "LayerScale init value (≤ 0 disables it)",
  },
  "label-smoothing": {
    type: "number",
    min: 0,
    below: 1,
    help: "label smoothing ε (also --smoothing)",
  },
  mixup: { type: "number", min: 0, max: 100, help: "mixup alpha (0 = off)" },
  cutmix: { type: "number", min: 0, max: 100, help: "cutmix alpha (0 = off)" },
  "model-ema": { type: "boolean", help: "keep an exponential moving average of the weights" },
  "model-ema-decay": { type: "number", min: 0, below: 1, help: "EMA decay" },
  "sync-bn": {
    type: "boolean",
    help: "data-parallel runs: BatchNorm statistics over every rank's batch (SyncBatchNorm)",
  },
  "input-size": { type: "int", min: 32, max: MAX_INPUT_SIZE, help: "image size" },
  seed: {
    type: "int",
    min: 0,
    max: 2 ** 32 - 1,
    help: "random seed (weights, data order, augmentation, drop path)",
  },
  out: { type: "string", help: "output folder (also --output-dir)" },
  resume: {
    type: "string",
    help: "checkpoint folder to resume, or a .safetensors/.pth weights file",
  },
  "auto-resume": { type: "boolean", help: "resume from OUT/checkpoint-last when it exists" },
  "eval-only": { type: "boolean", help: "only evaluate (with --resume weights) (also --eval)" },
  "kernel-size": {
    type: "intList",
    lengths: [5],
    min: 1,
    max: MAX_KERNEL,
    help: "stage kernels and small kernel, e.g. 51 49 47 13 5 (official --kernel_size)",
  },
  "width-factor": { type: "number", above: 0, max: 16, help: "multiply channel widths (SLaK)" },
  sparse: { type: "boolean", help: "dynamic sparsity: masks + prune-and-grow (SLaK)" },
  sparsity: {
    type: "number",
    min: 0,
    below: 1,
    help: "sparse: fraction of zeros in the masked weights (default 0.4)",
  },
  "sparse-init": {
    type: "choice",
    options: SPARSE_INITS,
    help: "sparse: layer densities snip | ERK | uniform (default snip)",
  },
  "prune-rate": {
    type: "number",
    min: 0,
    max: 1,
    help: "sparse: initial prune fraction, cosine-decayed (default 0.3)",
  },
  growth: {
    type: "choice",
    options: GROWTH_MODES,
    help: "sparse: regrowth random | gradient (default random)",
  },
  "update-frequency": {
    type: "int",
    min: 1,
    max: BIG,
    help: "sparse: optimiser steps between prune-and-grow (also -u; default 100)",
  },
  "sparse-type": {
    type: "choice",
    options: SPARSE_TYPES,
    help:
      "sparse: origin (weights) | coarse | rep_coarse (ShiftwiseConv filter masks; default origin)",
  },
  "mask-sync": {
    type: "int",
    min: 1,
    max: BIG,
    help: "sparse: updates between rep-branch mask syncs (also --sparse-gap; default 1)",
  },
  "only-L": { type: "boolean", help: "sparse: mask only the large-kernel branches" },
  fix: { type: "boolean", help: "sparse: keep the initial masks (no prune-and-grow)" },
  "train-size": {
    type: "int",
    min: 1,
    max: 10_000_000,
    help: "procedural dataset: training images",
  },
  "val-size": {
    type: "int",
    min: 1,
    max: 10_000_000,
    help: "procedural dataset: validation images",
  },
  "num-classes": {
    type: "int",
    min: PROCEDURAL_MIN_CLASSES,
    max: PROCEDURAL_MAX_CLASSES,
    help: "procedural dataset: classes (direction sectors)",
  },
  distractors: {
    type: "int",
    min: 0,
    max: PROCEDURAL_MAX_DISTRACTORS,
    help: `procedural dataset: most distractor marks per image (0-${PROCEDURAL_MAX_DISTRACTORS})`,
  },
  "key-colours": {
    type: "boolean",
    help: "procedural dataset: white anchor, black target (easier)",
  },
  "strict-data": {
    type: "boolean",
    help:
      "image folders: fail on the first unreadable or corrupt image (default: skip and count it)",
  },
  "log-every": { type: "int", min: 1, max: BIG, help: "micro-batches between loss read-backs" },
  "tune-kernels": {
    type: "boolean",
    help:
      "GPU: plan the kernels of one training step first (depthwise, sparse, GEMM tiles), as cudnn.benchmark (default on)",
  },
  "plan-cache": {
    type: "boolean",
    help:
      "keep kernel plans in $XDG_CACHE_HOME/largekernel/plans.json (default on; --no-plan-cache)",
  },
  retune: { type: "boolean", help: "plan the kernels again even where the plan cache has them" },
  "tune-budget-s": {
    type: "number",
    min: 0,
    max: 1e6,
    help:
      "seconds the kernel planning may take, heaviest kernels first; the rest run untuned and are planned by the next run (default 30; 1e6 plans every kernel now)",
  },
  preset: { type: "string", help: "preset bundle (see below); flags override it" },
  help: { type: "boolean", help: "show this help" },
} satisfies Record<string, FlagSpec & { help: string }>;

/** Flags that apply to sparse training only. */
const SPARSE_FLAGS = [
  "sparsity",
  "sparse-init",
  "prune-rate",
  "growth",
  "update-frequency",
  "sparse-type",
  "mask-sync",
  "only-L",
  "fix",
] as const;
/** Flags that describe the built-in procedural dataset (meaningless with --data). */
const PROCEDURAL_FLAGS = [
  "train-size",
  "val-size",
  "num-classes",
  "distractors",
  "key-colours",
] as const;

const ALIASES: Record<string, string> = {
  smoothing: "label-smoothing",
  "output-dir": "out",
  eval: "eval-only",
  "sparse-gap": "mask-sync",
  "only-l": "only-L",
};

/**
 * Normalise official-style arguments: `--kernel_size 51 49 47 13 5` (snake
 * case, several values) and `--model_ema true` become what parseArgs reads.
 *
 * @example
 * ```ts
 * import { normaliseArgs } from "./main.ts";
 * console.log(normaliseArgs(["--kernel_size", "51", "49", "47", "13", "5", "-u", "100"]));
 * // ["--kernel-size=51,49,47,13,5", "--update-frequency", "100"]
 * ```
 */
export function normaliseArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    if (a === "-u") a = "--update-frequency"; // the official short flag
    else if (a.startsWith("-u=")) a = `--update-frequency${a.slice(2)}`;
    if (!a.startsWith("--")) {
      out.push(a);
      continue;
    }
    let [name, value] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    name = name.replaceAll("_", "-");
    name = ALIASES[name] ?? name;
    const spec = FLAGS[name as keyof typeof FLAGS];
    if (spec?.type === "boolean") {
      const next = value ?? argv[i + 1];
      if (/^(true|false)$/i.test(next ?? "")) {
        if (value === undefined) i++;
        out.push(next.toLowerCase() === "true" ? `--${name}` : `--no-${name}`);
        continue;
      }
    }
    if (name === "kernel-size" && value === undefined) {
      const nums: string[] = [];
      while (i + 1 < argv.length && /^\d+$/.test(argv[i + 1])) nums.push(argv[++i]);
      value = nums.join(",");
    }
    a = value === undefined ? `--${name}` : `--${name}=${value}`;
    out.push(a);
  }
  return out;
}

function help(): string {
  const lines = ["usage: deno task train [flags]", "", "flags:"];
  for (const [k, spec] of Object.entries(FLAGS)) {
    const arg = spec.type === "boolean" ? "" : ` <${spec.type === "intList" ? "ints" : spec.type}>`;
    const takes = spec.type === "int" || spec.type === "number" || spec.type === "intList"
      ? ` (${describeFlag(spec)})`
      : "";
    lines.push(`  --${k}${arg}`.padEnd(30) + spec.help + takes);
  }
  lines.push("", "presets (--preset):");
  for (const [k, p] of Object.entries(PRESETS)) lines.push(`  ${k.padEnd(26)}${p.about}`);
  lines.push("", `models (--model): ${MODEL_NAMES.join(", ")}`);
  lines.push(
    "",
    "With no --preset, `cpu` runs on a software adapter (llvmpipe) and `gpu` on a real GPU.",
    "Every on/off flag turns off as --no-FLAG (or --FLAG false), e.g. --no-key-colours.",
  );
  return lines.join("\n");
}

/**
 * Parse command-line flags into a configuration (errors name the flag).
 *
 * @example
 * ```ts
 * import { parseTrainArgs } from "./main.ts";
 * const cfg = parseTrainArgs(["--model", "convnext_cpu", "--epochs", "2"], true);
 * if (cfg !== "help") console.log(cfg.model, cfg.epochs); // convnext_cpu 2
 * ```
 */
export function parseTrainArgs(argv: string[], isFallbackAdapter: boolean): TrainConfig | "help" {
  const v = parseFlags(normaliseArgs(argv), FLAGS);
  if (v.help) return "help";
  const cfg = v.preset ? presetConfig(v.preset) : defaultConfig(isFallbackAdapter);
  if (v.model !== undefined) {
    if (!MODEL_NAMES.includes(v.model)) {
      throw new Error(
        `--model: unknown model "${v.model}" (expected one of ${MODEL_NAMES.join(", ")})`,
      );
    }
    cfg.model = v.model;
  }
  const set = <K extends keyof TrainConfig>(key: K, value: TrainConfig[K] | undefined) => {
    if (value !== undefined) cfg[key] = value;
  };
  set("data", v.data);
  set("epochs", v.epochs);
  set("batchSize", v["batch-size"]);
  set("updateFreq", v["update-freq"]);
  set("lr", v.lr);
  set("minLr", v["min-lr"]);
  set("warmupEpochs", v["warmup-epochs"]);
  set("warmupSteps", v["warmup-steps"]);
  set("weightDecay", v["weight-decay"]);
  set("dropPath", v["drop-path"]);
  set("layerScaleInit", v["layer-scale-init"]);
  set("labelSmoothing", v["label-smoothing"]);
  set("mixup", v.mixup);
  set("cutmix", v.cutmix);
  set("modelEma", v["model-ema"]);
  set("modelEmaDecay", v["model-ema-decay"]);
  set("syncBn", v["sync-bn"]);
  set("inputSize", v["input-size"]);
  set("seed", v.seed);
  set("out", v.out);
  set("resume", v.resume);
  set("autoResume", v["auto-resume"]);
  set("evalOnly", v["eval-only"]);
  set("kernelSize", v["kernel-size"]);
  set("widthFactor", v["width-factor"]);
  set("sparse", v.sparse);
  set("sparsity", v.sparsity);
  set("sparseInit", v["sparse-init"] as SparseInit | undefined);
  set("pruneRate", v["prune-rate"]);
  set("growth", v.growth as Growth | undefined);
  set("updateFrequency", v["update-frequency"]);
  set("sparseType", v["sparse-type"] as SparseType | undefined);
  set("maskSync", v["mask-sync"]);
  set("onlyL", v["only-L"]);
  set("fix", v.fix);
  set("trainSize", v["train-size"]);
  set("valSize", v["val-size"]);
  set("numClasses", v["num-classes"]);
  set("distractors", v.distractors);
  set("keyColours", v["key-colours"]);
  set("logEvery", v["log-every"]);
  set("strictData", v["strict-data"]);
  set("tuneKernels", v["tune-kernels"]);
  set("planCache", v["plan-cache"]);
  set("retune", v.retune);
  set("tuneBudgetS", v["tune-budget-s"]);
  checkMeaning(v, cfg);
  return cfg;
}

/** Flags that parse but do not make sense together, or with the preset they modify. */
function checkMeaning(v: FlagValues<typeof FLAGS>, cfg: TrainConfig): void {
  const even = cfg.kernelSize?.find((k) => k % 2 === 0);
  if (even !== undefined) {
    throw new Error(
      `--kernel-size: expected odd kernels (same padding keeps the image size), got ${even}`,
    );
  }
  if (!cfg.sparse) {
    const given = SPARSE_FLAGS.find((f) => v[f] !== undefined);
    if (given) throw new Error(`--${given} applies to sparse training: add --sparse`);
  }
  if (cfg.data !== undefined) {
    const given = PROCEDURAL_FLAGS.find((f) => v[f] !== undefined);
    if (given) {
      throw new Error(`--${given} describes the built-in procedural dataset: drop it or --data`);
    }
  }
  if (v["strict-data"] && cfg.data === undefined) {
    throw new Error("--strict-data applies to image folders and CIFAR files: add --data");
  }
  if (v.retune && cfg.tuneKernels === false) {
    throw new Error("--retune plans the kernels again: drop --no-tune-kernels");
  }
  if (v["tune-budget-s"] !== undefined && cfg.tuneKernels === false) {
    throw new Error("--tune-budget-s bounds the kernel planning: drop --no-tune-kernels");
  }
  if (v["model-ema-decay"] !== undefined && !cfg.modelEma) {
    throw new Error("--model-ema-decay applies to the weight average: add --model-ema");
  }
  if (cfg.minLr > cfg.lr) {
    throw new Error(`--min-lr ${cfg.minLr} is above the peak learning rate --lr ${cfg.lr}`);
  }
  rejectTogether(v, [
    ["resume", "auto-resume", "--auto-resume picks OUT/checkpoint-last, --resume names one"],
    ["warmup-steps", "warmup-epochs", "give the warm-up in steps or in epochs"],
  ]);
  if (cfg.evalOnly && !cfg.resume) {
    throw new Error("--eval-only needs --resume (a checkpoint folder or weights file)");
  }
}

if (import.meta.main) {
  await runMain(async () => {
    const early = parseTrainArgs(Deno.args, true);
    if (early === "help") {
      console.log(help());
      return;
    }
    // Under mpirun: MPI first, so that each rank picks its GPU before the adapter is opened.
    const replicas = await openReplicas();
    try {
      await initGpu();
      const cfg = parseTrainArgs(Deno.args, gpu().isFallback) as TrainConfig;
      if (replicas.isMain) console.error(banner(cfg, replicas.world));
      const result = await train(cfg, { replicas });
      if (!result.interrupted && !cfg.evalOnly && replicas.isMain) {
        console.error(
          `wrote ${cfg.out}/log.csv, ${cfg.out}/curves.png, ${cfg.out}/checkpoint-last/, ${cfg.out}/checkpoint-best/` +
            (replicas.world > 1 ? `, ${cfg.out}/comm.csv` : ""),
        );
      }
      leave(replicas);
      if (result.interrupted) Deno.exit(130);
    } catch (e) {
      if (replicas.world > 1 && !(e instanceof RanksDisagreeError)) {
        // The other ranks may wait in a collective for this one: stop them all (the last
        // checkpoint is whole: every save replaces its files atomically).
        console.error(`error: rank ${replicas.rank}: ${(e as Error).message.split("\n")[0]}`);
        replicas.abort(1);
      }
      leave(replicas);
      throw e;
    }
  });
}

/** The line a run starts with. */
function banner(cfg: TrainConfig, world: number): string {
  const ranks = world > 1
    ? ` on ${world} ranks (global batch ${cfg.batchSize * cfg.updateFreq * world})`
    : "";
  return `largekernel train: ${cfg.model} on ${
    cfg.data ?? "the procedural dataset"
  }, ${cfg.epochs} epochs, ` +
    `batch ${cfg.batchSize}×${cfg.updateFreq}${ranks}, ${cfg.inputSize}², adapter "${gpu().description}"` +
    (gpu().isFallback ? " (software)" : "") + `, output ${cfg.out}/`;
}

/** Leave MPI after the last collective (nothing to do in one process). */
function leave(replicas: Replicas): void {
  if ("finalize" in replicas) (replicas as MpiReplicas).finalize();
}
