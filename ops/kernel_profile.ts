/**
 * Where a step's GPU time goes, kernel by kernel: {@linkcode profileKernels}
 * records the work of a callback with every dispatch in a compute pass of
 * its own between two timestamps, then sums the times by kernel. Each pass
 * boundary costs a little, so the sum runs somewhat above the step's time
 * measured whole; the shares are what it is for.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { matmul } from "./matmul.ts";
 * import { profileKernels } from "./kernel_profile.ts";
 * await initGpu();
 * const a = Tensor.randn([64, 64], { seed: 1 });
 * const rows = await profileKernels(() => matmul(a, a).dispose());
 * console.log(rows?.[0].kernel); // "gemm" (null where the adapter has no timestamp queries)
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import type { KernelInfo } from "./wgsl_dump.ts";

/** One kernel (name and shape) of a profile: how often it ran and for how long. */
export interface KernelTime {
  /** The launcher's kernel name, else the op that compiled the kernel. */
  kernel: string;
  /** The shape or config the launcher passed, as short JSON ("" when none). */
  detail: string;
  calls: number;
  /** GPU milliseconds over every call. */
  totalMs: number;
}

/** Timestamps per query set (WebGPU allows at most 4096 queries in one set). */
const QUERIES = 4096;

/** The launcher's config as short JSON: enough to tell shapes apart in a table. */
function detailOf(kernel: KernelInfo | undefined): string {
  if (kernel?.config === undefined) return "";
  const text = JSON.stringify(kernel.config) ?? "";
  return text.length > 160 ? `${text.slice(0, 157)}...` : text;
}

/**
 * GPU time of every kernel that `record` dispatches, summed by kernel name
 * and detail, longest first; null where the adapter has no
 * `timestamp-query`. `record` only records work (no read-back); the
 * profile waits for the GPU before it returns.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { add, mul } from "./elementwise.ts";
 * import { profileKernels } from "./kernel_profile.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3]);
 * const rows = await profileKernels(() => {
 *   add(x, x).dispose();
 *   mul(x, x).dispose();
 * });
 * console.log(rows === null || rows.reduce((n, r) => n + r.calls, 0) === 2); // true
 * ```
 */
export async function profileKernels(record: () => void): Promise<KernelTime[] | null> {
  const g = gpu();
  if (!g.features.has("timestamp-query")) return null;
  if (g.dispatchHook) throw new Error("profileKernels: a profile is already being recorded");
  await g.sync();
  const sets: GPUQuerySet[] = [];
  const names: { kernel: string; detail: string }[] = [];
  g.dispatchHook = (name, kernel, dispatch) => {
    const i = names.length;
    if (i % (QUERIES / 2) === 0) {
      sets.push(g.device.createQuerySet({ type: "timestamp", count: QUERIES }));
    }
    names.push({ kernel: name, detail: detailOf(kernel) });
    g.timedPass(sets[sets.length - 1], 2 * (i % (QUERIES / 2)), dispatch);
  };
  try {
    record();
  } finally {
    g.dispatchHook = null;
  }
  const times: number[] = [];
  try {
    for (let s = 0; s < sets.length; s++) {
      const count = 2 * Math.min(QUERIES / 2, names.length - s * (QUERIES / 2));
      const resolved = g.device.createBuffer({
        size: 8 * count,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      try {
        g.encoderForCopy().resolveQuerySet(sets[s], 0, count, resolved, 0);
        const stamps = new BigUint64Array(await g.readBytes(resolved, 8 * count));
        for (let q = 0; q < count; q += 2) times.push(Number(stamps[q + 1] - stamps[q]) / 1e6);
      } finally {
        resolved.destroy();
      }
    }
  } finally {
    for (const s of sets) s.destroy();
  }
  const rows = new Map<string, KernelTime>();
  names.forEach(({ kernel, detail }, i) => {
    const key = `${kernel}\n${detail}`;
    const row = rows.get(key) ?? { kernel, detail, calls: 0, totalMs: 0 };
    row.calls++;
    // A pass whose timestamps came back out of order (a reset clock) counts as nothing.
    row.totalMs += Math.max(0, times[i] ?? 0);
    rows.set(key, row);
  });
  return [...rows.values()].sort((a, b) => b.totalMs - a.totalMs);
}
