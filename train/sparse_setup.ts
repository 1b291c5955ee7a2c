/**
 * SLaK's dynamic sparsity as the trainer runs it: the masks at the start of
 * a run (SNIP on one training batch, or the checkpoint's masks on resume),
 * the per-update density log `sparsity.csv`, and the masks as checkpoint
 * weights.
 *
 * @example
 * ```ts
 * import { sparseOptions } from "./sparse_setup.ts";
 * import { presetConfig } from "./config.ts";
 * console.log(sparseOptions({ ...presetConfig("cpu"), sparse: true }, 100).sparsity); // 0.4
 * ```
 * @module
 */
import { setForwardSeed } from "../models/layers.ts";
import type { Weights } from "../models/safetensors.ts";
import { softmaxCrossEntropy } from "../ops/loss.ts";
import { mixSeeds, scope, Tensor } from "../ops/tensor.ts";
import { DynamicSparsity, type UpdateReport } from "../sparse/prune_grow.ts";
import { appendLinesAtomic, writeFileAtomic } from "../analysis/csv.ts";
import type { TrainConfig } from "./config.ts";
import type { Classifier } from "../models/module.ts";
import { firstTrainingBatch } from "./data/mod.ts";
import type { Dataset } from "./data/types.ts";
import { hashBytes } from "./distributed.ts";
import { type Replicas, singleProcess } from "./parallel.ts";

/**
 * The prune-and-grow settings of a run: the flags, with the official defaults
 * where a flag is absent.
 *
 * @example
 * ```ts
 * import { sparseOptions } from "./sparse_setup.ts";
 * import { presetConfig } from "./config.ts";
 * console.log(sparseOptions(presetConfig("cpu"), 10).growth); // "random"
 * ```
 */
export function sparseOptions(cfg: TrainConfig, totalSteps: number) {
  return {
    sparsity: cfg.sparsity ?? 0.4,
    init: cfg.sparseInit ?? "snip",
    type: cfg.sparseType ?? "origin",
    onlyL: cfg.onlyL ?? false,
    pruneRate: cfg.pruneRate ?? 0.3,
    growth: cfg.growth ?? "random",
    updateFrequency: cfg.updateFrequency ?? 100,
    maskSync: cfg.maskSync ?? 1,
    fix: cfg.fix ?? false,
    totalSteps,
    seed: cfg.seed,
  } as const;
}

/**
 * Build the run's masks: from the checkpoint when resuming (rows of
 * `sparsity.csv` written after that checkpoint are dropped), else by
 * `sparseInit` (SNIP scores one training batch, as the official).
 *
 * @example
 * ```ts ignore
 * // Needs a model on the GPU; see tests/train_test.ts.
 * const sparse = await setupSparse(cfg, model, data, 100, null, 0);
 * ```
 */
export async function setupSparse(
  cfg: TrainConfig,
  model: Classifier,
  data: Dataset,
  totalSteps: number,
  resumeMasks: Weights | null,
  step: number,
  replicas: Replicas = singleProcess(),
): Promise<DynamicSparsity> {
  const opts = { ...sparseOptions(cfg, totalSteps), reduceGradients: gradientMean(replicas) };
  const log = `${cfg.out}/sparsity.csv`;
  if (resumeMasks) {
    const masks = new Map([...resumeMasks].map(([k, v]) => [k, Uint8Array.from(v.data)]));
    const sparse = await DynamicSparsity.create(model, opts, [], masks);
    if (replicas.isMain) await truncateSparsityLog(log, step);
    await agreeOnMasks(replicas, sparse, "the masks of the checkpoint");
    return sparse;
  }
  // Under data parallelism each rank scores its shard of the first batch; the gradients are averaged.
  const shard = replicas.world > 1 ? { rank: replicas.rank, world: replicas.world } : undefined;
  const batch = opts.init === "snip"
    ? await firstTrainingBatch(data, cfg.batchSize, cfg.seed, shard)
    : null;
  setForwardSeed(mixSeeds(cfg.seed, 0x5319));
  const lossFns = batch
    ? [() => {
      const x = Tensor.from(batch.x, [batch.labels.length, 3, data.imageSize, data.imageSize]);
      return softmaxCrossEntropy(model.forward(x), batch.labels);
    }]
    : [];
  const sparse = await scope(() => DynamicSparsity.create(model, opts, lossFns));
  await agreeOnMasks(replicas, sparse, "the initial masks");
  if (!replicas.isMain) return sparse;
  console.error(
    `sparse: ${sparse.densities().size} masked layers (${opts.init}, ${opts.type}), ` +
      `overall density ${sparse.masking.overallDensity().toFixed(4)} of the masked weights`,
  );
  await Deno.remove(log).catch(() => {});
  return sparse;
}

