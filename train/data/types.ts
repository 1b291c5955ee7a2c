/**
 * The data pipeline's contract with the trainer: a {@linkcode Dataset} yields
 * {@linkcode Batch}es of normalised NCHW images and integer labels.
 *
 * @example
 * ```ts
 * import type { Batch, Dataset } from "./types.ts";
 * import { openDataset } from "./mod.ts";
 * const data: Dataset = await openDataset({ inputSize: 32, seed: 0, trainSize: 64, valSize: 16 });
 * for await (const b of data.batches("val", { batchSize: 8, epoch: 0, seed: 0, train: false })) {
 *   const batch: Batch = b;
 *   console.log(batch.x.length, batch.labels); // 8·3·32·32 values, 8 labels
 * }
 * ```
 * @module
 */

/** One mini-batch: `x` is N×3×S×S (normalised, NCHW, row-major), `labels` holds N class indices. */
export interface Batch {
  x: Float32Array;
  labels: Int32Array;
}

/** How {@linkcode Dataset.batches} walks a split. */
export interface BatchOptions {
  batchSize: number;
  /** Selects the shuffle and the augmentation draws, with `seed`. */
  epoch: number;
  seed: number;
  /**
   * Training order: shuffled (seeded by `seed` and `epoch`), augmented, last
   * partial batch dropped. Otherwise: in order, not augmented, last partial
   * batch kept.
   */
  train: boolean;
  /**
   * Batches to skip at the start without loading them (resuming mid-epoch).
   * The batches that follow are exactly those of an unskipped run: every
   * sample's augmentation depends only on (seed, epoch, position in the epoch).
   */
  startBatch?: number;
  /**
   * This process's part of the epoch under data parallelism, as torch's
   * `DistributedSampler`: every rank draws the same shuffle; when training,
   * the order is padded to a multiple of `world` by repeating its first
   * indices, and rank r takes positions r, r + world, r + 2·world, …; so the
   * micro-batch b of all ranks together is the global batch b of one
   * process with batch `batchSize × world`. Evaluation is not padded (ranks
   * hold ⌈n/world⌉ or ⌊n/world⌋ images), so no image counts twice in the
   * summed metrics. `startBatch` counts this rank's batches.
   */
  shard?: Shard;
}

/** One rank's share of each epoch: `rank` in `0..world-1`. */
export interface Shard {
  rank: number;
  world: number;
}

/** A labelled image dataset with a training and a validation split. */
export interface Dataset {
  readonly name: string;
  readonly numClasses: number;
  /** Side S of the square images of every batch. */
  readonly imageSize: number;
  readonly trainSize: number;
  readonly valSize: number;
  /** Class names, index = label. */
  readonly classes: readonly string[];
  /** Batches of a split, loaded ahead of the consumer (bounded). */
  batches(split: "train" | "val", opts: BatchOptions): AsyncIterable<Batch>;
  /**
   * How many batches {@linkcode Dataset.batches} yields (`train`: full
   * batches only); with `shard`, how many this rank yields.
   */
  batchesPerEpoch(
    split: "train" | "val",
    batchSize: number,
    train: boolean,
    shard?: Shard,
  ): number;
}
