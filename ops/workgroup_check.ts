/**
 * Bounds checks on workgroup memory, for debugging kernels.
 *
 * WebGPU checks indices into storage buffers, but not every stack checks
 * indices into `var<workgroup>` arrays: on Mesa's llvmpipe (Vulkan through
 * wgpu), an index past the end of one workgroup array writes into the next
 * one, and far enough past it into whatever the CPU heap holds there. Such a
 * write can go unnoticed in every result and still corrupt the process's heap.
 *
 * {@linkcode checkWorkgroupBounds} rewrites a kernel so that every index into
 * a workgroup array goes through a check: an index out of range is counted
 * in a small storage buffer at `@group(1)` (count, kernel id + 1, largest
 * bad index) and clamped to the last element. `Gpu` applies it to every
 * kernel when the environment variable `LARGEKERNEL_CHECK_WORKGROUP=1` is set
 * and throws at the next read-back if any index was out of range.
 *
 * @example
 * ```ts
 * import { checkWorkgroupBounds } from "./workgroup_check.ts";
 * const code = "var<workgroup> t: array<f32, 64>;\nfn f(i: u32) { t[i + 1u] = 0.0; }";
 * console.log(checkWorkgroupBounds(code, 7).includes("t[_lk_wg(u32(i + 1u), 64u, 7u)]")); // true
 * ```
 * @module
 */

/** The bind group that holds the check's counter buffer. */
export const WORKGROUP_CHECK_GROUP = 1;

/** Bytes of the counter buffer: count, kernel id + 1, largest bad index, spare. */
export const WORKGROUP_CHECK_BYTES = 16;

const DECL = /var<workgroup>\s+(\w+)\s*:\s*array<(.+?),\s*(\d+)u?\s*>\s*;/g;

/** `code[open]` is `[`: the index of its matching `]`. */
function closingBracket(code: string, open: number): number {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    if (code[i] === "[") depth++;
    else if (code[i] === "]" && --depth === 0) return i;
  }
  throw new Error(`unbalanced "[" at ${open}`);
}

/**
 * `code` with every index into a `var<workgroup>` array checked (see the
 * module doc); `kernelId` is what the counter records for this kernel.
 * Kernels without workgroup arrays come back unchanged.
 */
export function checkWorkgroupBounds(code: string, kernelId: number): string {
  const sizes = new Map<string, number>();
  for (const m of code.matchAll(DECL)) sizes.set(m[1], Number(m[3]));
  if (sizes.size === 0) return code;
  const names = new RegExp(`\\b(${[...sizes.keys()].join("|")})\\s*\\[`, "g");
  const rewrite = (text: string): string => {
    let out = "";
    let at = 0;
    names.lastIndex = 0;
    for (let m = names.exec(text); m; m = names.exec(text)) {
      const open = m.index + m[0].length - 1;
      const close = closingBracket(text, open);
      const inner = rewrite(text.slice(open + 1, close));
      out += `${text.slice(at, m.index)}${m[1]}[_lk_wg(u32(${inner}), ${
        sizes.get(m[1])
      }u, ${kernelId}u)]`;
      at = close + 1;
      names.lastIndex = at;
    }
    return out + text.slice(at);
  };
  return `${rewrite(code)}
@group(${WORKGROUP_CHECK_GROUP}) @binding(0) var<storage, read_write> _lk_oob: array<atomic<u32>, 4>;
fn _lk_wg(i: u32, n: u32, kernel: u32) -> u32 {
  if (i >= n) {
    atomicAdd(&_lk_oob[0], 1u);
    atomicMax(&_lk_oob[1], kernel + 1u);
    atomicMax(&_lk_oob[2], i);
    return n - 1u;
  }
  return i;
}
`;
}

/**
 * Whether `LARGEKERNEL_CHECK_WORKGROUP=1` is set (false without env permission; never prompts).
 *
 * @example
 * ```ts
 * import { workgroupCheckRequested } from "./workgroup_check.ts";
 * console.log(workgroupCheckRequested()); // true only under LARGEKERNEL_CHECK_WORKGROUP=1
 * ```
 */
export function workgroupCheckRequested(): boolean {
  const variable = "LARGEKERNEL_CHECK_WORKGROUP";
  try {
    if (Deno.permissions.querySync({ name: "env", variable }).state !== "granted") return false;
    return Deno.env.get(variable) === "1";
  } catch {
    return false;
  }
}
