/**
 * Checks of a checkpoint before a resumed run touches anything: `state.json`
 * field by field (type and range; the kernel plans by their JSON structure),
 * then the weights, EMA, optimiser moments and masks against the model that
 * will load them. Each problem is a one-line error naming the file and the
 * field or key, so a damaged or foreign checkpoint is refused before the
 * model, the logs or the sparsity log are changed.
 *
 * @example
 * ```ts
 * import { validateTrainState } from "./checkpoint_validate.ts";
 * try {
 *   validateTrainState({ version: 1, epoch: "abc" }, "ck/state.json");
 * } catch (e) {
 *   console.log((e as Error).message); // ck/state.json: model: expected a string, got undefined
 * }
 * ```
 * @module
 */
import type { Module } from "../models/module.ts";
import type { Weights } from "../models/safetensors.ts";
import type { OptimizerState } from "../ops/optim.ts";
import { sparseLayout, type SparseType } from "../sparse/prune_grow.ts";
import type { TrainState } from "./train_state.ts";
import { validSavedPlans } from "../ops/planner.ts";

/** Epochs, steps and batches above this are not from a real run. */
const MAX_COUNT = 2 ** 40;

type Obj = Record<string, unknown>;

function show(v: unknown): string {
  const s = typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? "an array" : String(v);
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

/** A reader of one JSON object that names the file and field in every error. */
class Fields {
  constructor(readonly file: string, readonly path: string, readonly obj: Obj) {}

  static of(file: string, path: string, v: unknown): Fields {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new Error(`${file}: ${path || "top level"}: expected an object, got ${show(v)}`);
    }
    return new Fields(file, path, v as Obj);
  }

  fail(key: string, expected: string, v: unknown): never {
    const where = this.path ? `${this.path}.${key}` : key;
    throw new Error(`${this.file}: ${where}: expected ${expected}, got ${show(v)}`);
  }

  count(key: string): number {
    const v = this.obj[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > MAX_COUNT) {
      this.fail(key, "an integer ≥ 0", v);
    }
    return v;
  }

  number(key: string, min = -Infinity, max = Infinity): number {
    const v = this.obj[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
      const range = Number.isFinite(min) ? ` in [${min}, ${max}]` : "";
      this.fail(key, `a finite number${range}`, v);
    }
    return v;
  }

  string(key: string): string {
    const v = this.obj[key];
    if (typeof v !== "string") this.fail(key, "a string", v);
    return v;
  }

  object(key: string): Fields {
    return Fields.of(this.file, this.path ? `${this.path}.${key}` : key, this.obj[key]);
  }

  array(key: string): unknown[] {
    const v = this.obj[key];
    if (!Array.isArray(v)) this.fail(key, "an array", v);
    return v;
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined;
  }
}

/**
 * Check every field of a parsed `state.json` (type and range, the tuned
 * plans by structure) and return it typed. `file` names it in errors.
 */
export function validateTrainState(raw: unknown, file: string): TrainState {
  const f = Fields.of(file, "", raw);
  if (f.obj.version !== 1) f.fail("version", "1", f.obj.version);
  f.string("model");
  f.object("modelArgs");
  const epoch = f.count("epoch");
  f.count("batchInEpoch");
  f.count("step");
  f.count("optimizerStep");
  f.number("bestTop1", -1, 100);
  const partial = f.object("partial");
  partial.number("lossSum", 0);
  partial.count("samples");
  f.object("config");
  f.string("savedAt");
  const history = f.array("history");
  if (history.length !== epoch) {
    f.fail("history", `one row per completed epoch (${epoch})`, `${history.length} rows`);
  }
  // Plain loops over indices: `forEach` would skip the holes of a sparse array.
  for (let i = 0; i < history.length; i++) {
    const r = Fields.of(file, `history.${i}`, history[i]);
    for (const k of Object.keys(r.obj)) r.number(k);
  }
  if (f.has("sparse")) {
    const s = f.object("sparse");
    s.number("overallDensity", 0, 1);
    const d = s.object("densities");
    for (const k of Object.keys(d.obj)) d.number(k, 0, 1);
  }
  if (f.has("plans")) {
    try {
      validSavedPlans(f.obj.plans);
    } catch (e) {
      f.fail("plans", "the kernel plans' structure", (e as Error).message);
    }
  }
  return raw as TrainState;
}

/**
 * The optimiser state from `optimizer.safetensors`: keys `i.j` (parameter i,
 * buffer j), every one present, each a 1-D list of values.
 *
 * @example
 * ```ts
 * import { optimizerFromWeights } from "./checkpoint_validate.ts";
 * import type { Weights } from "../models/safetensors.ts";
 * const v = (...x: number[]) => ({ shape: [x.length], data: new Float32Array(x) });
 * const w: Weights = new Map([["0.0", v(1, 2)], ["0.1", v(3, 4)], ["1.0", v(5)], ["1.1", v(6)]]);
 * console.log(optimizerFromWeights(w, 7, "ck/optimizer.safetensors").buffers.length); // 2
 * try {
 *   optimizerFromWeights(new Map([["0.1", v(1)]]), 7, "ck/optimizer.safetensors");
 * } catch (e) {
 *   // ck/optimizer.safetensors: the buffers of parameter 0 are missing or have gaps
 *   console.log((e as Error).message);
 * }
 * ```
 */
