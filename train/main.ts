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
import { parseArgs } from "node:util";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { type MpiReplicas, openReplicas, RanksDisagreeError } from "./distributed.ts";
import type { Replicas } from "./parallel.ts";
import { MODEL_NAMES } from "../models/registry.ts";
import { defaultConfig, presetConfig, PRESETS, type TrainConfig } from "./config.ts";
import { train } from "./trainer.ts";
import { SPARSE_INITS } from "../sparse/density.ts";
import { GROWTH_MODES, SPARSE_TYPES } from "../sparse/prune_grow.ts";

/** Flags: name → [type, help]. Official snake_case spellings are accepted too. */
const FLAGS = {
  model: ["string", "model preset (see the list below)"],
  data: [
    "string",
    "dataset folder: ImageNet layout (train/, val/ class folders) or CIFAR-10 binaries; default: built-in procedural dataset",
  ],
  epochs: ["number", "training epochs"],
  "batch-size": ["number", "images per micro-batch"],
  "update-freq": ["number", "micro-batches per optimiser step (gradient accumulation)"],
  lr: ["number", "peak learning rate (AdamW), reached after the warm-up"],
  "min-lr": ["number", "final learning rate of the cosine schedule"],
  "warmup-epochs": ["number", "linear warm-up epochs"],
  "warmup-steps": ["number", "linear warm-up steps (overrides --warmup-epochs when > 0)"],
  "weight-decay": ["number", "decoupled weight decay (not applied to norms, biases, LayerScale)"],
  "drop-path": ["number", "stochastic depth rate"],
  "layer-scale-init": ["number", "LayerScale init value (≤ 0 disables it)"],
  "label-smoothing": ["number", "label smoothing ε (also --smoothing)"],
  mixup: ["number", "mixup alpha (0 = off)"],
  cutmix: ["number", "cutmix alpha (0 = off)"],
  "model-ema": ["boolean", "keep an exponential moving average of the weights"],
  "model-ema-decay": ["number", "EMA decay"],
  "input-size": ["number", "image size"],
  seed: ["number", "random seed (weights, data order, augmentation, drop path)"],
  out: ["string", "output folder (also --output-dir)"],
  resume: ["string", "checkpoint folder to resume, or a .safetensors/.pth weights file"],
  "auto-resume": ["boolean", "resume from OUT/checkpoint-last when it exists"],
  "eval-only": ["boolean", "only evaluate (with --resume weights) (also --eval)"],
  "kernel-size": [
    "string",
    "stage kernels and small kernel, e.g. 51 49 47 13 5 (official --kernel_size)",
  ],
  "width-factor": ["number", "multiply channel widths (SLaK)"],
  sparse: ["boolean", "dynamic sparsity: masks + prune-and-grow (SLaK)"],
  sparsity: ["number", "sparse: fraction of zeros in the masked weights (default 0.4)"],
  "sparse-init": ["string", "sparse: layer densities snip | ERK | uniform (default snip)"],
  "prune-rate": ["number", "sparse: initial prune fraction, cosine-decayed (default 0.3)"],
  growth: ["string", "sparse: regrowth random | gradient (default random)"],
  "update-frequency": [
    "number",
    "sparse: optimiser steps between prune-and-grow (also -u; default 100)",
  ],
  "sparse-type": [
    "string",
    "sparse: origin (weights) | coarse | rep_coarse (ShiftwiseConv filter masks; default origin)",
  ],
  "mask-sync": [
    "number",
    "sparse: updates between rep-branch mask syncs (also --sparse-gap; default 1)",
  ],
  "only-L": ["boolean", "sparse: mask only the large-kernel branches"],
  fix: ["boolean", "sparse: keep the initial masks (no prune-and-grow)"],
  "train-size": ["number", "procedural dataset: training images"],
  "val-size": ["number", "procedural dataset: validation images"],
  "num-classes": ["number", "procedural dataset: classes"],
  distractors: ["number", "procedural dataset: most distractor marks per image (0-12)"],
  "key-colours": ["boolean", "procedural dataset: white anchor, black target (easier)"],
  "strict-data": [
    "boolean",
    "image folders: fail on the first unreadable or corrupt image (default: skip and count it)",
  ],
  "log-every": ["number", "micro-batches between loss read-backs"],
  "tune-kernels": [
    "boolean",
    "GPU: plan the kernels of one training step first (depthwise, sparse, GEMM tiles), as cudnn.benchmark (default on)",
  ],
  "plan-cache": [
    "boolean",
    "keep kernel plans in $XDG_CACHE_HOME/largekernel/plans.json (default on; --no-plan-cache)",
  ],
  retune: ["boolean", "plan the kernels again even where the plan cache has them"],
  preset: ["string", "preset bundle (see below); flags override it"],
  help: ["boolean", "show this help"],
} as const;

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
    if (spec && spec[0] === "boolean") {
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
  for (const [k, [type, text]] of Object.entries(FLAGS)) {
    lines.push(`  --${k}${type === "boolean" ? "" : ` <${type}>`}`.padEnd(30) + text);
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

/** Parse command-line flags into a configuration (errors name the flag). */
export function parseTrainArgs(argv: string[], isFallbackAdapter: boolean): TrainConfig | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args: normaliseArgs(argv),
      options: Object.fromEntries(
        Object.entries(FLAGS).map((
          [k, [type]],
        ) => [k, { type: type === "boolean" ? "boolean" : "string" }]),
      ),
      strict: true,
      allowNegative: true,
      allowPositionals: false,
    });
  } catch (e) {
    throw new Error(`${(e as Error).message.split("\n")[0]} (see --help)`);
  }
  const v = parsed.values as Record<string, string | boolean | undefined>;
  if (v.help) return "help";
  const cfg = v.preset ? presetConfig(v.preset as string) : defaultConfig(isFallbackAdapter);
  const num = (
    flag: string,
    check: (n: number) => boolean,
    expected: string,
  ): number | undefined => {
    const raw = v[flag];
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (raw === "" || !Number.isFinite(n) || !check(n)) {
      throw new Error(`--${flag}: expected ${expected}, got "${raw}"`);
    }
    return n;
  };
  const posInt = (n: number) => Number.isInteger(n) && n > 0;
  const nonNeg = (n: number) => n >= 0;
  const prob = (n: number) => n >= 0 && n < 1;
  const set = <K extends keyof TrainConfig>(key: K, value: TrainConfig[K] | undefined) => {
    if (value !== undefined) cfg[key] = value;
  };
  if (v.model !== undefined) {
    if (!MODEL_NAMES.includes(v.model as string)) {
      throw new Error(
        `--model: unknown model "${v.model}" (expected one of ${MODEL_NAMES.join(", ")})`,
      );
    }
    cfg.model = v.model as string;
  }
  if (v.data !== undefined) cfg.data = v.data as string;
  set("epochs", num("epochs", posInt, "a positive integer"));
  set("batchSize", num("batch-size", posInt, "a positive integer"));
  set("updateFreq", num("update-freq", posInt, "a positive integer"));
  set("lr", num("lr", (n) => n > 0, "a positive number"));
  set("minLr", num("min-lr", nonNeg, "a number ≥ 0"));
  set("warmupEpochs", num("warmup-epochs", nonNeg, "a number ≥ 0"));
  set("warmupSteps", num("warmup-steps", Number.isInteger, "an integer"));
  set("weightDecay", num("weight-decay", nonNeg, "a number ≥ 0"));
  set("dropPath", num("drop-path", prob, "a probability in [0, 1)"));
  set("layerScaleInit", num("layer-scale-init", Number.isFinite, "a number"));
  set("labelSmoothing", num("label-smoothing", prob, "a value in [0, 1)"));
  set("mixup", num("mixup", nonNeg, "an alpha ≥ 0"));
  set("cutmix", num("cutmix", nonNeg, "an alpha ≥ 0"));
  set("modelEmaDecay", num("model-ema-decay", prob, "a decay in [0, 1)"));
  set("inputSize", num("input-size", (n) => posInt(n) && n >= 32, "an integer ≥ 32"));
  set("seed", num("seed", (n) => Number.isInteger(n) && n >= 0, "an integer ≥ 0"));
  set("widthFactor", num("width-factor", (n) => n > 0, "a positive number"));
  set("trainSize", num("train-size", posInt, "a positive integer"));
  set("valSize", num("val-size", posInt, "a positive integer"));
  set("numClasses", num("num-classes", (n) => posInt(n) && n >= 2, "an integer ≥ 2"));
  set("distractors", num("distractors", (n) => Number.isInteger(n) && n >= 0, "an integer ≥ 0"));
  set("logEvery", num("log-every", posInt, "a positive integer"));
  set("sparsity", num("sparsity", (n) => n >= 0 && n < 1, "a fraction in [0, 1)"));
  set("pruneRate", num("prune-rate", (n) => n >= 0 && n <= 1, "a fraction in [0, 1]"));
  set("updateFrequency", num("update-frequency", posInt, "a positive integer"));
  set("maskSync", num("mask-sync", posInt, "a positive integer"));
  const choice = <T extends string>(flag: string, options: readonly T[]): T | undefined => {
    const raw = v[flag];
    if (raw === undefined) return undefined;
    if (!options.includes(raw as T)) {
      throw new Error(`--${flag}: expected one of ${options.join(", ")}, got "${raw}"`);
    }
    return raw as T;
  };
  set("sparseInit", choice("sparse-init", SPARSE_INITS));
  set("growth", choice("growth", GROWTH_MODES));
  set("sparseType", choice("sparse-type", SPARSE_TYPES));
  if (v.sparse !== undefined) cfg.sparse = v.sparse as boolean;
  if (v["only-L"] !== undefined) cfg.onlyL = v["only-L"] as boolean;
  if (v.fix !== undefined) cfg.fix = v.fix as boolean;
  if (v["model-ema"] !== undefined) cfg.modelEma = v["model-ema"] as boolean;
  if (v["key-colours"] !== undefined) cfg.keyColours = v["key-colours"] as boolean;
  if (v["strict-data"] !== undefined) cfg.strictData = v["strict-data"] as boolean;
  if (v["tune-kernels"] !== undefined) cfg.tuneKernels = v["tune-kernels"] as boolean;
  if (v["plan-cache"] !== undefined) cfg.planCache = v["plan-cache"] as boolean;
  if (v.retune !== undefined) cfg.retune = v.retune as boolean;
  if (v["auto-resume"] !== undefined) cfg.autoResume = v["auto-resume"] as boolean;
  if (v["eval-only"] !== undefined) cfg.evalOnly = v["eval-only"] as boolean;
  if (v.out !== undefined) cfg.out = v.out as string;
  if (v.resume !== undefined) cfg.resume = v.resume as string;
  if (v["kernel-size"] !== undefined) {
    const ks = String(v["kernel-size"]).split(/[,\s]+/).filter(Boolean).map(Number);
    if (ks.length !== 5 || ks.some((k) => !Number.isInteger(k) || k < 1)) {
      throw new Error(
        `--kernel-size: expected 5 positive integers (e.g. 51 49 47 13 5), got "${
          v["kernel-size"]
        }"`,
      );
    }
    cfg.kernelSize = ks;
  }
  if (!cfg.sparse) {
    const given = ["sparsity", "sparse-init", "prune-rate", "growth", "update-frequency"]
      .concat(["sparse-type", "mask-sync", "only-L", "fix"]).find((f) => v[f] !== undefined);
    if (given) throw new Error(`--${given} applies to sparse training: add --sparse`);
  }
  if (cfg.evalOnly && !cfg.resume) {
    throw new Error("--eval-only needs --resume (a checkpoint folder or weights file)");
  }
  return cfg;
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
