/**
 * The trainer's data pipeline (CPU only, no GPU): the procedural dataset
 * (determinism, balance, label-exact augmentation, and that its label is not
 * decodable from local statistics), ImageFolder on generated PNG/JPEG files
 * (transforms, corrupt files, errors), CIFAR-10 binaries, Mixup/CutMix.
 *
 * @module
 */
import assert from "node:assert/strict";
import { captureWarnings } from "./harness.ts";
import { Rng } from "../ops/tensor.ts";
import { openDataset } from "../train/data/mod.ts";
import type { Batch, BatchOptions, Dataset } from "../train/data/types.ts";
import {
  directionClass,
  PROCEDURAL_DEFAULTS,
  ProceduralDataset,
  renderProcedural,
  type Symmetry,
  symmetryLabel,
  symmetryPoint,
  transformImage,
} from "../train/data/procedural.ts";
import { loadSharp, openImageFolder, SHARP_VERSION } from "../train/data/image_folder.ts";
import { CIFAR10_RECORD, openCifar10 } from "../train/data/cifar.ts";
import { mixupBatch, mixupTarget, randBbox, sampleBeta } from "../train/data/mixup.ts";
import {
  CIFAR10_MEAN,
  CIFAR10_STD,
  evalResizeGeometry,
  IMAGENET_MEAN,
  IMAGENET_STD,
  randomResizedCropBox,
  roundHalfEven,
} from "../train/data/transforms.ts";

async function collect(
  data: Dataset,
  split: "train" | "val",
  opts: BatchOptions,
): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of data.batches(split, opts)) out.push(b);
  return out;
}

function concatLabels(batches: Batch[]): number[] {
  return batches.flatMap((b) => [...b.labels]);
}

function sameBatches(a: Batch[], b: Batch[]): boolean {
  return a.length === b.length &&
    a.every((x, i) =>
      x.labels.every((l, j) => l === b[i].labels[j]) && x.x.every((v, j) => v === b[i].x[j])
    );
}

const ALL_SYMMETRIES: Symmetry[] = [];
for (const vflip of [false, true]) {
  for (const hflip of [false, true]) {
    for (const transpose of [false, true]) ALL_SYMMETRIES.push({ vflip, hflip, transpose });
  }
}

// ------------------------------------------------------------------ procedural

