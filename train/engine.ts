/**
 * The training engine, in the shape of timm's `engine.py`: one epoch of
 * training ({@linkcode trainOneEpoch}) and one pass of evaluation
 * ({@linkcode evaluate}), each reading what it needs from the
 * {@linkcode TrainRun} that `setup.ts` built.
 *
 * The GPU is read back only at log points (every `logEvery` micro-batches and
 * at the end of an epoch): the loss is accumulated on the GPU in between.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * import { evaluate, trainOneEpoch } from "./engine.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * // train() in trainer.ts drives these; see there.
 * const epoch = await trainOneEpoch(run, 0, () => false);
 * const val = await evaluate(run.model, run.data, run.cfg.batchSize, run.cfg.seed);
 * console.log(epoch, val.top1);
 * ```
 * @module
 */
import { accumulate, backward, noGrad } from "../ops/autograd.ts";
import { scale } from "../ops/elementwise.ts";
import { gpu } from "../ops/gpu.ts";
import { accuracyCounts, softmaxCrossEntropy } from "../ops/loss.ts";
import { keep, mixSeeds, Rng, scope, Tensor } from "../ops/tensor.ts";
import { setForwardSeed } from "../models/layers.ts";
import type { Classifier } from "../models/module.ts";
import type { Batch, Dataset } from "./data/types.ts";
import { mixupBatch } from "./data/mixup.ts";
import type { GradientSync, Replicas } from "./parallel.ts";
import { ProgressBar } from "./progress.ts";
import type { TrainRun } from "./setup.ts";
import { agreeOnMasks, logSparseUpdate } from "./sparse_setup.ts";

/**
 * Thrown (and reported on one line) when the loss stops being finite.
 *
 * @example
 * ```ts
 * import { NonFiniteLossError } from "./engine.ts";
 * const e = new NonFiniteLossError("loss is NaN at step 12 (try a lower --lr)");
 * console.log(e.name, e instanceof Error); // NonFiniteLossError true
 * ```
 */
export class NonFiniteLossError extends Error {
  override name = "NonFiniteLossError";
}

/** Mean loss and top-1/top-5 accuracy (%) of an evaluation. */
export interface EvalResult {
  loss: number;
  top1: number;
  top5: number;
}

/**
 * Top-1/top-5 accuracy (%) and mean loss of `model` on the validation split;
 * with `replicas`, each rank evaluates its shard (not padded, so no image
 * counts twice) and the counts of every rank are summed.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { openDataset } from "./data/mod.ts";
 * import { evaluate } from "./engine.ts";
 * await initGpu();
 * const data = await openDataset({ inputSize: 32, seed: 0, trainSize: 8, valSize: 4 });
 * const { model } = buildModel({ ...presetConfig("cpu"), inputSize: 32 }, data.numClasses);
 * console.log((await evaluate(model, data, 4, 0)).top1); // a percentage
 * ```
 */
export async function evaluate(
  model: Classifier,
  data: Dataset,
  batchSize: number,
  seed: number,
  replicas?: Replicas,
): Promise<EvalResult> {
  model.eval();
  const ks = [1, Math.min(5, data.numClasses)];
  const totals = keep(Tensor.zeros([3])); // loss·n, top1, top5
  let n = 0;
  try {
    const opts = { batchSize, epoch: 0, seed, train: false };
    for await (const b of data.batches("val", replicas ? withShard(opts, replicas) : opts)) {
      const rows = b.labels.length;
      n += rows;
      noGrad(() =>
        scope(() => {
          const x = Tensor.from(b.x, [rows, 3, data.imageSize, data.imageSize]);
          const logits = model.forward(x);
          const loss = scale(softmaxCrossEntropy(logits, b.labels), rows);
          const acc = accuracyCounts(logits, b.labels, ks);
          // [loss·rows, top1, top5] gathered into one small tensor, summed on the GPU.
          accumulate(totals, concat3(loss, acc));
        })
      );
      gpu().flush();
    }
    const local = Float64Array.from([...(await totals.read()), n]);
    const [lossSum, c1, c5, count] = replicas ? await replicas.sum(local) : local;
    const m = Math.max(count, 1);
    return { loss: lossSum / m, top1: (100 * c1) / m, top5: (100 * c5) / m };
  } finally {
    totals.dispose();
  }
}

