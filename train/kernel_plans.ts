/**
 * Kernel plans of a training run: plan every kernel of one training
 * micro-step of the model as it will train (after sparsity is set up, so
 * the sparse kernels get plans too), with the persistent plan cache; keep the
 * plans in the checkpoint state and restore them on resume without timing
 * anything again.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { planTrainingKernels } from "./kernel_plans.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), batchSize: 2, inputSize: 32 };
 * const r = await planTrainingKernels(buildModel(cfg, 4).model, [2, 3, 32, 32], { cache: false });
 * console.log(r.planned.length); // 0 on llvmpipe: planning there only when asked (`software`)
 * ```
 * @module
 */
import { backward } from "../ops/autograd.ts";
import { gpu } from "../ops/gpu.ts";
import { softmaxCrossEntropy } from "../ops/loss.ts";
import { planCachePath, planProgress, planWithCache } from "../ops/plan_cache.ts";
import { planner, type PlanReport, type SavedPlans } from "../ops/planner.ts";
import { randomNormal } from "../ops/random.ts";
import { scope } from "../ops/tensor.ts";
import type { TrainState } from "./checkpoint.ts";
import type { TrainConfig } from "./config.ts";
import type { Classifier } from "../models/module.ts";

/** Options of {@linkcode planTrainingKernels}. */
export interface TrainingPlanOptions {
  /** Read and write the plan cache in the user's cache folder (`--no-plan-cache`: false). */
  cache?: boolean;
  /** Plan again the keys the cache already holds (`--retune`). */
  retune?: boolean;
  /** Plan on a software adapter too, with 2 candidates per key (tests). */
  software?: boolean;
  /** Plan only the keys of these ops (see `PlanOptions.ops`). */
  ops?: readonly string[];
  /** Wall ms planning may take, heaviest keys first (see `PlanOptions.budgetMs`). */
  budgetMs?: number;
  /** The cache file (default: {@linkcode planCachePath}). */
  cachePath?: string | null;
}

/** Direct-kernel candidates per depthwise key on a GPU: what start-up time allows. */
const TRAIN_MAX_CANDIDATES = 3;

/**
 * Seconds a run's kernel planning may take on a hardware GPU unless `--tune-budget-s` says
 * otherwise. Planning SLaK-T's 74 keys whole takes about 3 minutes on an H200 (compiling each
 * candidate is ~160 ms there); heaviest first, 30 s covers the keys that hold most of the step's
 * time, and each later run plans the next ones until none is left.
 */
const TUNE_BUDGET_S = 30;

/**
 * Plan the kernels of one forward and backward pass of `model` on random
 * images of `input` shape, as the run will train: in eval mode, so that no
 * BatchNorm statistic or random stream moves, with the gradients dropped
 * afterwards and the model left in train mode. Sparse layers run their
 * sparse kernels, so call it after sparsity is set up. Keys the cache holds
 * are not timed again (unless `retune`). Prints one line on what it did.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { buildModel, presetConfig } from "./config.ts";
 * import { planTrainingKernels } from "./kernel_plans.ts";
 * await initGpu();
 * const { model } = buildModel(presetConfig("cpu"), 4);
 * const report = await planTrainingKernels(model, [64, 3, 224, 224], { cache: true });
 * console.log(report.skipped ?? report.planned.length); // "software adapter" on llvmpipe
 * ```
 */
