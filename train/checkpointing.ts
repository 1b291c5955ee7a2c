/**
 * What a run writes: the checkpoint of its current state, and at the end of
 * each epoch the evaluation, the CSV log, the curves and the `last`/`best`
 * checkpoints. Only the main rank writes; every file is replaced atomically.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * import { trainOneEpoch } from "./engine.ts";
 * import { finishEpoch, saveRun } from "./checkpointing.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * // train() in trainer.ts calls these; see there.
 * await saveRun(run, run.lastDir);
 * const totals = await trainOneEpoch(run, 0, () => false);
 * const row = await finishEpoch(run, 0, totals);
 * console.log(row.epoch, row.top1);
 * ```
 * @module
 */
import { toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { gpu } from "../ops/gpu.ts";
import { moduleWeights, saveCheckpoint } from "./checkpoint.ts";
import type { Classifier } from "../models/module.ts";
import { plotCurves } from "./curves.ts";
import { type EpochTotals, evaluate } from "./engine.ts";
import type { TrainRun } from "./setup.ts";
import { maskWeights } from "./sparse_setup.ts";

/** One row of the CSV log. */
export type EpochRow = Record<string, number>;

/**
 * Save the run as it stands into the checkpoint folder `dir` (main rank only).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * import { saveRun } from "./checkpointing.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * await saveRun(run, run.lastDir);
 * console.log((await Deno.stat(`${run.lastDir}/state.json`)).isFile); // true
 * ```
 */
export async function saveRun(run: TrainRun, dir: string): Promise<void> {
  const { state, optimizer, sparse, ema } = run;
  if (!run.replicas.isMain) return;
  state.savedAt = new Date().toISOString();
  state.optimizerStep = optimizer.stepCount;
  if (sparse) {
    state.sparse = {
      densities: Object.fromEntries(sparse.densities()),
      overallDensity: sparse.masking.overallDensity(),
    };
  }
  const parts = {
    state,
    model: await moduleWeights(run.model),
    ema: ema ? await moduleWeights(ema.module) : null,
    optimizer: await optimizer.stateDict(),
    masks: sparse ? maskWeights(sparse) : null,
  };
  // Values read from a failing or lost device never replace the last good checkpoint.
  await gpu().checkErrors();
  await saveCheckpoint(dir, parts);
}

/**
 * Close epoch `epoch`: evaluate the model (and its EMA), add the row to the
 * history, print it, write the log and curves, and save `checkpoint-last`
 * (and `checkpoint-best` when either top-1 improved). Returns the row.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * import { trainOneEpoch } from "./engine.ts";
 * import { finishEpoch } from "./checkpointing.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * const epoch = 0;
 * const stop = () => false;
 * const row = await finishEpoch(run, epoch, await trainOneEpoch(run, epoch, stop));
 * console.log(row);
 * ```
 */
export async function finishEpoch(
  run: TrainRun,
  epoch: number,
  totals: EpochTotals,
): Promise<EpochRow> {
  const { cfg, data, state, ema, replicas } = run;
  const val = await evaluate(run.model, data, cfg.batchSize, cfg.seed, replicas);
  const row: EpochRow = {
    epoch: epoch + 1,
    step: state.step,
    lr: run.optimizer.lr,
    train_loss: totals.lossSum / Math.max(totals.samples, 1),
    val_loss: val.loss,
    top1: val.top1,
    top5: val.top5,
  };
  if (ema) {
    const e = await evaluate(ema.module as Classifier, data, cfg.batchSize, cfg.seed, replicas);
    row.ema_top1 = e.top1;
    row.ema_top5 = e.top5;
  }
  row.images_per_s = totals.images / Math.max(totals.seconds, 1e-9);
  row.seconds = totals.seconds;
  state.history.push(row);
  state.epoch = epoch + 1;
  state.batchInEpoch = 0;
  state.partial = { lossSum: 0, samples: 0 };
  if (replicas.isMain) console.log(describeEpoch(row, !!ema));
  const best = Math.max(val.top1, row.ema_top1 ?? -1);
  const isBest = best > state.bestTop1;
  if (isBest) state.bestTop1 = best;
  if (replicas.isMain) {
    await writeFileAtomic(`${cfg.out}/log.csv`, new TextEncoder().encode(toCsv(state.history)));
    await plotCurves(state.history, `${cfg.out}/curves.png`, `${cfg.model} on ${data.name}`);
  }
  await saveRun(run, run.lastDir);
  if (isBest) await saveRun(run, run.bestDir);
  return row;
}

/** The line printed after each epoch. */
function describeEpoch(row: EpochRow, withEma: boolean): string {
  return `epoch ${row.epoch}: train loss ${row.train_loss.toFixed(4)}, val loss ${
    row.val_loss.toFixed(4)
  }, top-1 ${row.top1.toFixed(2)}%, top-5 ${row.top5.toFixed(2)}%` +
    (withEma ? `, EMA top-1 ${row.ema_top1.toFixed(2)}%` : "") +
    `, ${row.images_per_s.toFixed(1)} img/s`;
}