Deno.test("procedural: deterministic, balanced, shapes, epochs and resume", async () => {
  const size = 24;
  const make = (seed: number) =>
    new ProceduralDataset({ imageSize: size, seed, trainSize: 50, valSize: 21, numClasses: 4 });
  const a = make(3);
  const b = make(3);
  assert.equal(a.trainSize, 50);
  assert.equal(a.batchesPerEpoch("train", 8, true), 6);
  assert.equal(a.batchesPerEpoch("val", 8, false), 3);
  const opts = { batchSize: 8, epoch: 0, seed: 3, train: true };
  const t0 = await collect(a, "train", opts);
  assert.equal(t0.length, 6);
  for (const batch of t0) {
    assert.equal(batch.labels.length, 8);
    assert.equal(batch.x.length, 8 * 3 * size * size);
  }
  assert.ok(sameBatches(t0, await collect(b, "train", opts)), "same seed and epoch → same batches");
  const t1 = await collect(a, "train", { ...opts, epoch: 1 });
  assert.ok(!sameBatches(t0, t1), "another epoch → another order and augmentation");
  assert.ok(!sameBatches(t0, await collect(make(4), "train", opts)), "another seed → other data");
  const resumed = await collect(a, "train", { ...opts, startBatch: 4 });
  assert.ok(sameBatches(t0.slice(4), resumed), "startBatch skips exactly the first batches");

  // Eval: in order, unaugmented, last partial batch kept, labels index % K.
  const v = await collect(a, "val", { batchSize: 8, epoch: 5, seed: 3, train: false });
  assert.deepEqual(v.map((x) => x.labels.length), [8, 8, 5]);
  assert.deepEqual(concatLabels(v), Array.from({ length: 21 }, (_, i) => i % 4));
  assert.ok(
    sameBatches(v, await collect(a, "val", { batchSize: 8, epoch: 0, seed: 3, train: false })),
  );
  // Normalised like ImageNet: pixel p/255 → (p/255 − mean)/std.
  const s0 = a.sample("val", 0);
  for (let c = 0; c < 3; c++) {
    const i = c * size * size + 37;
    assert.ok(
      Math.abs(v[0].x[i] - (s0.pixels[i] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) < 1e-6,
    );
  }
  // Balance of a full default-size split: every class exactly n/K times.
  const counts = new Array(4).fill(0);
  for (let i = 0; i < PROCEDURAL_DEFAULTS.trainSize; i++) counts[i % 4]++;
  assert.deepEqual(counts, [512, 512, 512, 512]);
  const trainLabels = concatLabels(await collect(a, "train", { ...opts, batchSize: 10 }));
  const seen = new Array(4).fill(0);
  for (const l of trainLabels) seen[l]++;
  assert.ok(Math.max(...seen) - Math.min(...seen) <= 6, `augmented labels stay balanced: ${seen}`);

  // Leaving a pass early leaves no timer or work behind (the test sanitizers check).
  for await (const first of a.batches("train", opts)) {
    assert.equal(first.labels.length, 8);
    break;
  }
  const defaults = await openDataset({ inputSize: 32, seed: 0 });
  assert.equal(defaults.name, "procedural-compass4");
  assert.deepEqual([defaults.trainSize, defaults.valSize, defaults.numClasses], [2048, 512, 4]);
  assert.deepEqual(defaults.classes, ["east", "north", "west", "south"]);
  assert.throws(() => make(0).sample("train", 50), /out of range/);
  assert.throws(
    () => new ProceduralDataset({ imageSize: 32, seed: 0, numClasses: 1 }),
    /num-classes/,
  );
  assert.throws(() => new ProceduralDataset({ imageSize: 8, seed: 0 }), /input-size/);
});

Deno.test("procedural: ground truth and label-exact augmentation", async () => {
  for (const k of [4, 6, 8, 5]) {
    for (let i = 0; i < 40; i++) {
      const s = renderProcedural(11, "train", i, 32, k);
      assert.equal(directionClass(s.anchor, s.target, k), s.label);
      assert.equal(s.label, i % k);
      for (const p of [s.anchor, s.target]) {
        assert.ok(p.every((v) => v > 2 && v < 30), `mark inside: ${p}`);
      }
      const dist = Math.hypot(s.target[0] - s.anchor[0], s.target[1] - s.anchor[1]);
      assert.ok(dist >= 0.3 * 32, `marks far apart: ${dist.toFixed(1)} px`);
      // Every symmetry the dataset may draw maps the ground truth consistently.
      for (const sym of ALL_SYMMETRIES) {
        if ((sym.hflip && k % 2) || (sym.transpose && k % 4)) continue;
        const l = symmetryLabel(sym, s.label, k);
        assert.equal(
          directionClass(symmetryPoint(sym, s.anchor, 32), symmetryPoint(sym, s.target, 32), k),
          l,
        );
      }
    }
  }
  // Each augmented training image is a symmetry of the stored one, with the matching label.
  const size = 20;
  const data = new ProceduralDataset({
    imageSize: size,
    seed: 2,
    trainSize: 24,
    valSize: 24,
    numClasses: 8,
  });
  const plain = new Map<number, Float32Array>();
  for (let i = 0; i < 24; i++) {
    const px = data.sample("train", i).pixels;
    plain.set(
      i,
      Float32Array.from(px, (p, j) => {
        const c = Math.floor(j / (size * size));
        return (p / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
      }),
    );
  }
  const used = new Set<string>();
  for (
    const batch of await collect(data, "train", { batchSize: 6, epoch: 1, seed: 2, train: true })
  ) {
    for (let j = 0; j < 6; j++) {
      const img = batch.x.subarray(j * 3 * size * size, (j + 1) * 3 * size * size);
      let match: string | null = null;
      for (const [index, src] of plain) {
        for (const sym of ALL_SYMMETRIES) {
          const out = new Float32Array(src.length);
          transformImage(src, size, sym, out, 0);
          if (
            out.every((v, q) => v === img[q]) &&
            symmetryLabel(sym, index % 8, 8) === batch.labels[j]
          ) {
            match = JSON.stringify(sym);
          }
        }
      }
      assert.ok(match, "augmented image is a symmetry of a sample with the mapped label");
      used.add(match);
    }
  }
  assert.ok(used.size >= 4, `several symmetries drawn: ${used.size}`);
});

/**
 * Least-squares (ridge) linear classifier on `features`, trained on one split
 * and scored on the other: the accuracy a linear read-out of those features gets.
 */
function linearProbe(
  train: number[][],
  trainLabels: number[],
  val: number[][],
  valLabels: number[],
  k: number,
): number {
  const d = train[0].length + 1;
  const mu = new Array(d - 1).fill(0);
  const sd = new Array(d - 1).fill(0);
  for (const f of train) f.forEach((v, i) => (mu[i] += v / train.length));
  for (const f of train) f.forEach((v, i) => (sd[i] += (v - mu[i]) ** 2 / train.length));
  const z = (f: number[]) => [...f.map((v, i) => (v - mu[i]) / (Math.sqrt(sd[i]) + 1e-9)), 1];
  // Normal equations (XᵀX + λI) W = XᵀY, solved by Gauss–Jordan.
  const a = Array.from(
    { length: d },
    (_, i) => Array.from({ length: d + k }, (_, j) => (i === j ? 1e-3 : 0)),
  );
  train.forEach((f, n) => {
    const x = z(f);
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) a[i][j] += x[i] * x[j];
      a[i][d + trainLabels[n]] += x[i];
    }
  });
  for (let c = 0; c < d; c++) {
    const p = a[c][c];
    for (let j = 0; j < d + k; j++) a[c][j] /= p;
    for (let r = 0; r < d; r++) {
      if (r === c) continue;
      const m = a[r][c];
      for (let j = 0; j < d + k; j++) a[r][j] -= m * a[c][j];
    }
  }
  let correct = 0;
  val.forEach((f, n) => {
    const x = z(f);
    let best = 0;
    let bestScore = -Infinity;
    for (let c = 0; c < k; c++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += x[i] * a[i][d + c];
      if (s > bestScore) [best, bestScore] = [c, s];
    }
    if (best === valLabels[n]) correct++;
  });
  return correct / val.length;
}

