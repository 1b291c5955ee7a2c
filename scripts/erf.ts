/**
 * Effective receptive field (SLaK Table 6 / Fig. 3, RepLKNet Table 10 /
 * Fig. 1): for each model, the contribution matrix (`.npy`), the
 * high-contribution area ratios r(t) for t = 20/30/50/99% (a CSV row per
 * model), a heatmap PNG per model, and one side-by-side figure.
 *
 * Random weights (no `--weights`) get BatchNorm statistics and LayerScale
 * calibrated on the first images and r(t) of the map A itself (`--transform
 * linear`); trained weights the official log10(A + 1) analysis. `--help` and
 * `analysis/erf.ts` (`erfSettings`) say why.
 *
 * @example
 * ```sh
 * deno run -A scripts/erf.ts --model resnet101,convnext_tiny,slak_tiny --num 2 --size 256
 * deno run -A scripts/erf.ts --analyze out/erf/slak_tiny.npy
 * ```
 * @module
 */
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import {
  type AreaRatio,
  areaRatios,
  calibrateBatchNorm,
  calibrateLayerScale,
  ERF_THRESHOLDS,
  ErfAccumulator,
  erfSettings,
  type ErfTransform,
  layerScaleBlocks,
  normalizeErf,
} from "../analysis/erf.ts";
import { loadNpyFile, type NpyArray, NpyFormatError, serializeNpy } from "../analysis/npy.ts";
import { writeHeatmapFigure } from "../analysis/heatmap.ts";
import { toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { createModel, MODEL_NAMES } from "../models/registry.ts";
import { seedInit } from "../models/module.ts";
import { loadModelWeights } from "../train/weights.ts";
import { parseFlags } from "../train/flags.ts";
import { ProgressBar } from "../train/progress.ts";
import { naturalLikeImage, normaliseImageNet } from "../train/data/natural.ts";
import sharp from "sharp";

/** Images whose BatchNorm statistics and LayerScale random weights get (see calibrateBatchNorm). */
const CALIBRATION_IMAGES = 4;
const IMAGE_EXT = /\.(jpe?g|png|webp|bmp|tiff?)$/i;
/** What the heatmaps show, per transform. */
const CAPTIONS: Record<ErfTransform, string> = {
  log: "log10(A + 1) / max",
  linear: "A / max (linear: random weights)",
};

const HELP = `usage: deno run -A scripts/erf.ts [flags]

Effective receptive field as RepLKNet Appendix B / SLaK Sec. 5.

  --model LIST      comma-separated presets (default resnet101,convnext_tiny,slak_tiny); any of:
                    ${MODEL_NAMES.join(", ")}
  --kernels LIST    stage kernels for every model that has them, e.g. 31,29,27,13 (ConvNeXt variants)
  --weights LIST    comma-separated weights (.safetensors or official .pth), one per model; random
                    init (seeded) otherwise, with BatchNorm statistics calibrated on the first 4
                    images (the init statistics leave a deep ResNet unnormalised). Loading is
                    strict: every key of the model and the file present on both sides, same shapes
  --partial-load    with --weights: load the keys both sides share and print the missing and
                    unexpected ones (the rest keep their random init)
  --layer-scale V   random weights only: the LayerScale gammas of ConvNeXt/SLaK/ShiftwiseConv blocks.
                    calibrate (default): per channel, so each residual branch has unit RMS on the
                    calibration images, as a calibrated ResNet's last BatchNorm gives its branch; a
                    number sets every gamma to it (1e-6 = the training init, which scales every
                    branch to ~1e-6 of the identity, so the ERF is only the stem's 32×32 patch;
                    1 still leaves the branches at 2-50% of the identity: trunc_normal(0.02) init)
  --transform T     log: the official log10(A + 1) / max (default with --weights and --analyze);
                    linear: A / max (default for random weights). log10(A + 1) is not scale-free,
                    and a random network's scale is its init's: ResNet-101's A peaks ~4000x higher
                    than ConvNeXt-T's, and the log alone doubles its r(20%) (8.6 -> 17.5% at 256²)
  --images DIR      JPEG/PNG images, resized to --size (bicubic), ImageNet normalisation; default: a
                    built-in deterministic set of synthetic natural-like (1/f noise) images
  --num N           images per model (default 50)
  --size S          input size (default 1024 on a GPU; 256 on a software adapter, where 1024² through
                    SLaK-T takes hours — 256 runs in minutes)
  --seed N          seed of the random weights and synthetic images (default 0)
  --analyze FILE    skip the network: analyse a saved matrix (.npy, float32/float64)
  --out DIR         output folder (default out/erf)
  --help`;

async function loadImage(path: string, size: number): Promise<Float32Array | null> {
  try {
    const { data } = await sharp(path).removeAlpha().toColorspace("srgb")
      .resize(size, size, { fit: "fill", kernel: "cubic" }).raw().toBuffer({
        resolveWithObject: true,
      });
    const out = new Float32Array(3 * size * size);
    for (let i = 0; i < size * size; i++) {
      for (let c = 0; c < 3; c++) out[c * size * size + i] = data[3 * i + c] / 255;
    }
    return out;
  } catch {
    return null;
  }
}

async function imageFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      if (e.isDirectory) await walk(`${d}/${e.name}`);
      else if (IMAGE_EXT.test(e.name)) files.push(`${d}/${e.name}`);
    }
  };
  try {
    await walk(dir);
  } catch {
    throw new Error(`--images: cannot read folder ${dir}`);
  }
  if (files.length === 0) throw new Error(`--images: no JPEG/PNG images in ${dir}`);
  return files.sort();
}

