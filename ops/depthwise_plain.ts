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
import { sumPerOutputKernel } from "./conv.ts";
import type { DepthwiseShape } from "./depthwise_shape.ts";
import { flatMain, launch, memoize, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";

/** Everything a depthwise kernel bakes in as constants: the shape, and the stride. */
export type DepthwiseGeometry = DepthwiseShape & { stride: number };

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
  launch(forwardKernel(g, bias !== null), bias ? [x, w, bias, y] : [x, w, y], y.size);
  return y;
}

/**
 * WGSL: one invocation per output value, taps restricted to those inside the
 * image. This and the backward kernels are cached per geometry: a step
 * launches them once per layer, and building the source cost more CPU than
 * recording the dispatch.
 */
const forwardKernel = memoize((g: DepthwiseGeometry, hasBias: boolean): string =>
  `${storage(...(hasBias ? ["x", "w", "b", "y!"] : ["x", "w", "y!"]))}
${flatMain(g.n * g.c * g.ho * g.wo)}
  let ox = i % ${g.wo}u;
  let oy = (i / ${g.wo}u) % ${g.ho}u;
  let nc = i / ${g.wo * g.ho}u;
  let c = nc % ${g.c}u;
  // Input pixel under tap (0, 0); taps landing in the zero padding add nothing, so skip them.
  let iy0 = i32(oy * ${g.stride}u) - ${g.ph};
  let ix0 = i32(ox * ${g.stride}u) - ${g.pw};
  let kyLo = u32(max(0, -iy0));
  let kyHi = u32(clamp(${g.h} - iy0, 0, ${g.kh}));
  let kxLo = u32(max(0, -ix0));
  let kxHi = u32(clamp(${g.w} - ix0, 0, ${g.kw}));
  let xPlane = nc * ${g.h * g.w}u;
  let wPlane = c * ${g.kh * g.kw}u;
  var acc = ${hasBias ? "b[c]" : "0.0"};
  for (var ky = kyLo; ky < kyHi; ky++) {
    let xRow = xPlane + u32(iy0 + i32(ky)) * ${g.w}u;
    let wRow = wPlane + ky * ${g.kw}u;
    for (var kx = kxLo; kx < kxHi; kx++) {
      acc += x[xRow + u32(ix0 + i32(kx))] * w[wRow + kx];
    }
  }
  y[i] = acc;
}`
);

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
  launch(backwardInputKernel(g), [gy, w, gx], gx.size);
  return gx;
}

/** The kernel of {@linkcode plainDepthwiseBackwardInput} (cached as {@linkcode forwardKernel}). */
const backwardInputKernel = memoize((g: DepthwiseGeometry): string =>
  `${storage("gy", "w", "gx!")}
${flatMain(g.n * g.c * g.h * g.w)}
  let ix = i % ${g.w}u;
  let iy = (i / ${g.w}u) % ${g.h}u;
  let nc = i / ${g.w * g.h}u;
  let c = nc % ${g.c}u;
  let ty = i32(iy) + ${g.ph};
  let tx = i32(ix) + ${g.pw};
  // Taps for which some output in [0, Ho) lies on this pixel.
  let kyLo = u32(max(0, ty - ${(g.ho - 1) * g.stride}));
  let kyHi = u32(min(ty + 1, ${g.kh}));
  let kxLo = u32(max(0, tx - ${(g.wo - 1) * g.stride}));
  let kxHi = u32(min(tx + 1, ${g.kw}));
  let gyPlane = nc * ${g.ho * g.wo}u;
  let wPlane = c * ${g.kh * g.kw}u;
  var acc = 0.0;
  for (var ky = kyLo; ky < kyHi; ky++) {
    let sy = ty - i32(ky);
    if (sy % ${g.stride} != 0) { continue; }
    let gyRow = gyPlane + u32(sy / ${g.stride}) * ${g.wo}u;
    for (var kx = kxLo; kx < kxHi; kx++) {
      let sx = tx - i32(kx);
      if (sx % ${g.stride} != 0) { continue; }
      acc += gy[gyRow + u32(sx / ${g.stride})] * w[wPlane + ky * ${g.kw}u + kx];
    }
  }
  gx[i] = acc;
}`
);

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
  launch(backwardFilterKernel(g), [gy, x, gw], grid1d(gw.size, 1));
  return gw;
}

/** The kernel of {@linkcode plainDepthwiseBackwardFilter} (cached as {@linkcode forwardKernel}). */
const backwardFilterKernel = memoize((g: DepthwiseGeometry): string =>
  sumPerOutputKernel({
    buffers: ["gy", "x", "gw!"],
    count: g.c * g.kh * g.kw,
    terms: g.n * g.ho * g.wo,
    setup: `let kx = o % ${g.kw}u;
  let ky = (o / ${g.kw}u) % ${g.kh}u;
  let c = o / ${g.kw * g.kh}u;`,
    term: `let ox = r % ${g.wo}u;
    let oy = (r / ${g.wo}u) % ${g.ho}u;
    let n = r / ${g.wo * g.ho}u;
    let iy = i32(oy * ${g.stride}u + ky) - ${g.ph};
    let ix = i32(ox * ${g.stride}u + kx) - ${g.pw};
    if (iy >= 0 && iy < ${g.h} && ix >= 0 && ix < ${g.w}) {
      let nc = n * ${g.c}u + c;
      acc += gy[nc * ${g.ho * g.wo}u + oy * ${g.wo}u + ox] *
        x[nc * ${g.h * g.w}u + u32(iy) * ${g.w}u + u32(ix)];
    }`,
  })
);