/**
 * Local features of one image: the mean colour of the central 5×5 patch,
 * and 5×5-neighbourhood statistics (window mean colour, luminance contrast)
 * pooled over all windows by mean, max and a contrast histogram — what a
 * small-kernel network with global pooling can compute.
 */
function localFeatures(px: Uint8Array, s: number): { centre: number[]; pooled: number[] } {
  const plane = s * s;
  const c0 = Math.floor(s / 2) - 2;
  const centre = [0, 1, 2].map((c) => {
    let t = 0;
    for (let y = c0; y < c0 + 5; y++) {
      for (let x = c0; x < c0 + 5; x++) t += px[c * plane + y * s + x];
    }
    return t / 25 / 255;
  });
  // Integral images of R, G, B, luminance and luminance² give every 5×5 window's sums in O(1).
  const w = s + 1;
  const integral = Array.from({ length: 5 }, () => new Float64Array(w * w));
  for (let y = 0; y < s; y++) {
    for (let x = 0; x < s; x++) {
      const i = y * s + x;
      const r = px[i] / 255;
      const g = px[plane + i] / 255;
      const b = px[2 * plane + i] / 255;
      const l = 0.299 * r + 0.587 * g + 0.114 * b;
      const v = [r, g, b, l, l * l];
      for (let f = 0; f < 5; f++) {
        const t = integral[f];
        t[(y + 1) * w + x + 1] = v[f] + t[y * w + x + 1] + t[(y + 1) * w + x] - t[y * w + x];
      }
    }
  }
  const box = (t: Float64Array, y: number, x: number) =>
    (t[(y + 5) * w + x + 5] - t[y * w + x + 5] - t[(y + 5) * w + x] + t[y * w + x]) / 25;
  const sums = [0, 0, 0, 0, 0];
  const maxes = [-Infinity, -Infinity, -Infinity, -Infinity, -Infinity];
  const hist = [0, 0, 0, 0];
  let windows = 0;
  for (let y = 0; y + 5 <= s; y++) {
    for (let x = 0; x + 5 <= s; x++) {
      const f = integral.map((t) => box(t, y, x));
      f[4] = Math.sqrt(Math.max(0, f[4] - f[3] * f[3])); // luminance contrast (std) of the window
      f.forEach((v, i) => {
        sums[i] += v;
        maxes[i] = Math.max(maxes[i], v);
      });
      hist[Math.min(3, Math.floor(f[4] / 0.06))]++;
      windows++;
    }
  }
  return {
    centre,
    pooled: [...sums.map((v) => v / windows), ...maxes, ...hist.map((h) => h / windows)],
  };
}

Deno.test("procedural: key colours repaint only the two key marks, white anchor and black target", () => {
  const s = 48;
  for (let i = 0; i < 16; i++) {
    const plain = renderProcedural(3, "train", i, s, 4);
    const keyed = renderProcedural(3, "train", i, s, 4, 12, true);
    assert.equal(keyed.label, plain.label);
    assert.deepEqual([keyed.anchor, keyed.target], [plain.anchor, plain.target]);
    const r = Math.max(2.5, 0.09 * s);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          const at = (c * s + y) * s + x;
          if (keyed.pixels[at] === plain.pixels[at]) continue;
          const near = [keyed.anchor, keyed.target].some(([mx, my]) =>
            Math.hypot(x + 0.5 - mx, y + 0.5 - my) <= r + 1.5
          );
          assert.ok(near, `sample ${i}: pixel (${x}, ${y}) changed away from the key marks`);
        }
      }
      // The disc's centre is solid black (plus the ±5% noise).
      const [tx, ty] = keyed.target.map(Math.floor);
      assert.ok(keyed.pixels[(c * s + ty) * s + tx] <= 14, `sample ${i}: target not black`);
    }
  }
  const fewer = new ProceduralDataset({ imageSize: s, seed: 3, distractors: 0, keyColours: true });
  assert.equal(fewer.sample("train", 0).distractors, 0);
  assert.equal(fewer.name, "procedural-compass4-keyed");
  assert.throws(
    () => new ProceduralDataset({ imageSize: s, seed: 3, distractors: 13 }),
    /--distractors must be an integer in 0..12, got 13/,
  );
});

