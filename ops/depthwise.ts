/**
 * Depthwise 2-D convolution (one filter per channel, `nn.Conv2d` with
 * `groups = C`) for kernels of any size, 1×1 up to 151×151 and beyond,
 * including kernels larger than the image, and its backward.
 *
 * These are the generic, deliberately plain kernels: one invocation per
 * output value forward, one per input value for the input gradient (a
 * gather, no atomics), one workgroup per filter tap `(c, ky, kx)` for the
 * filter gradient and one per channel for the bias gradient, each reducing
 * over `N·Ho·Wo` in workgroup memory. They stay as
 * the fallback and as the oracle that faster kernels are tested against.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseConv2d } from "./depthwise.ts";
 * await initGpu();
 * const x = Tensor.randn([1, 4, 8, 8], { seed: 1 });
 * const w = Tensor.randn([4, 1, 31, 31], { seed: 2 }); // kernel larger than the image
 * console.log(depthwiseConv2d(x, w, null).shape); // [1, 4, 8, 8]
 * ```
 * @module
 */
import { needsGrad, record } from "./autograd.ts";
import { channelSum, sumPerOutputKernel } from "./conv.ts";
import { flatMain, launch, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";
import {
  depthwiseBackwardFilterFast,
  depthwiseBackwardInputFast,
  depthwiseForwardFast,
  depthwisePlan,
  fusedBackwardConfig,
} from "./depthwise_fast.ts";
import { fftDepthwiseBackward } from "./depthwise_fft.ts";
import type { DepthwiseShape } from "./depthwise_shape.ts";
export { depthwiseImpl, setDepthwiseImpl } from "./depthwise_fast.ts";

/**
 * Options of {@linkcode depthwiseConv2d}. `"same"` (the default) pads by
 * {@linkcode samePadding}, which keeps H×W at stride 1 for odd kernels.
 */
export interface DepthwiseOptions {
  stride?: 1 | 2;
  padding?: "same" | number | [number, number];
}

/**
 * The padding `[⌊KH/2⌋, ⌊KW/2⌋]` that the official large-kernel code uses
 * (`padding=kernel_size // 2`).
 *
 * @example
 * ```ts
 * import { samePadding } from "./depthwise.ts";
 * console.log(samePadding(51, 5)); // [25, 2]
 * ```
 */
export function samePadding(kh: number, kw: number): [number, number] {
  return [Math.floor(kh / 2), Math.floor(kw / 2)];
}

/** Everything a depthwise kernel bakes in as constants: the shape, and the stride. */
type DepthwiseGeometry = DepthwiseShape & { stride: number };

function geometry(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  opts: DepthwiseOptions,
): DepthwiseGeometry {
  if (x.rank !== 4) {
    throw new Error(`depthwiseConv2d: input must be [N, C, H, W], got [${x.shape}]`);
  }
  const [n, c, h, wd] = x.shape;
  if (w.rank !== 4 || w.shape[0] !== c || w.shape[1] !== 1) {
    throw new Error(
      `depthwiseConv2d: weight must be [${c}, 1, KH, KW] for ${c} input channels, got [${w.shape}]`,
    );
  }
  const [, , kh, kw] = w.shape;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== c)) {
    throw new Error(`depthwiseConv2d: bias must be [${c}] (one per channel), got [${bias.shape}]`);
  }
  const stride = opts.stride ?? 1;
  if (stride !== 1 && stride !== 2) {
    throw new Error(`depthwiseConv2d: stride must be 1 or 2, got ${stride}`);
  }
  const padding = opts.padding ?? "same";
  const [ph, pw] = padding === "same"
    ? samePadding(kh, kw)
    : typeof padding === "number"
    ? [padding, padding]
    : padding;
  if (![ph, pw].every((p) => Number.isInteger(p) && p >= 0)) {
    throw new Error(
      `depthwiseConv2d: padding must be "same" or integers ≥ 0, got ${JSON.stringify(padding)}`,
    );
  }
  if (kh < 1 || kw < 1 || h + 2 * ph < kh || wd + 2 * pw < kw) {
    throw new Error(
      `depthwiseConv2d: kernel ${kh}×${kw} does not fit in the padded input ${h + 2 * ph}×${
        wd + 2 * pw
      }`,
    );
  }
  const ho = Math.floor((h + 2 * ph - kh) / stride) + 1;
  const wo = Math.floor((wd + 2 * pw - kw) / stride) + 1;
  return { n, c, h, w: wd, kh, kw, stride, ph, pw, ho, wo };
}