export function optimizerFromWeights(w: Weights, step: number, file: string): OptimizerState {
  const buffers: Float32Array[][] = [];
  for (const [key, v] of w) {
    const m = /^(\d{1,9})\.(\d{1,3})$/.exec(key);
    if (!m) throw new Error(`${file}: key "${key}" is not "parameter.buffer" (e.g. 0.1)`);
    if (v.shape.length !== 1) throw new Error(`${file}: ${key} has shape [${v.shape}], not 1-D`);
    const [i, j] = [Number(m[1]), Number(m[2])];
    if (i >= w.size) throw new Error(`${file}: ${key}: parameter ${i} of only ${w.size} entries`);
    (buffers[i] ??= [])[j] = v.data;
  }
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i];
    // A plain loop: `some` would skip the holes of a sparse array.
    let complete = b !== undefined && b.length > 0;
    for (let j = 0; complete && j < b.length; j++) complete = b[j] !== undefined;
    if (!complete) {
      throw new Error(`${file}: the buffers of parameter ${i} are missing or have gaps`);
    }
  }
  return { step, buffers };
}

/** What {@linkcode validateCheckpointFor} checks a loaded checkpoint against. */
export interface ResumeTarget {
  /** The folder, for errors. */
  dir: string;
  model: Module;
  ema: Module | null;
  /** Element counts of the optimiser's parameters, in its order, and its buffers per parameter. */
  optimizerSizes: number[];
  buffersPerParam: number;
  /** Sparse runs: the mask layout the run uses. */
  sparse?: { type: SparseType; onlyL: boolean } | null;
}

function checkWeights(file: string, w: Weights, model: Module): void {
  const own = new Map(model.namedEntries());
  for (const [k, p] of own) {
    const v = w.get(k);
    if (!v) throw new Error(`${file}: missing key ${k}`);
    if (v.shape.length !== p.shape.length || v.shape.some((d, i) => d !== p.shape[i])) {
      throw new Error(`${file}: ${k} has shape [${v.shape}], the model [${p.shape}]`);
    }
  }
  for (const k of w.keys()) {
    if (!own.has(k) && !/num_batches_tracked$/.test(k)) {
      throw new Error(`${file}: unexpected key ${k}`);
    }
  }
}

/**
 * Check a loaded checkpoint against the run that will resume it: weights
 * and EMA (keys and shapes), optimiser moments (one set per parameter, each
 * of the parameter's size), masks (keys of maskable weights, one 0/1 value
 * per mask unit). Throws one line naming the file and key.
 *
 * @example
 * ```ts
 * import { validateCheckpointFor } from "./checkpoint_validate.ts";
 * import { Linear } from "../models/layers.ts";
 * const model = new Linear(2, 1); // weight [1, 2], bias [1]
 * const v = (shape: number[]) => ({ shape, data: new Float32Array(shape[0] * (shape[1] ?? 1)) });
 * const target = { dir: "ck", model, ema: null, optimizerSizes: [2, 1], buffersPerParam: 2 };
 * const moments = { step: 1, buffers: [[new Float32Array(2), new Float32Array(2)], [new Float32Array(1), new Float32Array(1)]] };
 * const ok = new Map([["weight", v([1, 2])], ["bias", v([1])]]);
 * validateCheckpointFor({ model: ok, ema: null, optimizer: moments }, target); // passes
 * try {
 *   const wrong = new Map([["weight", v([2, 2])], ["bias", v([1])]]);
 *   validateCheckpointFor({ model: wrong, ema: null, optimizer: moments }, target);
 * } catch (e) {
 *   console.log((e as Error).message); // ck/model.safetensors: weight has shape [2,2], the model [1,2]
 * }
 * ```
 */
export function validateCheckpointFor(
  ck: { model: Weights; ema: Weights | null; optimizer: OptimizerState; masks?: Weights | null },
  t: ResumeTarget,
): void {
  checkWeights(`${t.dir}/model.safetensors`, ck.model, t.model);
  if (t.ema && ck.ema) checkWeights(`${t.dir}/ema.safetensors`, ck.ema, t.ema);
  const opt = `${t.dir}/optimizer.safetensors`;
  const bufs = ck.optimizer.buffers;
  if (bufs.length !== t.optimizerSizes.length) {
    throw new Error(
      `${opt}: moments of ${bufs.length} parameters, the model has ${t.optimizerSizes.length}`,
    );
  }
  bufs.forEach((b, i) => {
    if (b.length !== t.buffersPerParam) {
      throw new Error(
        `${opt}: parameter ${i} has ${b.length} buffers, expected ${t.buffersPerParam}`,
      );
    }
    const bad = b.findIndex((x) => x.length !== t.optimizerSizes[i]);
    if (bad >= 0) {
      throw new Error(
        `${opt}: ${i}.${bad} has ${b[bad].length} values, its parameter ${t.optimizerSizes[i]}`,
      );
    }
  });
  if (ck.masks && t.sparse) {
    const file = `${t.dir}/masks.safetensors`;
    const layout = sparseLayout(t.model, t.sparse.type, t.sparse.onlyL);
    const params = new Map(t.model.namedParameters());
    const allowed = new Set(layout.keys);
    if (ck.masks.size === 0) throw new Error(`${file}: holds no mask`);
    for (const [k, v] of ck.masks) {
      if (!allowed.has(k)) throw new Error(`${file}: ${k} is not a masked weight of this run`);
      const p = params.get(k)!;
      const units = layout.granularity(k) === "filter" ? p.shape[0] : p.size;
      if (v.shape.length !== 1 || v.data.length !== units) {
        throw new Error(`${file}: ${k} has shape [${v.shape}], expected [${units}] (mask units)`);
      }
      const bad = v.data.findIndex((x) => x !== 0 && x !== 1);
      if (bad >= 0) throw new Error(`${file}: ${k}[${bad}] is ${v.data[bad]}, not 0 or 1`);
    }
  }
}