for (const keyColours of [false, true]) {
  Deno.test(`procedural${keyColours ? " (key colours)" : ""}: the label is not decodable from local statistics`, () => {
    const k = 4;
    const s = 32;
    const data = new ProceduralDataset({
      imageSize: s,
      seed: 0,
      trainSize: 2048,
      valSize: 512,
      numClasses: k,
      keyColours,
    });
    const gather = (split: "train" | "val", n: number) => {
      const centre: number[][] = [];
      const pooled: number[][] = [];
      const anchor: number[][] = [];
      const labels: number[] = [];
      for (let i = 0; i < n; i++) {
        const smp = data.sample(split, i);
        const f = localFeatures(smp.pixels, s);
        centre.push(f.centre);
        pooled.push(f.pooled);
        // One mark's absolute position (not a local feature: it needs the distance to the border).
        const [ax, ay] = smp.anchor.map((v) => v / s - 0.5);
        anchor.push([ax, ay, ax * ax, ay * ay, ax * ay, ax * ax * ax, ay * ay * ay]);
        labels.push(smp.label);
      }
      return { centre, pooled, anchor, labels };
    };
    const tr = gather("train", 2048);
    const va = gather("val", 512);
    const centreAcc = linearProbe(tr.centre, tr.labels, va.centre, va.labels, k);
    const pooledAcc = linearProbe(tr.pooled, tr.labels, va.pooled, va.labels, k);
    const both = (d: typeof tr) => d.centre.map((c, i) => [...c, ...d.pooled[i]]);
    const bothAcc = linearProbe(both(tr), tr.labels, both(va), va.labels, k);
    const anchorAcc = linearProbe(tr.anchor, tr.labels, va.anchor, va.labels, k);
    console.log(
      `procedural locality (chance 25%, val 512): centre 5×5 colour ${
        (100 * centreAcc).toFixed(1)
      }%, ` +
        `pooled 5×5 features ${(100 * pooledAcc).toFixed(1)}%, both ${
          (100 * bothAcc).toFixed(1)
        }%; ` +
        `anchor's absolute position alone ${
          (100 * anchorAcc).toFixed(1)
        }%, anchor→target vector 100%`,
    );
    // 4σ above chance at n = 512 is 0.25 + 4·0.019 ≈ 0.33.
    for (const acc of [centreAcc, pooledAcc, bothAcc]) {
      assert.ok(acc < 0.33, `local statistic decodes the label: ${acc}`);
    }
  });
}

// ------------------------------------------------------------------ transforms

Deno.test("transforms: RandomResizedCrop and eval geometry as torchvision/timm", () => {
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(58.5), 58);
  assert.deepEqual(evalResizeGeometry(500, 375, 224), {
    resizeWidth: 341,
    resizeHeight: 256,
    left: 58,
    top: 16,
  });
  assert.deepEqual(evalResizeGeometry(375, 500, 224), {
    resizeWidth: 256,
    resizeHeight: 341,
    left: 16,
    top: 58,
  });
  assert.deepEqual(evalResizeGeometry(100, 100, 48), {
    resizeWidth: 54,
    resizeHeight: 54,
    left: 3,
    top: 3,
  });
  assert.deepEqual(evalResizeGeometry(64, 32, 16), {
    resizeWidth: 36,
    resizeHeight: 18,
    left: 10,
    top: 1,
  });

  const rng = new Rng(5);
  let fallbacks = 0;
  for (let t = 0; t < 500; t++) {
    const w = 100 + rng.int(600);
    const h = 100 + rng.int(600);
    const box = randomResizedCropBox(w, h, rng);
    assert.ok(
      box.left >= 0 && box.top >= 0 && box.left + box.width <= w && box.top + box.height <= h,
    );
    const frac = (box.width * box.height) / (w * h);
    const ratio = box.width / box.height;
    if (box.left === Math.floor((w - box.width) / 2) && frac > 0.99) fallbacks++;
    assert.ok(frac >= 0.08 * 0.8 && frac <= 1, `area fraction ${frac}`);
    assert.ok(ratio >= (3 / 4) * 0.85 && ratio <= (4 / 3) / 0.85, `ratio ${ratio}`);
  }
  assert.ok(fallbacks < 50);
  // A strip too long for any ratio falls back to a centred crop clamped to 4:3.
  assert.deepEqual(randomResizedCropBox(1000, 10, new Rng(1)), {
    left: 493,
    top: 0,
    width: 13,
    height: 10,
  });
  assert.deepEqual(
    randomResizedCropBox(300, 200, new Rng(9)),
    randomResizedCropBox(300, 200, new Rng(9)),
  );
});

// ------------------------------------------------------------------ ImageFolder

/** Writes a solid-colour image (channels 1, 3 or 4) in `format`. */
async function writeImage(
  path: string,
  w: number,
  h: number,
  colour: number[],
  format: "png" | "jpeg",
): Promise<void> {
  const sharp = await loadSharp();
  const ch = colour.length;
  const raw = new Uint8Array(w * h * ch);
  for (let i = 0; i < w * h; i++) for (let c = 0; c < ch; c++) raw[i * ch + c] = colour[c];
  const img = sharp(raw, { raw: { width: w, height: h, channels: ch as 1 | 3 | 4 } });
  await (format === "png" ? img.png() : img.jpeg({ quality: 95 })).toFile(path);
}

const CLASS_COLOURS: Record<string, number[]> = {
  cat: [230, 20, 20],
  dog: [20, 230, 20],
  eel: [20, 20, 230],
};

