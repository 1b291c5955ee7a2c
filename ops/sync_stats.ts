/**
 * The CPU side of synchronised batch normalisation (`torch.nn.SyncBatchNorm`):
 * the per-channel statistics of every replica's batch, summed over the
 * replicas in float64, turned into the statistics of the whole global batch.
 *
 * Each replica's GPU computes its batch's per-channel mean and centred sum of
 * squares (`M2`, two-pass, accurate); here they become the sums
 * `[Σx, Σx², n]`, which add up over replicas, and the global mean, biased
 * variance (for normalising) and unbiased variance (for the running
 * statistics) follow. In the backward pass the sums `[Σg·x̂, Σg, n]` add up
 * likewise. The summing itself is a {@linkcode StatsReducer}'s (an MPI
 * all-reduce in `train/distributed.ts`); this file knows nothing of MPI.
 *
 * @example
 * ```ts
 * import { globalMoments } from "./sync_stats.ts";
 * // One replica (nothing to add): channel 0 of [1, 3] has mean 2 and M2 2.
 * const [mean, rstd, unbiased] = await globalMoments(
 *   Float32Array.of(2, 2), 1, 2, 0, () => Promise.resolve(),
 * );
 * console.log(mean[0], rstd[0], unbiased[0]); // 2 1 2
 * ```
 * @module
 */

/** Sums `values` element-wise over every replica, in place. */
export type StatsSum = (values: Float64Array) => Promise<void>;

/**
 * Sums per-channel statistics over the replicas of a data-parallel run.
 * Batch norm calls it once per reduction when it records that reduction, so
 * that every replica asks in the same order (the recording order) whatever
 * the timing; the {@linkcode StatsSum} it returns is called later, when the
 * GPU has computed this replica's values, and must sum them in place over
 * every replica's values of the same call.
 */
export type StatsReducer = () => StatsSum;

/**
 * The global batch statistics per channel from this replica's `local`
 * (`[mean (C), M2 (C)]` over its `n` values per channel): returns
 * `[mean, 1/√(biased var + eps), unbiased var]`, each of `channels` values.
 *
 * @example
 * ```ts
 * import { globalMoments } from "./sync_stats.ts";
 * // Two replicas, pretended: the other one holds the same batch.
 * const twice = (v: Float64Array) => Promise.resolve(void v.forEach((x, i) => (v[i] = 2 * x)));
 * const [mean, , unbiased] = await globalMoments(Float32Array.of(2, 2), 1, 2, 0, twice);
 * console.log(mean[0], unbiased[0]); // 2 1.3333333 (values 1, 3, 1, 3)
 * ```
 */
export async function globalMoments(
  local: Float32Array,
  channels: number,
  n: number,
  eps: number,
  sum: StatsSum,
): Promise<[Float32Array, Float32Array, Float32Array]> {
  const v = new Float64Array(2 * channels + 1);
  for (let c = 0; c < channels; c++) {
    const m = local[c];
    v[c] = n * m;
    v[channels + c] = local[channels + c] + n * m * m;
  }
  v[2 * channels] = n;
  await sum(v);
  const total = v[2 * channels];
  if (!(total > 1)) {
    throw new Error(`synchronised batch norm: ${total} values per channel over all replicas`);
  }
  const mean = new Float32Array(channels);
  const rstd = new Float32Array(channels);
  const unbiased = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    const m = v[c] / total;
    const variance = Math.max(0, v[channels + c] / total - m * m);
    mean[c] = m;
    rstd[c] = 1 / Math.sqrt(variance + eps);
    unbiased[c] = variance * total / (total - 1);
  }
  return [mean, rstd, unbiased];
}

/**
 * The backward pass's global sums per channel from this replica's `Σg·x̂`
 * and `Σg` over its `n` values per channel: returns one array
 * `[Σg·x̂ (C), Σg (C), 1/N]`, N being the global count per channel.
 *
 * @example
 * ```ts
 * import { globalGradSums } from "./sync_stats.ts";
 * const out = await globalGradSums(Float32Array.of(0.5), Float32Array.of(2), 4, () => Promise.resolve());
 * console.log(out); // Float32Array [0.5, 2, 0.25]
 * ```
 */
export async function globalGradSums(
  sumGx: Float32Array,
  sumG: Float32Array,
  n: number,
  sum: StatsSum,
): Promise<Float32Array> {
  const channels = sumGx.length;
  const v = new Float64Array(2 * channels + 1);
  v.set(sumGx, 0);
  v.set(sumG, channels);
  v[2 * channels] = n;
  await sum(v);
  const out = new Float32Array(2 * channels + 1);
  out.set(v.subarray(0, 2 * channels));
  out[2 * channels] = 1 / v[2 * channels];
  return out;
}
