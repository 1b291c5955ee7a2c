/**
 * ImageNet-style image folders: `root/train/<class>/*.jpg|png|…` and
 * `root/val/<class>/…`, classes sorted by name as torchvision's
 * `ImageFolder`, decoded with sharp (libvips, off the main thread).
 *
 * Transforms follow timm/torchvision as the ConvNeXt/SLaK recipes use them:
 * - training: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3),
 *   bicubic)` then a horizontal flip with p = 0.5, drawn per sample from
 *   (seed, epoch, index), so batches do not depend on decoding order;
 * - eval: the shorter side resized to `floor(size / 0.875)` (bicubic), then
 *   a `size`×`size` centre crop;
 * - both: RGB (alpha dropped, grey and CMYK converted), ImageNet mean/std.
 * (The recipes' RandAugment, colour jitter and random erasing are not
 * applied.)
 *
 * Batches are decoded ahead of the consumer: up to {@linkcode IMAGE_FOLDER_PREFETCH}
 * batches in flight, at most {@linkcode decodeConcurrency} images decoding
 * at once. An image that cannot be read or decoded (not a regular file, over
 * {@linkcode MAX_IMAGE_BYTES} or {@linkcode MAX_IMAGE_PIXELS}, truncated,
 * corrupt) is left out of its batch (the batch is one row shorter) and
 * counted; the count is reported once per pass over a split, naming the
 * first bad file; if nothing at all decodes, the pass fails. With
 * `strictData` the first such image fails the pass instead.
 *
 * Listing follows symbolic links, as torchvision does, but walks every real
 * directory once per class folder: a link back to a folder above it (a
 * cycle) is an error naming the link, and a folder reached through two
 * links is listed once.
 *
 * @example
 * ```ts
 * import { openImageFolder } from "./image_folder.ts";
 * // Needs an ImageNet-layout folder (type-checked, not run).
 * const data = await openImageFolder("/data/imagenet", 224);
 * console.log(data.numClasses, data.trainSize, data.valSize);
 * for await (const b of data.batches("val", { batchSize: 64, epoch: 0, seed: 0, train: false })) {
 *   console.log(b.labels.length); // 64 (fewer if some images failed to decode)
 *   break;
 * }
 * ```
 * @module
 */
import { Rng } from "../../ops/tensor.ts";
import { oneLine } from "../../models/quote.ts";
import type { Batch, BatchOptions, Dataset, Shard } from "./types.ts";
import {
  allocBatch,
  batchesPerEpochOf,
  checkSplit,
  epochPlan,
  evalResizeGeometry,
  hwcToNormalisedChw,
  IMAGENET_MEAN,
  IMAGENET_STD,
  prefetch,
  randomResizedCropBox,
} from "./transforms.ts";

/** The sharp release this pipeline was written and tested against. */
export const SHARP_VERSION = "0.35.5";

type Sharp = typeof import("sharp").default;

let sharpModule: Promise<Sharp> | null = null;

/**
 * sharp, loaded on first use (the procedural default run never loads the
 * native library). Its operation cache is turned off: every image is read once per epoch.
 *
 * @example
 * ```ts
 * import { loadSharp } from "./image_folder.ts";
 * const sharp = await loadSharp();
 * const png = await sharp({ create: { width: 2, height: 2, channels: 3, background: "#808080" } })
 *   .png().toBuffer();
 * console.log((await sharp(png).metadata()).width); // 2
 * ```
 */
export function loadSharp(): Promise<Sharp> {
  // Pinned inline as the project asks (deno.json has no import map entry for it).
  sharpModule ??= import("sharp").then((m) => {
    m.default.cache(false);
    return m.default;
  });
  return sharpModule;
}

/** File extensions taken as images (torchvision's list, plus GIF and AVIF), compared case-insensitively. */
export const IMAGE_EXTENSIONS = [
  ".jpg",
  ".jpeg",
  ".png",
  ".ppm",
  ".bmp",
  ".pgm",
  ".tif",
  ".tiff",
  ".webp",
  ".gif",
  ".avif",
] as const;

/** Batches decoded ahead of the consumer. */
export const IMAGE_FOLDER_PREFETCH = 3;

/**
 * Images decoding at once: one per CPU core (at least 2).
 *
 * @example
 * ```ts
 * import { decodeConcurrency } from "./image_folder.ts";
 * console.log(decodeConcurrency() >= 2); // true
 * ```
 */
export function decodeConcurrency(): number {
  return Math.max(2, navigator.hardwareConcurrency || 2);
}

