/**
 * The plain depthwise kernels: one invocation per output value forward, one
 * per input value for the input gradient (a gather, no atomics), one
 * workgroup per filter tap `(c, ky, kx)` for the filter gradient, each
 * reducing over `N·Ho·Wo`. They run every stride and every shape, and they
 * are the reference that the tiled, FFT and sparse kernels are checked
 * against, in the tests and by the planner.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { plainDepthwiseForward } from "./depthwise_plain.ts";
 * await initGpu();
 * const g = { n: 1, c: 2, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6, stride: 1 };
 * const y = plainDepthwiseForward(Tensor.ones([1, 2, 6, 6]), Tensor.ones([2, 1, 3, 3]), null, g);
 * console.log((await y.read())[7]); // 9
 * ```
 * @module
 */
import {
  type Conv2dGeometry,
  groupedConvBackwardInputKernel,
  groupedConvBackwardWeightKernel,
  groupedConvForwardKernel,
} from "./conv.ts";
import type { DepthwiseShape } from "./depthwise_shape.ts";
import { launch } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";

/** Everything a depthwise kernel bakes in as constants: the shape, and the stride. */
export type DepthwiseGeometry = DepthwiseShape & { stride: number };

/**
 * The depthwise convolution as the grouped one it is: one group per channel,
 * one input and one output channel each. The kernels are conv.ts's grouped
 * kernels, whose per-group channel loops then run once.
 */
function asGroupedConv(g: DepthwiseGeometry): Conv2dGeometry {
  return {
    n: g.n,
    cin: g.c,
    h: g.h,
    w: g.w,
    cout: g.c,
    kh: g.kh,
    kw: g.kw,
    sh: g.stride,
    sw: g.stride,
    ph: g.ph,
    pw: g.pw,
    groups: g.c,
    cinPerGroup: 1,
    coutPerGroup: 1,
    ho: g.ho,
    wo: g.wo,
  };
}

/**
 * Forward: x [n, c, h, w], w [c, 1, kh, kw], optional bias [c] → y [n, c, ho, wo].
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { plainDepthwiseForward } from "./depthwise_plain.ts";
 * await initGpu();
 * const g = { n: 1, c: 1, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 2, wo: 2, stride: 2 };
 * const y = plainDepthwiseForward(Tensor.ones([1, 1, 4, 4]), Tensor.ones([1, 1, 3, 3]), null, g);
 * console.log(y.shape); // [1, 1, 2, 2]
 * ```
 */
export function plainDepthwiseForward(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  g: DepthwiseGeometry,
): Tensor {
  const y = Tensor.empty([g.n, g.c, g.ho, g.wo]);
  launch(
    groupedConvForwardKernel(asGroupedConv(g), bias !== null),
    bias ? [x, w, bias, y] : [x, w, y],
    y.size,
  );
  return y;
}

/**
 * Gradient wrt the input: each input value gathers `gy · w` over the outputs
 * whose window covered it (output `oy` sees input `iy` through tap `ky` when
 * `oy·stride + ky = iy + ph`).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { plainDepthwiseBackwardInput } from "./depthwise_plain.ts";
 * await initGpu();
 * const g = { n: 1, c: 1, h: 5, w: 5, kh: 3, kw: 3, ph: 1, pw: 1, ho: 5, wo: 5, stride: 1 };
 * const gx = plainDepthwiseBackwardInput(Tensor.ones([1, 1, 5, 5]), Tensor.ones([1, 1, 3, 3]), g);
 * console.log((await gx.read())[0]); // 4
 * ```
 */
export function plainDepthwiseBackwardInput(gy: Tensor, w: Tensor, g: DepthwiseGeometry): Tensor {
  const gx = Tensor.empty([g.n, g.c, g.h, g.w]);
  launch(groupedConvBackwardInputKernel(asGroupedConv(g)), [gy, w, gx], gx.size);
  return gx;
}

/**
 * Gradient wrt the filter: one workgroup per tap `(c, ky, kx)` sums
 * `gy[n, c, oy, ox] · x[n, c, oy·stride − ph + ky, ox·stride − pw + kx]`
 * over `N·Ho·Wo` in workgroup memory.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { plainDepthwiseBackwardFilter } from "./depthwise_plain.ts";
 * await initGpu();
 * const g = { n: 2, c: 1, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 4, wo: 4, stride: 1 };
 * const gw = plainDepthwiseBackwardFilter(Tensor.ones([2, 1, 4, 4]), Tensor.ones([2, 1, 4, 4]), g);
 * console.log((await gw.read())[4]); // 32
 * ```
 */
export function plainDepthwiseBackwardFilter(gy: Tensor, x: Tensor, g: DepthwiseGeometry): Tensor {
  const gw = Tensor.empty([g.c, 1, g.kh, g.kw]);
  launch(groupedConvBackwardWeightKernel(asGroupedConv(g)), [gy, x, gw], grid1d(gw.size, 1));
  return gw;
}
