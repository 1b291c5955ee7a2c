/**
 * The kernels a run computes with: on a GPU, timed per layer shape before
 * training as `cudnn.benchmark` does, and kept in checkpoints so that a
 * resumed run computes with the same kernels, bit for bit.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { tuneKernels } from "./kernel_plans.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), batchSize: 2, inputSize: 32 };
 * console.log((await tuneKernels(buildModel(cfg, 4).model, cfg)).depthwise.length); // 0 on llvmpipe
 * ```
 * @module
 */
import { backward } from "../ops/autograd.ts";
import { depthwisePlan, setTunedPlan, tuneDepthwiseOf } from "../ops/depthwise_fast.ts";
import {
  describeGemmTuning,
  gemmPlans,
  type GemmTuned,
  setGemmPlans,
  tuneGemm,
} from "../ops/gemm.ts";
import { gpu } from "../ops/gpu.ts";
import { softmaxCrossEntropy } from "../ops/loss.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import type { KernelPlan, TrainState } from "./checkpoint.ts";
import type { Classifier, TrainConfig } from "./config.ts";

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
 * import { tuneKernels } from "./kernel_plans.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), batchSize: 2, inputSize: 32 };
 * console.log((await tuneKernels(buildModel(cfg, 4).model, cfg)).gemm.length); // 0 on llvmpipe
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
 * `model` on random images of `input` shape (`tuneGemm`): in eval
 * mode, so that no BatchNorm statistic or random stream moves, and with the
 * gradients dropped afterwards; the model is left in train mode. Returns the
 * tuned products (none on llvmpipe, whose candidates are the heuristic's alone).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { tuneModelGemm } from "./kernel_plans.ts";
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

/**
 * Choose the run's kernels: a resumed run keeps the plans it was tuned with
 * (another timing could pick other kernels, whose rounding differs, and the
 * run would no longer continue bit for bit); a new one tunes and records its
 * plans in `state`. Does nothing with `--no-tune-kernels`.
 *
 * @example
 * ```ts ignore
 * // Called by the training setup once the model (and its sparsity) is ready.
 * await planKernels(model, cfg, state);
 * ```
 */
export async function planKernels(
  model: Classifier,
  cfg: TrainConfig,
  state: TrainState,
): Promise<void> {
  if (cfg.tuneKernels === false) return;
  if (state.kernelPlans || state.gemmPlans) {
    for (const k of state.kernelPlans ?? []) setTunedPlan(k.shape, k.plan);
    setGemmPlans(state.gemmPlans ?? []);
    return;
  }
  const plans = await tuneKernels(model, cfg);
  if (plans.depthwise.length) state.kernelPlans = plans.depthwise;
  if (plans.gemm.length) state.gemmPlans = plans.gemm;
}
