/**
 * The one model interface: {@linkcode Module}, the base of every layer and
 * model, with `forward`; and {@linkcode Classifier}, a module whose
 * `forwardFeatures` gives the last feature map before the head (timm's
 * names). The trainer, the ERF analysis and the scripts take these two.
 *
 * A module has named parameters, buffers and children, so that
 * `stateDict()` keys equal the official PyTorch keys
 * (`stages.0.0.large_kernel.LoRA1.conv.weight`, …), and `train()`/`eval()`.
 * Parameters are declared with their shape and initialiser and materialised
 * on the GPU only when first used, so a model can be built and counted
 * (params, FLOPs) on a machine with no GPU at all.
 *
 * @example
 * ```ts
 * import { Module } from "./module.ts";
 * import { mul } from "./layers.ts";
 * import type { Value } from "./value.ts";
 * class Scale extends Module {
 *   weight = this.param("weight", [4], { kind: "ones" });
 *   forward<V extends Value>(x: V): V {
 *     return mul(x, this.weight.tensor);
 *   }
 * }
 * class TwoScales extends Module {
 *   first = this.child("first", new Scale());
 *   second = this.child("second", new Scale());
 *   forward<V extends Value>(x: V): V {
 *     return this.second.forward(this.first.forward(x));
 *   }
 * }
 * const m = new TwoScales();
 * console.log([...m.namedParameters()].map(([k]) => k)); // ["first.weight", "second.weight"]
 * console.log(m.numParams()); // 8
 * ```
 * @module
 */
import { copyInto, keep, numel, Tensor } from "../ops/tensor.ts";
import type { Value } from "./value.ts";

/** How a parameter or buffer starts. */
export type Init =
  | { kind: "zeros" }
  | { kind: "ones" }
  | { kind: "const"; value: number }
  | { kind: "truncNormal"; std: number; seed?: number }
  | { kind: "normal"; std: number; seed?: number }
  | { kind: "uniform"; bound: number; seed?: number };

let initCounter = 0;
let initSeed = 0;

/**
 * Seed for parameter initialisation: parameters declared after this call draw
 * their values from `seed` and their declaration order, so the same seed and
 * model give the same weights.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { seedInit } from "./module.ts";
 * import { Linear } from "./layers.ts";
 * await initGpu();
 * seedInit(7);
 * const a = await new Linear(4, 2).weight.tensor.read();
 * seedInit(7);
 * const b = await new Linear(4, 2).weight.tensor.read();
 * console.log(a.every((v, i) => v === b[i])); // true
 * ```
 */
export function seedInit(seed: number): void {
  initSeed = seed >>> 0;
  initCounter = 0;
}

/**
 * A named, lazily materialised tensor of a module: a learnable parameter or a
 * buffer (running statistics).
 *
 * @example
 * ```ts
 * import { Linear } from "./layers.ts";
 * const fc = new Linear(4, 2);
 * const w = fc.weight; // a Param
 * console.log(w.shape, w.size, w.materialised); // [2, 4] 8 false: no GPU memory yet
 * ```
 */
export class Param {
  readonly shape: number[];
  readonly init: Init;
  readonly isBuffer: boolean;
  /** Draw index, fixed at declaration so materialisation order does not matter. */
  readonly #seed: number;
  #tensor: Tensor | null = null;

  constructor(shape: number[], init: Init, isBuffer = false) {
    this.shape = shape;
    this.init = init;
    this.isBuffer = isBuffer;
    this.#seed = (Math.imul(initSeed, 0x9e3779b1) + initCounter++) >>> 0;
  }

  get size(): number {
    return numel(this.shape);
  }

  /** Whether the GPU tensor exists yet. */
  get materialised(): boolean {
    return this.#tensor !== null;
  }

  /** The GPU tensor, created on first access from the initialiser. */
  get tensor(): Tensor {
    if (!this.#tensor) {
      this.#tensor = keep(this.#make());
      this.#tensor.requiresGrad = !this.isBuffer;
    }
    return this.#tensor;
  }

