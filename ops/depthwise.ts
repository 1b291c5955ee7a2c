/**
 * Depthwise 2-D convolution (one filter per channel, `nn.Conv2d` with
 * `groups = C`) for kernels of any size, 1×1 up to 151×151 and beyond,
 * including kernels larger than the image, and its backward.
 *
 * The op records the autograd node and picks the kernels: at stride 1 the
 * tiled or FFT kernels that the planner chose for the shape (see
 * `depthwise_plan.ts`), else the plain kernels of `depthwise_plain.ts`.
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
import { channelSum } from "./conv.ts";
import type { Tensor } from "./tensor.ts";
import {
  depthwiseBackwardFilterFast,
  depthwiseBackwardInputFast,
  depthwiseForwardFast,
} from "./depthwise_direct.ts";
import { depthwisePlan, fusedBackwardConfig } from "./depthwise_plan.ts";
import { fftDepthwiseBackward } from "./depthwise_fft.ts";
import {
  type DepthwiseGeometry,
  plainDepthwiseBackwardFilter,
  plainDepthwiseBackwardInput,
  plainDepthwiseForward,
} from "./depthwise_plain.ts";
export { depthwiseImpl, setDepthwiseImpl } from "./depthwise_plan.ts";

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
  // Stride 1 runs the planned tiled or FFT kernels unless setDepthwiseImpl("generic").
  const fast = depthwisePlan(g, g.stride);
  const y = fast?.forward
    ? depthwiseForwardFast(x, w, bias, g, fast.forward)
    : plainDepthwiseForward(x, w, bias, g);
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
          : plainDepthwiseBackwardInput(gy, sw, g)
        : null,
      wantW
        ? fast?.filter
          ? depthwiseBackwardFilterFast(gy, sx, g, fast.filter)
          : plainDepthwiseBackwardFilter(gy, sx, g)
        : null,
      gb,
    ];
  });
  return y;
}