function concat3(loss: Tensor, acc: Tensor): Tensor {
  const out = Tensor.zeros([3]);
  const enc = gpu().encoderForCopy();
  enc.copyBufferToBuffer(loss.buffer, 0, out.buffer, 0, 4);
  enc.copyBufferToBuffer(acc.buffer, 0, out.buffer, 4, 8);
  return out;
}

/** What one epoch of training did (or, when `interrupted`, did before it stopped). */
export interface EpochTotals {
  /** Sum of loss·rows over the micro-batches read back, and their rows. */
  lossSum: number;
  samples: number;
  /** Images trained on in this process (not counting a resumed epoch's earlier part). */
  images: number;
  seconds: number;
  /** Stopped at an optimiser-step boundary on request; `run.state` says where. */
  interrupted: boolean;
}

/**
 * Train one epoch, or its rest when the run resumes inside it. `stop` is
 * polled after every micro-batch; the epoch then ends at the next optimiser
 * step boundary (accumulated gradients are not saved), with `run.state`
 * (`batchInEpoch`, `partial`) saying where, ready for a checkpoint.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel, setupTraining } from "./setup.ts";
 * import { trainOneEpoch } from "./engine.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * await setupTraining(run);
 * const totals = await trainOneEpoch(run, run.state.epoch, () => false);
 * console.log(totals);
 * ```
 */
export async function trainOneEpoch(
  run: TrainRun,
  epoch: number,
  stop: () => boolean,
): Promise<EpochTotals> {
  const { cfg, data, state, replicas } = run;
  run.model.train();
  const skip = state.batchInEpoch;
  // Under data parallelism the partial sums of a resumed epoch are every rank's: rank 0 holds them.
  const partial = replicas.isMain ? state.partial : { lossSum: 0, samples: 0 };
  const totals = { lossSum: partial.lossSum, samples: partial.samples, images: 0 };
  let counted = totals.samples;
  const acc = keep(Tensor.zeros([1]));
  const label = `epoch ${epoch + 1}/${cfg.epochs}`;
  const bar = replicas.isMain ? new ProgressBar(label, run.microPerEpoch, skip) : null;
  const started = performance.now();
  let stepStarted = started;
  const params = run.model.parameters();
  let micro = skip;
  const opts = { batchSize: cfg.batchSize, epoch, seed: cfg.seed, train: true, startBatch: skip };
  const finish = async (interrupted: boolean): Promise<EpochTotals> => {
    const [lossSum, samples, images] = await replicas.sum(
      Float64Array.from([totals.lossSum, counted, totals.images]),
    );
    await run.commLog?.write();
    return { lossSum, samples, images, seconds: seconds(started), interrupted };
  };
  try {
    for await (const batch of data.batches("train", withShard(opts, replicas))) {
      const lastOfStep = (micro + 1) % cfg.updateFreq === 0;
      const sync = lastOfStep ? replicas.gradientSync(params) : null;
      runMicroStep(run, batch, epoch * run.microPerEpoch + micro, acc, sync);
      micro++;
      totals.samples += batch.labels.length;
      totals.images += batch.labels.length;
      if (lastOfStep) {
        await optimiserStep(run, sync);
        const now = performance.now();
        for (const c of replicas.takeCommSteps?.() ?? []) {
          run.commLog?.add(state.step, c, now - stepStarted);
        }
        stepStarted = now;
      }
      gpu().flush();
      // Every rank stops at the same step boundary: a stop asked on any rank counts for all.
      const atStep = micro % cfg.updateFreq === 0;
      const stopping = replicas.world > 1 && atStep
        ? (await replicas.sum(Float64Array.of(stop() ? 1 : 0)))[0] > 0
        : stop();
      if (micro % cfg.logEvery === 0 || micro === run.microPerEpoch || stopping) {
        totals.lossSum += await readLoss(acc, epoch, run);
        counted = totals.samples;
        const loss = (totals.lossSum / Math.max(counted, 1)).toFixed(4);
        const comm = run.commLog ? ` comm ${(100 * run.commLog.share()).toFixed(0)}%` : "";
        const text = `loss ${loss} lr ${run.optimizer.lr.toExponential(2)}${comm}`;
        // Every rank trains as many images as rank 0: the global rate is world × its own.
        bar?.update(micro, { images: totals.images * replicas.world, text });
        await run.commLog?.write();
      }
      if (stopping && atStep) {
        const done = await finish(true);
        state.batchInEpoch = micro;
        state.partial = { lossSum: done.lossSum, samples: done.samples };
        return done;
      }
    }
  } finally {
    acc.dispose();
  }
  bar?.done();
  if (run.commLog && replicas.isMain) console.error(run.commLog.describe());
  return await finish(false);
}