/**
 * Largest image file read (bytes): a photo is a few MB; a path that is a
 * device or an enormous file would otherwise be read whole.
 *
 * @example
 * ```ts
 * import { MAX_IMAGE_BYTES } from "./image_folder.ts";
 * console.log(MAX_IMAGE_BYTES / 2 ** 20); // 256 (MiB)
 * ```
 */
export const MAX_IMAGE_BYTES = 256 << 20;

/**
 * Largest image decoded (width × height): PIL's decompression-bomb limit
 * (twice its 89.5-megapixel warning), so a tiny file claiming a huge canvas
 * is refused before decoding.
 *
 * @example
 * ```ts
 * import { MAX_IMAGE_PIXELS } from "./image_folder.ts";
 * console.log(MAX_IMAGE_PIXELS); // 178956970
 * ```
 */
export const MAX_IMAGE_PIXELS = 178_956_970;

/** Passes that have failed this many images without decoding one give up early. */
const ALL_FAIL_PROBE = 64;

function isImageFile(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory; // follows symlinks, like os.scandir().is_dir()
  } catch {
    return false;
  }
}

/** Sorted subdirectory names (hidden ones skipped). */
async function subdirectories(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue;
    if (e.isDirectory || (e.isSymlink && (await isDirectory(`${dir}/${e.name}`)))) {
      names.push(e.name);
    }
  }
  return names.sort(byCodePoint);
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Image files under `dir`, recursively (following symlinks), sorted by path.
 * Each real directory is walked once: a link into a folder being walked
 * (a cycle, which would never end) is an error naming it, and one reached
 * again through another link is skipped (links could otherwise multiply
 * the walk exponentially).
 */
async function imageFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const visited = new Set<string>();
  const walk = async (d: string, ancestors: string[]) => {
    const real = await Deno.realPath(d);
    if (ancestors.includes(real)) {
      throw new Error(
        `${oneLine(d)}: symbolic link cycle (it leads back to ${oneLine(real)}, a folder above it)`,
      );
    }
    if (visited.has(real)) return;
    visited.add(real);
    for await (const e of Deno.readDir(d)) {
      if (e.name.startsWith(".")) continue;
      const path = `${d}/${e.name}`;
      if (e.isDirectory || (e.isSymlink && (await isDirectory(path)))) {
        await walk(path, [...ancestors, real]);
      } else if (isImageFile(e.name)) out.push(path);
    }
  };
  await walk(dir, []);
  return out.sort(byCodePoint);
}

/** The files and labels of one split. */
interface SplitFiles {
  files: string[];
  labels: Int32Array;
}

const LAYOUT = "root/train/<class>/<image>.jpg|png|… and root/val/<class>/…";

async function listSplit(root: string, split: "train" | "val", known: string[] | null): Promise<
  SplitFiles & { classes: string[] }
> {
  const dir = `${root}/${split}`;
  if (!(await isDirectory(dir))) throw new Error(`${dir}: no such directory (expected ${LAYOUT})`);
  const classes = await subdirectories(dir);
  if (classes.length === 0) {
    throw new Error(
      `${dir}: no class folders (expected ${LAYOUT}; a flat val/ must be sorted into class folders first)`,
    );
  }
  if (known) {
    const extra = classes.filter((c) => !known.includes(c));
    if (extra.length > 0) {
      throw new Error(
        `${dir}: class folders not in train/: ${extra.slice(0, 5).join(", ")}${
          extra.length > 5 ? ", …" : ""
        }`,
      );
    }
  }
  const classIndex = new Map((known ?? classes).map((c, i) => [c, i]));
  const files: string[] = [];
  const labels: number[] = [];
  const empty: string[] = [];
  for (const c of classes) {
    const found = await imageFiles(`${dir}/${c}`);
    if (found.length === 0) empty.push(c);
    for (const f of found) {
      files.push(f);
      labels.push(classIndex.get(c)!);
    }
  }
  if (files.length === 0) {
    throw new Error(
      `${dir}: no image files (${
        IMAGE_EXTENSIONS.join(" ")
      }) in its ${classes.length} class folders`,
    );
  }
  if (split === "train" && empty.length > 0) {
    throw new Error(
      `${dir}: class folders without images: ${empty.slice(0, 5).join(", ")}${
        empty.length > 5 ? ", …" : ""
      }`,
    );
  }
  return { classes, files, labels: Int32Array.from(labels) };
}

