/**
 * The centre pixel of every feature map, [N, C, H, W] → [N, C], with its
 * backward (a scatter into zeros): the effective-receptive-field analysis
 * back-propagates from the centre of the last feature map.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { centerPoint } from "./center_point.ts";
 * await initGpu();
 * const m = Tensor.from([0, 1, 2, 3, 4, 5, 6, 7, 8], [1, 1, 3, 3]);
 * console.log(await centerPoint(m).read()); // Float32Array [4]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { elementwiseKernel, launch } from "./kernel.ts";
import { Tensor } from "./tensor.ts";

/** [N, C, H, W] → [N, C]: the values at (⌊H/2⌋, ⌊W/2⌋), with its backward (a scatter into zeros). */
export function centerPoint(m: Tensor): Tensor {
  if (m.rank !== 4) throw new Error(`centerPoint: expected [N, C, H, W], got [${m.shape}]`);
  const [n, c, h, w] = m.shape;
  const centre = Math.floor(h / 2) * w + Math.floor(w / 2);
  const y = Tensor.empty([n, c]);
  const config = { shape: m.shape };
  const gather = elementwiseKernel(n * c, ["m"], `y[i] = m[i * ${h * w}u + ${centre}u];`);
  launch(gather, [m, y], n * c, undefined, { name: "center-point", config });
  record("centerPoint", [m], y, [], (g) => {
    const gm = Tensor.empty(m.shape);
    const body = `let plane = i / ${h * w}u;
  let pos = i % ${h * w}u;
  y[i] = select(0.0, g[plane], pos == ${centre}u);`;
    launch(elementwiseKernel(m.size, ["g"], body), [g, gm], m.size, undefined, {
      name: "center-point-backward",
      config,
    });
    return [gm];
  });
  return y;
}
