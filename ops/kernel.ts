/**
 * Small helpers to write and launch WGSL kernels on tensors.
 *
 * Shapes are baked into the WGSL source as constants (the source is the
 * cache key), so each kernel is compiled once per shape and the inner loops
 * see compile-time bounds. Values that change every step go through
 * {@linkcode uniforms}.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { elementwiseKernel, launch } from "./kernel.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3]);
 * const y = Tensor.empty([3]);
 * launch(elementwiseKernel(3, ["x"], "y[i] = 2.0 * x[i];"), [x, y], 3);
 * console.log(await y.read()); // Float32Array [2, 4, 6]
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { flatIndex, grid1d, type Tensor } from "./tensor.ts";
import type { KernelInfo } from "./wgsl_dump.ts";

/** Threads per workgroup for flat kernels. */
export const WG = 256;

/**
 * WGSL declarations for storage buffers at bindings 0…n-1: names ending in
 * `!` are read-write (the `!` is dropped), others read-only. Element type f32
 * unless the name is written `name:type`.
 *
 * @example
 * ```ts
 * import { storage } from "./kernel.ts";
 * console.log(storage("x", "idx:u32", "y!"));
 * // @group(0) @binding(0) var<storage, read> x: array<f32>;
 * // @group(0) @binding(1) var<storage, read> idx: array<u32>;
 * // @group(0) @binding(2) var<storage, read_write> y: array<f32>;
 * ```
 */
export function storage(...names: string[]): string {
  // Every launch of most ops asks for the same few declarations: built once each.
  const key = names.join(" ");
  let decls = storageDecls.get(key);
  if (decls === undefined) storageDecls.set(key, decls = storageSource(names));
  return decls;
}

const storageDecls = new Map<string, string>();

function storageSource(names: string[]): string {
  return names.map((spec, i) => {
    const write = spec.endsWith("!");
    const [name, type = "f32"] = (write ? spec.slice(0, -1) : spec).split(":");
    return `@group(0) @binding(${i}) var<storage, ${
      write ? "read_write" : "read"
    }> ${name}: array<${type}>;`;
  }).join("\n");
}

/**
 * Memoise a pure function of JSON-serialisable arguments (compared as
 * JSON); callers must not mutate what it returns. Used for the WGSL
 * generators and tile layouts that every launch would otherwise redo:
 * generating an unrolled tile kernel takes 1–2.5 ms of CPU (a 31×31
 * depthwise forward: 23 KB of source) and a depthwise layout's bank-conflict
 * search ~0.3 ms, far more than recording the dispatch, while a training
 * step launches the same few hundred kernels every time. A cached source
 * string is also the same object each call, so the pipeline lookup hashes it
 * once.
 *
 * @example
 * ```ts
 * import { memoize } from "./kernel.ts";
 * let calls = 0;
 * const gen = memoize((n: number) => { calls++; return `// ${n}`; });
 * gen(3);
 * gen(3);
 * console.log(calls); // 1
 * ```
 */
export function memoize<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  const cache = new Map<string, R>();
  return (...args: A) => {
    const key = JSON.stringify(args);
    let value = cache.get(key);
    if (value === undefined) cache.set(key, value = fn(...args));
    return value;
  };
}

/**
 * Signature of a flat kernel's `main` with the index `i` bound and bounds-checked against `n`.
 *
 * @example
 * ```ts
 * import { flatMain } from "./kernel.ts";
 * console.log(flatMain(10).split("\n")[0]); // @compute @workgroup_size(256)
 * ```
 */
export function flatMain(n: number, wg = WG): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(wg)};
  if (i >= ${n}u) { return; }`;
}

/**
 * A kernel with one invocation per output element: reads the named inputs,
 * writes `y` (always the last binding), body given as WGSL statements using `i`.
 */
export function elementwiseKernel(n: number, inputs: string[], body: string, prelude = ""): string {
  return `${storage(...inputs, "y!")}
${prelude}
${flatMain(n)}
  ${body}
}`;
}

/**
 * Launch `code` over `n` flat invocations (or an explicit workgroup grid).
 * `kernel` names it and the config it was generated from (see wgsl_dump.ts).
 */
export function launch(
  code: string,
  tensors: Tensor[],
  n: number | readonly number[],
  params?: ArrayBuffer,
  kernel?: KernelInfo,
): void {
  const groups = typeof n === "number" ? grid1d(n) : n;
  gpu().dispatch(code, tensors.map((t) => t.buffer), groups, params, kernel);
}

/**
 * A uniform block: WGSL struct declaration bound after `bindingCount` storage buffers, and its bytes.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { flatMain, launch, storage, uniforms } from "./kernel.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3]);
 * const y = Tensor.empty([3]);
 * const u = uniforms(2, { a: ["f32", 10], b: ["f32", 0.5] }); // bound after x and y
 * launch(`${storage("x", "y!")}\n${u.decl}\n${flatMain(3)}\n  y[i] = P.a * x[i] + P.b;\n}`, [x, y], 3, u.data);
 * console.log(await y.read()); // Float32Array [10.5, 20.5, 30.5]
 * ```
 */
