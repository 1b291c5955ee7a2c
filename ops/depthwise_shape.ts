/**
 * The shape of a stride-1 depthwise convolution, shared by its fast kernels
 * (`depthwise_direct.ts`, `depthwise_fft.ts`, `sparse_depthwise.ts`): the
 * forward's shape, the input gradient's (transposed) shape, and the
 * workgroup memory the kernels plan for.
 *
 * @example
 * ```ts
 * import { transposedShape } from "./depthwise_shape.ts";
 * const s = { n: 1, c: 2, h: 8, w: 8, kh: 5, kw: 3, ph: 1, pw: 1, ho: 6, wo: 8 };
 * console.log(transposedShape(s).ph); // 3
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";

/** A stride-1 depthwise convolution: x [n, c, h, w] → y [n, c, ho, wo], padding top/left. */
export interface DepthwiseShape {
  n: number;
  c: number;
  h: number;
  w: number;
  kh: number;
  kw: number;
  /** Top and left zero padding (bottom/right follow from ho, wo). */
  ph: number;
  pw: number;
  ho: number;
  wo: number;
}

/**
 * The input-gradient convolution of a shape: gy [n, c, ho, wo] → gx [n, c, h, w]
 * with the filter rotated by 180° and the padding mirrored.
 *
 * @example
 * ```ts
 * import { transposedShape } from "./depthwise_shape.ts";
 * const s = { n: 1, c: 1, h: 5, w: 5, kh: 3, kw: 3, ph: 1, pw: 1, ho: 5, wo: 5 };
 * console.log(transposedShape(s)); // the same shape: "same" padding, odd kernel
 * ```
 */
export function transposedShape(s: DepthwiseShape): DepthwiseShape {
  return {
    n: s.n,
    c: s.c,
    h: s.ho,
    w: s.wo,
    kh: s.kh,
    kw: s.kw,
    ph: s.kh - 1 - s.ph,
    pw: s.kw - 1 - s.pw,
    ho: s.h,
    wo: s.w,
  };
}

/**
 * Workgroup memory the tile kernels plan for: the adapter's limit, at most
 * 48 KiB (NVIDIA's Vulkan limit).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { workgroupMemoryLimit } from "./depthwise_shape.ts";
 * await initGpu();
 * console.log(workgroupMemoryLimit() <= 48 * 1024); // true
 * ```
 */
export function workgroupMemoryLimit(): number {
  return Math.min(gpu().limits.maxComputeWorkgroupStorageSize, 48 * 1024);
}

/**
 * Multiply-adds of one dense launch of shape `s` (the forward; each gradient
 * does as many): the planner's order of keys under a time budget.
 *
 * @example
 * ```ts
 * import { depthwiseWork } from "./depthwise_shape.ts";
 * const s = { n: 1, c: 2, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 4, wo: 4 };
 * console.log(depthwiseWork(s)); // 288
 * ```
 */
export function depthwiseWork(s: DepthwiseShape): number {
  return s.n * s.c * s.ho * s.wo * s.kh * s.kw;
}
