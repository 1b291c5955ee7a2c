/**
 * The gradient sum of one optimiser step across ranks, in buckets
 * ({@linkcode planBuckets}), overlapped with the backward pass as far as
 * WebGPU allows: as soon as every gradient of a bucket is final, the copies
 * into one mappable staging buffer are recorded and the queue is submitted,
 * so the GPU moves the bucket while the JavaScript thread goes on recording
 * the rest of the backward pass; `mapAsync` then resolves as soon as the GPU
 * gets there. {@linkcode BucketedGradientSync.finish} sums the buckets on
 * the CPU in bucket order (every rank issues the same collectives in the same
 * order), each sum running on another thread while the next bucket is read
 * back, then divides by the world size and writes the means back into the
 * gradients in recording order, before the optimiser step.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Tensor } from "../ops/tensor.ts";
 * import { BucketedGradientSync } from "./grad_sync.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * w.grad = Tensor.from([4, 6]);
 * // A pretend world of two ranks whose other rank sent the same gradient.
 * const sync = new BucketedGradientSync([w], {
 *   world: 2,
 *   sum: (v) => {
 *     v.forEach((x, i) => (v[i] = 2 * x));
 *     return Promise.resolve();
 *   },
 * });
 * sync.onGradReady(w);
 * await sync.finish();
 * console.log(await w.grad.read()); // Float32Array [4, 6]
 * ```
 * @module
 */
import { gpu } from "../ops/gpu.ts";
import { keep, Tensor } from "../ops/tensor.ts";
import { type Bucket, bucketOf, DEFAULT_BUCKET_BYTES, planBuckets } from "./grad_buckets.ts";
import type { CommStep, GradientSync } from "./parallel.ts";

export type { CommStep };

/** How {@linkcode BucketedGradientSync} sums and reports. */
export interface GradSyncOptions {
  /** Sum `values` over the ranks in place (MPI all-reduce). */
  sum: (values: Float32Array) => Promise<void>;
  /** Number of ranks: the sums are divided by it. */
  world: number;
  /** Bucket cap in bytes (torch's 25 MiB by default). */
  capBytes?: number;
  /** Receives the step's costs after `finish`. */
  onDone?: (step: CommStep) => void;
  /**
   * Staging buffers kept from one step to the next, by bucket (the caller
   * owns them); without it each step makes and frees its own.
   */
  staging?: GPUBuffer[];
}

/** The gradient all-reduce of one backward pass; see the module doc. */
export class BucketedGradientSync implements GradientSync {
  readonly #params: Tensor[];
  readonly #opts: GradSyncOptions;
  readonly #buckets: Bucket[];
  readonly #bucketOf: Int32Array;
  readonly #index = new Map<Tensor, number>();
  readonly #missing: number[];
  readonly #read: (Promise<Float32Array> | null)[];
  #firstLaunch = 0;
  #lastRead = 0;

  constructor(params: Tensor[], opts: GradSyncOptions) {
    this.#params = params;
    this.#opts = opts;
    this.#buckets = planBuckets(params.map((p) => p.size), opts.capBytes ?? DEFAULT_BUCKET_BYTES);
    this.#bucketOf = bucketOf(this.#buckets, params.length);
    params.forEach((p, i) => this.#index.set(p, i));
    this.#missing = this.#buckets.map((b) => b.params.length);
    this.#read = this.#buckets.map(() => null);
  }

  /** The buckets (tests and the communication log read them). */
  get buckets(): readonly Bucket[] {
    return this.#buckets;
  }

  /** Mark `p`'s gradient final; a bucket whose gradients are all final starts its read-back. */
  onGradReady(p: Tensor): void {
    const i = this.#index.get(p);
    if (i === undefined) return;
    const k = this.#bucketOf[i];
    if (this.#read[k] || this.#missing[k] === 0) return;
    if (--this.#missing[k] === 0) this.#launch(k);
  }

  /** Sum every bucket across ranks, then write the means back into the gradients. */
  async finish(): Promise<void> {
    const t0 = performance.now();
    // Buckets with a gradient that never arrived (a parameter the pass did not reach).
    this.#buckets.forEach((_, k) => this.#read[k] ?? this.#launch(k));
    let reduceMs = 0;
    const sums: Promise<Float32Array>[] = [];
    for (const read of this.#read) {
      const values = await read!;
      const started = performance.now();
      sums.push(
        this.#opts.sum(values).then(() => {
          reduceMs += performance.now() - started;
          return values;
        }),
      );
    }
    const reduced = await Promise.all(sums);
    const t1 = performance.now();
    reduced.forEach((values, k) => this.#write(this.#buckets[k], values));
    const t2 = performance.now();
    const size = this.#buckets.reduce((a, b) => a + b.size, 0);
    this.#opts.onDone?.({
      bytes: size * 4,
      readMs: this.#lastRead - this.#firstLaunch,
      reduceMs,
      writeMs: t2 - t1,
      waitMs: t2 - t0,
    });
  }

  /** Record the copies of bucket `k` into its staging buffer, submit, and map it. */
  #launch(k: number): void {
    const bucket = this.#buckets[k];
    const g = gpu();
    if (!this.#read.some((r) => r)) this.#firstLaunch = performance.now();
    const bytes = Math.max(4, bucket.size * 4);
    const pool = this.#opts.staging;
    let staging = pool?.[k];
    if (!staging || staging.size !== bytes) {
      staging?.destroy();
      staging = g.device.createBuffer({
        size: bytes,
        usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
      });
      if (pool) pool[k] = staging;
    }
    const buffer = staging;
    const enc = g.encoderForCopy();
    bucket.params.forEach((i, j) => {
      const grad = this.#params[i].grad;
      const at = bucket.offsets[j] * 4;
      if (grad) enc.copyBufferToBuffer(grad.buffer, 0, buffer, at, grad.size * 4);
      else enc.clearBuffer(buffer, at, this.#params[i].size * 4);
    });
    const read = () =>
      buffer.mapAsync(GPUMapMode.READ).then(() => {
        const values = new Float32Array(buffer.getMappedRange().slice(0, bucket.size * 4));
        buffer.unmap();
        if (!pool) buffer.destroy();
        this.#lastRead = performance.now();
        return values;
      });
    g.flush();
    // Behind pending host steps (synchronised BatchNorm) the copies reach the queue later: map then.
    this.#read[k] = g.hostStepsPending ? g.submitted().then(read) : read();
  }

  /** Divide a summed bucket by the world size and write it back into its gradients. */
  #write(bucket: Bucket, values: Float32Array): void {
    const inv = 1 / this.#opts.world;
    for (let i = 0; i < values.length; i++) values[i] *= inv;
    const g = gpu();
    bucket.params.forEach((i, j) => {
      const p = this.#params[i];
      const at = bucket.offsets[j];
      const mean = values.subarray(at, at + p.size) as Float32Array<ArrayBuffer>;
      if (p.grad) {
        // After everything recorded so far (behind pending host steps too), in recording order.
        g.writeBuffer(p.grad.buffer, mean);
      } else if (mean.some((v) => v !== 0)) {
        // This rank's pass did not reach it, another one's did: it gets the mean like the rest.
        p.grad = keep(Tensor.from(mean, p.shape));
      }
    });
  }
}
