/**
 * What flows through a module's `forward`: a GPU {@linkcode Tensor}, or a
 * {@linkcode Meta} (a shape only) while a model is counted with no GPU.
 *
 * @example
 * ```ts
 * import { Meta } from "./value.ts";
 * const x = new Meta([2, 3, 32, 32]);
 * console.log(x.size); // 6144
 * ```
 * @module
 */
import { numel, type Tensor } from "../ops/tensor.ts";

/**
 * A shape standing in for a tensor when counting FLOPs without a GPU.
 *
 * @example
 * ```ts
 * import { Meta } from "./value.ts";
 * console.log(new Meta([1, 8, 4, 4]).shape); // [1, 8, 4, 4]
 * ```
 */
export class Meta {
  readonly shape: readonly number[];
  constructor(shape: readonly number[]) {
    this.shape = [...shape];
  }
  get size(): number {
    return numel(this.shape);
  }
}

/** What flows through a `forward`: a GPU tensor, or a shape while counting. */
export type Value = Tensor | Meta;
