/**
 * Everything a training run needs before its first step, built once and
 * passed to each part of the engine: the data, the model (and its EMA), the
 * optimiser and schedule, the run state (fresh or resumed), the sparsity and
 * the kernel plans.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * // What train() does first; see train/trainer.ts.
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * console.log(run.microPerEpoch > 0); // true
 * ```
 * @module
 */
import { seedInit } from "../models/module.ts";
import { syncBatchNorm } from "../models/sync_batch_norm.ts";
import type { Weights } from "../models/safetensors.ts";
import { AdamW, decayGroups } from "../ops/optim.ts";
import type { Tensor } from "../ops/tensor.ts";
import type { DynamicSparsity } from "../sparse/prune_grow.ts";
import type { TrainState } from "./checkpoint.ts";
import { buildModel, type TrainConfig } from "./config.ts";
import type { Classifier } from "../models/module.ts";
import { openDataset } from "./data/mod.ts";
import type { Dataset } from "./data/types.ts";
import { ModelEma } from "./ema.ts";
import { planKernels } from "./kernel_plans.ts";
import type { Replicas } from "./parallel.ts";
import { resumeFrom, resumeSource } from "./resume.ts";
import { cosineSchedule } from "./schedule.ts";
import { CommLog } from "./comm_log.ts";
import { hashBytes } from "./distributed.ts";
import { rescaleProgress } from "./world_resume.ts";
import { setupSparse } from "./sparse_setup.ts";

/** One training run: what every part of the engine reads and updates. */
export interface TrainRun {
  cfg: TrainConfig;
  data: Dataset;
  model: Classifier;
  ema: ModelEma | null;
  optimizer: AdamW;
  /** What checkpoints save: progress, metrics, plans. */
  state: TrainState;
  replicas: Replicas;
  /** The masks of the checkpoint resumed from (sparse runs). */
  resumeMasks: Weights | null;
  /** Filled by {@linkcode setupTraining}: micro-batches per epoch. */
  microPerEpoch: number;
  /** Filled by {@linkcode setupTraining}: the learning rate at each optimiser step. */
  lrAt: (step: number) => number;
  /** Filled by {@linkcode setupTraining}: dynamic sparsity, for sparse runs. */
  sparse: DynamicSparsity | null;
  /** Data parallelism: the communication cost of each step (`comm.csv`, written by rank 0). */
  commLog: CommLog | null;
  lastDir: string;
  bestDir: string;
}

/**
 * The data, model, EMA, optimiser and state of a run, resumed when asked:
 * enough to evaluate (`--eval-only`) or to go on with {@linkcode setupTraining}.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * console.log(run.data.numClasses, run.state.epoch); // 4 0: the procedural set's four directions, a fresh run
 * ```
 */
export async function setupModel(cfg: TrainConfig, replicas: Replicas): Promise<TrainRun> {
  // Every rank must run the same configuration: a mismatch stops them all, each with one line.
  await replicas.agree("the flags", await hashBytes(new TextEncoder().encode(JSON.stringify(cfg))));
  await Deno.mkdir(cfg.out, { recursive: true });
  const data = await openRunDataset(cfg);
  const from = await resumeSource(cfg);
  seedInit(cfg.seed);
  const { model, args: modelArgs } = buildModel(cfg, data.numClasses);
  if (cfg.syncBn && syncBatchNorm(model, null) === 0) {
    throw new Error(`--sync-bn: model ${cfg.model} has no BatchNorm layer to synchronise`);
  }
  const ema = cfg.modelEma
    ? new ModelEma(model, buildModel(cfg, data.numClasses).model, cfg.modelEmaDecay)
    : null;
  const named = [...model.namedParameters()].map(([k, p]) => [k, p.tensor] as [string, Tensor]);
  const optimizer = new AdamW(decayGroups(named, cfg.weightDecay), { lr: cfg.lr });
  let state = freshState(cfg, modelArgs);
  let resumeMasks: Weights | null = null;
  if (from) {
    const r = await resumeFrom(from, { cfg, model, modelArgs, ema, optimizer });
    if (r.state) state = r.state;
    resumeMasks = r.masks;
  }
  // The same weights everywhere (rank 0's), proved by checksum; the EMA likewise.
  await replicas.syncModel(model);
  if (ema) await replicas.syncModel(ema.module);
  return {
    cfg,
    data,
    model,
    ema,
    optimizer,
    state,
    replicas,
    resumeMasks,
    microPerEpoch: 0,
    lrAt: () => cfg.lr,
    sparse: null,
    commLog: replicas.world > 1
      ? new CommLog(replicas.isMain ? `${cfg.out}/comm.csv` : null)
      : null,
    lastDir: `${cfg.out}/checkpoint-last`,
    bestDir: `${cfg.out}/checkpoint-best`,
  };
}

