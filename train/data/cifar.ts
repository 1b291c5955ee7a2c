/**
 * CIFAR-10 in its official binary format ("CIFAR-10 binary version"): each
 * record is 1 label byte and 3072 pixel bytes (1024 R, 1024 G, 1024 B, rows
 * of 32). Training split = `data_batch_1.bin` … `data_batch_5.bin`, validation
 * = `test_batch.bin`, found in the given folder or its
 * `cifar-10-batches-bin/` subfolder; class names from `batches.meta.txt`.
 *
 * Training augmentation is the standard one: `RandomCrop(32, padding=4)` with
 * zero (black) padding, then a horizontal flip with p = 0.5, drawn per sample
 * from (seed, epoch, index). Then, if `inputSize` is not 32, a bilinear
 * resize (PyTorch `interpolate(mode="bilinear", align_corners=False)`, no
 * antialiasing), and the CIFAR-10 mean/std normalisation. Eval: resize and
 * normalise only. The whole dataset is held in memory (180 MB).
 *
 * @example
 * ```ts
 * import { openCifar10 } from "./cifar.ts";
 * // Needs the CIFAR-10 binaries on disk (type-checked, not run).
 * const data = await openCifar10("/data/cifar-10-batches-bin", 32);
 * console.log(data.trainSize, data.valSize, data.classes[0]); // 50000 10000 airplane
 * ```
 * @module
 */
import { Rng } from "../../ops/tensor.ts";
import type { Batch, BatchOptions, Dataset, Shard } from "./types.ts";
import {
  allocBatch,
  assembledBatches,
  batchesPerEpochOf,
  bilinearTaps,
  checkSplit,
  CIFAR10_MEAN,
  CIFAR10_STD,
} from "./transforms.ts";

/** Bytes per record: label + 3×32×32 pixels. */
export const CIFAR10_RECORD = 3073;
const SIDE = 32;
const PLANE = SIDE * SIDE;
const PAD = 4;

/** The class names of CIFAR-10, used when `batches.meta.txt` is absent. */
export const CIFAR10_CLASSES = [
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
] as const;

