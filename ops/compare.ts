/**
 * How far one tensor is from another, measured on the GPU: the planner
 * checks every tuning candidate's output against the reference kernel's,
 * and reading a 300 MB activation back to compare it on the CPU cost more
 * than timing the candidate. {@linkcode relativeDifference} reads back three
 * numbers instead.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { relativeDifference } from "./compare.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2, 4]);
 * const b = Tensor.from([1, 2, 3]);
 * console.log(await relativeDifference(a, b)); // 0.25
 * ```
 * @module
 */
import { launch, memoize, storage, uniforms, WG } from "./kernel.ts";
import { Tensor } from "./tensor.ts";

/** Most workgroups of the reduction: each invocation loops over a stride of the rest. */
const MAX_GROUPS = 1024;

/**
 * Smallest scale {@linkcode relativeDifference} divides by, so that two
 * all-zero tensors compare equal and near-zero ones do not blow up.
 */
export const DIFFERENCE_FLOOR = 1e-6;

/** The reduction's uniform block: the element count (one kernel serves every size). */
const sizeUniform = (n: number) => uniforms(3, { n: ["u32", n] });

/**
 * The reduction kernel, one for every size: a tuning run compares outputs of
 * many shapes, and a kernel per shape would add a compile to each.
 */
const reductionSource = memoize((): string =>
  // Non-negative f32 values order like their bit patterns as u32, so atomicMax on the bits is a
  // float max. r[0]: max |a − b|, r[1]: max |b| (finite entries only), r[2]: 1 where one of a
  // pair is finite and the other is not.
  `${storage("a", "b", "r:atomic<u32>!")}
${sizeUniform(0).decl}
var<workgroup> wd: array<f32, ${WG}>;
var<workgroup> ws: array<f32, ${WG}>;
var<workgroup> wf: array<u32, ${WG}>;
fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) li: u32) {
  var d = 0.0;
  var s = 0.0;
  var f = 0u;
  for (var i = wid.x * ${WG}u + li; i < P.n; i += nwg.x * ${WG}u) {
    let x = a[i];
    let y = b[i];
    if (finite(x) != finite(y)) { f = 1u; } else if (finite(y)) {
      d = max(d, abs(x - y));
      s = max(s, abs(y));
    }
  }
  wd[li] = d; ws[li] = s; wf[li] = f;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h >>= 1u) {
    if (li < h) {
      wd[li] = max(wd[li], wd[li + h]);
      ws[li] = max(ws[li], ws[li + h]);
      wf[li] = max(wf[li], wf[li + h]);
    }
    workgroupBarrier();
  }
  if (li == 0u) {
    atomicMax(&r[0], bitcast<u32>(wd[0]));
    atomicMax(&r[1], bitcast<u32>(ws[0]));
    atomicMax(&r[2], wf[0]);
  }
}`
);

/**
 * max |a − b| over max(max |b|, {@linkcode DIFFERENCE_FLOOR}) for two
 * tensors of equal size, the maxima over the entries where `b` is finite;
 * `Infinity` where the sizes differ or where one of a pair of entries is
 * finite (not NaN or ±∞) and the other is not. The tensors stay on the GPU;
 * three numbers are read back.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { relativeDifference } from "./compare.ts";
 * await initGpu();
 * const a = Tensor.from([1, NaN]);
 * console.log(await relativeDifference(a, Tensor.from([1, 2]))); // Infinity
 * console.log(await relativeDifference(a, Tensor.from([1, NaN]))); // 0
 * ```
 */
export async function relativeDifference(a: Tensor, b: Tensor): Promise<number> {
  return (await relativeDifferences([[a, b]]))[0];
}

/**
 * {@linkcode relativeDifference} of several pairs with one wait for the GPU:
 * every reduction is launched first, then the results are read together (a
 * read-back waits on the device poll, ~10 ms under Deno, so the planner, which
 * checks several candidates per kernel, pays it once, not once per output).
 * The tensors may be disposed as soon as this is called.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { relativeDifferences } from "./compare.ts";
 * await initGpu();
 * const b = Tensor.from([1, 2, 4]);
 * console.log(await relativeDifferences([[Tensor.from([1, 2, 3]), b], [b, b]])); // [0.25, 0]
 * ```
 */
export function relativeDifferences(pairs: [Tensor, Tensor][]): Promise<number[]> {
  const launched = pairs.map(([a, b]) => launchDifference(a, b));
  return Promise.all(launched.map(async (r) => {
    if (typeof r === "number") return r;
    try {
      const [diff, scale, flag] = new Uint32Array((await r.read()).buffer);
      if (flag) return Infinity;
      const f = new Float32Array(new Uint32Array([diff, scale]).buffer);
      return f[0] / Math.max(f[1], DIFFERENCE_FLOOR);
    } finally {
      r.dispose();
    }
  }));
}

/** Launch the reduction of one pair into a new 3-entry tensor, or the answer when none is needed. */
function launchDifference(a: Tensor, b: Tensor): Tensor | number {
  if (a.size !== b.size) return Infinity;
  if (a.size === 0) return 0;
  const groups = Math.min(MAX_GROUPS, Math.ceil(a.size / WG));
  const r = Tensor.zeros([3]);
  launch(reductionSource(), [a, b, r], [groups, 1, 1], sizeUniform(a.size).data, {
    name: "relative_difference",
  });
  return r;
}
