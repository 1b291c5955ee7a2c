/**
 * The frame of per-pixel kernels that sum over channels (LayerNorm
 * statistics and input gradients): each pixel gets `lanes` neighbouring
 * invocations (1–16), each takes every `lanes`-th channel, and the lanes'
 * sums meet in workgroup memory. Late stages have few pixels of many
 * channels (3136 pixels at 7² for a batch of 64, 768 channels), and one
 * invocation per pixel walking every channel left a large GPU nearly idle.
 * The invocations of a warp hold neighbouring pixels of one lane, so they
 * read neighbouring addresses of a channel plane (NCHW).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { launch, storage } from "./kernel.ts";
 * import { Tensor } from "./tensor.ts";
 * import { laneSum, pixelLanesDecl, pixelLanesGrid, pixelLanesMain } from "./pixel_lanes.ts";
 * await initGpu();
 * // Channel sums of 2 pixels of 3 channels (NCHW, one image), 2 lanes a pixel.
 * const x = Tensor.from([1, 2, 3, 4, 5, 6], [1, 3, 1, 2]);
 * const out = Tensor.empty([2]);
 * const code = `${storage("x", "out!")}
 * ${pixelLanesDecl("f32")}
 * ${pixelLanesMain(2, 2, "i")}
 *   ${laneSum("s", "f32", "x[xb + k * 2u]", 3, 2)}
 *   if (live && lane == 0u) { out[i] = sAll; }
 * }`;
 * launch(code, [x, out], pixelLanesGrid(2, 2));
 * console.log(await out.read()); // Float32Array [9, 12]
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { grid1d } from "./tensor.ts";

/** Invocations of one workgroup of a per-pixel kernel. */
const PIXEL_WG = 256;

/**
 * How many lanes (1–16, a power of two) share the channels of one pixel in
 * a kernel over `rows` pixels of `channels` channels: enough invocations to
 * fill a large GPU (a few thousand on a software adapter), at least 16
 * channels each.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { pixelLanes } from "./pixel_lanes.ts";
 * await initGpu();
 * console.log(pixelLanes(1 << 20, 768), pixelLanes(8, 8)); // 1 1
 * ```
 */
export function pixelLanes(rows: number, channels: number): number {
  const target = gpu().isFallback ? 4096 : 1 << 17;
  let lanes = 1;
  while (lanes < 16 && rows * lanes < target && channels >= 16 * lanes) lanes *= 2;
  return lanes;
}

/**
 * The opening of a per-pixel kernel's `main` for `rows` pixels and `lanes`
 * lanes a pixel, binding `p` (the pixel within the workgroup), `lane`, `i`
 * (the pixel), `live` (whether pixel `i` exists; every invocation must still
 * reach {@linkcode laneSum}'s barriers) and `xb = base` (a WGSL expression in
 * `i`: where the pixel's channel 0 is). Close it with `}`. Launch it on
 * {@linkcode pixelLanesGrid} with {@linkcode pixelLanesDecl} declared.
 *
 * @example
 * ```ts
 * import { pixelLanesMain } from "./pixel_lanes.ts";
 * console.log(pixelLanesMain(10, 4, "i * 8u").includes("let lane = li / 64u;")); // true
 * ```
 */
export function pixelLanesMain(rows: number, lanes: number, base: string): string {
  const per = PIXEL_WG / lanes;
  return `@compute @workgroup_size(${PIXEL_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let group = wid.x + wid.y * nwg.x;
  if (group >= ${Math.ceil(rows / per)}u) { return; }
  let p = li % ${per}u;
  let lane = li / ${per}u;
  let i = group * ${per}u + p;
  let live = i < ${rows}u;
  let xb = ${base};`;
}

/**
 * WGSL statements of a {@linkcode pixelLanesMain} kernel that leave in
 * `<v>All` (WGSL type `type`, `f32` or a vector) the sum over the pixel's
 * `channels` channels `k` of `term` (an expression in `k`): each lane sums
 * its channels `lane, lane + lanes, …`, then every lane adds up the pixel's
 * lanes through workgroup memory (`red`).
 *
 * @example
 * ```ts
 * import { laneSum } from "./pixel_lanes.ts";
 * console.log(laneSum("s", "f32", "x[xb + k]", 64, 4).includes("var sAll = f32(0.0);")); // true
 * ```
 */
export function laneSum(
  v: string,
  type: string,
  term: string,
  channels: number,
  lanes: number,
): string {
  const per = PIXEL_WG / lanes;
  return `var ${v} = ${type}(0.0);
  if (live) { for (var k = lane; k < ${channels}u; k += ${lanes}u) { ${v} += ${term}; } }
  red[li] = ${v};
  workgroupBarrier();
  var ${v}All = ${type}(0.0);
  for (var j = 0u; j < ${lanes}u; j++) { ${v}All += red[p + j * ${per}u]; }
  workgroupBarrier();`;
}

/**
 * The workgroup memory of {@linkcode laneSum} for sums of WGSL type `type`.
 *
 * @example
 * ```ts
 * import { pixelLanesDecl } from "./pixel_lanes.ts";
 * console.log(pixelLanesDecl("vec2f")); // var<workgroup> red: array<vec2f, 256>;
 * ```
 */
export function pixelLanesDecl(type: string): string {
  return `var<workgroup> red: array<${type}, ${PIXEL_WG}>;`;
}

/**
 * The workgroup grid of a {@linkcode pixelLanesMain} kernel.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { pixelLanesGrid } from "./pixel_lanes.ts";
 * await initGpu();
 * console.log(pixelLanesGrid(1000, 4)); // [16, 1]
 * ```
 */
export function pixelLanesGrid(rows: number, lanes: number): [number, number] {
  return grid1d(Math.ceil(rows / (PIXEL_WG / lanes)), 1);
}
