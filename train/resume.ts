/**
 * Continuing a run: which checkpoint to resume from, and restoring the model,
 * EMA, optimiser and run state from it (or only the weights, from a bare
 * weights file, for fine-tuning or `--eval-only`).
 *
 * @example
 * ```ts
 * import { resumeSource } from "./resume.ts";
 * import { presetConfig } from "./config.ts";
 * console.log(await resumeSource({ ...presetConfig("cpu"), out: "out/none" })); // undefined
 * ```
 * @module
 */
import type { Weights } from "../models/safetensors.ts";
import { type AdamW, decayGroups } from "../ops/optim.ts";
import type { Tensor } from "../ops/tensor.ts";
import { checkpointExists, loadCheckpoint, type TrainState } from "./checkpoint.ts";
import type { TrainConfig } from "./config.ts";
import type { Classifier } from "../models/module.ts";
import type { ModelEma } from "./ema.ts";
import { loadModelWeights } from "./weights.ts";
import { validateCheckpointFor } from "./checkpoint_validate.ts";

/** AdamW's moments per parameter (`exp_avg`, `exp_avg_sq`), as its checkpoints hold them. */
const ADAMW_BUFFERS = 2;

/**
 * The checkpoint or weights file to resume from: `--resume`, or with
 * `--auto-resume` the run's own `checkpoint-last/` when there is one.
 *
 * @example
 * ```ts
 * import { resumeSource } from "./resume.ts";
 * import { presetConfig } from "./config.ts";
 * console.log(await resumeSource({ ...presetConfig("cpu"), resume: "w.safetensors" })); // "w.safetensors"
 * ```
 */
export async function resumeSource(cfg: TrainConfig): Promise<string | undefined> {
  if (cfg.resume) return cfg.resume;
  const last = `${cfg.out}/checkpoint-last`;
  return cfg.autoResume && (await checkpointExists(last)) ? last : undefined;
}

/** What {@linkcode resumeFrom} restores into. */
export interface ResumeTarget {
  cfg: TrainConfig;
  model: Classifier;
  modelArgs: Record<string, unknown>;
  ema: ModelEma | null;
  optimizer: AdamW;
}

/**
 * Restore a run from `from`: a bare weights file (`.safetensors`, `.pth`,
 * `.pt`) loads the model only; a checkpoint folder restores the model, EMA,
 * optimiser and run state, after checking that it holds the same model and
 * the same kind of run (dense or sparse). Returns the restored state (null for
 * a weights file) and the checkpoint's masks.
 *
 * @example
 * ```ts ignore
 * // Needs a model on the GPU and a checkpoint; see tests/train_test.ts.
 * const { state, masks } = await resumeFrom("out/train/cpu/checkpoint-last", target);
 * ```
 */
export async function resumeFrom(
  from: string,
  t: ResumeTarget,
): Promise<{ state: TrainState | null; masks: Weights | null }> {
  const { cfg, model, modelArgs } = t;
  if (/\.(safetensors|pth|pt)$/.test(from)) {
    await loadModelWeights(model, from, { flag: "--resume" });
    return { state: null, masks: null };
  }
  const ck = await loadCheckpoint(from);
  if (
    ck.state.model !== cfg.model ||
    JSON.stringify(ck.state.modelArgs) !== JSON.stringify(modelArgs)
  ) {
    throw new Error(
      `--resume: ${from} holds a checkpoint of ${ck.state.model} ${
        JSON.stringify(ck.state.modelArgs)
      }, not of ${cfg.model} ${JSON.stringify(modelArgs)}`,
    );
  }
  // Everything checked against this run before anything is loaded or rewritten.
  const named = [...model.namedParameters()].map(([k, p]) => [k, p.tensor] as [string, Tensor]);
  validateCheckpointFor(ck, {
    dir: ck.dir,
    model,
    ema: t.ema?.module ?? null,
    optimizerSizes: decayGroups(named, cfg.weightDecay).flatMap((g) => g.params.map((p) => p.size)),
    buffersPerParam: ADAMW_BUFFERS,
    sparse: cfg.sparse ? { type: cfg.sparseType ?? "origin", onlyL: cfg.onlyL ?? false } : null,
  });
  model.loadStateDict(ck.model);
  if (t.ema && ck.ema) t.ema.module.loadStateDict(ck.ema);
  if (!cfg.evalOnly) t.optimizer.loadStateDict(ck.optimizer);
  const masks = ck.masks ?? null;
  if (!cfg.evalOnly && !!masks !== !!cfg.sparse) {
    throw new Error(
      masks
        ? `--resume: ${from} holds a sparse run (masks.safetensors): add --sparse`
        : `--resume: ${from} holds a dense run (no masks.safetensors): cannot resume it with --sparse`,
    );
  }
  console.error(`resumed from ${from}: epoch ${ck.state.epoch}, step ${ck.state.step}`);
  return { state: { ...ck.state, config: { ...cfg } }, masks };
}
