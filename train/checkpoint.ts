/**
 * Training checkpoints that are never half-written.
 *
 * A checkpoint is a folder: `model.safetensors` (the weights under the
 * official key names, loadable on their own), `ema.safetensors` (when EMA is
 * on), `optimizer.safetensors` (the optimiser's moments) and `state.json`
 * (epoch, step, scheduler, RNG, metrics; for sparse runs the density of
 * each masked layer), plus `masks.safetensors` for sparse runs (one 0/1 mask
 * unit per weight or filter, under the weight's key). It is written into a temporary
 * folder and renamed into place, so a crash or Ctrl-C at any moment leaves
 * the previous checkpoint intact.
 *
 * @example
 * ```ts
 * import { checkpointExists } from "./checkpoint.ts";
 * console.log(await checkpointExists("out/train/checkpoint-last")); // false on a fresh clone
 * ```
 * @module
 */
import type { SavedPlans } from "../ops/planner.ts";
import { loadSafetensorsFile, saveSafetensorsFile, type Weights } from "../models/safetensors.ts";
import type { Module } from "../models/module.ts";
import type { OptimizerState } from "../ops/optim.ts";

/** Everything in `state.json`. */
export interface TrainState {
  /** Format version of this file. */
  version: 1;
  model: string;
  /** Model construction arguments, so `--resume` can rebuild it. */
  modelArgs: Record<string, unknown>;
  /** Epochs fully completed. */
  epoch: number;
  /** Micro-batches done inside the current epoch (non-zero after an interrupt). */
  batchInEpoch: number;
  /** Optimiser steps taken. */
  step: number;
  bestTop1: number;
  /** Partial sums of the running epoch (loss, samples) so resumed logs match. */
  partial: { lossSum: number; samples: number };
  /** The run configuration the checkpoint was written with. */
  config: Record<string, unknown>;
  /** Per-epoch metrics so far (the CSV log's rows). */
  history: Record<string, number>[];
  optimizerStep: number;
  savedAt: string;
  /**
   * How the run that saved cut its batches: its number of ranks and per-rank
   * batch size (absent: one process). A run resumed under another number of
   * ranks carries its position over in images (see train/world_resume.ts).
   */
  ranks?: { world: number; batchSize: number };
  /** Sparse runs: density of every masked layer and overall, at the save. */
  sparse?: { densities: Record<string, number>; overallDensity: number };
  /**
   * The kernel plans of the kernels this run's model runs (dense and sparse
   * depthwise, matrix products), planned at the start (`--tune-kernels`) and
   * restored on resume, so that a resumed run computes with the same
   * kernels, bit for bit. Checkpoints written before plans had one field
   * carry none here: their runs plan again on resume.
   */
  plans?: SavedPlans;
}

/** What a loaded checkpoint holds. */
export interface Checkpoint {
  state: TrainState;
  model: Weights;
  ema: Weights | null;
  optimizer: OptimizerState;
  /** Sparse runs: the mask units (0/1) of each masked weight. */
  masks?: Weights | null;
}

/** Read every entry of a module to the CPU as a weights map. */
export async function moduleWeights(m: Module): Promise<Weights> {
  const out: Weights = new Map();
  for (const [key, p] of m.namedEntries()) {
    out.set(key, { shape: [...p.shape], data: await p.tensor.read() });
  }
  return out;
}

function optimizerWeights(s: OptimizerState): Weights {
  const out: Weights = new Map();
  s.buffers.forEach((bufs, i) =>
    bufs.forEach((b, j) => out.set(`${i}.${j}`, { shape: [b.length], data: b }))
  );
  return out;
}

function optimizerFromWeights(w: Weights, step: number): OptimizerState {
  const buffers: Float32Array[][] = [];
  for (const [key, v] of w) {
    const [i, j] = key.split(".").map(Number);
    (buffers[i] ??= [])[j] = v.data;
  }
  return { step, buffers };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Whether a complete checkpoint is at `dir`. */
export async function checkpointExists(dir: string): Promise<boolean> {
  return await exists(`${dir}/state.json`) || await exists(`${dir}.old/state.json`);
}

/**
 * Write a checkpoint folder atomically: everything goes into `dir.tmp-<pid>`,
 * then the old folder (if any) is moved aside, the new one renamed to `dir`,
 * and the old one removed.
 */
export async function saveCheckpoint(
  dir: string,
  parts: {
    state: TrainState;
    model: Weights;
    ema: Weights | null;
    optimizer: OptimizerState;
    masks?: Weights | null;
  },
): Promise<void> {
  const tmp = `${dir}.tmp-${Deno.pid}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp, { recursive: true });
  const meta = { format: "pt", model: parts.state.model, epoch: String(parts.state.epoch) };
  await saveSafetensorsFile(`${tmp}/model.safetensors`, parts.model, meta);
  if (parts.ema) await saveSafetensorsFile(`${tmp}/ema.safetensors`, parts.ema, meta);
  await saveSafetensorsFile(`${tmp}/optimizer.safetensors`, optimizerWeights(parts.optimizer));
  if (parts.masks) await saveSafetensorsFile(`${tmp}/masks.safetensors`, parts.masks);
  const json = new TextEncoder().encode(JSON.stringify(parts.state, null, 1));
  const f = await Deno.open(`${tmp}/state.json`, { write: true, create: true, truncate: true });
  await f.write(json);
  await f.sync();
  f.close();
  const old = `${dir}.old`;
  await Deno.remove(old, { recursive: true }).catch(() => {});
  if (await exists(dir)) await Deno.rename(dir, old);
  await Deno.rename(tmp, dir);
  await Deno.remove(old, { recursive: true }).catch(() => {});
}

/**
 * Load a checkpoint folder (or the `.old` copy left by a save that was
 * interrupted between its two renames). Errors name the folder and what is
 * wrong.
 */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  const where = (await exists(`${dir}/state.json`))
    ? dir
    : (await exists(`${dir}.old/state.json`))
    ? `${dir}.old`
    : null;
  if (!where) throw new Error(`--resume: no checkpoint at ${dir} (expected ${dir}/state.json)`);
  let state: TrainState;
  try {
    state = JSON.parse(await Deno.readTextFile(`${where}/state.json`));
  } catch (e) {
    throw new Error(`--resume: ${where}/state.json is not valid JSON (${(e as Error).message})`);
  }
  if (state.version !== 1) {
    throw new Error(`--resume: ${where}/state.json has unknown version ${state.version}`);
  }
  const model = await loadSafetensorsFile(`${where}/model.safetensors`);
  const ema = (await exists(`${where}/ema.safetensors`))
    ? await loadSafetensorsFile(`${where}/ema.safetensors`)
    : null;
  const optimizer = optimizerFromWeights(
    await loadSafetensorsFile(`${where}/optimizer.safetensors`),
    state.optimizerStep,
  );
  const masks = (await exists(`${where}/masks.safetensors`))
    ? await loadSafetensorsFile(`${where}/masks.safetensors`)
    : null;
  return { state, model, ema, optimizer, masks };
}
