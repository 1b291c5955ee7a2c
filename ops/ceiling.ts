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
import { gpu } from "./gpu.ts";
import { flatMain, launch, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";
import { timeGpu } from "./timing.ts";

/** Invocations per workgroup of the copy probe and of the default FMA probe. */
const PROBE_WG = 256;

/** The multiplier and addend of every FMA of the probe (kept away from overflow and denormals). */
export const FMA_SCALE = 0.999;
export const FMA_ADD = 1e-4;

/**
 * How the FMA probe's code is shaped. The default (vec4 chains, 8 of them,
 * 256 invocations, `fma()`) is what `gpu_ceiling.ts` reports as the
 * ceiling; the others ask whether a different shape of the same arithmetic
 * gets more out of the compiler and the scheduler (scalar registers, more
 * independent chains, other workgroup sizes, `a * b + c` left for the
 * compiler to contract), so that a low ceiling can be told from a probe
 * that holds itself back.
 */
export interface FmaProbe {
  /** Values per accumulator: a vec4f or an f32. */
  lanes: 1 | 4;
  /** Independent accumulators per invocation (latency hiding). */
  chains: number;
  /** Invocations per workgroup. */
  workgroup: number;
  /** `fma(x, m, a)` or `x * m + a`. */
  form: "fma" | "muladd";
}

/** The probe `gpu_ceiling.ts` reports by default: 8 vec4 `fma()` chains, 256 invocations. */
export const DEFAULT_FMA_PROBE: Readonly<FmaProbe> = {
  lanes: 4,
  chains: 8,
  workgroup: PROBE_WG,
  form: "fma",
};

/**
 * A probe's short name, e.g. `v4 c8 wg256 fma`.
 *
 * @example
 * ```ts
 * import { DEFAULT_FMA_PROBE, fmaProbeName } from "./ceiling.ts";
 * console.log(fmaProbeName(DEFAULT_FMA_PROBE)); // v4 c8 wg256 fma
 * ```
 */
export function fmaProbeName(p: FmaProbe): string {
  return `v${p.lanes} c${p.chains} wg${p.workgroup} ${p.form}`;
}

/**
 * WGSL of the FMA probe: invocation `i` starts its accumulator `c` at
 * `f32(i + c) · 1e-3` in every lane, applies `x ← x · 0.999 + 1e-4`
 * `iterations` times, and stores the sum of its accumulators' lanes at `y[i]`.
 */
function fmaProbeSource(iterations: number, p: FmaProbe): string {
  const chains = Array.from({ length: p.chains }, (_, c) => c);
  const t = p.lanes === 4 ? "vec4f" : "f32";
  const step = (c: number) =>
    p.form === "fma" ? `c${c} = fma(c${c}, m, a);` : `c${c} = c${c} * m + a;`;
  const sum = p.lanes === 4 ? "s.x + s.y + s.z + s.w" : "s";
  return `${storage("y!")}
@compute @workgroup_size(${p.workgroup})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = wid.x * ${p.workgroup}u + li;
  let m = ${t}(${FMA_SCALE});
  let a = ${t}(${FMA_ADD});
  ${chains.map((c) => `var c${c} = ${t}(f32(i + ${c}u) * 1e-3);`).join(" ")}
  for (var t = 0u; t < ${iterations}u; t++) {
    ${chains.map(step).join(" ")}
  }
  let s = ${chains.map((c) => `c${c}`).join(" + ")};
  y[i] = ${sum};
}`;
}

/**
 * The probes `gpu_ceiling.ts --sweep` runs: the default, and every
 * combination of scalar or vec4 lanes, 4, 8 or 16 chains, workgroups of 64,
 * 256 or 1024 (those up to `maxWorkgroup`) and the two forms, with
 * `iterations` scaled so that every probe does the same multiply-adds per
 * invocation as the default at `iterations`.
 *
 * @example
 * ```ts
 * import { fmaProbeSweep } from "./ceiling.ts";
 * const sweep = fmaProbeSweep(2048);
 * console.log(sweep.length, sweep[0].name, sweep[0].iterations); // 36 v4 c8 wg256 fma 2048
 * ```
 */
export function fmaProbeSweep(
  iterations: number,
  maxWorkgroup = Infinity,
): { name: string; probe: FmaProbe; iterations: number }[] {
  const perInvocation = DEFAULT_FMA_PROBE.lanes * DEFAULT_FMA_PROBE.chains * iterations;
  const all: FmaProbe[] = [{ ...DEFAULT_FMA_PROBE }];
  for (const lanes of [4, 1] as const) {
    for (const chains of [4, 8, 16]) {
      for (const workgroup of [64, 256, 1024].filter((w) => w <= maxWorkgroup)) {
        for (const form of ["fma", "muladd"] as const) {
          const p = { lanes, chains, workgroup, form };
          if (fmaProbeName(p) !== fmaProbeName(DEFAULT_FMA_PROBE)) all.push(p);
        }
      }
    }
  }
  return all.map((probe) => ({
    name: fmaProbeName(probe),
    probe,
    iterations: Math.max(1, Math.round(perInvocation / (probe.lanes * probe.chains))),
  }));
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
 * fp32 FMA throughput: `groups` workgroups of `probe.workgroup` invocations
 * (default {@linkcode DEFAULT_FMA_PROBE}: 256 invocations, 8 independent
 * vec4 chains), each chain running `iterations` multiply-adds (no memory
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
  { groups, iterations, runs = 5, keep = false, probe = DEFAULT_FMA_PROBE }: {
    groups: number;
    iterations: number;
    runs?: number;
    keep?: boolean;
    probe?: Readonly<FmaProbe>;
  },
): Promise<CeilingResult & { values?: Float32Array }> {
  checkProbe(probe);
  const y = Tensor.empty([groups * probe.workgroup]);
  try {
    const code = fmaProbeSource(iterations, probe);
    const record = () => launch(code, [y], [groups, 1, 1], undefined, { name: "fma_probe" });
    const t = await timeGpu(record, { runs, minMs: 20, warmupMs: 100 });
    const flops = 2 * probe.lanes * probe.chains * iterations * groups * probe.workgroup;
    const values = keep ? await y.read() : undefined;
    return { ms: t.ms, tflops: flops / (t.ms * 1e9), gbps: 0, values };
  } finally {
    y.dispose();
  }
}

function checkProbe(p: Readonly<FmaProbe>): void {
  const max = gpu().limits.maxComputeInvocationsPerWorkgroup;
  if (
    !(p.lanes === 1 || p.lanes === 4) || !(Number.isInteger(p.chains) && p.chains >= 1) ||
    !(Number.isInteger(p.workgroup) && p.workgroup >= 1 && p.workgroup <= max) ||
    !(p.form === "fma" || p.form === "muladd")
  ) {
    throw new Error(
      `fmaThroughput: expected lanes 1 or 4, chains ≥ 1, a workgroup of 1..${max} and form fma or muladd, got ${
        JSON.stringify(p)
      }`,
    );
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
