/**
 * The training loop behind `deno task train`, after the official
 * ConvNeXt/SLaK `main.py` + `engine.py`: AdamW with a per-step warm-up +
 * cosine schedule, gradient accumulation, Mixup/CutMix with label
 * smoothing, drop path, LayerScale, model EMA, top-1/top-5 evaluation each
 * epoch, a CSV log, PNG learning curves, and checkpoints that resume
 * bit-for-bit. With `sparse`, SLaK's dynamic sparsity: masks applied after
 * every optimiser step, prune-and-grow every `updateFrequency` steps (each
 * layer's density logged to `sparsity.csv`), masks saved in checkpoints.
 *
 * The GPU is read back only at log points (every `logEvery` steps and at the
 * end of an epoch): the loss is accumulated on the GPU in between.
 *
 * @example
 * ```ts ignore
 * import { train } from "./trainer.ts";
 * import { defaultConfig } from "./config.ts";
 * await train({ ...defaultConfig(true), epochs: 1, out: "out/demo" });
 * ```
 * @module
 */
import { accumulate, backward, noGrad } from "../ops/autograd.ts";
import { depthwisePlan, setTunedPlan, tuneDepthwiseOf } from "../ops/depthwise_fast.ts";
import {
  describeGemmTuning,
  gemmPlans,
  type GemmTuned,
  setGemmPlans,
  tuneGemm,
} from "../ops/gemm.ts";
import { gpu } from "../ops/gpu.ts";
import { accuracyCounts, softmaxCrossEntropy } from "../ops/loss.ts";
import { AdamW, decayGroups } from "../ops/optim.ts";
import { keep, Rng, scope, Tensor } from "../ops/tensor.ts";
import { scale } from "../ops/elementwise.ts";
import { setForwardSeed } from "../models/layers.ts";
import { seedInit } from "../models/module.ts";
import type { Module } from "../models/module.ts";
import type { Value } from "../models/layers.ts";
import { toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { firstTrainingBatch, openDataset } from "./data/mod.ts";
import type { Batch, Dataset } from "./data/types.ts";
import { mixupBatch } from "./data/mixup.ts";
import {
  checkpointExists,
  type KernelPlan,
  loadCheckpoint,
  moduleWeights,
  saveCheckpoint,
  type TrainState,
} from "./checkpoint.ts";
import { ModelEma } from "./ema.ts";
import { ProgressBar } from "./progress.ts";
import { cosineSchedule } from "./schedule.ts";
import { buildModel, type TrainConfig } from "./config.ts";
import { plotCurves } from "./curves.ts";
import { loadWeightsFile } from "./weights.ts";
import { DynamicSparsity, type UpdateReport } from "../sparse/prune_grow.ts";
import type { Weights } from "../models/safetensors.ts";

/** A model the trainer can drive. */
export type Classifier = Module & { forward<V extends Value>(x: V): V };

/** Thrown (and reported on one line) when the loss stops being finite. */
export class NonFiniteLossError extends Error {
  override name = "NonFiniteLossError";
}

/** One row of the CSV log. */
export type EpochRow = Record<string, number>;

/** What {@linkcode train} returns: the per-epoch rows and where outputs went. */
export interface TrainResult {
  history: EpochRow[];
  out: string;
  interrupted: boolean;
}

/** A 32-bit mix of integers (seeds derived from the run seed and a step). */
export function mixSeed(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h >>> 0;
}

interface EvalResult {
  loss: number;
  top1: number;
  top5: number;
}

/** Top-1/top-5 accuracy (%) and mean loss of `model` on the validation split. */
export async function evaluate(
  model: Classifier,
  data: Dataset,
  batchSize: number,
  seed: number,
): Promise<EvalResult> {
  model.eval();
  const ks = [1, Math.min(5, data.numClasses)];
  const totals = keep(Tensor.zeros([3])); // loss·n, top1, top5
  let n = 0;
  try {
    for await (const b of data.batches("val", { batchSize, epoch: 0, seed, train: false })) {
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
    const [lossSum, c1, c5] = await totals.read();
    return {
      loss: lossSum / Math.max(n, 1),
      top1: (100 * c1) / Math.max(n, 1),
      top5: (100 * c5) / Math.max(n, 1),
    };
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

/** Ways for a program (not only Ctrl-C) to steer a run. */
export interface TrainHooks {
  /**
   * Aborting stops the run as Ctrl-C does: at the next optimiser-step
   * boundary a checkpoint is saved and `train` returns with `interrupted`.
   */
  signal?: AbortSignal;
  /** Called after each epoch's evaluation and checkpoint. */
  onEpochEnd?: (row: EpochRow) => void;
}

/**
 * On a GPU, time the depthwise tilings of every stride-1 depthwise shape that
 * a training micro-batch runs (one forward of random images collects them)
 * and keep the fastest per shape (`tuneDepthwise`), as `cudnn.benchmark`
 * does; then tune the tiles of every matrix product of a forward and backward
 * pass (`tuneGemm`: a few passes on random images in eval mode, so that no
 * BatchNorm statistic or random stream moves; the gradients are dropped).
 * Returns the plans for the checkpoint; none on llvmpipe.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { tuneKernels } from "./trainer.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), batchSize: 2, inputSize: 32 };
 * console.log((await tuneKernels(buildModel(cfg, 4).model, cfg)).depthwise.length); // 0 on llvmpipe
 * ```
 */
export async function tuneKernels(
  model: Classifier,
  cfg: TrainConfig,
): Promise<{ depthwise: KernelPlan[]; gemm: ReturnType<typeof gemmPlans> }> {
  if (gpu().isFallback) return { depthwise: [], gemm: [] };
  const t0 = performance.now();
  const input = [cfg.batchSize, 3, cfg.inputSize, cfg.inputSize];
  const shapes = await tuneDepthwiseOf((x) => model.forward(x), input, { maxCandidates: 3 });
  const depthwise: KernelPlan[] = [];
  for (const shape of shapes) {
    const plan = depthwisePlan(shape, 1);
    if (plan) depthwise.push({ shape, plan });
  }
  const t1 = performance.now();
  const tuned = await tuneModelGemm(model, input);
  console.error(
    `tuned the depthwise kernels of ${shapes.length} layer shapes in ${
      ((t1 - t0) / 1e3).toFixed(1)
    } s, then ${describeGemmTuning(tuned)} in ${
      ((performance.now() - t1) / 1e3).toFixed(1)
    } s (--no-tune-kernels skips this)`,
  );
  return { depthwise, gemm: gemmPlans() };
}

/** Forward and backward passes, at most, that tune the matrix products (see `tuneGemm`). */
const TUNE_GEMM_PASSES = 12;

/**
 * Tune the tiles of every matrix product of a forward and backward pass of
 * `model` on random images of `input` shape ({@linkcode tuneGemm}): in eval
 * mode, so that no BatchNorm statistic or random stream moves, and with the
 * gradients dropped afterwards; the model is left in train mode. Returns the
 * tuned products (none on llvmpipe, whose candidates are the heuristic's alone).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { tuneModelGemm } from "./trainer.ts";
 * await initGpu();
 * const model = buildModel({ ...presetConfig("cpu") }, 4).model;
 * console.log((await tuneModelGemm(model, [2, 3, 32, 32])).length); // 0 on llvmpipe
 * ```
 */
export async function tuneModelGemm(
  model: Classifier,
  input: number[],
  rounds = TUNE_GEMM_PASSES,
): Promise<GemmTuned> {
  const x = Tensor.randn(input, { seed: 7 });
  const labels = Array.from({ length: input[0] }, () => 0);
  model.eval();
  try {
    return await tuneGemm(
      () => scope(() => backward(softmaxCrossEntropy(model.forward(x), labels))),
      { rounds },
    );
  } finally {
    x.dispose();
    for (const p of model.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
    model.train();
  }
}

/** Train (or with `evalOnly`, evaluate) as configured; see {@linkcode TrainConfig}. */
export async function train(cfg: TrainConfig, hooks: TrainHooks = {}): Promise<TrainResult> {
  await Deno.mkdir(cfg.out, { recursive: true });
  const data = await openDataset({
    data: cfg.data,
    inputSize: cfg.inputSize,
    seed: cfg.seed,
    trainSize: cfg.trainSize,
    valSize: cfg.valSize,
    numClasses: cfg.numClasses,
    distractors: cfg.distractors,
    keyColours: cfg.keyColours,
  });
  const lastDir = `${cfg.out}/checkpoint-last`;
  const bestDir = `${cfg.out}/checkpoint-best`;
  let resumeFrom = cfg.resume;
  if (!resumeFrom && cfg.autoResume && (await checkpointExists(lastDir))) resumeFrom = lastDir;

  seedInit(cfg.seed);
  const { model, args: modelArgs } = buildModel(cfg, data.numClasses);
  const ema = cfg.modelEma
    ? new ModelEma(model, buildModel(cfg, data.numClasses).model, cfg.modelEmaDecay)
    : null;
  const named = [...model.namedParameters()].map(([k, p]) => [k, p.tensor] as [string, Tensor]);
  const optimizer = new AdamW(decayGroups(named, cfg.weightDecay), { lr: cfg.lr });

  let state: TrainState = {
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

  let resumeMasks: Weights | null = null;
  if (resumeFrom) {
    if (/\.(safetensors|pth|pt)$/.test(resumeFrom)) {
      // A bare weights file: load the model only (fine-tuning or --eval-only).
      model.loadStateDict(await loadWeightsFile(resumeFrom));
    } else {
      const ck = await loadCheckpoint(resumeFrom);
      if (
        ck.state.model !== cfg.model ||
        JSON.stringify(ck.state.modelArgs) !== JSON.stringify(modelArgs)
      ) {
        throw new Error(
          `--resume: ${resumeFrom} holds a checkpoint of ${ck.state.model} ${
            JSON.stringify(ck.state.modelArgs)
          }, ` +
            `not of ${cfg.model} ${JSON.stringify(modelArgs)}`,
        );
      }
      model.loadStateDict(ck.model);
      if (ema && ck.ema) ema.module.loadStateDict(ck.ema);
      if (!cfg.evalOnly) optimizer.loadStateDict(ck.optimizer);
      state = { ...ck.state, config: { ...cfg } };
      resumeMasks = ck.masks ?? null;
      if (!cfg.evalOnly && !!resumeMasks !== !!cfg.sparse) {
        throw new Error(
          resumeMasks
            ? `--resume: ${resumeFrom} holds a sparse run (masks.safetensors): add --sparse`
            : `--resume: ${resumeFrom} holds a dense run (no masks.safetensors): cannot resume it with --sparse`,
        );
      }
      console.error(`resumed from ${resumeFrom}: epoch ${state.epoch}, step ${state.step}`);
    }
  }

  if (cfg.tuneKernels !== false && !cfg.evalOnly) {
    // A resumed run keeps the plans it was tuned with: another timing could pick other kernels,
    // whose rounding differs, and the run would no longer continue bit for bit.
    if (state.kernelPlans || state.gemmPlans) {
      for (const k of state.kernelPlans ?? []) setTunedPlan(k.shape, k.plan);
      setGemmPlans(state.gemmPlans ?? []);
    } else {
      const plans = await tuneKernels(model, cfg);
      if (plans.depthwise.length) state.kernelPlans = plans.depthwise;
      if (plans.gemm.length) state.gemmPlans = plans.gemm;
    }
  }

  if (cfg.evalOnly) {
    const r = await evaluate(model, data, cfg.batchSize, cfg.seed);
    console.log(
      `eval ${cfg.model} on ${data.name} (${data.valSize} images): top-1 ${
        r.top1.toFixed(2)
      }% top-5 ${r.top5.toFixed(2)}% loss ${r.loss.toFixed(4)}`,
    );
    if (ema) {
      const e = await evaluate(ema.module as Classifier, data, cfg.batchSize, cfg.seed);
      console.log(`eval EMA: top-1 ${e.top1.toFixed(2)}% top-5 ${e.top5.toFixed(2)}%`);
    }
    return { history: state.history, out: cfg.out, interrupted: false };
  }

  const microPerEpoch = data.batchesPerEpoch("train", cfg.batchSize, true);
  if (microPerEpoch < cfg.updateFreq) {
    throw new Error(
      `--batch-size ${cfg.batchSize} × --update-freq ${cfg.updateFreq} exceeds the ${data.trainSize} training images`,
    );
  }
  const stepsPerEpoch = Math.floor(microPerEpoch / cfg.updateFreq);
  const lrAt = cosineSchedule({
    base: cfg.lr,
    final: cfg.minLr,
    epochs: cfg.epochs,
    stepsPerEpoch,
    warmupEpochs: cfg.warmupEpochs,
    warmupSteps: cfg.warmupSteps,
  });

  const totalSteps = stepsPerEpoch * cfg.epochs;
  const sparse = cfg.sparse
    ? await setupSparse(cfg, model, data, totalSteps, resumeMasks, state.step)
    : null;

  let interrupted = false;
  const onSigint = () => {
    if (interrupted) Deno.exit(130);
    interrupted = true;
    console.error(
      "\ninterrupt: saving a checkpoint at the end of this batch (Ctrl-C again to quit at once)",
    );
  };
  Deno.addSignalListener("SIGINT", onSigint);

  const save = async (dir: string) => {
    state.savedAt = new Date().toISOString();
    state.optimizerStep = optimizer.stepCount;
    if (sparse) {
      state.sparse = {
        densities: Object.fromEntries(sparse.densities()),
        overallDensity: sparse.masking.overallDensity(),
      };
    }
    await saveCheckpoint(dir, {
      state,
      model: await moduleWeights(model),
      ema: ema ? await moduleWeights(ema.module) : null,
      optimizer: await optimizer.stateDict(),
      masks: sparse ? maskWeights(sparse) : null,
    });
  };

  const smoothing = cfg.mixup > 0 || cfg.cutmix > 0 ? 0 : cfg.labelSmoothing;
  try {
    for (let epoch = state.epoch; epoch < cfg.epochs; epoch++) {
      model.train();
      const skip = state.batchInEpoch;
      let lossSoFar = state.partial.lossSum;
      let samples = state.partial.samples;
      let readSamples = samples;
      const acc = keep(Tensor.zeros([1]));
      const bar = new ProgressBar(`epoch ${epoch + 1}/${cfg.epochs}`, microPerEpoch, skip);
      const started = performance.now();
      let images = 0;
      let micro = skip;
      const opts = {
        batchSize: cfg.batchSize,
        epoch,
        seed: cfg.seed,
        train: true,
        startBatch: skip,
      };
      for await (const batch of data.batches("train", opts)) {
        const global = epoch * microPerEpoch + micro;
        runMicroStep(model, batch, data, cfg, global, smoothing, acc);
        micro++;
        samples += batch.labels.length;
        images += batch.labels.length;
        if (micro % cfg.updateFreq === 0) {
          optimizer.lr = lrAt(state.step);
          optimizer.step();
          if (sparse) {
            sparse.afterStep(optimizer);
            // Prune-and-grow sees this step's gradients (gradient growth), as the official.
            if (sparse.isUpdateStep(state.step + 1)) {
              await logSparseUpdate(cfg.out, await sparse.update(state.step + 1, optimizer));
            }
          }
          optimizer.zeroGrad();
          ema?.update(model);
          if (sparse && ema) sparse.masking.applyTo(ema.module);
          state.step++;
        }
        gpu().flush();
        const atLog = micro % cfg.logEvery === 0 || micro === microPerEpoch;
        if (atLog || interrupted) {
          const v = (await acc.read())[0];
          if (!Number.isFinite(v)) {
            throw new NonFiniteLossError(
              `loss became ${v} at epoch ${
                epoch + 1
              }, step ${state.step}: stopping; the last good checkpoint is in ${lastDir}`,
            );
          }
          lossSoFar += v;
          readSamples = samples;
          fillZero(acc);
          bar.update(micro, {
            images,
            text: `loss ${(lossSoFar / Math.max(readSamples, 1)).toFixed(4)} lr ${
              optimizer.lr.toExponential(2)
            }`,
          });
        }
        if (hooks.signal?.aborted) interrupted = true;
        // Stop only at an optimiser-step boundary: accumulated gradients are not saved.
        if (interrupted && micro % cfg.updateFreq === 0) {
          state.batchInEpoch = micro;
          state.partial = { lossSum: lossSoFar, samples: readSamples };
          await save(lastDir);
          console.error(
            `saved ${lastDir} (epoch ${
              epoch + 1
            }, batch ${micro}/${microPerEpoch}); resume with --resume ${lastDir}`,
          );
          acc.dispose();
          return { history: state.history, out: cfg.out, interrupted: true };
        }
      }
      bar.done();
      acc.dispose();
      const seconds = (performance.now() - started) / 1000;
      const val = await evaluate(model, data, cfg.batchSize, cfg.seed);
      const row: EpochRow = {
        epoch: epoch + 1,
        step: state.step,
        lr: optimizer.lr,
        train_loss: lossSoFar / Math.max(readSamples, 1),
        val_loss: val.loss,
        top1: val.top1,
        top5: val.top5,
      };
      if (ema) {
        const e = await evaluate(ema.module as Classifier, data, cfg.batchSize, cfg.seed);
        row.ema_top1 = e.top1;
        row.ema_top5 = e.top5;
      }
      row.images_per_s = images / Math.max(seconds, 1e-9);
      row.seconds = seconds;
      state.history.push(row);
      state.epoch = epoch + 1;
      state.batchInEpoch = 0;
      state.partial = { lossSum: 0, samples: 0 };
      const best = Math.max(val.top1, row.ema_top1 ?? -1);
      console.log(
        `epoch ${epoch + 1}: train loss ${row.train_loss.toFixed(4)}, val loss ${
          val.loss.toFixed(4)
        }, ` +
          `top-1 ${val.top1.toFixed(2)}%, top-5 ${val.top5.toFixed(2)}%` +
          (ema ? `, EMA top-1 ${row.ema_top1.toFixed(2)}%` : "") +
          `, ${row.images_per_s.toFixed(1)} img/s`,
      );
      await writeFileAtomic(`${cfg.out}/log.csv`, new TextEncoder().encode(toCsv(state.history)));
      await plotCurves(state.history, `${cfg.out}/curves.png`, `${cfg.model} on ${data.name}`);
      const isBest = best > state.bestTop1;
      if (isBest) state.bestTop1 = best;
      await save(lastDir);
      if (isBest) await save(bestDir);
      hooks.onEpochEnd?.(row);
      if (hooks.signal?.aborted && epoch + 1 < cfg.epochs) {
        return { history: state.history, out: cfg.out, interrupted: true };
      }
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  return { history: state.history, out: cfg.out, interrupted: false };
}

/** Zero a one-value accumulator in recording order. */
function fillZero(t: Tensor): void {
  gpu().encoderForCopy().clearBuffer(t.buffer, 0, 4);
}

/** Forward, loss and backward of one micro-batch; the loss·rows is added into `acc` on the GPU. */
function runMicroStep(
  model: Classifier,
  batch: Batch,
  data: Dataset,
  cfg: TrainConfig,
  global: number,
  smoothing: number,
  acc: Tensor,
): void {
  const rows = batch.labels.length;
  setForwardSeed(mixSeed(cfg.seed, global, 1));
  scope(() => {
    let x: Float32Array = batch.x;
    let target: Int32Array | Tensor = batch.labels;
    if (cfg.mixup > 0 || cfg.cutmix > 0) {
      const mixed = mixupBatch(batch, {
        mixup: cfg.mixup,
        cutmix: cfg.cutmix,
        labelSmoothing: cfg.labelSmoothing,
        numClasses: data.numClasses,
      }, new Rng(mixSeed(cfg.seed, global, 2)));
      x = mixed.x;
      target = Tensor.from(mixed.targets, [rows, data.numClasses]);
    }
    const input = Tensor.from(x, [rows, 3, data.imageSize, data.imageSize]);
    const loss = softmaxCrossEntropy(model.forward(input), target, { labelSmoothing: smoothing });
    backward(scale(loss, 1 / cfg.updateFreq));
    noGrad(() => accumulate(acc, scale(loss, rows)));
  });
}

/** Masks as checkpoint weights: one 0/1 value per mask unit, under the weight's key. */
function maskWeights(sparse: DynamicSparsity): Weights {
  const out: Weights = new Map();
  for (const [key, m] of sparse.masking.masks()) {
    out.set(key, { shape: [m.length], data: Float32Array.from(m) });
  }
  return out;
}

/**
 * Build the run's masks: from the checkpoint when resuming, else by
 * `sparseInit` (SNIP scores one training batch, as the official). The
 * sparsity log is cut back to the resumed step.
 */
async function setupSparse(
  cfg: TrainConfig,
  model: Classifier,
  data: Dataset,
  totalSteps: number,
  resumeMasks: Weights | null,
  step: number,
): Promise<DynamicSparsity> {
  const opts = {
    sparsity: cfg.sparsity ?? 0.4,
    init: cfg.sparseInit ?? "snip",
    type: cfg.sparseType ?? "origin",
    onlyL: cfg.onlyL ?? false,
    pruneRate: cfg.pruneRate ?? 0.3,
    growth: cfg.growth ?? "random",
    updateFrequency: cfg.updateFrequency ?? 100,
    maskSync: cfg.maskSync ?? 1,
    fix: cfg.fix ?? false,
    totalSteps,
    seed: cfg.seed,
  } as const;
  const log = `${cfg.out}/sparsity.csv`;
  if (resumeMasks) {
    const masks = new Map([...resumeMasks].map(([k, v]) => [k, Uint8Array.from(v.data)]));
    const sparse = await DynamicSparsity.create(model, opts, [], masks);
    // Rows written after the checkpoint (a crash between saves) are dropped.
    const text = await Deno.readTextFile(log).catch(() => "");
    if (text) {
      const [head, ...rows] = text.trimEnd().split("\n");
      const kept = rows.filter((r) => Number(r.split(",")[0]) <= step);
      await writeFileAtomic(log, new TextEncoder().encode([head, ...kept].join("\n") + "\n"));
    }
    return sparse;
  }
  const batch = opts.init === "snip"
    ? await firstTrainingBatch(data, cfg.batchSize, cfg.seed)
    : null;
  setForwardSeed(mixSeed(cfg.seed, 0x5319));
  const lossFns = batch
    ? [() => {
      const b = batch;
      const x = Tensor.from(b.x, [b.labels.length, 3, data.imageSize, data.imageSize]);
      return softmaxCrossEntropy(model.forward(x), b.labels);
    }]
    : [];
  const sparse = await scope(() => DynamicSparsity.create(model, opts, lossFns));
  const d = sparse.densities();
  console.error(
    `sparse: ${d.size} masked layers (${opts.init}, ${opts.type}), overall density ${
      sparse.masking.overallDensity().toFixed(4)
    } of the masked weights`,
  );
  await Deno.remove(log).catch(() => {});
  return sparse;
}

/** Append one update's per-layer densities to `sparsity.csv` and print a summary line. */
async function logSparseUpdate(out: string, r: UpdateReport): Promise<void> {
  const path = `${out}/sparsity.csv`;
  const exists = await Deno.stat(path).then(() => true, () => false);
  const lines = exists ? [] : ["step,update,prune_rate,layer,nonzeros,units,density,removed"];
  for (const l of r.layers) {
    lines.push(
      `${r.step},${r.update},${r.pruneRate},${l.key},${l.nonzeros},${l.units},${l.density},${l.removed}`,
    );
  }
  await Deno.writeTextFile(path, lines.join("\n") + "\n", { append: true });
  const nz = r.layers.reduce((a, l) => a + l.nonzeros, 0);
  const n = r.layers.reduce((a, l) => a + l.units, 0);
  console.error(
    `\nsparse update ${r.update} (step ${r.step}): prune rate ${r.pruneRate.toFixed(4)}, ` +
      `${r.layers.length} layers, unit density ${(nz / Math.max(n, 1)).toFixed(4)}` +
      (r.synced ? ", rep masks synced" : ""),
  );
}
