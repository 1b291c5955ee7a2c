/**
 * The adapter's ceilings through WebGPU (`ops/ceiling.ts`): fp32 FMA
 * throughput on registers alone, and the bandwidth of a vec4 copy. Every
 * other benchmark's TFLOP/s and GB/s read best beside these: they are what
 * this stack (WGSL, the shader compiler, the driver) reaches at best on the
 * GPU at hand. Prints and writes `gpu_ceiling.csv`: probe,value,unit,ms.
 * `--sweep` adds the FMA probe in other shapes (scalar or vec4, 4–16 chains,
 * 64–1024 invocations, `fma()` or `a * b + c`; `fmaProbeSweep`), one row
 * each, and prints the fastest: whether the ceiling is the GPU's or the
 * default probe's.
 *
 * ```sh
 * deno run -A scripts/gpu_ceiling.ts              # on a GPU
 * deno run -A scripts/gpu_ceiling.ts --sweep      # every probe shape
 * deno run -A scripts/gpu_ceiling.ts --groups 8 --iterations 64 --floats 65536   # llvmpipe
 * ```
 *
 * @example
 * ```ts
 * import { ceilingRows } from "./gpu_ceiling.ts";
 * const rows = await ceilingRows({ groups: 2, iterations: 8, floats: 1024, runs: 1 });
 * console.log(rows.map((r) => r.probe)); // ["fma_fp32", "copy_vec4"]
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { type Cell, toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { copyBandwidth, fmaProbeSweep, fmaThroughput } from "../ops/ceiling.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { formatTable } from "./pytorch_anchor.ts";

const HELP = `usage: deno run -A scripts/gpu_ceiling.ts [flags]

FP32 FMA throughput and copy bandwidth through WebGPU on this adapter.

  --groups N        workgroups of 256 invocations of the FMA probe (default 4224 on a GPU,
                    8 on a software adapter)
  --iterations N    multiply-adds per chain (default 2048 on a GPU, 64 on a software adapter)
  --floats N        f32 values the copy moves, a multiple of 4 (default 32 Mi on a GPU, 64 Ki
                    on a software adapter; at most the adapter's largest binding)
  --runs N          timed runs, median reported (default 5)
  --sweep           also run the FMA probe in every other shape (vec4 or scalar, 4/8/16 chains,
                    64/256/1024 invocations, fma() or a * b + c; the same multiply-adds per
                    invocation), one row each ("fma_fp32 v1 c16 wg1024 muladd")
  --out DIR         output folder (default out/gpu_ceiling/)
  --help`;

/**
 * The probes' rows (probe, value, unit, ms) at the given sizes; with
 * `sweep`, one more row per FMA probe shape of `fmaProbeSweep`, each with
 * `groups × 256` invocations in all (fewer where that needs more workgroups
 * than a dispatch may have), those workgroups the device allows.
 */
export async function ceilingRows(
  o: { groups: number; iterations: number; floats: number; runs: number; sweep?: boolean },
): Promise<Record<string, Cell>[]> {
  const fmaRow = (probe: string, r: { tflops: number; ms: number }) => ({
    probe,
    value: Number(r.tflops.toPrecision(4)),
    unit: "TFLOP/s",
    ms: r.ms,
  });
  const fma = await fmaThroughput(o);
  const copy = await copyBandwidth(o);
  const rows: Record<string, Cell>[] = [
    fmaRow("fma_fp32", fma),
    { probe: "copy_vec4", value: Number(copy.gbps.toPrecision(4)), unit: "GB/s", ms: copy.ms },
  ];
  if (!o.sweep) return rows;
  const invocations = o.groups * 256;
  const largest = gpu().limits.maxComputeInvocationsPerWorkgroup;
  for (const { name, probe, iterations } of fmaProbeSweep(o.iterations, largest)) {
    const most = gpu().limits.maxComputeWorkgroupsPerDimension;
    const groups = Math.min(most, Math.max(1, Math.round(invocations / probe.workgroup)));
    rows.push(fmaRow(`fma_fp32 ${name}`, await fmaThroughput({ ...o, groups, iterations, probe })));
  }
  return rows;
}

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    groups: { type: "int", min: 1, max: 65535, default: 0 },
    iterations: { type: "int", min: 1, max: 1 << 20, default: 0 },
    floats: { type: "int", min: 4, max: 1 << 30, default: 0 },
    runs: { type: "int", min: 1, max: 1000, default: 5 },
    sweep: { type: "boolean", default: false },
    out: { type: "string", default: "out/gpu_ceiling/" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  if (values.floats && values.floats % 4 !== 0) {
    throw new Error(`--floats: expected a multiple of 4, got ${values.floats}`);
  }
  await initGpu();
  const soft = gpu().isFallback;
  const maxFloats = Math.floor(gpu().limits.maxStorageBufferBindingSize / 16) * 4;
  const floats = values.floats || Math.min(soft ? 1 << 16 : 32 << 20, maxFloats);
  if (floats > maxFloats) {
    throw new Error(`--floats: at most ${maxFloats} on this adapter (its largest binding)`);
  }
  const rows = await ceilingRows({
    groups: values.groups || (soft ? 8 : 4224),
    iterations: values.iterations || (soft ? 64 : 2048),
    floats,
    runs: values.runs,
    sweep: values.sweep,
  });
  for (const r of rows) r.ms = Number((r.ms as number).toFixed(4));
  const adapter = gpu().description;
  console.log(`# adapter: ${adapter}`);
  console.log(formatTable(rows, ["probe", "value", "unit", "ms"]));
  if (values.sweep) {
    const fma = rows.filter((r) => r.unit === "TFLOP/s");
    const best = fma.reduce((a, b) => (b.value as number) > (a.value as number) ? b : a);
    console.log(
      `fastest FMA probe: ${best.probe}, ${best.value} TFLOP/s (default ${fma[0].value})`,
    );
  }
  const out = values.out.replace(/\/+$/, "");
  await writeFileAtomic(
    `${out}/gpu_ceiling.csv`,
    toCsv(rows, { comments: [`adapter: ${adapter}`] }),
  );
  console.log(`wrote ${out}/gpu_ceiling.csv`);
}

if (import.meta.main) await runMain(main);
