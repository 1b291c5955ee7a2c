/**
 * The trainer's configuration: flags as the official ConvNeXt/SLaK
 * `main.py` (in Deno's kebab-case), preset bundles, and the defaults picked
 * for the adapter at hand (a software adapter gets a run that finishes in a
 * few minutes on two CPU cores).
 *
 * @example
 * ```ts
 * import { defaultConfig, PRESETS } from "./config.ts";
 * console.log(defaultConfig(true).model, Object.keys(PRESETS));
 * ```
 * @module
 */
import { createModel } from "../models/registry.ts";
import type { Classifier } from "../models/module.ts";
import type { SparseInit } from "../sparse/density.ts";
import type { Growth, SparseType } from "../sparse/prune_grow.ts";

/** Every setting of a training run. */
export interface TrainConfig {
  model: string;
  /** Dataset folder (ImageFolder or CIFAR-10 binaries); the procedural dataset when absent. */
  data?: string;
  epochs: number;
  batchSize: number;
  /** Gradient accumulation: micro-batches per optimiser step. */
  updateFreq: number;
  lr: number;
  minLr: number;
  warmupEpochs: number;
  warmupSteps: number;
  weightDecay: number;
  dropPath: number;
  layerScaleInit: number;
  labelSmoothing: number;
  mixup: number;
  cutmix: number;
  modelEma: boolean;
  modelEmaDecay: number;
  /**
   * Synchronised BatchNorm (`--sync-bn`, the official `use_sync_bn`): under
   * `mpirun`, every BatchNorm normalises with the statistics of all ranks'
   * batches together, as `torch.nn.SyncBatchNorm`; one process is unchanged.
   */
  syncBn?: boolean;
  inputSize: number;
  seed: number;
  out: string;
  resume?: string;
  autoResume: boolean;
  evalOnly: boolean;
  /** Official `--kernel_size`: the four stage kernels, then the small kernel N. */
  kernelSize?: number[];
  widthFactor?: number;
  /**
   * How SLaK's large kernels are built: `decomposed` (M×N + N×M + N×N, the default) or `full`
   * (M×M, plus N×N when N < M: the RepLKNet recipe; N ≥ M gives the naive M×M alone).
   */
  kernelMode?: "decomposed" | "full";
  /** Dynamic sparsity (official `--sparse`); the settings below apply only with it. */
  sparse?: boolean;
  /** Fraction of zeros among the masked weights (official default 0.4). */
  sparsity?: number;
  /** Layer-wise densities: `snip` (official default), `ERK`, `uniform`. */
  sparseInit?: SparseInit;
  /** Initial prune fraction of prune-and-grow (official default 0.3), cosine-decayed to 0.005. */
  pruneRate?: number;
  /** Growth: `random` (official default) or `gradient`. */
  growth?: Growth;
  /** Optimiser steps between prune-and-grow updates (official `-u`, default 100). */
  updateFrequency?: number;
  /** Mask layout (ShiftwiseConv `--sparse_type`): `origin` (default), `coarse`, `rep_coarse`. */
  sparseType?: SparseType;
  /** Updates between mask synchronisations of rep branches (ShiftwiseConv `--sparse_gap`, default 1). */
  maskSync?: number;
  /** Mask only the large-kernel branches (official `--only_L`). */
  onlyL?: boolean;
  /** Keep the initial masks: no prune-and-grow (official `--fix`). */
  fix?: boolean;
  /** Procedural dataset sizes and classes (ignored for folders). */
  trainSize?: number;
  valSize?: number;
  numClasses?: number;
  /** Procedural dataset: cap on distractor marks per image (fewer is easier). */
  distractors?: number;
  /** Procedural dataset: the anchor drawn white and the target black (easier). */
  keyColours?: boolean;
  /** Image folders: fail on the first unreadable or corrupt image instead of skipping it. */
  strictData?: boolean;
  /** Micro-batches between loss read-backs (the only GPU syncs of an epoch). */
  logEvery: number;
  /**
   * On a GPU, plan the kernels of one training step before training (time the candidate
   * tilings of every depthwise, sparse depthwise and matrix-product kernel and keep the
   * fastest), as `cudnn.benchmark` does (default on; nothing to plan on llvmpipe).
   */
  tuneKernels?: boolean;
  /** Read and write the plan cache in the user's cache folder (default on). */
  planCache?: boolean;
  /** Plan again the kernels that the plan cache already holds. */
  retune?: boolean;
  /**
   * Seconds that planning may take (heaviest kernels first); the kernels left keep their
   * heuristic in this run and are planned by the next run that finds them in no cache.
   * Default: 30 on a hardware GPU, no bound on a software adapter.
   */
  tuneBudgetS?: number;
  /**
   * Plan on a software adapter too, with 2 candidates per key, the sparse kernels only
   * (compiling every matrix product's candidates takes llvmpipe minutes): tests; no flag.
   */
  planSoftware?: boolean;
  preset?: string;
}

