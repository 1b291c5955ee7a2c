/**
 * Hostile dataset folders and damaged checkpoints: CIFAR-10 batch files of
 * the wrong size or with bad labels, image folders with symbolic-link cycles,
 * devices posing as images, pixel bombs and corrupt images (skipped and
 * counted, or fatal with `strictData` / `--strict-data`), and a checkpoint
 * whose `model.safetensors` is truncated or corrupt. Every error is one line
 * naming the file. CPU only.
 */
import assert from "node:assert/strict";
import { captureWarnings } from "./harness.ts";
import { crc32 } from "node:zlib";
import { openDataset } from "../train/data/mod.ts";
import type { Dataset } from "../train/data/types.ts";
import { decodeImage, loadSharp } from "../train/data/image_folder.ts";
import { CIFAR10_RECORD, CIFAR10_RECORDS_PER_FILE, openCifar10 } from "../train/data/cifar.ts";
import { loadCheckpoint, saveCheckpoint, type TrainState } from "../train/checkpoint.ts";
import { parseTrainArgs } from "../train/main.ts";

/** The labels of one pass over `split`. */
async function pass(data: Dataset, split: "train" | "val"): Promise<number[]> {
  const labels: number[] = [];
  for await (const b of data.batches(split, { batchSize: 4, epoch: 0, seed: 0, train: false })) {
    labels.push(...b.labels);
  }
  return labels;
}

/** `error` exists, is one line and matches every pattern. */
function oneLineError(error: Error | undefined, ...patterns: RegExp[]): void {
  assert.ok(error, "expected an error");
  assert.ok(!error.message.includes("\n"), `multi-line: ${error.message}`);
  for (const p of patterns) assert.match(error.message, p);
}

Deno.test("hostile CIFAR-10: oversized, ragged and mislabelled batch files name the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lk_cifar_hostile_" });
  try {
    const good = new Uint8Array(3 * CIFAR10_RECORD);
    await Deno.writeFile(`${dir}/data_batch_1.bin`, good);
    await Deno.writeFile(`${dir}/test_batch.bin`, good);
    assert.equal((await captureWarnings(() => openCifar10(dir, 32))).value!.trainSize, 3);
    // Larger than any CIFAR-10 batch: refused from its size alone (a sparse file, never read).
    const f = await Deno.open(`${dir}/data_batch_2.bin`, { write: true, create: true });
    await f.truncate((CIFAR10_RECORDS_PER_FILE + 1) * CIFAR10_RECORD);
    f.close();
    oneLineError(
      (await captureWarnings(() => openCifar10(dir, 32))).error,
      /data_batch_2\.bin: 30733073 bytes is more than the 10000 records \(30730000 bytes\)/,
    );
    await Deno.writeFile(`${dir}/data_batch_2.bin`, good.subarray(1));
    oneLineError(
      (await captureWarnings(() => openCifar10(dir, 32))).error,
      /data_batch_2\.bin: 9218 bytes is not a whole number of 3073-byte CIFAR-10 records/,
    );
    const mislabelled = good.slice();
    mislabelled[CIFAR10_RECORD] = 200;
    await Deno.writeFile(`${dir}/data_batch_2.bin`, mislabelled);
    oneLineError(
      (await captureWarnings(() => openCifar10(dir, 32))).error,
      /data_batch_2\.bin: record 1 has label 200, CIFAR-10 labels are 0\.\.9/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A solid 12×12 PNG. */
async function png(path: string, value: number): Promise<void> {
  const sharp = await loadSharp();
  const pixels = new Uint8Array(12 * 12 * 3).fill(value);
  await sharp(pixels, { raw: { width: 12, height: 12, channels: 3 } }).png().toFile(path);
}

/** One PNG chunk with its CRC. */
function pngChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)) >>> 0);
  return out;
}

/** A well-formed 100-byte PNG claiming `w`×`h` RGB pixels: a decompression bomb's header. */
function pngClaiming(w: number, h: number): Uint8Array {
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, w);
  new DataView(ihdr.buffer).setUint32(4, h);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const idat = Uint8Array.of(0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01);
  return Uint8Array.from([
    ...[0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
    ...pngChunk("IHDR", ihdr),
    ...pngChunk("IDAT", idat),
    ...pngChunk("IEND", new Uint8Array()),
  ]);
}

