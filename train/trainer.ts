/**
 * The training run behind `deno task train`, after the official
 * ConvNeXt/SLaK `main.py`: set up ({@link ./setup.ts}), then for each epoch
 * train ({@link ./engine.ts}), evaluate and checkpoint
 * ({@link ./checkpointing.ts}). AdamW with a per-step warm-up + cosine
 * schedule, gradient accumulation, Mixup/CutMix with label smoothing, drop
 * path, LayerScale, model EMA, top-1/top-5 evaluation each epoch, a CSV log,
 * PNG learning curves, and checkpoints that resume bit-for-bit. With
 * `sparse`, SLaK's dynamic sparsity: masks applied after every optimiser
 * step, prune-and-grow every `updateFrequency` steps (each layer's density
 * logged to `sparsity.csv`), masks saved in checkpoints.
 *
 * @example
 * ```ts
 * import { train } from "./trainer.ts";
 * import { defaultConfig } from "./config.ts";
 * await train({ ...defaultConfig(true), epochs: 1, out: "out/demo" });
 * ```
 * @module
 */
import type { TrainConfig } from "./config.ts";
import type { Classifier } from "../models/module.ts";
import { type EpochRow, finishEpoch, saveRun } from "./checkpointing.ts";
import { evaluate, trainOneEpoch } from "./engine.ts";
import { claimOutFolder } from "./out_lock.ts";
import { type Replicas, singleProcess } from "./parallel.ts";
import { setupModel, setupTraining, type TrainRun } from "./setup.ts";

export { evaluate, NonFiniteLossError } from "./engine.ts";
export type { EpochRow } from "./checkpointing.ts";
export { planKernels, planTrainingKernels } from "./kernel_plans.ts";

/** What {@linkcode train} returns: the per-epoch rows and where outputs went. */
export interface TrainResult {
  history: EpochRow[];
  out: string;
  interrupted: boolean;
}

/** Ways for a program (not only Ctrl-C) to steer a run. */
export interface TrainHooks {
  /**
   * Aborting stops the run as Ctrl-C does: at the next optimiser-step
   * boundary a checkpoint is saved and `train` returns with `interrupted`.
   */
  signal?: AbortSignal;
  /** Called after each epoch's evaluation and checkpoint. */
  onEpochEnd?: (row: EpochRow) => void;
  /** The processes training together (data parallelism); one process by default. */
  replicas?: Replicas;
}

/**
 * Train (or with `evalOnly`, evaluate) as configured; see {@linkcode TrainConfig}.
 *
 * @example
 * ```ts
 * import { train } from "./trainer.ts";
 * import { presetConfig } from "./config.ts";
 * const { history } = await train({ ...presetConfig("cpu"), epochs: 1, out: "out/demo" });
 * console.log(history[0].top1);
 * ```
 */
export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  const replicas = hooks.replicas ?? singleProcess();
  // Checks that the ranks agree on the flags (a mismatch stops them before any file is written)
  // and builds the model; it writes no file.
  const run = await setupModel(cfg, replicas);
  if (cfg.evalOnly) {
    await evaluateOnly(run);
    return { history: run.state.history, out: cfg.out, interrupted: false };
  }
  // One training command per --out; rank 0 holds it for all ranks.
  const release = replicas.isMain ? await claimOutFolder(cfg.out, OUT_FOLDER_LOCK) : null;
  try {
    return await trainRun(run, hooks);
  } finally {
    await release?.();
  }
}

/** The lock of a training run's output folder (see {@linkcode claimOutFolder}). */
export const OUT_FOLDER_LOCK = { lock: "train.lock", what: "training run" } as const;

/** {@linkcode train} once the model is built and the output folder is this run's. */
async function trainRun(run: TrainRun, hooks: TrainHooks): Promise<TrainResult> {
  const cfg = run.cfg;
  await setupTraining(run);
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) Deno.exit(130);
    interrupted = true;
    console.error(
      "\ninterrupt: saving a checkpoint at the end of this batch (Ctrl-C again to quit at once)",
    );
  };
  const stop = () => interrupted || !!hooks.signal?.aborted;
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    for (let epoch = run.state.epoch; epoch < cfg.epochs; epoch++) {
      const totals = await trainOneEpoch(run, epoch, stop);
      if (totals.interrupted) {
        await saveInterrupted(run, epoch);
        return { history: run.state.history, out: cfg.out, interrupted: true };
      }
      const row = await finishEpoch(run, epoch, totals);
      hooks.onEpochEnd?.(row);
      if (hooks.signal?.aborted && epoch + 1 < cfg.epochs) {
        return { history: run.state.history, out: cfg.out, interrupted: true };
      }
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  return { history: run.state.history, out: cfg.out, interrupted: false };
}

/** Save `checkpoint-last` after a stop inside an epoch and say how to resume. */
async function saveInterrupted(run: TrainRun, epoch: number): Promise<void> {
  await saveRun(run, run.lastDir);
  if (!run.replicas.isMain) return;
  console.error(
    `saved ${run.lastDir} (epoch ${
      epoch + 1
    }, batch ${run.state.batchInEpoch}/${run.microPerEpoch}); ` +
      `resume with --resume ${run.lastDir}`,
  );
}

/** `--eval-only`: print the model's (and the EMA's) validation accuracy. */
async function evaluateOnly(run: TrainRun): Promise<void> {
  const { cfg, data, ema, replicas } = run;
  const r = await evaluate(run.model, data, cfg.batchSize, cfg.seed, replicas);
  if (!replicas.isMain) return;
  console.log(
    `eval ${cfg.model} on ${data.name} (${data.valSize} images): top-1 ${
      r.top1.toFixed(2)
    }% top-5 ${r.top5.toFixed(2)}% loss ${r.loss.toFixed(4)}`,
  );
  if (ema) {
    const e = await evaluate(ema.module as Classifier, data, cfg.batchSize, cfg.seed, replicas);
    console.log(`eval EMA: top-1 ${e.top1.toFixed(2)}% top-5 ${e.top5.toFixed(2)}%`);
  }
}
