/**
 * Per-step learning-rate schedule of the official ConvNeXt/SLaK trainer
 * (`utils.cosine_scheduler`): linear warm-up from `warmupStart` to `base`
 * over the warm-up steps, then a half cosine from `base` down to `final`.
 *
 * @example
 * ```ts
 * import { cosineSchedule } from "./schedule.ts";
 * const lr = cosineSchedule({ base: 4e-3, final: 1e-6, epochs: 10, stepsPerEpoch: 100, warmupEpochs: 1 });
 * console.log(lr(0), lr(100), lr(999)); // 0, 0.004, ≈1e-6
 * ```
 * @module
 */

/** Options of {@linkcode cosineSchedule}. */
export interface CosineScheduleOptions {
  base: number;
  final: number;
  epochs: number;
  stepsPerEpoch: number;
  warmupEpochs?: number;
  /** Overrides `warmupEpochs` when > 0 (`--warmup-steps`). */
  warmupSteps?: number;
  warmupStart?: number;
}

/** The value at optimiser step `i` (0-based); steps past the end keep the final value. */
export function cosineSchedule(o: CosineScheduleOptions): (step: number) => number {
  const total = o.epochs * o.stepsPerEpoch;
  const warmup = Math.min(
    total,
    (o.warmupSteps ?? 0) > 0 ? o.warmupSteps! : Math.round((o.warmupEpochs ?? 0) * o.stepsPerEpoch),
  );
  const start = o.warmupStart ?? 0;
  const decay = total - warmup;
  return (i) => {
    if (i < warmup) {
      // np.linspace(start, base, warmup): reaches `base` on the last warm-up step.
      return warmup === 1 ? o.base : start + ((o.base - start) * i) / (warmup - 1);
    }
    const k = Math.min(i - warmup, Math.max(decay - 1, 0));
    return o.final + 0.5 * (o.base - o.final) * (1 + Math.cos((Math.PI * k) / Math.max(decay, 1)));
  };
}
