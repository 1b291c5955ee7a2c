/**
 * Exponential moving average of a model's weights and buffers, as timm's
 * `ModelEmaV2`: after each optimiser step `ema ← d·ema + (1 − d)·model`, on
 * the GPU, into a second instance of the same architecture that can be
 * evaluated and saved like the model itself.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { convnext, CONVNEXT_PRESETS } from "../models/convnext.ts";
 * import { ModelEma } from "./ema.ts";
 * await initGpu();
 * const make = () => convnext({ ...CONVNEXT_PRESETS.convnext_cpu, numClasses: 4 });
 * const model = make();
 * const ema = new ModelEma(model, make(), 0.999);
 * ema.update(model); // after each optimiser step
 * ```
 * @module
 */
import { emaUpdate } from "../ops/ema.ts";
import type { Module } from "../models/module.ts";

/** The EMA copy of a model. */
export class ModelEma {
  /** Evaluate or save this (eval mode, no gradients). */
  readonly module: Module;
  readonly decay: number;

  /** `copy` must be a fresh instance of the same architecture; it starts as a copy of `model`. */
  constructor(model: Module, copy: Module, decay: number) {
    this.module = copy.eval();
    this.decay = decay;
    this.#blend(model, 0);
  }

  /** Move the average towards the model's current weights and buffers. */
  update(model: Module): void {
    this.#blend(model, this.decay);
  }

  #blend(model: Module, d: number): void {
    const src = new Map(model.namedEntries());
    for (const [key, p] of this.module.namedEntries()) {
      const s = src.get(key);
      if (!s || s.size !== p.size) {
        throw new Error(`EMA: model has no entry ${key} of shape [${p.shape}]`);
      }
      const e = p.tensor;
      e.requiresGrad = false;
      emaUpdate(e, s.tensor, d);
    }
  }
}