/**
 * Depthwise convolution of `x` [N, C, H, W] with `w` [C, 1, KH, KW] plus an
 * optional `bias` [C]: output [N, C, Ho, Wo] with
 * Ho = ⌊(H + 2·ph − KH)/stride⌋ + 1 (likewise Wo), zero padding.
 * Differentiable in all three tensors.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseConv2d } from "./depthwise.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 3, 9, 9], { seed: 1 });
 * const w = Tensor.randn([3, 1, 5, 51], { seed: 2 });
 * const y = depthwiseConv2d(x, w, Tensor.zeros([3]), { stride: 2 });
 * console.log(y.shape); // [2, 3, 5, 5]
 * ```
 */
export function depthwiseConv2d(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  opts: DepthwiseOptions = {},
): Tensor {
  const g = geometry(x, w, bias, opts);
  // Stride 1 runs the tiled kernels of depthwise_fast.ts unless setDepthwiseImpl("generic").
  const fast = depthwisePlan(g, g.stride);
  let y: Tensor;
  if (fast?.forward) y = depthwiseForwardFast(x, w, bias, g, fast.forward);
  else {
    y = Tensor.empty([g.n, g.c, g.ho, g.wo]);
    launch(forwardKernel(g, bias !== null), bias ? [x, w, bias, y] : [x, w, y], y.size);
  }
  const inputs = bias ? [x, w, bias] : [x, w];
  const [wantX, wantW, wantBias] = [needsGrad(x), needsGrad(w), bias !== null && needsGrad(bias)];
  record("depthwiseConv2d", inputs, y, [x, w], (gy, [sx, sw]) => {
    const gb = wantBias ? channelSum(gy) : null;
    // Both gradients through FFTs, where the tuner found it faster: one kernel shares the gy
    // transforms.
    const fused = fast && wantX && wantW ? fusedBackwardConfig(fast, g) : null;
    if (fused) return [...fftDepthwiseBackward(gy, sx, sw, g, fused), gb];
    return [
      wantX
        ? fast?.backwardInput
          ? depthwiseBackwardInputFast(gy, sw, g, fast.backwardInput)
          : backwardInput(gy, sw, g)
        : null,
      wantW
        ? fast?.filter
          ? depthwiseBackwardFilterFast(gy, sx, g, fast.filter)
          : backwardFilter(gy, sx, g)
        : null,
      gb,
    ];
  });
  return y;
}

/** WGSL: one invocation per output value, taps restricted to those inside the image. */
function forwardKernel(g: DepthwiseGeometry, hasBias: boolean): string {
  return `${storage(...(hasBias ? ["x", "w", "b", "y!"] : ["x", "w", "y!"]))}
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
}`;
}

/**
 * Gradient wrt the input: each input value gathers `gy · w` over the outputs
 * whose window covered it (output `oy` sees input `iy` through tap `ky` when
 * `oy·stride + ky = iy + ph`).
 */
function backwardInput(gy: Tensor, w: Tensor, g: DepthwiseGeometry): Tensor {
  const gx = Tensor.empty([g.n, g.c, g.h, g.w]);
  const code = `${storage("gy", "w", "gx!")}
${flatMain(gx.size)}
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
}`;
  launch(code, [gy, w, gx], gx.size);
  return gx;
}

/**
 * Gradient wrt the filter: one workgroup per tap `(c, ky, kx)` sums
 * `gy[n, c, oy, ox] · x[n, c, oy·stride − ph + ky, ox·stride − pw + kx]`
 * over `N·Ho·Wo` in workgroup memory.
 */
function backwardFilter(gy: Tensor, x: Tensor, g: DepthwiseGeometry): Tensor {
  const gw = Tensor.empty([g.c, 1, g.kh, g.kw]);
  const code = sumPerOutputKernel({
    buffers: ["gy", "x", "gw!"],
    count: gw.size,
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
  });
  launch(code, [gy, x, gw], grid1d(gw.size, 1));
  return gw;
}