export async function planTrainingKernels(
  model: Classifier,
  input: number[],
  opts: TrainingPlanOptions = {},
): Promise<PlanReport> {
  // A software adapter plans only when asked: nothing is run, read or written then.
  if (gpu().isFallback && !opts.software) {
    return { keys: [], planned: [], reused: 0, skipped: "software adapter" };
  }
  const t0 = performance.now();
  const x = randomNormal(input, { seed: 7 });
  const labels = Array.from({ length: input[0] }, () => 0);
  const cachePath = opts.cache === false ? null : opts.cachePath ?? planCachePath();
  model.eval();
  let report: PlanReport;
  try {
    report = await planWithCache(
      planner(),
      () => scope(() => backward(softmaxCrossEntropy(model.forward(x), labels))),
      {
        cachePath,
        retune: opts.retune,
        software: opts.software,
        ops: opts.ops,
        budgetMs: opts.budgetMs,
        maxCandidates: gpu().isFallback ? 2 : TRAIN_MAX_CANDIDATES,
        onPlanned: planProgress(),
      },
    );
  } finally {
    x.dispose();
    for (const p of model.parameters()) {
      p.grad?.dispose();
      p.grad = null;
    }
    model.train();
  }
  if (!report.skipped) {
    const fromCache = report.reused ? `, ${report.reused} from the plan cache` : "";
    const deferred = report.deferred?.length
      ? `; ${report.deferred.length} left to the next run by --tune-budget-s`
      : "";
    console.error(
      `planned ${report.planned.length} of ${report.keys.length} kernel keys${fromCache}${deferred} in ${
        ((performance.now() - t0) / 1e3).toFixed(1)
      } s (--no-tune-kernels skips this, --retune plans again, --no-plan-cache leaves ${
        cachePath ?? "the cache"
      } alone)`,
    );
  }
  return report;
}

/**
 * The plans a checkpoint keeps: those of the keys `report` ran (this
 * adapter's), or undefined when none were planned.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { checkpointPlans } from "./kernel_plans.ts";
 * await initGpu();
 * console.log(checkpointPlans({ keys: [], planned: [], reused: 0 })); // undefined
 * ```
 */
export function checkpointPlans(report: PlanReport): SavedPlans | undefined {
  const saved = planner().toJSON(report.keys);
  return saved.plans.length ? saved : undefined;
}

/**
 * Restore the plans a checkpoint kept; returns how many are for this
 * adapter (0 when the run resumes on another GPU or driver: then it plans
 * again).
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { restorePlans } from "./kernel_plans.ts";
 * await initGpu();
 * console.log(restorePlans({ version: 1, plans: [] })); // 0
 * ```
 */
export function restorePlans(saved: SavedPlans): number {
  try {
    return planner().load(saved);
  } catch (e) {
    throw new Error(
      `--resume: the checkpoint's state.json has malformed "plans": ${
        e instanceof Error ? e.message : e
      }`,
    );
  }
}

/**
 * Choose the run's kernels once the model and its sparsity are set up: a
 * resumed run restores the plans its checkpoint kept and times nothing
 * (another timing could pick other kernels, whose rounding differs, and the
 * run would no longer continue bit for bit); a new run plans one training
 * micro-step (see {@linkcode planTrainingKernels}) and records the plans in
 * `state`. Does nothing with `--no-tune-kernels`.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { presetConfig } from "./config.ts";
 * import { singleProcess } from "./parallel.ts";
 * import { setupModel } from "./setup.ts";
 * import { planKernels } from "./kernel_plans.ts";
 * await initGpu();
 * const cfg = { ...presetConfig("cpu"), epochs: 1, out: await Deno.makeTempDir() };
 * const run = await setupModel(cfg, singleProcess());
 * // Called by the training setup once the model (and its sparsity) is ready.
 * await planKernels(run.model, cfg, run.state);
 * console.log(run.state.plans !== undefined); // false on llvmpipe: a software adapter plans nothing
 * ```
 */
export async function planKernels(
  model: Classifier,
  cfg: TrainConfig,
  state: TrainState,
): Promise<void> {
  if (cfg.tuneKernels === false) return;
  if (state.plans && restorePlans(state.plans) > 0) return;
  const budgetS = cfg.tuneBudgetS ?? (gpu().isFallback ? undefined : TUNE_BUDGET_S);
  const report = await planTrainingKernels(
    model,
    [cfg.batchSize, 3, cfg.inputSize, cfg.inputSize],
    {
      cache: cfg.planCache !== false,
      retune: cfg.retune === true,
      budgetMs: budgetS === undefined ? undefined : budgetS * 1e3,
      software: cfg.planSoftware === true,
      // llvmpipe compiles every matrix product's candidates for minutes: tests plan the sparse
      // kernels and the sparse-or-dense choice only there.
      ops: cfg.planSoftware && gpu().isFallback
        ? ["sparse.forward", "sparse.backwardInput", "sparse.filter", "sparse.path"]
        : undefined,
    },
  );
  const plans = checkpointPlans(report);
  if (plans) state.plans = plans;
}
