/**
 * SLaK Table 7, "use sparse groups, expand more": SLaK-T at five (sparsity,
 * width) pairs that keep the FLOPs about equal — params and FLOPs counted
 * here (no GPU) next to the paper's, and with `--train` each setting trained
 * briefly (a tiny SLaK on the procedural dataset by default) with the
 * official sparse recipe (SNIP densities, prune-and-grow), reporting its
 * accuracy and its FLOPs from the masks it ended with.
 *
 * Params are SLaK's count (non-zeros of conv/linear weights, at the
 * sparsity given: every masked layer at density 1 − sparsity). FLOPs
 * (multiply-accumulates, fvcore rules) depend on where the non-zeros sit;
 * three layouts are given: `uniform` (every masked weight at 1 − sparsity),
 * `ls_snip` (SNIP at initialisation as LayerScale 1e-6 shapes it: weights
 * outside the blocks dense, the blocks uniform — see
 * `layerScaleSnipDensities`), and the MAC-weighted density the paper's
 * value implies. The paper's densities came from SNIP on one ImageNet batch:
 * `--snip` runs that procedure (official `SNIP()`: |w·g| of every masked
 * weight on one training batch of 128 images, one global top-k) on SLaK-T at
 * 224² for each setting and counts the layout it gives — on natural-like
 * images by default, or on a dataset folder (`--snip-data`, ImageNet layout)
 * for the paper's own input. It needs a GPU (about 5 min on an H100).
 *
 * ```sh
 * deno run -A scripts/sparsity_width.ts                       # table, CSV, PNG
 * deno run -A scripts/sparsity_width.ts --snip --snip-micro-batch 32   # + measured SNIP (GPU)
 * deno run -A scripts/sparsity_width.ts --train --epochs 1    # + a short sparse run per setting
 * ```
 *
 * @example
 * ```ts
 * import { table7Rows } from "./sparsity_width.ts";
 * const r = table7Rows()[1];
 * console.log(r.sparsity, r.width, r.params_M, r.params_match); // 0.4 1.3 30.35 yes
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { writeCsv } from "../analysis/csv.ts";
import {
  countModel,
  FLOPS_RULE,
  maskDensities,
  maskedParams,
  nonzerosAt,
  uniformDensities,
} from "../analysis/flops.ts";
import { type Mark, type Panel, writeLineChart } from "../analysis/plot.ts";
import { createModel, MODEL_NAMES } from "../models/registry.ts";
import { loadSafetensorsFile } from "../models/safetensors.ts";
import { layerScaleSnipDensities } from "../sparse/density.ts";
import type { Batch } from "../train/data/types.ts";
import { firstTrainingBatch, naturalLikeBatch, openDataset } from "../train/data/mod.ts";

/** The paper's settings and values (params M, GFLOPs, as printed). */
export const TABLE7: readonly {
  sparsity: number;
  width: number;
  params: string;
  gflops: string;
}[] = [
  { sparsity: 0.2, width: 1.1, params: "29", gflops: "5.0" },
  { sparsity: 0.4, width: 1.3, params: "30", gflops: "5.0" },
  { sparsity: 0.55, width: 1.5, params: "30", gflops: "4.9" },
  { sparsity: 0.7, width: 1.9, params: "32", gflops: "5.0" },
  { sparsity: 0.82, width: 2.5, params: "32", gflops: "5.1" },
];

/** One row of the table. */
export interface Table7Row {
  [column: string]: number | string;
  sparsity: number;
  width: number;
  params_M: number;
  paper_params_M: string;
  params_match: string;
  gflops_uniform: number;
  gflops_ls_snip: number;
  paper_gflops: string;
  gflops_match_uniform: string;
  gflops_match_ls_snip: string;
  /** MAC-weighted density over the masked layers that the paper's FLOPs imply. */
  paper_implied_mac_density: number;
  dense_params_M: number;
  dense_gflops: number;
}

/**
 * Whether `value` prints as `paper` at the paper's decimals.
 *
 * @example
 * ```ts
 * import { matchesPaper } from "./sparsity_width.ts";
 * console.log(matchesPaper(5.0449, "5.0"), matchesPaper(9.449, "9.5")); // true false
 * ```
 */