function seconds(since: number): number {
  return (performance.now() - since) / 1000;
}

/** The batch options of this rank: a shard of each epoch's order when there are several. */
function withShard<T extends object>(opts: T, replicas: Replicas): T {
  return replicas.world > 1
    ? { ...opts, shard: { rank: replicas.rank, world: replicas.world } }
    : opts;
}

/** Read back and clear the loss accumulated since the last log point; it must be finite. */
async function readLoss(acc: Tensor, epoch: number, run: TrainRun): Promise<number> {
  const v = (await acc.read())[0];
  if (!Number.isFinite(v)) {
    throw new NonFiniteLossError(
      `loss became ${v} at epoch ${epoch + 1}, step ${run.state.step}: stopping; ` +
        `the last good checkpoint is in ${run.lastDir}`,
    );
  }
  gpu().encoderForCopy().clearBuffer(acc.buffer, 0, 4);
  return v;
}

/**
 * Forward, loss and backward of one micro-batch (`global`: its index in the
 * whole run, which seeds its random draws); the loss·rows is added into `acc`
 * on the GPU. With `sync`, every gradient is handed over as soon as it is final.
 */
function runMicroStep(
  run: TrainRun,
  batch: Batch,
  global: number,
  acc: Tensor,
  sync: GradientSync | null,
): void {
  const { cfg, data, replicas } = run;
  const rows = batch.labels.length;
  const smoothing = cfg.mixup > 0 || cfg.cutmix > 0 ? 0 : cfg.labelSmoothing;
  // Each rank draws its own drop-path masks and Mixup/CutMix (one process: the same draws as ever).
  const rank = replicas.world > 1 ? [replicas.rank] : [];
  setForwardSeed(mixSeeds(cfg.seed, global, 1, ...rank));
  scope(() => {
    let x: Float32Array = batch.x;
    let target: Int32Array | Tensor = batch.labels;
    if (cfg.mixup > 0 || cfg.cutmix > 0) {
      const mixed = mixupBatch(batch, {
        mixup: cfg.mixup,
        cutmix: cfg.cutmix,
        labelSmoothing: cfg.labelSmoothing,
        numClasses: data.numClasses,
      }, new Rng(mixSeeds(cfg.seed, global, 2, ...rank)));
      x = mixed.x;
      target = Tensor.from(mixed.targets, [rows, data.numClasses]);
    }
    const input = Tensor.from(x, [rows, 3, data.imageSize, data.imageSize]);
    const loss = softmaxCrossEntropy(run.model.forward(input), target, {
      labelSmoothing: smoothing,
    });
    // The gradient sum starts bucket by bucket while the backward pass is still being recorded.
    backward(
      scale(loss, 1 / cfg.updateFreq),
      sync ? { onGradReady: (p) => sync.onGradReady(p) } : undefined,
    );
    noGrad(() => accumulate(acc, scale(loss, rows)));
  });
}

/**
 * One optimiser step at the scheduled learning rate, then the masks (and,
 * on update steps, prune-and-grow, which sees this step's gradients as the
 * official does), the EMA, and the step count.
 */
async function optimiserStep(run: TrainRun, sync: GradientSync | null): Promise<void> {
  const { optimizer, sparse, ema, state } = run;
  await sync?.finish();
  optimizer.lr = run.lrAt(state.step);
  optimizer.step();
  if (sparse) {
    sparse.afterStep(optimizer);
    if (sparse.isUpdateStep(state.step + 1)) {
      const report = await sparse.update(state.step + 1, optimizer);
      await agreeOnMasks(
        run.replicas,
        sparse,
        `the masks after the update of step ${state.step + 1}`,
      );
      if (run.replicas.isMain) await logSparseUpdate(run.cfg.out, report);
    }
  }
  optimizer.zeroGrad();
  ema?.update(run.model);
  if (sparse && ema) sparse.masking.applyTo(ema.module);
  state.step++;
}