/** A FIFO counting semaphore (bounds the decodes in flight). */
class Semaphore {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await f();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

/** A decoded `size`×`size` RGB image, interleaved, and whether to mirror it. */
interface Decoded {
  pixels: Uint8Array;
  channels: number;
  flip: boolean;
}

/**
 * Reads, decodes and crops one image: the training transform when `rng` is
 * given (RandomResizedCrop + flip draw), else the eval resize + centre crop.
 *
 * @example
 * ```ts
 * import { decodeImage, loadSharp } from "./image_folder.ts";
 * const sharp = await loadSharp();
 * const path = await Deno.makeTempFile({ suffix: ".png" });
 * await sharp({ create: { width: 40, height: 30, channels: 3, background: "#ff0000" } }).toFile(path);
 * const img = await decodeImage(path, 16, null); // eval transform: resize, centre crop 16²
 * console.log(img.pixels.length); // 768
 * ```
 */
export async function decodeImage(path: string, size: number, rng: Rng | null): Promise<Decoded> {
  const sharp = await loadSharp();
  const file = await Deno.stat(path);
  if (!file.isFile) throw new Error("not a regular file");
  if (file.size > MAX_IMAGE_BYTES) {
    throw new Error(`${file.size} bytes, over the ${MAX_IMAGE_BYTES}-byte limit for an image`);
  }
  const bytes = await Deno.readFile(path);
  // failOn "error": truncated files fail (as PIL does), harmless libjpeg warnings do not.
  const options = { failOn: "error", limitInputPixels: MAX_IMAGE_PIXELS } as const;
  const meta = await sharp(bytes, options).metadata();
  const { width, height } = meta;
  if (!width || !height) throw new Error("no image dimensions");
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new Error(`${width}×${height} pixels, over the ${MAX_IMAGE_PIXELS}-pixel limit`);
  }
  let pipeline = sharp(bytes, options);
  let flip = false;
  if (rng) {
    const box = randomResizedCropBox(width, height, rng);
    flip = rng.uniform() < 0.5;
    // extract before resize = crop in source pixels (sharp's pre-resize extraction).
    pipeline = pipeline.extract(box).resize(size, size, { fit: "fill", kernel: "cubic" });
  } else {
    const g = evalResizeGeometry(width, height, size);
    pipeline = pipeline
      .resize(g.resizeWidth, g.resizeHeight, { fit: "fill", kernel: "cubic" })
      .extract({ left: g.left, top: g.top, width: size, height: size });
  }
  const { data, info } = await pipeline.removeAlpha().toColourspace("srgb").raw().toBuffer({
    resolveWithObject: true,
  });
  if (info.width !== size || info.height !== size) {
    throw new Error(`decoded to ${info.width}×${info.height}, expected ${size}×${size}`);
  }
  return {
    pixels: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    channels: info.channels,
    flip,
  };
}

/** An image that could not be used, and why. */
interface Failure {
  path: string;
  reason: string;
}

/** Options of {@linkcode openImageFolder}. */
export interface ImageFolderOptions {
  /** Batches decoded ahead (default {@linkcode IMAGE_FOLDER_PREFETCH}). */
  prefetch?: number;
  /** Images decoding at once (default {@linkcode decodeConcurrency}). */
  concurrency?: number;
  /**
   * Fail on the first image that cannot be read or decoded, naming it
   * (default false: skip it and report the count once per pass).
   */
  strictData?: boolean;
}

/**
 * Lists an ImageNet-layout folder (one-line errors for a missing or empty
 * `train/` or `val/`) and returns it as a {@linkcode Dataset}.
 *
 * @example
 * ```ts
 * import { openImageFolder } from "./image_folder.ts";
 * // Needs an ImageNet-layout folder (type-checked, not run).
 * const data = await openImageFolder("/data/imagenette", 160);
 * console.log(data.classes.slice(0, 3));
 * ```
 */
export async function openImageFolder(
  root: string,
  inputSize: number,
  opts: ImageFolderOptions = {},
): Promise<ImageFolderDataset> {
  const clean = root.length > 1 ? root.replace(/\/+$/, "") : root;
  if (!(await isDirectory(clean))) {
    throw new Error(`${clean}: no such directory (expected ${LAYOUT})`);
  }
  const train = await listSplit(clean, "train", null);
  const val = await listSplit(clean, "val", train.classes);
  return new ImageFolderDataset(clean, inputSize, train.classes, train, val, opts);
}

/**
 * An image folder as a {@linkcode Dataset}; make one with {@linkcode openImageFolder}.
 *
 * @example
 * ```ts
 * import { openImageFolder } from "./image_folder.ts";
 * // Needs an ImageNet-layout folder (type-checked, not run).
 * const data = await openImageFolder("/data/imagenette", 160);
 * console.log(data.numClasses, data.batchesPerEpoch("train", 64, true));
 * ```
 */
export class ImageFolderDataset implements Dataset {
  readonly name: string;
  readonly numClasses: number;
  readonly imageSize: number;
  readonly trainSize: number;
  readonly valSize: number;
  readonly classes: readonly string[];
  readonly root: string;
  #splits: { train: SplitFiles; val: SplitFiles };
  #prefetch: number;
  #gate: Semaphore;
  #strict: boolean;
  #decodedAny = { train: false, val: false };