  /**
   * Replace the values (same number of elements). A materialised parameter
   * keeps its tensor (optimisers and EMA hold it) and gets the values copied
   * in, in recording order; `values` is disposed either way.
   */
  set(values: Tensor): void {
    if (values.size !== this.size) {
      throw new Error(
        `cannot load shape [${values.shape}] into parameter of shape [${this.shape}]`,
      );
    }
    if (this.#tensor) {
      copyInto(values, this.#tensor);
      values.dispose();
      return;
    }
    this.#tensor = keep(
      values.shape.length === this.shape.length ? values : values.view(this.shape),
    );
    if (this.#tensor !== values) values.dispose();
    this.#tensor.requiresGrad = !this.isBuffer;
  }

  #make(): Tensor {
    const i = this.init;
    const seed = "seed" in i && i.seed !== undefined ? i.seed : this.#seed;
    switch (i.kind) {
      case "zeros":
        return Tensor.zeros(this.shape);
      case "ones":
        return Tensor.ones(this.shape);
      case "const":
        return Tensor.full(this.shape, i.value);
      case "truncNormal":
        // timm's trunc_normal_(std=s) truncates at absolute ±2, i.e. ±2/s standard deviations.
        return Tensor.truncNormal(this.shape, { seed, std: i.std, a: -2, b: 2 });
      case "normal":
        return Tensor.randn(this.shape, { seed, std: i.std });
      case "uniform":
        return Tensor.rand(this.shape, { seed, low: -i.bound, high: i.bound });
    }
  }

  dispose(): void {
    this.#tensor?.dispose();
    this.#tensor = null;
  }
}

/**
 * Base class of every layer and model: a `forward` over values (GPU
 * tensors, or {@linkcode Meta} shapes while counting) plus its parameters,
 * buffers and children.
 *
 * @example
 * ```ts
 * import { Module } from "./module.ts";
 * import { Meta, type Value } from "./value.ts";
 * class Flatten extends Module {
 *   forward<V extends Value>(x: V): V {
 *     if (x instanceof Meta) return new Meta([x.shape[0], x.size / x.shape[0]]) as V;
 *     return x.view([x.shape[0], -1]) as V;
 *   }
 * }
 * console.log(new Flatten().forward(new Meta([2, 3, 4, 4])).shape); // [2, 48]
 * ```
 */
export abstract class Module {
  #params = new Map<string, Param>();
  #children = new Map<string, Module>();
  /** Training mode (dropout, drop path, batch statistics). */
  training = true;

  /** The module's computation; the same code serves tensors and shape-only values. */
  abstract forward<V extends Value>(x: V): V;

  /** Declare a learnable parameter. */
  protected param(name: string, shape: number[], init: Init): Param {
    const p = new Param(shape, init);
    this.#params.set(name, p);
    return p;
  }

  /** Declare a buffer (saved in the state dict, never trained). */
  protected buffer(name: string, shape: number[], init: Init): Param {
    const p = new Param(shape, init, true);
    this.#params.set(name, p);
    return p;
  }

  /** Register a child module under `name` (a number for list-like containers). */
  protected child<M extends Module>(name: string | number, m: M): M {
    this.#children.set(String(name), m);
    return m;
  }

  /** Replace every child (structural re-parameterisation swaps branches for one conv). */
  protected replaceChildren(children: Record<string, Module>): void {
    this.#children = new Map(Object.entries(children));
  }

