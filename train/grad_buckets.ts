/**
 * Gradient buckets, as torch's DistributedDataParallel forms them: the
 * parameters in reverse registration order (roughly the order in which the
 * backward pass finishes their gradients), cut into consecutive groups of at
 * most {@linkcode DEFAULT_BUCKET_BYTES}. A bucket is summed across ranks as
 * one message once all its gradients are final, so the early buckets travel
 * while the rest of the backward pass still runs.
 *
 * @example
 * ```ts
 * import { planBuckets } from "./grad_buckets.ts";
 * // Four parameters of 3, 5, 2 and 4 floats, buckets of at most 32 bytes (8 floats):
 * console.log(planBuckets([3, 5, 2, 4], 32).map((b) => b.params));
 * // [[3, 2], [1, 0]]
 * ```
 * @module
 */

/** torch DDP's default `bucket_cap_mb` (25 MiB). */
export const DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024;

/** One bucket: parameter indices (in ready order) and where each lies in the flat message. */
export interface Bucket {
  /** Indices into the parameter list. */
  params: number[];
  /** Element offset of each parameter in the bucket, parallel to `params`. */
  offsets: number[];
  /** Elements in the bucket (32-bit floats). */
  size: number;
}

/**
 * Cut the parameters, whose element counts are `sizes` (registration
 * order), into buckets of at most `capBytes` bytes of 32-bit floats, walking
 * them in reverse order; a parameter larger than the cap is a bucket of its
 * own. Every parameter is in exactly one bucket.
 *
 * @example
 * ```ts
 * import { planBuckets } from "./grad_buckets.ts";
 * console.log(planBuckets([10, 10], 1 << 20)); // [{ params: [1, 0], offsets: [0, 10], size: 20 }]
 * ```
 */
export function planBuckets(sizes: readonly number[], capBytes = DEFAULT_BUCKET_BYTES): Bucket[] {
  if (!(capBytes >= 4)) throw new Error(`bucket size must be at least 4 bytes, got ${capBytes}`);
  const cap = Math.floor(capBytes / 4);
  const buckets: Bucket[] = [];
  let open: Bucket | null = null;
  for (let i = sizes.length - 1; i >= 0; i--) {
    const n = sizes[i];
    if (open && open.size + n > cap) open = null;
    if (!open) buckets.push(open = { params: [], offsets: [], size: 0 });
    open.params.push(i);
    open.offsets.push(open.size);
    open.size += n;
  }
  return buckets;
}

/**
 * For each parameter index, the bucket holding it.
 *
 * @example
 * ```ts
 * import { bucketOf, planBuckets } from "./grad_buckets.ts";
 * const buckets = planBuckets([3, 5, 2, 4], 32); // [[3, 2], [1, 0]]
 * console.log(bucketOf(buckets, 4)); // Int32Array [1, 1, 0, 0]
 * ```
 */
export function bucketOf(buckets: readonly Bucket[], count: number): Int32Array {
  const out = new Int32Array(count).fill(-1);
  buckets.forEach((b, k) => {
    for (const i of b.params) out[i] = k;
  });
  return out;
}