/** Replaces gradients by their mean over the ranks (none needed in one process). */
function gradientMean(replicas: Replicas): ((params: Tensor[]) => Promise<void>) | undefined {
  if (replicas.world === 1) return undefined;
  return async (params) => {
    const sync = replicas.gradientSync(params);
    if (!sync) return;
    for (const p of params) sync.onGradReady(p);
    await sync.finish();
  };
}

/**
 * Fail on every rank unless all hold the same masks: a SHA-256 of every
 * layer's mask, compared across ranks after each change (free in one
 * process, where nothing is hashed).
 *
 * @example
 * ```ts ignore
 * await agreeOnMasks(run.replicas, run.sparse, "the masks after update 3");
 * ```
 */
export async function agreeOnMasks(
  replicas: Replicas,
  sparse: DynamicSparsity,
  what: string,
): Promise<void> {
  if (replicas.world === 1) return;
  const masks = [...sparse.masking.masks()];
  const all = new Uint8Array(masks.reduce((a, [, m]) => a + m.length, 0));
  let at = 0;
  for (const [, m] of masks) {
    all.set(m, at);
    at += m.length;
  }
  await replicas.agree(what, await hashBytes(all));
}

/** The columns of `sparsity.csv`, one row per masked layer per prune-and-grow update. */
const SPARSITY_CSV_HEADER = "step,update,prune_rate,layer,nonzeros,units,density,removed";

/** Drop the rows of `sparsity.csv` after `step` (a crash between two saves wrote them). */
async function truncateSparsityLog(log: string, step: number): Promise<void> {
  const text = await Deno.readTextFile(log).catch(() => "");
  if (!text) return;
  const [head, ...rows] = text.trimEnd().split("\n");
  const kept = rows.filter((r) => Number(r.split(",")[0]) <= step);
  await writeFileAtomic(log, new TextEncoder().encode([head, ...kept].join("\n") + "\n"));
}

/**
 * Append one update's per-layer densities to `sparsity.csv` and print a summary line.
 *
 * @example
 * ```ts
 * import { logSparseUpdate } from "./sparse_setup.ts";
 * const out = await Deno.makeTempDir();
 * await logSparseUpdate(out, {
 *   step: 100, update: 1, pruneRate: 0.3, synced: false,
 *   layers: [{ key: "w", before: 7, removed: 3, grown: 2, nonzeros: 6, units: 10, density: 0.6 }],
 * });
 * console.log(await Deno.readTextFile(`${out}/sparsity.csv`));
 * ```
 */
export async function logSparseUpdate(out: string, r: UpdateReport): Promise<void> {
  const lines = r.layers.map((l) =>
    `${r.step},${r.update},${r.pruneRate},${l.key},${l.nonzeros},${l.units},${l.density},${l.removed}`
  );
  await appendLinesAtomic(`${out}/sparsity.csv`, SPARSITY_CSV_HEADER, lines);
  const nz = r.layers.reduce((a, l) => a + l.nonzeros, 0);
  const n = r.layers.reduce((a, l) => a + l.units, 0);
  console.error(
    `\nsparse update ${r.update} (step ${r.step}): prune rate ${r.pruneRate.toFixed(4)}, ` +
      `${r.layers.length} layers, unit density ${(nz / Math.max(n, 1)).toFixed(4)}` +
      (r.synced ? ", rep masks synced" : ""),
  );
}

/**
 * Masks as checkpoint weights: one 0/1 value per mask unit, under the weight's key.
 *
 * @example
 * ```ts ignore
 * // Needs a sparse model on the GPU; see tests/train_test.ts.
 * const weights = maskWeights(sparse);
 * ```
 */
export function maskWeights(sparse: DynamicSparsity): Weights {
  const out: Weights = new Map();
  for (const [key, m] of sparse.masking.masks()) {
    out.set(key, { shape: [m.length], data: Float32Array.from(m) });
  }
  return out;
}
