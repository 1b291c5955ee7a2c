/**
 * Synchronised batch norm for a whole model, as torch's
 * `nn.SyncBatchNorm.convert_sync_batchnorm`: every {@linkcode BatchNorm2d}
 * of the model gets the reducer that sums its batch statistics over the
 * replicas of a data-parallel run (in training; evaluation keeps using the
 * running statistics). The keys, the weights and the eval behaviour do not
 * change, so checkpoints are the same either way.
 *
 * @example
 * ```ts
 * import { createModel } from "./registry.ts";
 * import { syncBatchNorm } from "./sync_batch_norm.ts";
 * const model = createModel("resnet_cpu", { numClasses: 4 });
 * // A world of one: the sums are this replica's own.
 * console.log(syncBatchNorm(model, () => () => Promise.resolve()) > 0); // true
 * syncBatchNorm(model, null); // back to per-replica statistics
 * ```
 * @module
 */
import type { StatsReducer } from "../ops/norm.ts";
import { BatchNorm2d } from "./layers.ts";
import type { Module } from "./module.ts";

/**
 * Give every `BatchNorm2d` of `model` the stats `reducer` (null: each replica
 * normalises its own batch again). Returns the number of BatchNorm layers.
 *
 * @example
 * ```ts
 * import { BatchNorm2d, Sequential } from "./layers.ts";
 * import { syncBatchNorm } from "./sync_batch_norm.ts";
 * const net = new Sequential(new BatchNorm2d(4), new BatchNorm2d(4));
 * console.log(syncBatchNorm(net, () => () => Promise.resolve())); // 2
 * ```
 */
export function syncBatchNorm(model: Module, reducer: StatsReducer | null): number {
  let count = 0;
  for (const [, m] of model.namedModules()) {
    if (m instanceof BatchNorm2d) {
      m.statsReducer = reducer;
      count++;
    }
  }
  return count;
}