/** Mean of channel c of image j of a batch (normalised units). */
function channelMean(b: Batch, j: number, c: number, size: number): number {
  const plane = size * size;
  let t = 0;
  for (let i = 0; i < plane; i++) t += b.x[j * 3 * plane + c * plane + i];
  return t / plane;
}

Deno.test("ImageFolder: generated PNG/JPEG folder, transforms, corrupt files, errors", async () => {
  const root = await Deno.makeTempDir({ prefix: "lk_imagefolder_" });
  try {
    const sharp = await loadSharp();
    assert.equal(sharp.versions.sharp, SHARP_VERSION);
    const shapes = [[40, 30], [30, 52], [64, 64], [23, 41]];
    for (const split of ["train", "val"]) {
      for (const [cls, colour] of Object.entries(CLASS_COLOURS)) {
        await Deno.mkdir(`${root}/${split}/${cls}/sub`, { recursive: true });
        const n = split === "train" ? 4 : 2;
        for (let i = 0; i < n; i++) {
          const [w, h] = shapes[i];
          const format = i % 2 === 0 ? "png" : "jpeg";
          const ext = format === "png" ? "png" : i === 1 ? "JPEG" : "jpg";
          await writeImage(
            `${root}/${split}/${cls}/${i === 3 ? "sub/" : ""}img${i}.${ext}`,
            w,
            h,
            colour,
            format,
          );
        }
      }
    }
    // RGBA and 1-channel PNGs become RGB; non-images are ignored; a corrupt one is skipped.
    await writeImage(`${root}/train/cat/alpha.png`, 20, 20, [...CLASS_COLOURS.cat, 128], "png");
    await writeImage(`${root}/train/dog/grey.png`, 20, 20, [150], "png");
    await Deno.writeTextFile(`${root}/train/dog/notes.txt`, "not an image");
    await Deno.writeTextFile(`${root}/train/eel/broken.jpg`, "this is not a JPEG");
    const jpeg = await sharp(new Uint8Array(48 * 48 * 3).fill(90), {
      raw: { width: 48, height: 48, channels: 3 },
    })
      .jpeg().toBuffer();
    await Deno.writeFile(`${root}/val/cat/truncated.jpg`, jpeg.subarray(0, jpeg.length >> 1));

    const size = 16;
    const data = await openDataset({ data: `${root}/`, inputSize: size, seed: 1 });
    assert.deepEqual(data.classes, ["cat", "dog", "eel"]);
    assert.equal(data.numClasses, 3);
    assert.equal(data.trainSize, 15); // 12 + alpha + grey + broken
    assert.equal(data.valSize, 7);
    assert.equal(data.imageSize, size);
    assert.equal(data.batchesPerEpoch("train", 4, true), 3);
    assert.equal(data.batchesPerEpoch("val", 4, false), 2);

    // Eval: in order, one corrupt file skipped and reported once.
    const { value: val, warnings } = await captureWarnings(() =>
      collect(data, "val", { batchSize: 4, epoch: 0, seed: 1, train: false })
    );
    assert.deepEqual(val!.map((b) => b.labels.length), [3, 3]); // truncated.jpg (val index 2) left out
    assert.deepEqual(concatLabels(val!), [0, 0, 1, 1, 2, 2]);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /skipped 1 of 7 images .*truncated\.jpg/);
    // Solid colours survive resize + crop; normalised with the ImageNet mean/std.
    for (const b of val!) {
      for (let j = 0; j < b.labels.length; j++) {
        const colour = CLASS_COLOURS[data.classes[b.labels[j]]];
        for (let c = 0; c < 3; c++) {
          const want = (colour[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
          assert.ok(
            Math.abs(channelMean(b, j, c, size) - want) < 0.12,
            `class ${b.labels[j]} channel ${c}`,
          );
        }
        assert.equal(b.x.length, b.labels.length * 3 * size * size);
      }
    }

    // Train: seeded shuffle + augmentation, drop last; corrupt file counted once per pass.
    const opts = { batchSize: 4, epoch: 0, seed: 1, train: true };
    const runA = await captureWarnings(() => collect(data, "train", { ...opts, batchSize: 15 }));
    assert.equal(runA.value![0].labels.length, 14);
    assert.equal(runA.warnings.length, 1);
    assert.match(runA.warnings[0], /skipped 1 of 15 .*broken\.jpg/);
    const t1 = await captureWarnings(() => collect(data, "train", opts));
    const t2 = await captureWarnings(() => collect(data, "train", opts));
    assert.ok(sameBatches(t1.value!, t2.value!), "deterministic by (seed, epoch)");
    const t3 = await captureWarnings(() => collect(data, "train", { ...opts, epoch: 1 }));
    const early = await captureWarnings(async () => {
      for await (const b of data.batches("train", { ...opts, batchSize: 2 })) return b;
    });
    assert.equal(early.value!.labels.length, 2);
    assert.ok(!sameBatches(t1.value!, t3.value!));
    const labels = concatLabels(runA.value!).sort();
    assert.deepEqual(labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
    // The grey image (150) came through as three equal channels.
    const grey = runA.value![0];
    const greyRow = [...grey.labels].findIndex((_, j) =>
      [0, 1, 2].every((c) =>
        Math.abs(channelMean(grey, j, c, size) - (150 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) <
          0.02
      )
    );
    assert.ok(greyRow >= 0, "greyscale PNG decoded to RGB");

    // Eval geometry on a horizontal ramp: 64×32 → 36×18 → crop columns 10..25.
    const ramp = new Uint8Array(64 * 32 * 3);
    for (let y = 0; y < 32; y++) for (let x = 0; x < 64; x++) ramp[(y * 64 + x) * 3] = x * 4;
    await Deno.mkdir(`${root}/ramp/train/a`, { recursive: true });
    await Deno.mkdir(`${root}/ramp/val/a`, { recursive: true });
    await sharp(ramp, { raw: { width: 64, height: 32, channels: 3 } }).png().toFile(
      `${root}/ramp/val/a/r.png`,
    );
    await Deno.copyFile(`${root}/ramp/val/a/r.png`, `${root}/ramp/train/a/r.png`);
    const rampData = await openImageFolder(`${root}/ramp`, 16);
    const [rb] = await collect(rampData, "val", { batchSize: 1, epoch: 0, seed: 0, train: false });
    for (const col of [2, 8, 13]) {
      const resizedX = 10 + col; // column in the 36-wide resized image
      const srcX = (resizedX + 0.5) * (64 / 36) - 0.5;
      const got = (rb.x[8 * 16 + col] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255;
      assert.ok(
        Math.abs(got - 4 * srcX) < 3,
        `column ${col}: ${got.toFixed(1)} vs ${(4 * srcX).toFixed(1)}`,
      );
    }

    // All corrupt: an error naming the folder, not an empty epoch.
    await Deno.mkdir(`${root}/bad/train/a`, { recursive: true });
    await Deno.mkdir(`${root}/bad/val/a`, { recursive: true });
    for (const s of ["train", "val"]) {
      for (let i = 0; i < 3; i++) {
        await Deno.writeTextFile(`${root}/bad/${s}/a/x${i}.png`, "garbage");
      }
    }
    const bad = await openDataset({ data: `${root}/bad`, inputSize: 8, seed: 0 });
    const allBad = await captureWarnings(() =>
      collect(bad, "val", { batchSize: 2, epoch: 0, seed: 0, train: false })
    );
    assert.match(
      allBad.error?.message ?? "",
      /bad\/val: none of the 3 images tried could be decoded \(first: .*x0\.png/,
    );

    // Missing or empty folders: one-line errors naming the path and the layout.
    const err = async (p: Promise<unknown>, re: RegExp) => {
      const e = await p.then(() => null, (e: Error) => e);
      assert.ok(e, "expected an error");
      assert.match(e.message, re);
      assert.ok(!e.message.includes("\n"), "one line");
    };
    await err(
      openDataset({ data: `${root}/nope`, inputSize: 8, seed: 0 }),
      /nope: no such directory \(expected .*train\//,
    );
    await Deno.mkdir(`${root}/empty`);
    await err(
      openDataset({ data: `${root}/empty`, inputSize: 8, seed: 0 }),
      /empty: has neither train\/ nor data_batch_1/,
    );
    await Deno.mkdir(`${root}/empty/train`);
    await err(
      openDataset({ data: `${root}/empty`, inputSize: 8, seed: 0 }),
      /empty\/train: no class folders/,
    );
    await Deno.mkdir(`${root}/empty/train/a`);
    await err(
      openDataset({ data: `${root}/empty`, inputSize: 8, seed: 0 }),
      /empty\/train: no image files/,
    );
    await Deno.writeTextFile(`${root}/empty/train/a/x.png`, "");
    await err(
      openDataset({ data: `${root}/empty`, inputSize: 8, seed: 0 }),
      /empty\/val: no such directory/,
    );
    await Deno.mkdir(`${root}/empty/val/zebra`, { recursive: true });
    await err(
      openDataset({ data: `${root}/empty`, inputSize: 8, seed: 0 }),
      /class folders not in train\/: zebra/,
    );
    await Deno.writeTextFile(`${root}/afile`, "");
    await err(
      openDataset({ data: `${root}/afile`, inputSize: 8, seed: 0 }),
      /afile: not a directory/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

// ------------------------------------------------------------------ CIFAR-10

/** n records: label i % 10; R = index, G = 8·column, B = 8·row. */
function cifarRecords(n: number, first: number): Uint8Array {
  const out = new Uint8Array(n * CIFAR10_RECORD);
  for (let r = 0; r < n; r++) {
    const o = r * CIFAR10_RECORD;
    out[o] = (first + r) % 10;
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        out[o + 1 + y * 32 + x] = first + r;
        out[o + 1 + 1024 + y * 32 + x] = 8 * x;
        out[o + 1 + 2048 + y * 32 + x] = 8 * y;
      }
    }
  }
  return out;
}

Deno.test("CIFAR-10: binary records, crop+flip augmentation, resize", async () => {
  const root = await Deno.makeTempDir({ prefix: "lk_cifar_" });
  try {
    const dir = `${root}/cifar-10-batches-bin`;
    await Deno.mkdir(dir);
    await Deno.writeFile(`${dir}/data_batch_1.bin`, cifarRecords(20, 0));
    await Deno.writeFile(`${dir}/test_batch.bin`, cifarRecords(7, 100));
    const opened = await captureWarnings(() => openDataset({ data: root, inputSize: 32, seed: 4 }));
    const data = opened.value!;
    assert.match(opened.warnings[0], /only 1 of the 5 CIFAR-10 training files/);
    assert.equal(data.name, "cifar10");
    assert.equal(data.trainSize, 20);
    assert.equal(data.valSize, 7);
    assert.equal(data.classes[9], "truck");
    const lut = (c: number, v: number) => (v / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];

    const val = await collect(data, "val", { batchSize: 4, epoch: 0, seed: 4, train: false });
    assert.deepEqual(val.map((b) => b.labels.length), [4, 3]);
    assert.deepEqual(concatLabels(val), [0, 1, 2, 3, 4, 5, 6]);
    for (const [i, v] of [[0, 100], [1024 + 5 * 32 + 7, 56], [2048 + 5 * 32 + 7, 40]]) {
      const c = Math.floor(i / 1024);
      assert.ok(Math.abs(val[0].x[i] - lut(c, v)) < 1e-6);
    }

    // Train: 2 full batches of 8; each image is a ±4 shift (zero padded) of its record, maybe mirrored.
    const train = await collect(data, "train", { batchSize: 8, epoch: 2, seed: 4, train: true });
    assert.equal(train.length, 2);
    let flips = 0;
    let shifts = 0;
    for (const b of train) {
      for (let j = 0; j < 8; j++) {
        const img = b.x.subarray(j * 3072, (j + 1) * 3072);
        const index = Math.abs(
          Math.round((img[16 * 32 + 16] * CIFAR10_STD[0] + CIFAR10_MEAN[0]) * 255),
        );
        assert.equal(b.labels[j], index % 10);
        let found = false;
        for (let dy = -4; dy <= 4 && !found; dy++) {
          for (let dx = -4; dx <= 4 && !found; dx++) {
            for (const flip of [false, true]) {
              const ok = [0, 1, 2].every((c) => {
                for (let y = 0; y < 32; y++) {
                  for (let x = 0; x < 32; x++) {
                    const sy = y + dy;
                    const sx = (flip ? 31 - x : x) + dx;
                    const v = sy < 0 || sy > 31 || sx < 0 || sx > 31
                      ? 0
                      : [index, 8 * sx, 8 * sy][c];
                    if (Math.abs(img[c * 1024 + y * 32 + x] - lut(c, v)) > 1e-6) return false;
                  }
                }
                return true;
              });
              if (ok) {
                found = true;
                if (flip) flips++;
                if (dx || dy) shifts++;
                break;
              }
            }
          }
        }
        assert.ok(found, `train image ${j} is a padded crop (+flip) of record ${index}`);
      }
    }
    assert.ok(flips > 0 && flips < 16 && shifts > 8, `flips ${flips}, shifts ${shifts}`);

    // Resized bilinearly: constants stay constant, ramps stay monotone.
    const big = (await captureWarnings(() => openCifar10(root, 48))).value!;
    const [vb] = await collect(big, "val", { batchSize: 2, epoch: 0, seed: 0, train: false });
    assert.equal(vb.x.length, 2 * 3 * 48 * 48);
    for (let i = 0; i < 48 * 48; i++) assert.ok(Math.abs(vb.x[i] - lut(0, 100)) < 1e-5);
    for (let x = 1; x < 48; x++) {
      assert.ok(vb.x[48 * 48 + 10 * 48 + x] >= vb.x[48 * 48 + 10 * 48 + x - 1]);
    }
    assert.ok(Math.abs(vb.x[48 * 48 + 20 * 48] - lut(1, 0)) < 1e-6); // left edge clamps to column 0

    await Deno.writeFile(`${dir}/test_batch.bin`, new Uint8Array(CIFAR10_RECORD + 5));
    const wrongSize = await captureWarnings(() => openCifar10(root, 32));
    assert.match(wrongSize.error!.message, /test_batch\.bin: 3078 bytes is not a whole number/);
    await Deno.remove(`${dir}/test_batch.bin`);
    assert.match(
      (await captureWarnings(() => openCifar10(root, 32))).error!.message,
      /no test_batch\.bin/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

// ------------------------------------------------------------------ Mixup / CutMix

Deno.test("Mixup/CutMix: timm semantics, λ, box correction, targets, determinism", () => {
  const n = 6;
  const s = 10;
  const k = 5;
  const x = Float32Array.from({ length: n * 3 * s * s }, (_, i) => Math.sin(i * 0.37));
  const labels = Int32Array.from([0, 1, 2, 3, 4, 1]);
  const batch = { x, labels };
  const copy = new Float32Array(x);
  const img = 3 * s * s;
  let cutmixCount = 0;
  for (let seed = 0; seed < 200; seed++) {
    const opts = { mixup: 0.8, cutmix: 1.0, labelSmoothing: 0.1, numClasses: k };
    const m = mixupBatch(batch, opts, new Rng(seed));
    assert.ok(m.lam >= 0 && m.lam <= 1);
    for (let i = 0; i < n; i++) {
      const row = m.targets.subarray(i * k, (i + 1) * k);
      assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-6, "targets sum to 1");
    }
    assert.deepEqual(m.targets, mixupTarget(labels, k, m.lam, 0.1));
    if (m.cutmix) {
      cutmixCount++;
      const [yl, yh, xl, xh] = m.box!;
      assert.ok(
        Math.abs(m.lam - (1 - ((yh - yl) * (xh - xl)) / (s * s))) < 1e-12,
        "λ = 1 − box area / image area",
      );
      for (
        const [i, c, y, xx] of [[0, 0, yl, xl], [2, 1, yh - 1, xh - 1], [4, 2, 0, 0], [
          5,
          2,
          s - 1,
          s - 1,
        ]]
      ) {
        const inBox = y >= yl && y < yh && xx >= xl && xx < xh;
        const src = inBox ? n - 1 - i : i;
        if (yh > yl && xh > xl || !inBox) {
          assert.equal(
            m.x[i * img + c * s * s + y * s + xx],
            x[src * img + c * s * s + y * s + xx],
          );
        }
      }
    } else {
      assert.equal(m.box, null);
      for (const q of [0, 17, img + 3, 5 * img + 99]) {
        const i = Math.floor(q / img);
        const want = m.lam * x[q] + (1 - m.lam) * x[(n - 1 - i) * img + (q % img)];
        assert.ok(Math.abs(m.x[q] - want) < 1e-6);
      }
    }
  }
  assert.ok(cutmixCount > 70 && cutmixCount < 130, `switch p≈0.5: ${cutmixCount}/200`);
  assert.deepEqual(x, copy, "the input batch is left untouched");

  // Deterministic by the Rng's seed.
  const o = { mixup: 0.8, cutmix: 1.0, labelSmoothing: 0.1, numClasses: k };
  assert.deepEqual(mixupBatch(batch, o, new Rng(42)), mixupBatch(batch, o, new Rng(42)));
  assert.notDeepEqual(mixupBatch(batch, o, new Rng(42)).x, mixupBatch(batch, o, new Rng(43)).x);
  // Only CutMix / only Mixup.
  for (let seed = 0; seed < 20; seed++) {
    assert.equal(mixupBatch(batch, { ...o, mixup: 0 }, new Rng(seed)).cutmix, true);
    assert.equal(mixupBatch(batch, { ...o, cutmix: 0 }, new Rng(seed)).cutmix, false);
  }
  // Smoothing as timm: off = ε/K, on = 1 − ε + ε/K; with λ the mix of the row and its mirror.
  const t = mixupTarget(Int32Array.from([0, 1]), 4, 0.7, 0.2);
  const close = (a: ArrayLike<number>, b: number[]) => b.every((v, i) => Math.abs(a[i] - v) < 1e-6);
  assert.ok(
    close(t, [
      0.7 * 0.85 + 0.3 * 0.05,
      0.7 * 0.05 + 0.3 * 0.85,
      0.05,
      0.05,
      0.3 * 0.85 + 0.7 * 0.05,
      0.3 * 0.05 + 0.7 * 0.85,
      0.05,
      0.05,
    ]),
  );
  const none = mixupBatch(
    batch,
    { mixup: 0, cutmix: 0, labelSmoothing: 0, numClasses: k },
    new Rng(0),
  );
  assert.equal(none.lam, 1);
  assert.deepEqual(none.x, x);

  // rand_bbox: int(S·√(1−λ)) sides (before clipping), centred on a pixel.
  for (let seed = 0; seed < 50; seed++) {
    const [yl, yh, xl, xh] = randBbox(32, 24, 0.75, new Rng(seed));
    assert.ok(yh - yl <= 16 && xh - xl <= 12 && yl >= 0 && yh <= 32 && xl >= 0 && xh <= 24);
  }
  // Beta(α, α): mean 1/2, variance 1/(4(2α+1)).
  const rng = new Rng(1);
  for (const a of [0.8, 1.0, 0.2]) {
    let m1 = 0;
    let m2 = 0;
    const draws = 20000;
    for (let i = 0; i < draws; i++) {
      const v = sampleBeta(rng, a, a);
      assert.ok(v >= 0 && v <= 1);
      m1 += v / draws;
      m2 += v * v / draws;
    }
    const variance = m2 - m1 * m1;
    assert.ok(Math.abs(m1 - 0.5) < 0.01, `Beta(${a}) mean ${m1}`);
    assert.ok(Math.abs(variance - 1 / (4 * (2 * a + 1))) < 0.01, `Beta(${a}) variance ${variance}`);
  }
  assert.throws(
    () => mixupBatch({ x: new Float32Array(10), labels: Int32Array.from([0]) }, o, new Rng(0)),
    /N×3×S×S/,
  );
});