Deno.test("hostile image folders: symlink cycles, devices, pixel bombs, --strict-data", async () => {
  const root = await Deno.makeTempDir({ prefix: "lk_images_hostile_" });
  try {
    for (const split of ["train", "val"]) {
      for (const cls of ["a", "b"]) {
        await Deno.mkdir(`${root}/${split}/${cls}`, { recursive: true });
        await png(`${root}/${split}/${cls}/x.png`, cls === "a" ? 20 : 200);
      }
    }
    // A folder linked from two places is listed once.
    await Deno.mkdir(`${root}/shared`);
    await png(`${root}/shared/s.png`, 90);
    await Deno.symlink(`${root}/shared`, `${root}/train/a/one`);
    await Deno.symlink(`${root}/shared`, `${root}/train/a/two`);
    const data = await openDataset({ data: root, inputSize: 8, seed: 0 });
    assert.equal(data.trainSize, 3); // x.png, one/s.png (two/ is the same folder), b/x.png

    // A link back up (hung the lister before): a one-line error naming the link.
    await Deno.symlink("..", `${root}/train/b/up`);
    const cycle = await captureWarnings(() => openDataset({ data: root, inputSize: 8, seed: 0 }));
    oneLineError(
      cycle.error,
      /train\/b\/up\/b: symbolic link cycle \(it leads back to .*, a folder above it\)/,
    );
    await Deno.remove(`${root}/train/b/up`);

    // Bad images in val/: a device posing as a JPEG, a header claiming 100000² pixels, garbage.
    await Deno.symlink("/dev/zero", `${root}/val/a/zero.jpg`);
    await Deno.writeFile(`${root}/val/a/bomb.png`, pngClaiming(100_000, 100_000));
    await Deno.writeTextFile(`${root}/val/b/junk.png`, "not a PNG");
    const lenient = await openDataset({ data: root, inputSize: 8, seed: 0 });
    const skipped = await captureWarnings(() => pass(lenient, "val"));
    assert.deepEqual(skipped.value, [0, 1]);
    assert.equal(skipped.warnings.length, 1, "reported once per pass");
    assert.match(skipped.warnings[0], /skipped 3 of 5 images .*\(first: .*val\/a\/bomb\.png: /);
    await assert.rejects(decodeImage(`${root}/val/a/zero.jpg`, 8, null), /not a regular file/);
    await assert.rejects(decodeImage(`${root}/val/a/bomb.png`, 8, null), /pixel limit/);
    const strict = await openDataset({ data: root, inputSize: 8, seed: 0, strictData: true });
    const failed = await captureWarnings(() => pass(strict, "val"));
    oneLineError(
      failed.error,
      /val\/a\/bomb\.png: cannot be decoded \(.*\); without --strict-data/,
    );
    assert.deepEqual(failed.warnings, []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("--strict-data reaches the trainer's configuration", () => {
  const cfg = parseTrainArgs(["--strict-data", "--data", "images"], true);
  assert.ok(cfg !== "help" && cfg.strictData === true);
  const off = parseTrainArgs(["--strict-data", "false"], true);
  assert.ok(off !== "help" && off.strictData === false);
  const unset = parseTrainArgs([], true);
  assert.ok(unset !== "help" && !unset.strictData);
});

function state(): TrainState {
  return {
    version: 1,
    model: "m",
    modelArgs: {},
    epoch: 1,
    batchInEpoch: 0,
    step: 10,
    bestTop1: 1,
    partial: { lossSum: 0, samples: 0 },
    config: {},
    // One row per completed epoch, as the trainer writes (the loader checks it).
    history: [{ epoch: 1 }],
    optimizerStep: 10,
    savedAt: "",
  };
}

Deno.test("damaged checkpoint: a truncated or corrupt model.safetensors is named in one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lk_ckpt_hostile_" });
  try {
    const ck = `${dir}/checkpoint-last`;
    const weights = new Map([["w", { shape: [4], data: new Float32Array([1, 2, 3, 4]) }]]);
    const optimizer = { step: 10, buffers: [[new Float32Array(4), new Float32Array(4)]] };
    await saveCheckpoint(ck, { state: state(), model: weights, ema: null, optimizer });
    const file = `${ck}/model.safetensors`;
    const good = await Deno.readFile(file);
    const damaged: [string, Uint8Array][] = [
      ["empty", new Uint8Array()],
      ["cut in the length", good.subarray(0, 5)],
      ["cut in the header", good.subarray(0, 30)],
      ["cut in the data", good.subarray(0, good.length - 3)],
      [
        "header length garbage",
        Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, ...good.subarray(8)]),
      ],
      ["header bytes flipped", good.map((b, i) => (i === 12 ? b ^ 0x40 : b))],
      ["trailing bytes", Uint8Array.from([...good, 1, 2, 3, 4])],
    ];
    for (const [what, bytes] of damaged) {
      await Deno.writeFile(file, bytes);
      const got = await loadCheckpoint(ck).then(() => undefined, (e: Error) => e);
      oneLineError(
        got,
        new RegExp(`^cannot read ${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: `),
      );
      assert.ok(got, what);
    }
    // A directory where the file should be is named too.
    await Deno.remove(file);
    await Deno.mkdir(file);
    oneLineError(
      await loadCheckpoint(ck).then(() => undefined, (e: Error) => e),
      /model\.safetensors: not a regular file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
