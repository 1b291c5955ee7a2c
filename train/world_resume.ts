/**
 * Resuming a run under another number of ranks. The checkpoint says how far
 * the run got in its own units (micro-batches of this epoch, optimiser
 * steps); with another world size those units hold another number of images,
 * so the position is carried over in images instead:
 *
 * - the global batch becomes `batch × update-freq × world` of the new run
 *   (`--lr` keeps its value, as in the official `main.py`, which does not
 *   rescale it);
 * - inside an epoch, the images already trained on are a prefix of the
 *   epoch's order (sharding is strided, see `BatchOptions.shard`), so the run
 *   restarts at the last optimiser-step boundary of the new size within that
 *   prefix: up to one global batch of images is seen twice, none is skipped;
 * - the optimiser-step count moves to the same point of the run measured in
 *   epochs, so the warm-up and cosine schedule go on where they were.
 *
 * @example
 * ```ts
 * import { rescaleProgress } from "./world_resume.ts";
 * // 3 micro-batches of 8 on 2 ranks = 48 images; now 1 rank, batch 8, update-freq 2.
 * const from = { world: 2, batchSize: 8, epoch: 1, batchInEpoch: 3 };
 * console.log(rescaleProgress(from, { world: 1, batchSize: 8, updateFreq: 2, stepsPerEpoch: 4 }));
 * // { batchInEpoch: 6, step: 7 }
 * ```
 * @module
 */

/** Where a checkpoint stopped, in its own run's units. */
export interface SavedProgress {
  world: number;
  /** The per-rank batch size of the saved run. */
  batchSize: number;
  epoch: number;
  batchInEpoch: number;
}

/** The shape of the resumed run. */
export interface NewRun {
  world: number;
  batchSize: number;
  updateFreq: number;
  stepsPerEpoch: number;
}

/** The resumed run's micro-batch in the epoch and optimiser step (see the module doc). */
export function rescaleProgress(
  from: SavedProgress,
  to: NewRun,
): { batchInEpoch: number; step: number } {
  const images = from.batchInEpoch * from.batchSize * from.world;
  const perStep = to.batchSize * to.updateFreq * to.world;
  const steps = Math.min(Math.floor(images / perStep), to.stepsPerEpoch);
  return {
    batchInEpoch: steps * to.updateFreq,
    step: from.epoch * to.stepsPerEpoch + steps,
  };
}