/** The CSV row of one analysed matrix: r(t) in percent, as the papers' tables. */
function tableRow(name: string, ratios: AreaRatio[], extra: Record<string, string | number>) {
  const row: Record<string, string | number> = { model: name };
  for (const r of ratios) row[`t${Math.round(r.t * 100)}`] = +(100 * r.ratio).toFixed(2);
  return { ...row, ...extra };
}

async function main() {
  const v = parseFlags(Deno.args, {
    model: { type: "choiceList", options: MODEL_NAMES },
    kernels: { type: "intList", lengths: [4, 5], min: 1, max: 255 },
    weights: { type: "string" },
    "partial-load": { type: "boolean" },
    images: { type: "string" },
    num: { type: "int", min: 1, max: 100_000, default: 50 },
    size: { type: "int", min: 32, max: 4096 },
    seed: { type: "int", min: 0, max: 2 ** 32 - 1, default: 0 },
    "layer-scale": { type: "string" },
    transform: { type: "choice", options: ["log", "linear"] },
    analyze: { type: "string" },
    out: { type: "string", default: "out/erf" },
    help: { type: "boolean" },
  });
  if (v.help) return console.log(HELP);
  const out = v.out;
  if (v["partial-load"] && !v.weights) {
    throw new Error("--partial-load applies to --weights: give the weights files");
  }
  if (v.analyze) {
    const network = (["model", "kernels", "weights", "images", "size", "layer-scale"] as const)
      .find((f) => v[f] !== undefined);
    if (network) throw new Error(`--${network}: no network with --analyze`);
    await Deno.mkdir(out, { recursive: true });
    const { transform } = erfSettings({ weights: true, transform: v.transform });
    let a: NpyArray;
    try {
      a = await loadNpyFile(v.analyze);
    } catch (e) {
      if (e instanceof NpyFormatError) throw new Error(`--analyze: ${e.message}`);
      throw new Error(`--analyze: cannot read ${v.analyze}`);
    }
    if (a.shape.length !== 2) {
      throw new Error(`--analyze: ${v.analyze} has shape [${a.shape}], expected a 2-D matrix`);
    }
    const [h, w] = a.shape;
    const norm = normalizeErf(a.data, transform);
    const name = v.analyze.replace(/^.*\//, "").replace(/\.npy$/, "");
    const row = tableRow(name, areaRatios(norm, h, w), { size: h, transform, file: v.analyze });
    console.log(toCsv([row]).trim());
    await writeFileAtomic(`${out}/${name}_analysis.csv`, toCsv([row]));
    await writeHeatmapFigure(`${out}/${name}.png`, [{
      title: name,
      data: norm,
      height: h,
      width: w,
    }], {
      caption: CAPTIONS[transform],
    });
    return;
  }

  const models = v.model ?? ["resnet101", "convnext_tiny", "slak_tiny"];
  const weights = v.weights ? v.weights.split(",") : [];
  if (weights.some((w) => !w)) throw new Error(`--weights: an empty file name in "${v.weights}"`);
  if (weights.length && weights.length !== models.length) {
    throw new Error(
      `--weights: ${weights.length} files for ${models.length} models (give one per model)`,
    );
  }
  const settings = erfSettings({
    weights: weights.length > 0,
    layerScale: v["layer-scale"],
    transform: v.transform,
  });
  const kernels = v.kernels;
  const files = v.images ? await imageFiles(v.images) : null;
  await Deno.mkdir(out, { recursive: true });
  await initGpu();
  const size = v.size ?? (gpu().isFallback ? 256 : 1024);
  if (!v.size && gpu().isFallback) {
    console.error(`software adapter (${gpu().description}): --size defaults to 256`);
  }
  const { num, seed } = v;
  console.error(
    weights.length
      ? `trained weights: their own BatchNorm statistics and LayerScale; transform ${settings.transform}`
      : `random weights (seed ${seed}): BatchNorm statistics calibrated, LayerScale ${
        settings.layerScale === "calibrate"
          ? "calibrated (unit-RMS residual branches)"
          : `= ${settings.layerScale}`
      }, transform ${settings.transform} (see --help)`,
  );

  const rows: Record<string, string | number>[] = [];
  const panels = [];
  for (const [mi, name] of models.entries()) {
    seedInit(seed);
    // Random weights: gammas 1 while BatchNorm is calibrated, then calibrated themselves (or the
    // --layer-scale constant); see calibrateLayerScale for why not the training init 1e-6.
    const ls = settings.layerScale;
    const overrides = {
      ...(kernels ? { kernels } : {}),
      ...(ls === "checkpoint" ? {} : { layerScaleInit: ls === "calibrate" ? 1 : ls }),
    };
    const model = createModel(name, overrides);
    const hasLayerScale = layerScaleBlocks(model).length > 0;
    if (weights[mi]) {
      await loadModelWeights(model, weights[mi], {
        flag: "--weights",
        partial: v["partial-load"],
      });
    } else {
      // Random weights: BatchNorm statistics of the images themselves (see calibrateBatchNorm).
      const calib = [];
      for (let k = 0; k < Math.min(num, CALIBRATION_IMAGES); k++) {
        const img = files
          ? await loadImage(files[k], size)
          : naturalLikeImage(size, seed * 100003 + k);
        if (img) calib.push(Tensor.from(normaliseImageNet(img, size), [1, 3, size, size]));
      }
      await calibrateBatchNorm(model, calib);
      // BatchNorm again afterwards: SLaK's kernel BatchNorms see the blocks' new inputs.
      if (ls === "calibrate" && await calibrateLayerScale(model, calib)) {
        await calibrateBatchNorm(model, calib);
      }
      calib.forEach((t) => t.dispose());
    }
    const acc = new ErfAccumulator(size, size);
    const bar = new ProgressBar(`ERF ${name}`, num);
    let used = 0, failed = 0;
    for (let k = 0; used < num && k < (files ? files.length : num); k++) {
      const img = files
        ? await loadImage(files[k], size)
        : naturalLikeImage(size, seed * 100003 + k);
      if (!img) {
        failed++;
        continue;
      }
      scope(() => acc.add(model, Tensor.from(normaliseImageNet(img, size), [1, 3, size, size])));
      gpu().flush();
      used++;
      if (used % 5 === 0 || used === num) await gpu().sync();
      bar.update(used, { images: used });
    }
    bar.done();
    if (used === 0) throw new Error(`--images: none of the images in ${v.images} could be decoded`);
    if (failed) console.error(`skipped ${failed} unreadable image(s)`);
    const mean = await acc.mean();
    acc.dispose();
    model.dispose();
    await writeFileAtomic(`${out}/${name}.npy`, serializeNpy(mean, [size, size]));
    const norm = normalizeErf(mean, settings.transform);
    const ratios = areaRatios(norm, size, size, ERF_THRESHOLDS);
    const row = tableRow(name, ratios, {
      size,
      images: used,
      source: files ? v.images! : "synthetic",
      weights: weights[mi] ?? `random (seed ${seed})`,
      layer_scale: !hasLayerScale ? "none" : ls === "calibrate" ? "calibrated" : String(ls),
      transform: settings.transform,
    });
    rows.push(row);
    const subtitle = ratios.map((r) => `${Math.round(r.t * 100)}%: ${(100 * r.ratio).toFixed(1)}`)
      .join("  ");
    panels.push({ title: name, subtitle, data: norm, height: size, width: size });
    await writeHeatmapFigure(`${out}/${name}.png`, [panels.at(-1)!], {
      caption: CAPTIONS[settings.transform],
    });
    console.log(
      `${name}: r(t) % = ${
        ratios.map((r) => (100 * r.ratio).toFixed(2)).join(" / ")
      }  (t = 20/30/50/99%)`,
    );
  }
  await writeFileAtomic(`${out}/erf_table.csv`, toCsv(rows));
  await writeHeatmapFigure(`${out}/erf_compare.png`, panels, {
    title: `Effective receptive field at ${size}² (${rows[0]?.source}, ${num} images)`,
    caption: `${
      CAPTIONS[settings.transform]
    }; below each map: area ratio r(t) in % for t = 20/30/50/99%`,
    side: Math.min(320, Math.max(200, Math.floor(1200 / panels.length))),
  });
  console.log(toCsv(rows).trim());
  console.error(`wrote ${out}/erf_table.csv, ${out}/erf_compare.png and per-model .npy/.png`);
}

if (import.meta.main) await runMain(main);
