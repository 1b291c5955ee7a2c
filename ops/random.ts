/**
 * Seeded normal values generated on the GPU: {@linkcode randomNormal}.
 *
 * `Tensor.randn` draws on the CPU (a sequential generator) and uploads, which
 * is right for weights that must match a CPU reference, but slow for the
 * operands of timing runs: 25 M values took over a second of JavaScript, and
 * the GPU idled (and dropped its clock) meanwhile. Here every element is a
 * pure function of `(seed, index)`: a counter-based hash gives two uniform
 * values and Box–Muller turns them into one normal value, so one kernel
 * fills any size in a single pass with no state, and the CPU function
 * {@linkcode randomNormalAt} gives the same value for a test.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { randomNormal } from "./random.ts";
 * await initGpu();
 * const x = randomNormal([2, 3], { seed: 7 });
 * console.log(x.shape, (await x.read()).length); // [2, 3] 6
 * ```
 * @module
 */
import { launch, storage, uniforms } from "./kernel.ts";
import { flatIndex, grid1d, numel, Tensor } from "./tensor.ts";

/** Options of {@linkcode randomNormal}. */
export interface RandomNormalOptions {
  /** Any integer; the same seed gives the same values on every adapter (to rounding). */
  seed?: number;
  mean?: number;
  std?: number;
}

/** 32-bit integer hash with good avalanche (a "lowbias32" multiply–xorshift), as WGSL and JS. */
const HASH_WGSL = `fn hash32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u; x *= 0x7feb352du;
  x ^= x >> 15u; x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}`;

function hash32(v: number): number {
  let x = v >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * The value {@linkcode randomNormal} puts at flat index `i` for `seed`
 * (mean 0, std 1), computed on the CPU in double precision: the reference
 * of the GPU kernel. Index `i` draws two uniform values in (0, 1), from the
 * hashes of `2i` and `2i + 1` keyed by the seed's hash, with 24 bits each.
 *
 * @example
 * ```ts
 * import { randomNormalAt } from "./random.ts";
 * const v = randomNormalAt(1, 0);
 * console.log(Number.isFinite(v), v === randomNormalAt(1, 0)); // true true
 * ```
 */
export function randomNormalAt(seed: number, i: number): number {
  const key = hash32(seed >>> 0);
  const u1 = ((hash32((2 * i) ^ key) >>> 8) + 0.5) / 16777216;
  const u2 = ((hash32((2 * i + 1) ^ key) >>> 8) + 0.5) / 16777216;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

const WG = 256;

/**
 * A tensor of `shape` holding seeded N(mean, std²) values, generated on the
 * GPU in one dispatch (see the module documentation). One kernel serves
 * every size and seed: both travel as uniforms. Up to 2³¹ elements (the
 * index pairs are 32-bit).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { randomNormal } from "./random.ts";
 * await initGpu();
 * const a = await randomNormal([1000], { seed: 3, mean: 5, std: 0 }).read();
 * console.log(a.every((v) => v === 5)); // true
 * ```
 */
export function randomNormal(
  shape: readonly number[],
  { seed = 0, mean = 0, std = 1 }: RandomNormalOptions = {},
): Tensor {
  // Checked before the tensor is allocated, so that a refused call leaves nothing behind.
  const n = numel(shape);
  if (n > 2 ** 31) throw new Error(`randomNormal: ${n} elements, above the 2^31 it can index`);
  if (!Number.isInteger(seed)) throw new Error(`randomNormal: seed ${seed} is not an integer`);
  const y = Tensor.empty(shape);
  if (n === 0) return y;
  const u = uniforms(1, {
    n: ["u32", n],
    key: ["u32", hash32(seed >>> 0)],
    mean: ["f32", mean],
    scale: ["f32", std],
  });
  const code = `${storage("y!")}
${u.decl}
${HASH_WGSL}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WG)};
  if (i >= P.n) { return; }
  let u1 = (f32(hash32((2u * i) ^ P.key) >> 8u) + 0.5) / 16777216.0;
  let u2 = (f32(hash32((2u * i + 1u) ^ P.key) >> 8u) + 0.5) / 16777216.0;
  y[i] = P.mean + P.scale * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}`;
  launch(code, [y], grid1d(n, WG), u.data, { name: "random_normal" });
  return y;
}
