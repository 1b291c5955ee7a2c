/**
 * Layout ops with their backward: {@linkcode permute} (and the NCHW ↔ NHWC
 * helpers {@linkcode toChannelsLast} / {@linkcode toChannelsFirst}) and
 * {@linkcode concat}. Each materialises a contiguous copy, one invocation
 * per output element.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { concat, toChannelsFirst, toChannelsLast } from "./shape.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 3, 4, 5], { seed: 1 });
 * const nhwc = toChannelsLast(x); // [2, 4, 5, 3]
 * console.log(toChannelsFirst(nhwc).shape, concat([x, x], 1).shape); // [2, 3, 4, 5] [2, 6, 4, 5]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { elementwiseKernel, launch, strides } from "./kernel.ts";
import { numel, Tensor } from "./tensor.ts";

/** WGSL: the input offset of output element `i` when output axis d is input axis dims[d]. */
function permutedIndex(inShape: readonly number[], dims: readonly number[]): string {
  const outShape = dims.map((d) => inShape[d]);
  const os = strides(outShape);
  const is = strides(inShape);
  const terms: string[] = [];
  for (let d = 0; d < dims.length; d++) {
    if (outShape[d] === 1) continue;
    const coord = d === 0 ? `(i / ${os[d]}u)` : `((i / ${os[d]}u) % ${outShape[d]}u)`;
    terms.push(is[dims[d]] === 1 ? coord : `${coord} * ${is[dims[d]]}u`);
  }
  return terms.join(" + ") || "0u";
}

/**
 * Reorder the axes of `x`: output axis `d` is input axis `dims[d]`, as
 * `torch.permute` (negative axes count from the end). Any rank (rank ≤ 6 in
 * practice). The backward applies the inverse permutation.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { permute } from "./shape.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
 * console.log(await permute(x, [1, 0]).read()); // Float32Array [1, 4, 2, 5, 3, 6]
 * ```
 */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const rank = x.rank;
  const axes = dims.map((d) => (d < 0 ? d + rank : d));
  if (
    axes.length !== rank || new Set(axes).size !== rank || axes.some((d) => !(d >= 0 && d < rank))
  ) {
    throw new Error(`permute: [${dims}] is not a permutation of the ${rank} axes of [${x.shape}]`);
  }
  const y = Tensor.empty(axes.map((d) => x.shape[d]));
  launch(
    elementwiseKernel(y.size, ["x"], `y[i] = x[${permutedIndex(x.shape, axes)}];`),
    [x, y],
    y.size,
  );
  record("permute", [x], y, [], (g) => {
    const inverse = new Array<number>(rank);
    axes.forEach((d, k) => (inverse[d] = k));
    return [permute(g, inverse)];
  });
  return y;
}

/**
 * NCHW → NHWC (`x.permute(0, 2, 3, 1)`), for ops on the channel axis such as
 * `linear` and channels-last layer norm.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { toChannelsLast } from "./shape.ts";
 * await initGpu();
 * console.log(toChannelsLast(Tensor.zeros([2, 3, 4, 5])).shape); // [2, 4, 5, 3]
 * ```
 */
export function toChannelsLast(x: Tensor): Tensor {
  if (x.rank !== 4) throw new Error(`toChannelsLast: expected [N, C, H, W], got [${x.shape}]`);
  return permute(x, [0, 2, 3, 1]);
}

/**
 * NHWC → NCHW (`x.permute(0, 3, 1, 2)`), the inverse of {@linkcode toChannelsLast}.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { toChannelsFirst } from "./shape.ts";
 * await initGpu();
 * console.log(toChannelsFirst(Tensor.zeros([2, 4, 5, 3])).shape); // [2, 3, 4, 5]
 * ```
 */
export function toChannelsFirst(x: Tensor): Tensor {
  if (x.rank !== 4) throw new Error(`toChannelsFirst: expected [N, H, W, C], got [${x.shape}]`);
  return permute(x, [0, 3, 1, 2]);
}

/**
 * WGSL body copying between `x` (one part, `part` long on the axis) and `y`
 * (the whole, `whole` long on the axis, the part starting at `offset`), one
 * invocation per element of the part; `toWhole` picks the direction.
 */
function sliceCopy(
  inner: number,
  part: number,
  whole: number,
  offset: number,
  toWhole: boolean,
): string {
  const at = `(i / ${part * inner}u) * ${whole * inner}u + ${offset * inner}u + i % ${
    part * inner
  }u`;
  return toWhole ? `y[${at}] = x[i];` : `y[i] = x[${at}];`;
}

/**
 * Join tensors along `axis` (negative counts from the end), as `torch.cat`;
 * every other axis must match. The backward slices the gradient back.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { concat } from "./shape.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 3, 4], [2, 2]);
 * const b = Tensor.from([5, 6], [2, 1]);
 * console.log(await concat([a, b], 1).read()); // Float32Array [1, 2, 5, 3, 4, 6]
 * ```
 */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error("concat: no tensors");
  const rank = xs[0].rank;
  const ax = axis < 0 ? axis + rank : axis;
  if (!(ax >= 0 && ax < rank)) {
    throw new Error(`concat: axis ${axis} out of range for rank ${rank}`);
  }
  for (const t of xs) {
    if (t.rank !== rank || t.shape.some((d, i) => i !== ax && d !== xs[0].shape[i])) {
      throw new Error(`concat: [${t.shape}] does not match [${xs[0].shape}] off axis ${ax}`);
    }
  }
  const inner = numel(xs[0].shape.slice(ax + 1));
  const lengths = xs.map((t) => t.shape[ax]);
  const whole = lengths.reduce((a, b) => a + b, 0);
  const offsets = lengths.map((_, k) => lengths.slice(0, k).reduce((a, b) => a + b, 0));
  const outShape = xs[0].shape.map((d, i) => (i === ax ? whole : d));
  const y = Tensor.empty(outShape);
  xs.forEach((t, k) => {
    if (t.size === 0) return;
    // Each part writes its own slab of y; `y` is read_write, so several dispatches can fill it.
    const body = sliceCopy(inner, lengths[k], whole, offsets[k], true);
    launch(elementwiseKernel(t.size, ["x"], body), [t, y], t.size);
  });
  record("concat", [...xs], y, [], (g) =>
    xs.map((t, k) => {
      const gx = Tensor.empty(t.shape);
      if (gx.size === 0) return gx;
      const body = sliceCopy(inner, lengths[k], whole, offsets[k], false);
      launch(elementwiseKernel(gx.size, ["x"], body), [g, gx], gx.size);
      return gx;
    }));
  return y;
}
