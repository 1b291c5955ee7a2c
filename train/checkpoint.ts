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
import { loadSafetensorsFile, saveSafetensorsFile, type Weights } from "../models/safetensors.ts";
import type { Module } from "../models/module.ts";
import type { OptimizerState } from "../ops/optim.ts";
import { optimizerFromWeights, validateTrainState } from "./checkpoint_validate.ts";

export type { TrainState } from "./train_state.ts";
import type { TrainState } from "./train_state.ts";

/** What a loaded checkpoint holds. */
export interface Checkpoint {
  /** The folder it was read from (`dir`, or `dir.old` after a save cut short). */
  dir: string;
  state: TrainState;
  model: Weights;
  ema: Weights | null;
  optimizer: OptimizerState;
  /** Sparse runs: the mask units (0/1) of each masked weight. */
  masks?: Weights | null;
}

/**
 * Read every entry of a module to the CPU as a weights map.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Linear } from "../models/layers.ts";
 * import { moduleWeights } from "./checkpoint.ts";
 * await initGpu();
 * const w = await moduleWeights(new Linear(4, 2));
 * console.log([...w].map(([k, v]) => `${k} [${v.shape}]`)); // ["weight [2,4]", "bias [2]"]
 * ```
 */
export async function moduleWeights(m: Module): Promise<Weights> {
  const entries = [...m.namedEntries()];
  // Every copy is queued before the first wait: one GPU round trip, not one per tensor.
  const data = await Promise.all(entries.map(([, p]) => p.tensor.read()));
  return new Map(entries.map(([key, p], i) => [key, { shape: [...p.shape], data: data[i] }]));
}

function optimizerWeights(s: OptimizerState): Weights {
  const out: Weights = new Map();
  s.buffers.forEach((bufs, i) =>
    bufs.forEach((b, j) => out.set(`${i}.${j}`, { shape: [b.length], data: b }))
  );
  return out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** A `state.json` larger than this is not one the trainer wrote (its history is a row per epoch). */
const MAX_STATE_BYTES = 64 << 20;

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

/** Run `fn`, prefixing its error with `--resume: ` (the flag that named the checkpoint). */
function resumeError<T>(fn: () => T): T {
  try {
    const r = fn();
    if (r instanceof Promise) {
      return r.catch((e) => {
        throw new Error(`--resume: ${firstLine(e)}`);
      }) as T;
    }
    return r;
  } catch (e) {
    throw new Error(`--resume: ${firstLine(e)}`);
  }
}

/** Whether a complete checkpoint is at `dir`. */
export async function checkpointExists(dir: string): Promise<boolean> {
  return await exists(`${dir}/state.json`) || await exists(`${dir}.old/state.json`);
}

/**
 * Write a checkpoint folder atomically: everything goes into `dir.tmp-<pid>`
 * (each file flushed to disk), then the current complete checkpoint is moved
 * aside to `dir.old`, the new one renamed to `dir`, and `dir.old` removed. A
 * process killed at any point leaves a complete checkpoint at `dir` or at
 * `dir.old` ({@linkcode loadCheckpoint} reads either): `dir.old` is never
 * removed while it is the only complete one.
 *
 * @example
 * ```ts
 * import { saveCheckpoint, type TrainState } from "./checkpoint.ts";
 * const state: TrainState = {
 *   version: 1,
 *   model: "resnet_cpu",
 *   modelArgs: {},
 *   epoch: 1,
 *   batchInEpoch: 0,
 *   step: 10,
 *   bestTop1: 0,
 *   partial: { lossSum: 0, samples: 0 },
 *   config: {},
 *   history: [{ epoch: 1, top1: 0 }],
 *   optimizerStep: 10,
 *   savedAt: new Date().toISOString(),
 * };
 * const model = new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]);
 * const optimizer = { step: 10, buffers: [[new Float32Array(2), new Float32Array(2)]] };
 * const dir = `${await Deno.makeTempDir()}/checkpoint-last`;
 * await saveCheckpoint(dir, { state, model, ema: null, optimizer });
 * console.log([...Deno.readDirSync(dir)].map((e) => e.name).sort());
 * // ["model.safetensors", "optimizer.safetensors", "state.json"]
 * ```
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
  // state.json last: a folder with it is complete.
  await writeSynced(`${tmp}/state.json`, JSON.stringify(parts.state, null, 1));
  await checkpointWriteHook?.("before-swap");
  const old = `${dir}.old`;
  if (await exists(`${dir}/state.json`)) {
    // `dir` is complete, so a `dir.old` left by an earlier save is stale.
    await Deno.remove(old, { recursive: true }).catch(() => {});
    await Deno.rename(dir, old);
  } else {
    // `dir` is absent or incomplete: `dir.old`, if any, is the last good checkpoint; keep it.
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  await checkpointWriteHook?.("swapped-out");
  await Deno.rename(tmp, dir);
  await Deno.remove(old, { recursive: true }).catch(() => {});
}

/** Write `text` to a new file and flush it to disk, however many writes it takes. */
async function writeSynced(path: string, text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    for (let pos = 0; pos < bytes.length;) pos += await f.write(bytes.subarray(pos));
    await f.sync();
  } finally {
    f.close();
  }
}

