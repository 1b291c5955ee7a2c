/**
 * What the adapter can do at best through WebGPU, to judge every other
 * kernel's speed against: {@linkcode fmaThroughput} (fp32 multiply-adds on
 * registers only, no memory traffic) and {@linkcode copyBandwidth} (a vec4
 * copy, one read and one write per byte moved). A kernel at half the FMA
 * ceiling is half as fast as this stack allows, whatever the data sheet says.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fmaThroughput } from "./ceiling.ts";
 * await initGpu();
 * const r = await fmaThroughput({ groups: 4, iterations: 16 });
 * console.log(r.tflops > 0); // true
 * ```
 * @module
 */
import { flatMain, launch, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";
import { timeGpu } from "./timing.ts";

/** Invocations per workgroup of the probes. */
const PROBE_WG = 256;

/** Independent vec4 accumulators per invocation: enough to hide the FMA latency. */
const CHAINS = 8;

/** The multiplier and addend of every FMA of the probe (kept away from overflow and denormals). */
export const FMA_SCALE = 0.999;
export const FMA_ADD = 1e-4;

/**
 * WGSL of the FMA probe: invocation `i` starts its accumulator `c` at
 * `f32(i + c) · 1e-3` in all four lanes, applies `x ← x · 0.999 + 1e-4`
 * `iterations` times, and stores the sum of its accumulators' lanes at `y[i]`.
 */
function fmaProbeSource(iterations: number): string {
  const chains = Array.from({ length: CHAINS }, (_, c) => c);
  return `${storage("y!")}
@compute @workgroup_size(${PROBE_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = wid.x * ${PROBE_WG}u + li;
  let m = vec4f(${FMA_SCALE});
  let a = vec4f(${FMA_ADD});
  ${chains.map((c) => `var c${c} = vec4f(f32(i + ${c}u) * 1e-3);`).join(" ")}
  for (var t = 0u; t < ${iterations}u; t++) {
    ${chains.map((c) => `c${c} = fma(c${c}, m, a);`).join(" ")}
  }
  let s = ${chains.map((c) => `c${c}`).join(" + ")};
  y[i] = s.x + s.y + s.z + s.w;
}`;
}

/** What a probe measured. */
export interface CeilingResult {
  /** GPU milliseconds of one launch (median, back to back; see `timeGpu`). */
  ms: number;
  /** FMA probe: TFLOP/s (2 FLOPs per multiply-add). */
  tflops: number;
  /** Copy probe: GB/s, bytes read plus bytes written. */
  gbps: number;
}

/**
 * fp32 FMA throughput: `groups` workgroups of 256 invocations, each running
 * 8 independent vec4 chains of `iterations` multiply-adds (no memory
 * traffic but one store per invocation). Returns the output too, for tests.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fmaThroughput } from "./ceiling.ts";
 * await initGpu();
 * const { values } = await fmaThroughput({ groups: 1, iterations: 4, keep: true });
 * console.log(values!.length); // 256
 * ```
 */
export async function fmaThroughput(
  { groups, iterations, runs = 5, keep = false }: {
    groups: number;
    iterations: number;
    runs?: number;
    keep?: boolean;
  },
): Promise<CeilingResult & { values?: Float32Array }> {
  const y = Tensor.empty([groups * PROBE_WG]);
  try {
    const code = fmaProbeSource(iterations);
    const record = () => launch(code, [y], [groups, 1, 1], undefined, { name: "fma_probe" });
    const t = await timeGpu(record, { runs, minMs: 20, warmupMs: 100 });
    const flops = 2 * 4 * CHAINS * iterations * groups * PROBE_WG;
    const values = keep ? await y.read() : undefined;
    return { ms: t.ms, tflops: flops / (t.ms * 1e9), gbps: 0, values };
  } finally {
    y.dispose();
  }
}

/**
 * y ← x for two tensors of equal size (a multiple of 4), as vec4s, one per
 * invocation: the kernel {@linkcode copyBandwidth} times.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { copyVec4 } from "./ceiling.ts";
 * await initGpu();
 * const y = Tensor.empty([4]);
 * copyVec4(Tensor.from([1, 2, 3, 4]), y);
 * console.log(await y.read()); // Float32Array [1, 2, 3, 4]
 * ```
 */
export function copyVec4(x: Tensor, y: Tensor): void {
  if (x.size !== y.size || x.size % 4 !== 0) {
    throw new Error(`copyVec4: expected two tensors of one size, a multiple of 4`);
  }
  const vecs = x.size / 4;
  const code = `${storage("x:vec4f", "y:vec4f!")}
${flatMain(vecs, PROBE_WG)}
  y[i] = x[i];
}`;
  launch(code, [x, y], grid1d(vecs, PROBE_WG), undefined, { name: "copy_probe" });
}

/**
 * Copy bandwidth: {@linkcode copyVec4} of `floats` f32 values (a multiple
 * of 4); GB/s counts the bytes read and the bytes written.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { copyBandwidth } from "./ceiling.ts";
 * await initGpu();
 * console.log((await copyBandwidth({ floats: 1 << 12 })).gbps > 0); // true
 * ```
 */
export async function copyBandwidth(
  { floats, runs = 5 }: { floats: number; runs?: number },
): Promise<CeilingResult> {
  const x = Tensor.zeros([floats]);
  const y = Tensor.empty([floats]);
  try {
    const t = await timeGpu(() => copyVec4(x, y), { runs, minMs: 20, warmupMs: 100 });
    return { ms: t.ms, tflops: 0, gbps: (8 * floats) / (t.ms * 1e6) };
  } finally {
    x.dispose();
    y.dispose();
  }
}