/**
 * The schedule, the sparsity (after the weights are final, so SNIP scores
 * them) and then the kernel plans (after the sparsity, so that the sparse
 * kernels that will run are the ones planned).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * console.log(run.microPerEpoch > 0); // true
 * ```
 */
export async function setupTraining(run: TrainRun): Promise<void> {
  const { cfg, data, replicas, state } = run;
  const { rank, world } = replicas;
  const shard = world > 1 ? { rank, world } : undefined;
  run.microPerEpoch = data.batchesPerEpoch("train", cfg.batchSize, true, shard);
  if (run.microPerEpoch < cfg.updateFreq) {
    const ranks = world > 1 ? ` × ${world} ranks` : "";
    throw new Error(
      `--batch-size ${cfg.batchSize} × --update-freq ${cfg.updateFreq}${ranks} exceeds the ${data.trainSize} training images`,
    );
  }
  const stepsPerEpoch = Math.floor(run.microPerEpoch / cfg.updateFreq);
  const saved = state.ranks ?? { world: 1, batchSize: cfg.batchSize };
  if (saved.world !== world && state.step > 0) {
    // Resumed under another number of ranks: carry the position over in images.
    const to = { world, batchSize: cfg.batchSize, updateFreq: cfg.updateFreq, stepsPerEpoch };
    Object.assign(state, rescaleProgress({ ...saved, ...state }, to));
    if (replicas.isMain) {
      console.error(
        `resumed a run of ${saved.world} rank(s) on ${world}: the global batch is now ` +
          `${cfg.batchSize} × ${cfg.updateFreq} × ${world} = ${
            cfg.batchSize * cfg.updateFreq * world
          }; ` +
          `continuing at step ${state.step}, micro-batch ${state.batchInEpoch} of epoch ${
            state.epoch + 1
          }`,
      );
    }
  }
  if (world > 1) state.ranks = { world, batchSize: cfg.batchSize };
  else delete state.ranks;
  run.lrAt = cosineSchedule({
    base: cfg.lr,
    final: cfg.minLr,
    epochs: cfg.epochs,
    stepsPerEpoch,
    warmupEpochs: cfg.warmupEpochs,
    warmupSteps: cfg.warmupSteps,
  });
  if (cfg.sparse) {
    const total = stepsPerEpoch * cfg.epochs;
    run.sparse = await setupSparse(
      cfg,
      run.model,
      data,
      total,
      run.resumeMasks,
      run.state.step,
      replicas,
    );
  }
  await planKernels(run.model, cfg, run.state);
  // After the plans: planning runs a training step on each rank alone, which must not reduce.
  if (cfg.syncBn && replicas.statsReducer) syncBatchNorm(run.model, replicas.statsReducer());
}

/** The run's dataset: the configured folder, or the procedural set with the configured sizes. */
function openRunDataset(cfg: TrainConfig): Promise<Dataset> {
  return openDataset({
    data: cfg.data,
    inputSize: cfg.inputSize,
    seed: cfg.seed,
    trainSize: cfg.trainSize,
    valSize: cfg.valSize,
    numClasses: cfg.numClasses,
    distractors: cfg.distractors,
    keyColours: cfg.keyColours,
    strictData: cfg.strictData,
  });
}

/** The state of a run that has not taken a step. */
function freshState(cfg: TrainConfig, modelArgs: Record<string, unknown>): TrainState {
  return {
    version: 1,
    model: cfg.model,
    modelArgs,
    epoch: 0,
    batchInEpoch: 0,
    step: 0,
    bestTop1: -1,
    partial: { lossSum: 0, samples: 0 },
    config: { ...cfg },
    history: [],
    optimizerStep: 0,
    savedAt: "",
  };
}
