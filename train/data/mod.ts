/**
 * The trainer's data pipeline: {@linkcode openDataset} picks the procedural
 * dataset, an ImageNet-style image folder or CIFAR-10 binaries from the
 * `--data` argument; {@linkcode mixupBatch} mixes batches as timm.
 *
 * @example
 * ```ts
 * import { openDataset } from "./mod.ts";
 * const data = await openDataset({ inputSize: 48, seed: 0 }); // procedural
 * const batches = data.batchesPerEpoch("train", 32, true); // 64
 * for await (const b of data.batches("train", { batchSize: 32, epoch: 0, seed: 0, train: true })) {
 *   console.log(b.x.length, b.labels.length); // 32·3·48·48, 32
 *   break;
 * }
 * console.log(batches);
 * ```
 * @module
 */
import type { Batch, Dataset, Shard } from "./types.ts";
import { ProceduralDataset } from "./procedural.ts";
import { openImageFolder } from "./image_folder.ts";
import { findCifar10Dir, openCifar10 } from "./cifar.ts";

export type { Batch, BatchOptions, Dataset } from "./types.ts";
export { mixupBatch, type MixupOptions, type MixupResult } from "./mixup.ts";
export { ProceduralDataset } from "./procedural.ts";
export { naturalLikeBatch, naturalLikeImage, normaliseImageNet } from "./natural.ts";
export { ImageFolderDataset, openImageFolder } from "./image_folder.ts";
export { Cifar10Dataset, openCifar10 } from "./cifar.ts";

/** What {@linkcode openDataset} opens. */
export interface DatasetSpec {
  /**
   * Absent: the procedural dataset. A folder with `train/` and `val/` class
   * folders: ImageFolder. A folder with the CIFAR-10 binaries
   * (`data_batch_1.bin` … `test_batch.bin`, possibly in
   * `cifar-10-batches-bin/`): CIFAR-10.
   */
  data?: string;
  /** Side of the square images of every batch. */
  inputSize: number;
  /** The procedural dataset's content, every dataset's shuffle and augmentation. */
  seed: number;
  /** Procedural dataset only (ignored for folders). */
  trainSize?: number;
  valSize?: number;
  numClasses?: number;
  /** Procedural dataset only: cap on distractor marks per image. */
  distractors?: number;
  /** Procedural dataset only: fixed key colours (the easier variant). */
  keyColours?: boolean;
  /**
   * Image folders: fail on the first image that cannot be read or decoded
   * (default: skip it and count it, reported once per pass).
   */
  strictData?: boolean;
}

const EXPECTED =
  "expected a folder with train/ and val/ class folders (ImageNet layout) or the CIFAR-10 binaries data_batch_1.bin … test_batch.bin";

/**
 * Opens the dataset named by `spec.data` (see {@linkcode DatasetSpec});
 * errors are one line naming the path and what was expected.
 *
 * @example
 * ```ts
 * import { openDataset } from "./mod.ts";
 * const data = await openDataset({ inputSize: 32, seed: 1, numClasses: 8, trainSize: 256, valSize: 64 });
 * console.log(data.name, data.numClasses, data.classes); // procedural-compass8 8 [...]
 * ```
 */
export async function openDataset(spec: DatasetSpec): Promise<Dataset> {
  if (spec.data === undefined) {
    return new ProceduralDataset({
      imageSize: spec.inputSize,
      seed: spec.seed,
      trainSize: spec.trainSize,
      valSize: spec.valSize,
      numClasses: spec.numClasses,
      distractors: spec.distractors,
      keyColours: spec.keyColours,
    });
  }
  const root = spec.data.length > 1 ? spec.data.replace(/\/+$/, "") : spec.data;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(root);
  } catch {
    throw new Error(`${root}: no such directory (${EXPECTED})`);
  }
  if (!info.isDirectory) throw new Error(`${root}: not a directory (${EXPECTED})`);
  if (await findCifar10Dir(root)) return await openCifar10(root, spec.inputSize);
  let hasTrain = false;
  try {
    hasTrain = (await Deno.stat(`${root}/train`)).isDirectory;
  } catch {
    // neither layout
  }
  if (hasTrain) return await openImageFolder(root, spec.inputSize, { strictData: spec.strictData });
  throw new Error(`${root}: has neither train/ nor data_batch_1.bin (${EXPECTED})`);
}

/**
 * The first training batch of `data` (epoch 0, shuffled, augmented): the
 * batch SNIP scores, as the official `next(iter(train_loader))`; with
 * `shard`, this rank's part of it.
 *
 * @example
 * ```ts
 * import { ProceduralDataset } from "./procedural.ts";
 * import { firstTrainingBatch } from "./mod.ts";
 * const data = new ProceduralDataset({ imageSize: 32, seed: 0, trainSize: 64, valSize: 16, numClasses: 4 });
 * const batch = await firstTrainingBatch(data, 16, 0);
 * console.log(batch.labels.length); // 16
 * ```
 */
export async function firstTrainingBatch(
  data: Dataset,
  batchSize: number,
  seed: number,
  shard?: Shard,
): Promise<Batch> {
  if (data.batchesPerEpoch("train", batchSize, true, shard) < 1) {
    throw new Error(
      `a batch of ${batchSize} is more than the ${data.trainSize} training images of ${data.name}`,
    );
  }
  for await (const b of data.batches("train", { batchSize, epoch: 0, seed, train: true, shard })) {
    return b;
  }
  throw new Error(`${data.name}: no training batch`);
}