/** The training files, in order. */
export const CIFAR10_TRAIN_FILES = [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`);
export const CIFAR10_TEST_FILE = "test_batch.bin";

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * The folder holding `data_batch_1.bin` (`dir` or `dir/cifar-10-batches-bin`), or null.
 *
 * @example
 * ```ts
 * import { findCifar10Dir } from "./cifar.ts";
 * console.log(await findCifar10Dir(await Deno.makeTempDir())); // null: no data_batch_1.bin there
 * ```
 */
export async function findCifar10Dir(dir: string): Promise<string | null> {
  for (const d of [dir, `${dir}/cifar-10-batches-bin`]) {
    if (await exists(`${d}/${CIFAR10_TRAIN_FILES[0]}`)) return d;
  }
  return null;
}

/** Labels and pixels (N×3072, planar per image) of one or more binary files. */
interface Records {
  labels: Int32Array;
  pixels: Uint8Array;
}

/**
 * Records in each official batch file; a bigger file is not a CIFAR-10 batch.
 *
 * @example
 * ```ts
 * import { CIFAR10_RECORD, CIFAR10_RECORDS_PER_FILE } from "./cifar.ts";
 * console.log(CIFAR10_RECORDS_PER_FILE * CIFAR10_RECORD); // 30730000 bytes in data_batch_1.bin
 * ```
 */
export const CIFAR10_RECORDS_PER_FILE = 10000;

/** The bytes of one batch file, its size checked before it is read. */
async function readBatchFile(p: string): Promise<Uint8Array> {
  const max = CIFAR10_RECORDS_PER_FILE * CIFAR10_RECORD;
  try {
    const info = await Deno.stat(p);
    if (!info.isFile) throw new Error("not a regular file");
    if (info.size > max) {
      throw new Error(
        `${info.size} bytes is more than the ${CIFAR10_RECORDS_PER_FILE} records (${max} bytes) of a CIFAR-10 batch file`,
      );
    }
    return await Deno.readFile(p);
  } catch (e) {
    throw new Error(`${p}: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]}`);
  }
}

async function readRecords(paths: string[]): Promise<Records> {
  const chunks: Uint8Array[] = [];
  for (const p of paths) {
    const bytes = await readBatchFile(p);
    if (bytes.length === 0 || bytes.length % CIFAR10_RECORD !== 0) {
      throw new Error(
        `${p}: ${bytes.length} bytes is not a whole number of ${CIFAR10_RECORD}-byte CIFAR-10 records`,
      );
    }
    chunks.push(bytes);
  }
  const n = chunks.reduce((a, c) => a + c.length / CIFAR10_RECORD, 0);
  const labels = new Int32Array(n);
  const pixels = new Uint8Array(n * 3 * PLANE);
  let i = 0;
  for (let f = 0; f < chunks.length; f++) {
    const c = chunks[f];
    for (let r = 0; r < c.length / CIFAR10_RECORD; r++, i++) {
      const off = r * CIFAR10_RECORD;
      if (c[off] > 9) {
        throw new Error(`${paths[f]}: record ${r} has label ${c[off]}, CIFAR-10 labels are 0..9`);
      }
      labels[i] = c[off];
      pixels.set(c.subarray(off + 1, off + CIFAR10_RECORD), i * 3 * PLANE);
    }
  }
  return { labels, pixels };
}

/**
 * Opens CIFAR-10 binaries in `dir` (or `dir/cifar-10-batches-bin`). All five
 * training files are expected; fewer (a partial download) train on what is
 * there, with a warning.
 *
 * @example
 * ```ts
 * import { openCifar10 } from "./cifar.ts";
 * // Needs the CIFAR-10 binaries on disk (type-checked, not run).
 * const data = await openCifar10("/data", 48); // resized to 48² bilinearly
 * console.log(data.batchesPerEpoch("train", 128, true)); // 390
 * ```
 */
export async function openCifar10(dir: string, inputSize: number): Promise<Cifar10Dataset> {
  const found = await findCifar10Dir(dir);
  if (!found) {
    throw new Error(
      `${dir}: no ${
        CIFAR10_TRAIN_FILES[0]
      } (expected the CIFAR-10 binary files, possibly in cifar-10-batches-bin/)`,
    );
  }
  const train: string[] = [];
  for (const f of CIFAR10_TRAIN_FILES) {
    if (await exists(`${found}/${f}`)) train.push(`${found}/${f}`);
  }
  if (!(await exists(`${found}/${CIFAR10_TEST_FILE}`))) {
    throw new Error(`${found}: no ${CIFAR10_TEST_FILE} (the CIFAR-10 validation split)`);
  }
  if (train.length < CIFAR10_TRAIN_FILES.length) {
    console.warn(
      `warning: ${found}: only ${train.length} of the 5 CIFAR-10 training files found; training on those`,
    );
  }
  let classes: string[] = [...CIFAR10_CLASSES];
  try {
    // Ten short names: a larger file is not CIFAR-10's and is not read into memory.
    if ((await Deno.stat(`${found}/batches.meta.txt`)).size > 4096) throw new Error("too large");
    const names = (await Deno.readTextFile(`${found}/batches.meta.txt`)).split("\n").map((l) =>
      l.trim()
    ).filter((l) => l);
    if (names.length === 10) classes = names;
  } catch {
    // the default names
  }
  return new Cifar10Dataset(
    found,
    inputSize,
    classes,
    await readRecords(train),
    await readRecords([`${found}/${CIFAR10_TEST_FILE}`]),
  );
}

/**
 * CIFAR-10 as a {@linkcode Dataset}; make one with {@linkcode openCifar10}.
 *
 * @example
 * ```ts
 * import { openCifar10 } from "./cifar.ts";
 * // Needs the CIFAR-10 binaries on disk (type-checked, not run).
 * const data = await openCifar10("/data/cifar-10-batches-bin", 32);
 * for await (const b of data.batches("train", { batchSize: 128, epoch: 0, seed: 0, train: true })) {
 *   console.log(b.x.length, b.labels.length); // 393216 128
 *   break;
 * }
 * ```
 */
export class Cifar10Dataset implements Dataset {
  readonly name = "cifar10";
  readonly numClasses = 10;
  readonly imageSize: number;
  readonly trainSize: number;
  readonly valSize: number;
  readonly classes: readonly string[];
  readonly dir: string;
  #splits: { train: Records; val: Records };
  #taps: ReturnType<typeof bilinearTaps>;
  #luts: Float32Array[];

  constructor(dir: string, inputSize: number, classes: string[], train: Records, val: Records) {
    if (!Number.isInteger(inputSize) || inputSize < 1) {
      throw new Error(`input size must be a positive integer, got ${inputSize}`);
    }
    this.dir = dir;
    this.imageSize = inputSize;
    this.classes = classes;
    this.trainSize = train.labels.length;
    this.valSize = val.labels.length;
    this.#splits = { train, val };
    this.#taps = bilinearTaps(SIDE, inputSize);
    this.#luts = [0, 1, 2].map((c) =>
      Float32Array.from({ length: 256 }, (_, v) => (v / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c])
    );
  }

  batchesPerEpoch(
    split: "train" | "val",
    batchSize: number,
    train: boolean,
    shard?: Shard,
  ): number {
    return batchesPerEpochOf(this, split, batchSize, train, shard);
  }

  batches(split: "train" | "val", opts: BatchOptions): AsyncIterable<Batch> {
    checkSplit(split);
    return assembledBatches(
      this.#splits[split].labels.length,
      opts,
      (indices, augmentSeed) => this.#batch(split, indices, augmentSeed),
    );
  }

  #batch(
    split: "train" | "val",
    indices: Int32Array,
    augmentSeed: ((i: number) => number) | null,
  ): Batch {
    const { labels, pixels } = this.#splits[split];
    const s = this.imageSize;
    const batch = allocBatch(indices.length, s);
    const crop = new Float32Array(3 * PLANE);
    const { i0, i1, w1 } = this.#taps;
    for (let j = 0; j < indices.length; j++) {
      const index = indices[j];
      batch.labels[j] = labels[index];
      let dy = 0;
      let dx = 0;
      let flip = false;
      if (augmentSeed) {
        const rng = new Rng(augmentSeed(index));
        // RandomCrop(32, padding=4): top-left corner in the 40×40 padded image.
        dy = rng.int(2 * PAD + 1) - PAD;
        dx = rng.int(2 * PAD + 1) - PAD;
        flip = rng.uniform() < 0.5;
      }
      const src = index * 3 * PLANE;
      for (let c = 0; c < 3; c++) {
        const lut = this.#luts[c];
        const zero = lut[0];
        for (let y = 0; y < SIDE; y++) {
          const sy = y + dy;
          for (let x = 0; x < SIDE; x++) {
            const sx = (flip ? SIDE - 1 - x : x) + dx;
            crop[c * PLANE + y * SIDE + x] = sy < 0 || sy >= SIDE || sx < 0 || sx >= SIDE
              ? zero
              : lut[pixels[src + c * PLANE + sy * SIDE + sx]];
          }
        }
      }
      const out = j * 3 * s * s;
      if (s === SIDE) {
        batch.x.set(crop, out);
        continue;
      }
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < s; y++) {
          const r0 = c * PLANE + i0[y] * SIDE;
          const r1 = c * PLANE + i1[y] * SIDE;
          const wy = w1[y];
          for (let x = 0; x < s; x++) {
            const a = crop[r0 + i0[x]] + w1[x] * (crop[r0 + i1[x]] - crop[r0 + i0[x]]);
            const b = crop[r1 + i0[x]] + w1[x] * (crop[r1 + i1[x]] - crop[r1 + i0[x]]);
            batch.x[out + c * s * s + y * s + x] = a + wy * (b - a);
          }
        }
      }
    }
    return batch;
  }
}
