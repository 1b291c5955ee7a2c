/**
 * Pooling over the spatial axes of NCHW tensors, with backward: global
 * average pooling ({@linkcode meanHW}, ConvNeXt's `x.mean([-2, -1])`) and
 * PyTorch's `MaxPool2d` ({@linkcode maxPool2d}).
 *
 * The max-pool forward saves, per output, the flat in-plane index of its
 * maximum (as u32 bits in a tensor); the backward then gathers, for each
 * input element, the gradients of the outputs whose window chose it. No
 * atomics, and the sum order is fixed, so it is deterministic.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { maxPool2d, meanHW } from "./pool.ts";
 * await initGpu();
 * const x = Tensor.randn([1, 2, 7, 7], { seed: 1 });
 * const p = maxPool2d(x); // [1, 2, 4, 4]
 * console.log(await meanHW(p).read());
 * ```
 * @module
 */
import { isRecording, needsGrad, record } from "./autograd.ts";
import { elementwiseKernel, launch } from "./kernel.ts";
import { f32, Tensor } from "./tensor.ts";

function assertNchw(what: string, x: Tensor): [number, number, number, number] {
  if (x.rank !== 4) throw new Error(`${what}: expected [N, C, H, W], got [${x.shape}]`);
  return x.shape as [number, number, number, number];
}

/**
 * Global average pool: the mean over H and W of `x` `[N, C, H, W]`, shape
 * `[N, C]`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { meanHW } from "./pool.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 2]);
 * console.log(await meanHW(x).read()); // Float32Array [2.5, 6.5]
 * ```
 */
export function meanHW(x: Tensor): Tensor {
  const [n, c, h, w] = assertNchw("meanHW", x);
  const plane = h * w;
  const y = Tensor.empty([n, c]);
  // One invocation per (n, c) plane: the planes reaching the head are small (7×7), and a
  // workgroup reduction would cost more to compile on llvmpipe than it saves.
  const body = `var acc = 0.0;
  for (var p = 0u; p < ${plane}u; p++) { acc += x[i * ${plane}u + p]; }
  y[i] = acc * ${f32(1 / plane)};`;
  launch(elementwiseKernel(y.size, ["x"], body), [x, y], y.size);
  record("meanHW", [x], y, [], (g) => {
    const gx = Tensor.empty(x.shape);
    launch(
      elementwiseKernel(gx.size, ["g"], `y[i] = g[i / ${plane}u] * ${f32(1 / plane)};`),
      [g, gx],
      gx.size,
    );
    return [gx];
  });
  return y;
}

/** Options of {@linkcode maxPool2d} (square windows, as `nn.MaxPool2d(kernel, stride, padding)`). */
export interface MaxPoolOptions {
  kernel?: number;
  stride?: number;
  padding?: number;
}

/**
 * Max pooling as PyTorch's `nn.MaxPool2d(kernel, stride, padding)` with
 * `ceil_mode=False`: padding is −∞, the output is `[N, C, ⌊(H + 2p − k)/s⌋ + 1,
 * ⌊(W + 2p − k)/s⌋ + 1]`, and a NaN in a window wins it. The gradient goes to
 * the first maximum of each window in row-major window order.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { maxPool2d } from "./pool.ts";
 * await initGpu();
 * const x = Tensor.from([1, 5, 2, 3, 4, 0, 7, 1, 2], [1, 1, 3, 3]);
 * console.log(await maxPool2d(x, { kernel: 2, stride: 1, padding: 0 }).read()); // [5, 5, 7, 4]
 * ```
 */
export function maxPool2d(x: Tensor, opts: MaxPoolOptions = {}): Tensor {
  const { kernel = 3, stride = 2, padding = 1 } = opts;
  const [n, c, h, w] = assertNchw("maxPool2d", x);
  if (padding > kernel / 2) {
    throw new Error(`maxPool2d: padding ${padding} exceeds half the kernel ${kernel}`);
  }
  const oh = Math.floor((h + 2 * padding - kernel) / stride) + 1;
  const ow = Math.floor((w + 2 * padding - kernel) / stride) + 1;
  if (oh < 1 || ow < 1) {
    throw new Error(`maxPool2d: input [${x.shape}] is smaller than the kernel ${kernel}`);
  }
  const y = Tensor.empty([n, c, oh, ow]);
  const wantGrad = isRecording() && needsGrad(x);
  // The in-plane index of each output's maximum, as u32 bits; only kept for the backward.
  const argmax = wantGrad ? Tensor.empty(y.shape) : null;
  const body = `let plane = i / ${oh * ow}u;
  let oy = (i / ${ow}u) % ${oh}u;
  let ox = i % ${ow}u;
  var best = ${f32(-Infinity)};
  var at = 0u;
  for (var ky = 0u; ky < ${kernel}u; ky++) {
    let iy = i32(oy * ${stride}u + ky) - ${padding};
    if (iy < 0 || iy >= ${h}) { continue; }
    for (var kx = 0u; kx < ${kernel}u; kx++) {
      let ix = i32(ox * ${stride}u + kx) - ${padding};
      if (ix < 0 || ix >= ${w}) { continue; }
      let p = u32(iy) * ${w}u + u32(ix);
      let v = x[plane * ${h * w}u + p];
      // Strict > keeps the first maximum; a NaN wins and then stays, as in PyTorch.
      if (v > best || (v != v && best == best)) {
        best = v;
        at = p;
      }
    }
  }
  y[i] = best;${argmax ? "\n  idx[i] = at;" : ""}`;
  if (argmax) {
    launch(elementwiseKernel(y.size, ["x", "idx:u32!"], body), [x, argmax, y], y.size);
  } else {
    launch(elementwiseKernel(y.size, ["x"], body), [x, y], y.size);
  }
  if (!argmax) return y;
  record("maxPool2d", [x], y, [argmax], (g, [sIdx]) => {
    const gx = Tensor.empty(x.shape);
    // Outputs oy whose window [oy·s − p, oy·s − p + k) holds iy: ⌈(iy + p − k + 1)/s⌉ ≤ oy ≤ ⌊(iy + p)/s⌋.
    const gather = `let plane = i / ${h * w}u;
  let p = i % ${h * w}u;
  let iy = i32(p / ${w}u);
  let ix = i32(p % ${w}u);
  let y0 = max(0, (iy + ${padding - kernel + stride}) / ${stride});
  let y1 = min(${oh - 1}, (iy + ${padding}) / ${stride});
  let x0 = max(0, (ix + ${padding - kernel + stride}) / ${stride});
  let x1 = min(${ow - 1}, (ix + ${padding}) / ${stride});
  var acc = 0.0;
  for (var oy = y0; oy <= y1; oy++) {
    for (var ox = x0; ox <= x1; ox++) {
      let o = plane * ${oh * ow}u + u32(oy * ${ow} + ox);
      if (idx[o] == p) { acc += g[o]; }
    }
  }
  y[i] = acc;`;
    launch(elementwiseKernel(gx.size, ["g", "idx:u32"], gather), [g, sIdx, gx], gx.size);
    return [gx];
  });
  argmax.dispose();
  return y;
}