/** Settings shared by every preset (the official recipe's, scaled to the run). */
const BASE: Omit<TrainConfig, "model" | "out"> = {
  epochs: 300,
  batchSize: 128,
  updateFreq: 1,
  lr: 4e-3,
  minLr: 1e-6,
  warmupEpochs: 20,
  warmupSteps: -1,
  weightDecay: 0.05,
  dropPath: 0.1,
  layerScaleInit: 1e-6,
  labelSmoothing: 0.1,
  mixup: 0,
  cutmix: 0,
  modelEma: false,
  modelEmaDecay: 0.9999,
  inputSize: 224,
  seed: 0,
  autoResume: false,
  evalOnly: false,
  logEvery: 20,
};

/**
 * The recipe of the default runs: slak_cpu on the keyed procedural task at
 * 48², measured to learn in a few epochs (H100 sweep of lr, width, size,
 * distractors and key colours; see train/data/procedural.ts).
 */
const PROCEDURAL_RUN = {
  model: "slak_cpu",
  keyColours: true,
  batchSize: 32,
  lr: 1e-2,
  warmupEpochs: 0.5,
  dropPath: 0,
  layerScaleInit: 0.1,
  labelSmoothing: 0,
  inputSize: 48,
  trainSize: 1536,
  valSize: 512,
} as const;

/**
 * Preset bundles (`--preset NAME`); flags given on the command line override
 * them. `cpu` and `gpu` are the defaults for software and real adapters.
 */
export const PRESETS: Record<string, Partial<TrainConfig> & { model: string; about: string }> = {
  cpu: {
    about: "small SLaK on the procedural dataset, a few minutes on llvmpipe (2 CPU cores)",
    ...PROCEDURAL_RUN,
    epochs: 4,
    logEvery: 8,
  },
  gpu: {
    about: "the cpu run with a 2× wider SLaK and 3× the epochs, a few minutes on a real GPU",
    ...PROCEDURAL_RUN,
    widthFactor: 2,
    epochs: 12,
    logEvery: 16,
  },
  slak_tiny_imagenet: {
    about:
      "the paper's SLaK-T recipe (ImageNet-1K; needs --data): 4096 images per step as 128 × 32",
    model: "slak_tiny",
    kernelSize: [51, 49, 47, 13, 5],
    widthFactor: 1.3,
    batchSize: 128,
    updateFreq: 32,
    mixup: 0.8,
    cutmix: 1.0,
    modelEma: true,
    logEvery: 100,
  },
  convnext_tiny_imagenet: {
    about: "the ConvNeXt-T baseline recipe (ImageNet-1K; needs --data)",
    model: "convnext_tiny",
    batchSize: 128,
    updateFreq: 32,
    mixup: 0.8,
    cutmix: 1.0,
    modelEma: true,
    logEvery: 100,
  },
};

/**
 * The configuration of a preset, with the output folder defaulted under out/train/.
 *
 * @example
 * ```ts
 * import { presetConfig } from "./config.ts";
 * const cfg = presetConfig("cpu");
 * console.log(cfg.model, cfg.out); // slak_cpu out/train/cpu
 * ```
 */
export function presetConfig(name: string): TrainConfig {
  const p = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  if (!p) {
    throw new Error(
      `--preset: unknown preset "${name}" (expected one of ${Object.keys(PRESETS).join(", ")})`,
    );
  }
  const { about: _about, ...rest } = p;
  return { ...BASE, out: `out/train/${name}`, preset: name, ...rest };
}

/** The default run for this adapter: `cpu` on a software adapter, `gpu` otherwise. */
export function defaultConfig(isFallbackAdapter: boolean): TrainConfig {
  return presetConfig(isFallbackAdapter ? "cpu" : "gpu");
}

/**
 * Build the configured model; `args` records what was built (checked on resume).
 *
 * @example
 * ```ts
 * import { buildModel, presetConfig } from "./config.ts";
 * const { model, args } = buildModel(presetConfig("cpu"), 4);
 * console.log(args.numClasses, model.numParams() > 0); // 4 true
 * ```
 */
export function buildModel(
  cfg: TrainConfig,
  numClasses: number,
): { model: Classifier; args: Record<string, unknown> } {
  const args: Record<string, unknown> = {
    numClasses,
    dropPath: cfg.dropPath,
    layerScaleInit: cfg.layerScaleInit,
  };
  if (cfg.kernelSize) {
    if (cfg.kernelSize.length !== 5) {
      throw new Error(
        `--kernel-size: expected 5 numbers (4 stage kernels and the small kernel), got ${cfg.kernelSize.length}`,
      );
    }
    args.kernels = cfg.kernelSize.slice(0, 4);
    args.smallKernel = cfg.kernelSize[4];
  }
  if (cfg.widthFactor !== undefined) args.widthFactor = cfg.widthFactor;
  if (cfg.kernelMode !== undefined) args.mode = cfg.kernelMode;
  return { model: createModel(cfg.model, args), args };
}