/**
 * Test hook: awaited at the points of a save where a crash is most
 * damaging, so a crash-safety test can kill the process there.
 */
let checkpointWriteHook: ((point: "before-swap" | "swapped-out") => Promise<void>) | null = null;

/**
 * Set (or clear, with null) the hook awaited inside {@linkcode saveCheckpoint}; tests only.
 *
 * @example
 * ```ts
 * import { saveCheckpoint, setCheckpointWriteHook, type TrainState } from "./checkpoint.ts";
 * const state: TrainState = {
 *   version: 1,
 *   model: "resnet_cpu",
 *   modelArgs: {},
 *   epoch: 1,
 *   batchInEpoch: 0,
 *   step: 10,
 *   bestTop1: 0,
 *   partial: { lossSum: 0, samples: 0 },
 *   config: {},
 *   history: [{ epoch: 1, top1: 0 }],
 *   optimizerStep: 10,
 *   savedAt: new Date().toISOString(),
 * };
 * const model = new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]);
 * const optimizer = { step: 10, buffers: [[new Float32Array(2), new Float32Array(2)]] };
 * const points: string[] = [];
 * setCheckpointWriteHook((point) => Promise.resolve(void points.push(point)));
 * const dir = `${await Deno.makeTempDir()}/checkpoint-last`;
 * await saveCheckpoint(dir, { state, model, ema: null, optimizer });
 * setCheckpointWriteHook(null);
 * console.log(points); // ["before-swap", "swapped-out"]
 * ```
 */
export function setCheckpointWriteHook(
  hook: ((point: "before-swap" | "swapped-out") => Promise<void>) | null,
): void {
  checkpointWriteHook = hook;
}

/**
 * Load a checkpoint folder (or the `.old` copy left by a save that was
 * interrupted between its two renames). Errors name the folder and what is
 * wrong.
 *
 * @example
 * ```ts
 * import { loadCheckpoint, saveCheckpoint, type TrainState } from "./checkpoint.ts";
 * const state: TrainState = {
 *   version: 1,
 *   model: "resnet_cpu",
 *   modelArgs: {},
 *   epoch: 1,
 *   batchInEpoch: 0,
 *   step: 10,
 *   bestTop1: 0,
 *   partial: { lossSum: 0, samples: 0 },
 *   config: {},
 *   history: [{ epoch: 1, top1: 0 }],
 *   optimizerStep: 10,
 *   savedAt: new Date().toISOString(),
 * };
 * const model = new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]);
 * const optimizer = { step: 10, buffers: [[new Float32Array(2), new Float32Array(2)]] };
 * const dir = `${await Deno.makeTempDir()}/checkpoint-last`;
 * await saveCheckpoint(dir, { state, model, ema: null, optimizer });
 * const ck = await loadCheckpoint(dir);
 * console.log(ck.state.step, ck.model.get("w")!.data, ck.ema); // 10 Float32Array [1, 2] null
 * try {
 *   await loadCheckpoint(`${dir}-missing`);
 * } catch (e) {
 *   console.log((e as Error).message); // --resume: no checkpoint at …-missing (expected …/state.json)
 * }
 * ```
 */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  const where = (await exists(`${dir}/state.json`))
    ? dir
    : (await exists(`${dir}.old/state.json`))
    ? `${dir}.old`
    : null;
  if (!where) throw new Error(`--resume: no checkpoint at ${dir} (expected ${dir}/state.json)`);
  const stateFile = `${where}/state.json`;
  let text: string;
  try {
    const bytes = await Deno.readFile(stateFile);
    if (bytes.length > MAX_STATE_BYTES) {
      throw new Error(`${bytes.length} bytes, more than the ${MAX_STATE_BYTES} a state holds`);
    }
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    throw new Error(`--resume: ${stateFile} cannot be read (${firstLine(e)})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`--resume: ${stateFile} is not valid JSON (${firstLine(e)})`);
  }
  const state = resumeError(() => validateTrainState(raw, stateFile));
  // The safetensors reader's errors name the file already; others get its path.
  const read = async (name: string) => {
    try {
      return await loadSafetensorsFile(`${where}/${name}`);
    } catch (e) {
      const msg = firstLine(e);
      throw new Error(msg.includes(name) ? msg : `${where}/${name}: ${msg}`);
    }
  };
  const model = await read("model.safetensors");
  const ema = (await exists(`${where}/ema.safetensors`)) ? await read("ema.safetensors") : null;
  const optimizerFile = `${where}/optimizer.safetensors`;
  const optimizerRaw = await read("optimizer.safetensors");
  const optimizer = resumeError(() =>
    optimizerFromWeights(optimizerRaw, state.optimizerStep, optimizerFile)
  );
  const masks = (await exists(`${where}/masks.safetensors`))
    ? await read("masks.safetensors")
    : null;
  return { dir: where, state, model, ema, optimizer, masks };
}