  constructor(
    root: string,
    inputSize: number,
    classes: string[],
    train: SplitFiles,
    val: SplitFiles,
    opts: ImageFolderOptions = {},
  ) {
    if (!Number.isInteger(inputSize) || inputSize < 1) {
      throw new Error(`input size must be a positive integer, got ${inputSize}`);
    }
    this.root = root;
    this.name = root.split("/").filter((p) => p).pop() ?? root;
    this.classes = classes;
    this.numClasses = classes.length;
    this.imageSize = inputSize;
    this.trainSize = train.files.length;
    this.valSize = val.files.length;
    this.#splits = { train, val };
    this.#prefetch = opts.prefetch ?? IMAGE_FOLDER_PREFETCH;
    this.#gate = new Semaphore(opts.concurrency ?? decodeConcurrency());
    this.#strict = opts.strictData ?? false;
  }

  /** Path and label of sample `index` of `split`. */
  file(split: "train" | "val", index: number): { path: string; label: number } {
    const s = this.#splits[split];
    return { path: s.files[index], label: s.labels[index] };
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
    return this.#pass(split, opts);
  }

  async *#pass(split: "train" | "val", opts: BatchOptions): AsyncGenerator<Batch> {
    const n = this.#splits[split].files.length;
    const plan = epochPlan(n, opts);
    const dir = `${this.root}/${split}`;
    let attempted = 0;
    let skipped = 0;
    let first: Failure | undefined;
    let failed = false;
    try {
      const load = (b: number, signal: AbortSignal) =>
        this.#load(split, plan.batches[b], plan.augmentSeeds, signal);
      for await (const r of prefetch(plan.batches.length, load, this.#prefetch)) {
        attempted += r.attempted;
        skipped += r.failures.length;
        first ??= r.failures[0];
        if (this.#strict && first) {
          failed = true;
          throw new Error(
            `${oneLine(first.path)}: cannot be decoded (${
              oneLine(first.reason)
            }); without --strict-data such images are skipped and counted`,
          );
        }
        if (r.batch) {
          this.#decodedAny[split] = true;
          yield r.batch;
        } else if (!this.#decodedAny[split] && skipped >= Math.min(ALL_FAIL_PROBE, n)) {
          failed = true;
          throw allFailed(dir, skipped, first);
        }
      }
      if (!this.#decodedAny[split] && attempted > 0) {
        failed = true;
        throw allFailed(dir, attempted, first);
      }
    } finally {
      if (skipped > 0 && !failed) {
        console.warn(
          `warning: ${dir}: skipped ${skipped} of ${attempted} images this pass that could not be decoded ` +
            `(first: ${oneLine(first!.path)}: ${oneLine(first!.reason)})`,
        );
      }
    }
  }

  async #load(
    split: "train" | "val",
    indices: Int32Array,
    augmentSeed: ((i: number) => number) | null,
    signal: AbortSignal,
  ): Promise<{ batch: Batch | null; attempted: number; failures: Failure[] }> {
    const s = this.#splits[split];
    const size = this.imageSize;
    const results = await Promise.all(
      Array.from(indices, (index) =>
        this.#gate.run(async () => {
          const path = s.files[index];
          if (signal.aborted) return { path, reason: "pass abandoned" } as Failure; // never reported
          try {
            return await decodeImage(path, size, augmentSeed ? new Rng(augmentSeed(index)) : null);
          } catch (e) {
            return {
              path,
              reason: (e instanceof Error ? e.message : String(e)).split("\n")[0],
            } as Failure;
          }
        })),
    );
    const good = results.filter((r): r is Decoded => "pixels" in r).length;
    const failures = results.filter((r): r is Failure => "reason" in r);
    if (good === 0) return { batch: null, attempted: indices.length, failures };
    const batch = allocBatch(good, size);
    let row = 0;
    for (let j = 0; j < results.length; j++) {
      const r = results[j];
      if (!("pixels" in r)) continue;
      hwcToNormalisedChw(
        r.pixels,
        size,
        size,
        r.channels,
        IMAGENET_MEAN,
        IMAGENET_STD,
        batch.x,
        row * 3 * size * size,
        r.flip,
      );
      batch.labels[row++] = s.labels[indices[j]];
    }
    return { batch, attempted: indices.length, failures };
  }
}

function allFailed(dir: string, n: number, first: Failure | undefined): Error {
  const example = first ? ` (first: ${oneLine(first.path)}: ${oneLine(first.reason)})` : "";
  return new Error(`${dir}: none of the ${n} images tried could be decoded${example}`);
}