export function uniforms(
  bindingCount: number,
  fields: Record<string, ["f32" | "u32" | "i32", number]>,
): { decl: string; data: ArrayBuffer } {
  const entries = Object.entries(fields);
  const data = new ArrayBuffer(Math.max(16, Math.ceil(entries.length / 4) * 16));
  const view = new DataView(data);
  entries.forEach(([, [type, v]], k) => {
    if (type === "f32") view.setFloat32(k * 4, v, true);
    else if (type === "u32") view.setUint32(k * 4, v >>> 0, true);
    else view.setInt32(k * 4, v, true);
  });
  return {
    // Built only when read: a launcher that caches its source needs only the bytes.
    get decl() {
      return `struct Params { ${entries.map(([name, [type]]) => `${name}: ${type},`).join(" ")} }
@group(0) @binding(${bindingCount}) var<uniform> P: Params;`;
    },
    data,
  };
}

/**
 * ⌈a / b⌉ for positive b: how many groups of b cover a (workgroups, tiles, chunks).
 *
 * @example
 * ```ts
 * import { ceilDiv } from "./kernel.ts";
 * console.log(ceilDiv(10, 4), ceilDiv(8, 4)); // 3 2
 * ```
 */
export function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b);
}

/**
 * Row-major strides of a shape.
 *
 * @example
 * ```ts
 * import { strides } from "./kernel.ts";
 * console.log(strides([2, 3, 4])); // [12, 4, 1]
 * ```
 */
export function strides(shape: readonly number[]): number[] {
  const s = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

/**
 * Throw unless two shapes are equal.
 *
 * @example
 * ```ts
 * import { assertShape } from "./kernel.ts";
 * assertShape("bias", [4], [4]); // fine
 * try {
 *   assertShape("bias", [3], [4]);
 * } catch (e) {
 *   console.log((e as Error).message); // bias: expected shape [4], got [3]
 * }
 * ```
 */
export function assertShape(what: string, got: readonly number[], want: readonly number[]): void {
  if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
    throw new Error(`${what}: expected shape [${want}], got [${got}]`);
  }
}

/**
 * Workgroup size of {@linkcode sumPerOutputKernel}. Weight and bias gradients have many
 * outputs to spread over the GPU, so 64 threads per output are plenty, and a
 * software adapter (llvmpipe) compiles a 64-wide barrier kernel about four
 * times faster than a 256-wide one.
 */
const REDUCE_WG = 64;

/**
 * WGSL with one workgroup per output value `o < count`: `setup` (statements
 * using `o`) runs once, then `term` (statements adding to `acc`, using
 * `r`) for every `r < terms`, spread over the workgroup and summed in
 * workgroup memory into the last buffer at `o`. Launch with `grid1d(count, 1)`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { grid1d, Tensor } from "./tensor.ts";
 * import { launch, sumPerOutputKernel } from "./kernel.ts";
 * await initGpu();
 * const x = Tensor.ones([3, 100]);
 * const rowSums = Tensor.empty([3]);
 * const code = sumPerOutputKernel({
 *   buffers: ["x", "y!"],
 *   count: 3,
 *   terms: 100,
 *   setup: "let row = o * 100u;",
 *   term: "acc += x[row + r];",
 * });
 * launch(code, [x, rowSums], grid1d(3, 1));
 * console.log(await rowSums.read()); // Float32Array [100, 100, 100]
 * ```
 */
export function sumPerOutputKernel(
  { buffers, count, terms, setup, term }: {
    buffers: string[];
    count: number;
    terms: number;
    setup: string;
    term: string;
  },
): string {
  const out = buffers[buffers.length - 1].replace("!", "");
  return `${storage(...buffers)}
var<workgroup> part: array<f32, ${REDUCE_WG}>;
@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let o = wid.x + wid.y * nwg.x;
  if (o >= ${count}u) { return; }
  ${setup}
  var acc = 0.0;
  for (var r = lid; r < ${terms}u; r += ${REDUCE_WG}u) {
    ${term}
  }
  part[lid] = acc;
  workgroupBarrier();
  for (var s = ${REDUCE_WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { part[lid] += part[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { ${out}[o] = part[0]; }
}`;
}