export function matchesPaper(value: number, paper: string): boolean {
  const decimals = paper.includes(".") ? paper.split(".")[1].length : 0;
  return Number(value.toFixed(decimals)) === Number(paper);
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;
const yes = (b: boolean) => (b ? "yes" : "no");

/** Count SLaK-T at each Table 7 setting (224², no GPU). */
export function table7Rows(): Table7Row[] {
  return TABLE7.map((s) => {
    const model = createModel("slak_tiny", { widthFactor: s.width });
    const density = 1 - s.sparsity;
    const uniform = countModel(model, 224, { densities: uniformDensities(model, density) });
    const ls = countModel(model, 224, { densities: layerScaleSnipDensities(model, density) });
    const masked = uniform.layers.filter((l) => l.density < 1).reduce((a, l) => a + l.denseMacs, 0);
    const implied = (Number(s.gflops) * 1e9 - (uniform.denseMacs - masked)) / masked;
    const params = uniform.weightNonzeros / 1e6;
    return {
      sparsity: s.sparsity,
      width: s.width,
      params_M: Math.round(params * 100) / 100,
      paper_params_M: s.params,
      params_match: yes(matchesPaper(params, s.params)),
      gflops_uniform: r3(uniform.macs / 1e9),
      gflops_ls_snip: r3(ls.macs / 1e9),
      paper_gflops: s.gflops,
      gflops_match_uniform: yes(matchesPaper(uniform.macs / 1e9, s.gflops)),
      gflops_match_ls_snip: yes(matchesPaper(ls.macs / 1e9, s.gflops)),
      paper_implied_mac_density: r3(implied),
      dense_params_M: Math.round(uniform.denseParams / 1e4) / 100,
      dense_gflops: r3(uniform.denseMacs / 1e9),
    };
  });
}

/** How `--snip` measures SNIP (the official `SNIP()`: one training batch, global top-k). */
export interface SnipSettings {
  /** Images SNIP scores: the first training batch (official: the per-GPU batch, 128 for SLaK-T). */
  batchSize: number;
  /**
   * Images per forward/backward; the gradients add up over the micro-batches
   * (the same gradient up to a constant, except that BatchNorm normalises
   * each micro-batch by its own statistics). Divides `batchSize`.
   */
  microBatch: number;
  /** Stochastic depth during the scoring pass (official SLaK-T: `--drop_path 0.1`). */
  dropPath: number;
  seed: number;
  /** Model preset, widened per setting (default `slak_tiny`, the paper's). */
  model?: string;
  /** The (sparsity, width) settings to score (default all of {@linkcode TABLE7}). */
  settings?: typeof TABLE7;
}

/** One setting's measured SNIP layout. */
export interface SnipRow {
  [column: string]: number | string;
  sparsity: number;
  width: number;
  data: string;
  batch: number;
  micro_batch: number;
  seed: number;
  params_M: number;
  /** Non-zeros of the conv and linear weights (SLaK's params count), exactly. */
  weight_nonzeros: number;
  gflops_snip: number;
  paper_gflops: string;
  gflops_match_snip: string;
  /** MACs of the conv and linear layers after sparsity, over their dense MACs. */
  mac_density: number;
  /** Density of the block weights of each stage, `stage0/…/stage3`. */
  stage_densities: string;
  /** Weights outside the blocks (stem, downsampling, head) kept, of all of them. */
  outside_density: number;
  seconds: number;
}

/**
 * SNIP measured on SLaK-T at each Table 7 setting: the official procedure
 * (|w ⊙ g| of every masked weight on one batch, one global top-k, layers
 * left at density ≥ 0.99 dense) on `batch` (N×3×224×224), then the params
 * and FLOPs (at the batch's image size) of that layout. Needs a GPU
 * adapter: on llvmpipe one setting takes ~3.5 min for 2 images.
 *
 * @example
 * ```ts
 * import { naturalLikeBatch } from "../train/data/natural.ts";
 * import { snipRows, TABLE7 } from "./sparsity_width.ts";
 * // Needs a GPU adapter: on llvmpipe one setting takes minutes (type-checked, not run).
 * const rows = await snipRows(naturalLikeBatch(2, 224, 0), "natural", {
 *   batchSize: 2, microBatch: 2, dropPath: 0.1, seed: 0, settings: TABLE7.slice(0, 1),
 * });
 * console.log(rows[0].params_M);
 * ```
 */
export async function snipRows(
  batch: Batch,
  dataName: string,
  s: SnipSettings,
  onRow: (row: SnipRow) => void | Promise<void> = () => {},
): Promise<SnipRow[]> {
  const { initGpu } = await import("../ops/gpu.ts");
  const { Tensor } = await import("../ops/tensor.ts");
  const { softmaxCrossEntropy } = await import("../ops/loss.ts");
  const { setForwardSeed } = await import("../models/layers.ts");
  const { DynamicSparsity } = await import("../sparse/prune_grow.ts");
  await initGpu();
  const n = batch.labels.length;
  const size = Math.round(Math.sqrt(batch.x.length / (3 * n)));
  if (n % s.microBatch !== 0) {
    throw new Error(`--snip-micro-batch: ${s.microBatch} does not divide the batch of ${n}`);
  }
  const per = 3 * size * size;
  const rows: SnipRow[] = [];
  for (const t of s.settings ?? TABLE7) {
    const started = performance.now();
    const model = createModel(s.model ?? "slak_tiny", {
      widthFactor: t.width,
      dropPath: s.dropPath,
    });
    model.train();
    setForwardSeed(s.seed);
    const losses = [];
    for (let i = 0; i < n; i += s.microBatch) {
      const x = batch.x.subarray(i * per, (i + s.microBatch) * per);
      const labels = batch.labels.subarray(i, i + s.microBatch);
      losses.push(() =>
        softmaxCrossEntropy(model.forward(Tensor.from(x, [s.microBatch, 3, size, size])), labels)
      );
    }
    const sparse = await DynamicSparsity.create(model, {
      sparsity: t.sparsity,
      init: "snip",
      pruneRate: 0.3,
      updateFrequency: 100,
      totalSteps: 1,
      seed: s.seed,
    }, losses);
    const densities = sparse.densities();
    sparse.dispose();
    const c = countModel(model, size, { densities });
    const masked = maskedParams(model).map(([k, p]) => [k, p.size] as const);
    model.dispose();
    const stage = (k: string) => /^stages\.(\d+)\./.exec(k)?.[1] ?? "outside";
    const kept = new Map<string, [number, number]>();
    for (const [k, count] of masked) {
      const [nz, all] = kept.get(stage(k)) ?? [0, 0];
      kept.set(stage(k), [nz + nonzerosAt(count, densities.get(k) ?? 1), all + count]);
    }
    const share = (g: string) => {
      const [nz, all] = kept.get(g) ?? [0, 1];
      return nz / all;
    };
    const candidates = c.layers.filter((l) => l.kind === "conv" || l.kind === "linear");
    const denseCandidates = candidates.reduce((a, l) => a + l.denseMacs, 0);
    rows.push({
      sparsity: t.sparsity,
      width: t.width,
      data: dataName,
      batch: n,
      micro_batch: s.microBatch,
      seed: s.seed,
      params_M: Math.round(c.weightNonzeros / 1e4) / 100,
      weight_nonzeros: c.weightNonzeros,
      gflops_snip: r3(c.macs / 1e9),
      paper_gflops: t.gflops,
      gflops_match_snip: yes(matchesPaper(c.macs / 1e9, t.gflops)),
      mac_density: r3(candidates.reduce((a, l) => a + l.macs, 0) / denseCandidates),
      stage_densities: [0, 1, 2, 3].map((i) => share(String(i)).toFixed(3)).join("/"),
      outside_density: r3(share("outside")),
      seconds: Math.round((performance.now() - started) / 100) / 10,
    });
    await onRow(rows.at(-1)!);
  }
  return rows;
}

/** Settings of the `--train` runs. */
export interface TrainSettings {
  model: string;
  epochs: number;
  trainSize: number;
  valSize: number;
  inputSize: number;
  batchSize: number;
  updateFrequency: number;
  seed: number;
  data?: string;
  out: string;
}

/** One trained setting. */
export interface TrainedRow {
  [column: string]: number | string;
  sparsity: number;
  width: number;
  model: string;
  top1: number;
  top5: number;
  val_loss: number;
  /** FLOPs (M MACs) of the trained model at its input size, from its final masks. */
  mflops: number;
  dense_mflops: number;
  params_nonzero: number;
  seconds: number;
}

/**
 * Train every setting briefly with the official sparse recipe; needs a GPU adapter.
 *
 * @example
 * ```ts
 * import { trainSettings } from "./sparsity_width.ts";
 * // Trains every Table 7 setting; needs a GPU adapter (type-checked, not run).
 * const rows = await trainSettings({
 *   model: "slak_cpu", epochs: 1, trainSize: 256, valSize: 64, inputSize: 32, batchSize: 32,
 *   updateFrequency: 4, seed: 0, out: "out/sparsity_width",
 * });
 * console.log(rows.map((r) => r.top1));
 * ```
 */
export async function trainSettings(t: TrainSettings): Promise<TrainedRow[]> {
  const { initGpu } = await import("../ops/gpu.ts");
  const { train } = await import("../train/trainer.ts");
  const { presetConfig } = await import("../train/config.ts");
  await initGpu();
  const rows: TrainedRow[] = [];
  for (const s of TABLE7) {
    const out = `${t.out}/runs/s${s.sparsity}_w${s.width}`;
    const started = performance.now();
    const result = await train({
      ...presetConfig("cpu"),
      model: t.model,
      data: t.data,
      out,
      epochs: t.epochs,
      batchSize: t.batchSize,
      inputSize: t.inputSize,
      trainSize: t.trainSize,
      valSize: t.valSize,
      warmupEpochs: Math.min(0.5, t.epochs / 2),
      seed: t.seed,
      widthFactor: s.width,
      sparse: true,
      sparsity: s.sparsity,
      sparseInit: "snip",
      pruneRate: 0.3,
      growth: "random",
      updateFrequency: t.updateFrequency,
    });
    const last = result.history.at(-1)!;
    const masks = await loadSafetensorsFile(`${out}/checkpoint-last/masks.safetensors`);
    const state = JSON.parse(await Deno.readTextFile(`${out}/checkpoint-last/state.json`));
    const model = createModel(t.model, state.modelArgs);
    const c = countModel(model, t.inputSize, { densities: maskDensities(masks) });
    rows.push({
      sparsity: s.sparsity,
      width: s.width,
      model: t.model,
      top1: last.top1,
      top5: last.top5,
      val_loss: last.val_loss,
      mflops: r3(c.macs / 1e6),
      dense_mflops: r3(c.denseMacs / 1e6),
      params_nonzero: c.weightNonzeros,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    });
  }
  return rows;
}

const HELP = `usage: deno run -A scripts/sparsity_width.ts [flags]

SLaK Table 7 (SLaK-T: sparsity vs width at equal FLOPs): params and FLOPs next to the paper's;
with --train, a short sparse run per setting and its accuracy. ${FLOPS_RULE}.

  --out DIR             output folder (default out/sparsity_width/)
  --train               also train each setting (GPU or llvmpipe)
  --model NAME          model to train (default slak_cpu, a tiny SLaK)
  --epochs N            epochs per run (default 1)
  --train-size N        procedural training images (default 256)
  --val-size N          procedural validation images (default 128)
  --input-size N        image side (default 32)
  --batch-size N        batch size (default 16)
  -u, --update-frequency N  optimiser steps between prune-and-grow (default 4)
  --data DIR            train on a dataset folder instead of the procedural one
  --seed N              seed (default 0)
  --snip                also measure SNIP as the official code does: SLaK-T at 224², one
                        training batch, global top-k of |w·g|; GPU (hours on llvmpipe)
  --snip-data SRC       that batch: natural (default: natural-like 1/f images, the offline
                        stand-in for ImageNet), procedural, or a dataset folder (ImageNet
                        layout, as the paper; first training batch, augmented)
  --snip-batch N        images in that batch (default 128, SLaK-T's per-GPU batch)
  --snip-micro-batch N  images per forward/backward, gradients summed (default: --snip-batch)
  --snip-drop-path P    stochastic depth while scoring (default 0.1, as SLaK-T's run)`;

async function main() {
  // Training and SNIP flags have no default here, so that one given without --train or --snip
  // is refused; their defaults (in --help) are filled in below.
  const v = parseFlags(Deno.args, {
    out: { type: "string", default: "out/sparsity_width" },
    train: { type: "boolean" },
    model: { type: "choice", options: MODEL_NAMES },
    epochs: { type: "int", min: 1, max: 100_000 },
    "train-size": { type: "int", min: 1, max: 10_000_000 },
    "val-size": { type: "int", min: 1, max: 10_000_000 },
    "input-size": { type: "int", min: 32, max: 2048 },
    "batch-size": { type: "int", min: 1, max: 65_536 },
    "update-frequency": { type: "int", short: "u", min: 1, max: 1_000_000_000 },
    data: { type: "string" },
    seed: { type: "int", min: 0, max: 2 ** 32 - 1, default: 0 },
    snip: { type: "boolean" },
    "snip-data": { type: "string" },
    "snip-batch": { type: "int", min: 1, max: 65_536 },
    "snip-micro-batch": { type: "int", min: 1, max: 65_536 },
    "snip-drop-path": { type: "number", min: 0, below: 1 },
    help: { type: "boolean", short: "h" },
  });
  if (v.help) {
    console.log(HELP);
    return;
  }
  const trainFlags = [
    "model",
    "epochs",
    "train-size",
    "val-size",
    "input-size",
    "batch-size",
    "update-frequency",
    "data",
  ] as const;
  const needsTrain = trainFlags.find((f) => v[f] !== undefined);
  if (needsTrain && !v.train) throw new Error(`--${needsTrain} applies to --train: add it`);
  const snipFlags = ["snip-data", "snip-batch", "snip-micro-batch", "snip-drop-path"] as const;
  const needsSnip = snipFlags.find((f) => v[f] !== undefined);
  if (needsSnip && !v.snip) throw new Error(`--${needsSnip} applies to --snip: add it`);
  const model = v.model ?? "slak_cpu";
  const out = v.out.replace(/\/$/, "");
  await Deno.mkdir(out, { recursive: true });
  const rows = table7Rows();
  await writeCsv(`${out}/sparsity_width.csv`, rows, {
    comments: [
      `${FLOPS_RULE}; SLaK-T at 224²; params = non-zeros of conv/linear weights (SLaK's count)`,
      "gflops_uniform: every masked weight at 1 − sparsity; gflops_ls_snip: SNIP at init as " +
      "LayerScale 1e-6 shapes it (non-block weights dense, blocks uniform)",
    ],
  });
  console.log(`# SLaK Table 7 — ${FLOPS_RULE}`);
  console.log(
    "sparsity width  params M (paper)   GFLOPs uniform / LS-SNIP (paper)  implied density",
  );
  for (const r of rows) {
    console.log(
      `${r.sparsity.toFixed(2).padStart(8)} ${(r.width + "×").padStart(5)}  ${
        r.params_M.toFixed(2).padStart(6)
      } (${r.paper_params_M}) ${r.params_match.padEnd(3)}  ${r.gflops_uniform.toFixed(2)} ${
        r.gflops_match_uniform.padEnd(3)
      } / ${r.gflops_ls_snip.toFixed(2)} ${r.gflops_match_ls_snip.padEnd(3)} (${r.paper_gflops})` +
        `   ${r.paper_implied_mac_density.toFixed(3)} vs ${(1 - r.sparsity).toFixed(2)}`,
    );
  }
  const widths = rows.map((r) => r.width);
  const panels: Panel[] = [{
    title: "SLaK-T GFLOPs at 224² (labels: params)",
    xLabel: "width factor",
    yLabel: "GFLOPs",
    xTicks: widths,
    yDomain: [4, 6.5],
    legend: "top-left",
    series: [
      { name: "paper", x: widths, y: rows.map((r) => Number(r.paper_gflops)), markers: true },
      { name: "uniform densities", x: widths, y: rows.map((r) => r.gflops_uniform), dash: "6 3" },
      {
        name: "LayerScale-SNIP densities",
        x: widths,
        y: rows.map((r) => r.gflops_ls_snip),
        markers: true,
      },
    ],
    marks: rows.map((r): Mark => ({
      x: r.width,
      y: r.gflops_ls_snip,
      label: `${r.params_M.toFixed(1)}M`,
      below: true,
    })),
  }];
  if (v.snip) {
    const batchSize = v["snip-batch"] ?? 128;
    const microBatch = v["snip-micro-batch"] ?? batchSize;
    const dropPath = v["snip-drop-path"] ?? 0.1;
    if (batchSize % microBatch !== 0) {
      throw new Error(
        `--snip-micro-batch: ${microBatch} does not divide --snip-batch ${batchSize}`,
      );
    }
    const seed = v.seed;
    const source = v["snip-data"] ?? "natural";
    let batch: Batch;
    let dataName = `natural-like (seed ${seed})`;
    if (source === "natural") batch = naturalLikeBatch(batchSize, 224, seed);
    else {
      const data = await openDataset({
        data: source === "procedural" ? undefined : source,
        inputSize: 224,
        seed,
        trainSize: Math.max(256, batchSize),
        valSize: 16,
      }).catch((e) => {
        throw new Error(`--snip-data: ${e instanceof Error ? e.message : e}`);
      });
      if (data.numClasses > 1000) {
        throw new Error(`--snip-data: ${source} has ${data.numClasses} classes; SLaK-T has 1000`);
      }
      batch = await firstTrainingBatch(data, batchSize, seed).catch((e) => {
        throw new Error(`--snip-batch: ${e instanceof Error ? e.message : e}`);
      });
      dataName = data.name;
    }
    const comments = [
      `${FLOPS_RULE}; SLaK-T at 224², SNIP measured as the official SNIP(): |w·g| on one ` +
      `training batch of ${dataName} (${batchSize} images, micro-batches of ${microBatch}, ` +
      `drop path ${dropPath}), one global top-k, layers at density ≥ 0.99 left dense`,
      "stage_densities: kept share of the block weights per stage; outside_density: of the " +
      "stem, downsampling and head weights; mac_density: MAC-weighted, conv and linear layers",
    ];
    // Written after every setting: a long GPU run that fails late keeps what it measured.
    const partial: SnipRow[] = [];
    const snip = await snipRows(
      batch,
      dataName,
      { batchSize, microBatch, dropPath, seed },
      async (r) => {
        console.error(`snip: (${r.sparsity}, ${r.width}×) scored in ${r.seconds} s`);
        await writeCsv(`${out}/sparsity_width_snip.csv`, [...partial, r], { comments });
        partial.push(r);
      },
    );
    console.log(`\n# --snip: measured on one batch of ${dataName} (${batchSize} images, 224²)`);
    console.log("sparsity width  params M  GFLOPs (paper)  stage densities 0/1/2/3  outside");
    for (const r of snip) {
      console.log(
        `${r.sparsity.toFixed(2).padStart(8)} ${(r.width + "×").padStart(5)}  ${
          r.params_M.toFixed(2).padStart(8)
        }  ${r.gflops_snip.toFixed(3)} ${
          r.gflops_match_snip.padEnd(3)
        } (${r.paper_gflops})  ${r.stage_densities}  ${r.outside_density.toFixed(3)}`,
      );
    }
    panels[0] = {
      ...panels[0],
      series: [...panels[0].series, {
        name: `SNIP on ${dataName}`,
        x: widths,
        y: snip.map((r) => r.gflops_snip),
        markers: true,
        dash: "2 2",
      }],
    };
  }
  let trained: TrainedRow[] = [];
  if (v.train) {
    const epochs = v.epochs ?? 1;
    const inputSize = v["input-size"] ?? 32;
    const updateFrequency = v["update-frequency"] ?? 4;
    trained = await trainSettings({
      model,
      epochs,
      trainSize: v["train-size"] ?? 256,
      valSize: v["val-size"] ?? 128,
      inputSize,
      batchSize: v["batch-size"] ?? 16,
      updateFrequency,
      seed: v.seed,
      data: v.data,
      out,
    });
    await writeCsv(`${out}/sparsity_width_train.csv`, trained, {
      comments: [
        `${FLOPS_RULE}; ${model} at ${inputSize}², ${epochs} epoch(s), ` +
        `SNIP + prune-and-grow (prune rate 0.3, random growth, -u ${updateFrequency}); ` +
        "mflops from the final masks",
      ],
    });
    console.log(`\n# --train: ${model}, ${epochs} epoch(s) at ${inputSize}²`);
    console.log("sparsity width   top-1 %  MFLOPs (dense)  non-zero weights  seconds");
    for (const r of trained) {
      console.log(
        `${r.sparsity.toFixed(2).padStart(8)} ${(r.width + "×").padStart(5)}  ${
          r.top1.toFixed(2).padStart(7)
        }  ${r.mflops.toFixed(2).padStart(6)} (${r.dense_mflops.toFixed(2)})  ${
          String(r.params_nonzero).padStart(16)
        }  ${r.seconds}`,
      );
    }
    panels.push({
      title: `${model}, trained sparse: top-1 (labels: FLOPs)`,
      xLabel: "width factor",
      yLabel: "top-1 (%)",
      xTicks: widths,
      series: [{ name: "top-1", x: widths, y: trained.map((r) => r.top1), markers: true }],
      marks: trained.map((r): Mark => ({
        x: r.width,
        y: r.top1,
        label: `${r.mflops.toFixed(3)}M FLOPs`,
      })),
    });
  }
  await writeLineChart(`${out}/sparsity_width.png`, {
    title: "Use sparse groups, expand more (SLaK Table 7)",
    subtitle: "FLOPs = multiply-accumulates (fvcore)",
    panels,
    panelWidth: 560,
  });
  console.log(
    `wrote ${out}/sparsity_width.csv${v.snip ? `, ${out}/sparsity_width_snip.csv` : ""}${
      v.train ? `, ${out}/sparsity_width_train.csv` : ""
    }, ${out}/sparsity_width.png`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