  /** Direct children in registration order. */
  children(): [string, Module][] {
    return [...this.#children];
  }

  /** Every parameter and buffer with its dotted key, depth first, in registration order. */
  *namedEntries(prefix = ""): Generator<[string, Param]> {
    for (const [k, p] of this.#params) yield [prefix + k, p];
    for (const [k, c] of this.#children) yield* c.namedEntries(`${prefix}${k}.`);
  }

  /** Learnable parameters with their keys. */
  *namedParameters(): Generator<[string, Param]> {
    for (const e of this.namedEntries()) if (!e[1].isBuffer) yield e;
  }

  /** Every module with its dotted name ("" for this one). */
  *namedModules(prefix = ""): Generator<[string, Module]> {
    yield [prefix.replace(/\.$/, ""), this];
    for (const [k, c] of this.#children) yield* c.namedModules(`${prefix}${k}.`);
  }

  /** Learnable parameter tensors (materialised). */
  parameters(): Tensor[] {
    return [...this.namedParameters()].map(([, p]) => p.tensor);
  }

  /** Number of learnable values (no GPU needed). */
  numParams(): number {
    let n = 0;
    for (const [, p] of this.namedParameters()) n += p.size;
    return n;
  }

  /** Switch this module and its children to training mode. */
  train(on = true): this {
    for (const [, m] of this.namedModules()) m.training = on;
    return this;
  }

  /** Switch to evaluation mode. */
  eval(): this {
    return this.train(false);
  }

  /** Keys and tensors of every parameter and buffer, as PyTorch's `state_dict()`. */
  stateDict(): Map<string, Tensor> {
    return new Map([...this.namedEntries()].map(([k, p]) => [k, p.tensor]));
  }

  /**
   * Load values by key. Missing or unexpected keys and shape mismatches are
   * errors naming the key (unless `strict` is false, which skips missing and
   * unexpected keys but never a shape mismatch). Shapes must be equal, rank
   * included. Nothing is loaded unless every check passes. Keys in `ignore` (e.g.
   * `num_batches_tracked`) are skipped.
   */
  loadStateDict(
    values: Map<string, { shape: readonly number[]; data: Float32Array }>,
    { strict = true, ignore = /num_batches_tracked$/ }: { strict?: boolean; ignore?: RegExp } = {},
  ): { missing: string[]; unexpected: string[] } {
    const own = new Map(this.namedEntries());
    const missing = [...own.keys()].filter((k) => !values.has(k));
    const unexpected = [...values.keys()].filter((k) => !own.has(k) && !ignore.test(k));
    if (strict && (missing.length || unexpected.length)) {
      const parts = [];
      if (missing.length) parts.push(`missing keys: ${preview(missing)}`);
      if (unexpected.length) parts.push(`unexpected keys: ${preview(unexpected)}`);
      throw new Error(`state dict does not match the model (${parts.join("; ")})`);
    }
    for (const [k, v] of values) {
      const p = own.get(k);
      if (!p) continue;
      // Exact shapes: a [C] vector is not a [1, C] one, even with the same values.
      if (v.shape.length !== p.shape.length || v.shape.some((d, i) => d !== p.shape[i])) {
        throw new Error(
          `shape mismatch for ${k}: checkpoint has [${v.shape}], model has [${p.shape}]`,
        );
      }
      if (v.data.length !== p.size) {
        throw new Error(
          `${k} holds ${v.data.length} values, its shape [${v.shape}] needs ${p.size}`,
        );
      }
    }
    for (const [k, v] of values) own.get(k)?.set(Tensor.from(v.data, own.get(k)!.shape));
    return { missing, unexpected };
  }

  /** Free every materialised tensor. */
  dispose(): void {
    for (const [, p] of this.namedEntries()) p.dispose();
  }
}

function preview(keys: string[]): string {
  return keys.length <= 4
    ? keys.join(", ")
    : `${keys.slice(0, 4).join(", ")} and ${keys.length - 4} more`;
}

/**
 * A list of child modules keyed 0, 1, 2, … (PyTorch's `nn.ModuleList`): it
 * holds modules for their keys, and as in PyTorch it has no `forward` of its
 * own; the owner calls its `items`.
 *
 * @example
 * ```ts
 * import { ModuleList } from "./module.ts";
 * import { Linear } from "./layers.ts";
 * const heads = new ModuleList([new Linear(4, 2), new Linear(4, 3)]);
 * console.log([...heads.namedParameters()].map(([k]) => k)); // ["0.weight", "0.bias", "1.weight", "1.bias"]
 * ```
 */
export class ModuleList<M extends Module = Module> extends Module {
  readonly items: M[];
  constructor(items: M[]) {
    super();
    this.items = items;
    items.forEach((m, i) => this.child(i, m));
  }

  forward<V extends Value>(_x: V): V {
    throw new Error("ModuleList has no forward: call its items one by one");
  }
}

/**
 * A model that classifies images: `forward` gives the logits and
 * `forwardFeatures` the last feature map before the head (pooling, norm and
 * the classifier), which the effective-receptive-field analysis
 * differentiates.
 *
 * @example
 * ```ts
 * import type { Classifier } from "./module.ts";
 * import { createModel } from "./registry.ts";
 * import { Meta } from "./value.ts";
 * const model: Classifier = createModel("convnext_cpu", { numClasses: 10 });
 * console.log(model.forward(new Meta([1, 3, 32, 32])).shape); // [1, 10]
 * console.log(model.forwardFeatures(new Meta([1, 3, 32, 32])).shape.length); // 4
 * ```
 */
export interface Classifier extends Module {
  forwardFeatures<V extends Value>(x: V): V;
}
