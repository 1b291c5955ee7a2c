/**
 * Masks applied on the GPU: multiply tensors by a 0/1 mask in place, in one
 * dispatch for a weight and its optimiser moments (what dynamic sparsity
 * does after every optimiser step, so pruned weights stay exactly zero and
 * restart from zero state).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { multiplyByMaskInPlace } from "./masked.ts";
 * await initGpu();
 * const mask = Tensor.from([1, 0, 1]);
 * const w = Tensor.from([2, 3, 4]);
 * multiplyByMaskInPlace(mask, [w]);
 * console.log(await w.read()); // Float32Array [2, 0, 4]
 * ```
 * @module
 */
import { launch, storage, WG } from "./kernel.ts";
import { flatIndex, type Tensor } from "./tensor.ts";

/**
 * `t ← t · mask` element-wise for every tensor in `targets` (each the size of
 * `mask`), in recording order. The mask is any f32 tensor; 0/1 values make
 * it exact.
 */
export function multiplyByMaskInPlace(mask: Tensor, targets: readonly Tensor[]): void {
  if (targets.length === 0) return;
  for (const t of targets) {
    if (t.size !== mask.size) {
      throw new Error(`multiplyByMaskInPlace: target of ${t.size} values, mask of ${mask.size}`);
    }
  }
  const names = targets.map((_, j) => `t${j}`);
  const code = `${storage("m", ...names.map((n) => `${n}!`))}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WG)};
  if (i >= ${mask.size}u) { return; }
  let k = m[i];
  ${names.map((n) => `${n}[i] = ${n}[i] * k;`).join("\n  ")}
}`;
  launch(code, [mask, ...targets], mask.size, undefined, {
    name: "mask-multiply",
    config: { size: mask.size, targets: targets.length },
  });
}
