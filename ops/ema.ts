/**
 * The exponential-moving-average update of a tensor, on the GPU:
 * `average ← d·average + (1 − d)·x` (timm's `ModelEmaV2` step), and a plain
 * copy when d = 0.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { emaUpdate } from "./ema.ts";
 * await initGpu();
 * const average = Tensor.from([0, 10]);
 * emaUpdate(average, Tensor.from([10, 0]), 0.75);
 * console.log(await average.read()); // Float32Array [2.5, 7.5]
 * ```
 * @module
 */
import { elementwiseKernel, launch } from "./kernel.ts";
import { f32, type Tensor } from "./tensor.ts";

/**
 * Move `average` towards `x` in place: `average ← d·average + (1 − d)·x`,
 * `d` in [0, 1] (0 copies `x`). The decay is baked into the kernel, which is
 * compiled once per tensor size and decay.
 */
export function emaUpdate(average: Tensor, x: Tensor, decay: number): void {
  if (!(decay >= 0 && decay <= 1)) throw new Error(`emaUpdate: decay ${decay} is not in [0, 1]`);
  if (average.size !== x.size) {
    throw new Error(`emaUpdate: average of ${average.size} values, x of ${x.size}`);
  }
  const body = decay === 0
    ? "y[i] = x[i];"
    : `y[i] = ${f32(decay)} * y[i] + ${f32(1 - decay)} * x[i];`;
  launch(elementwiseKernel(x.size, ["x"], body), [x, average], x.size, undefined, {
    name: "ema-update",
    config: { size: x.size, decay },
  });
}
