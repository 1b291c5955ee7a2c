/**
 * SLaK Figure 4 (scaling efficiency): GFLOPs and params of ConvNeXt-T with
 * every stage's kernel set to k ∈ {7, 9, …, 151} under three recipes:
 *
 * - ConvNeXt (naive): one k×k depthwise kernel;
 * - RepLKNet: k×k plus a parallel 5×5, each with BN (the training-time structure);
 * - SLaK: k×5 + 5×k + 5×5 (each with BN), 40 % sparse (SLaK's masking at a
 *   uniform density 0.6), width ×1.3.
 *
 * Counted from the models' own forward on shapes (no GPU, a second or two).
 * FLOPs = multiply-accumulates, fvcore rules; SLaK's params are all non-zeros
 * (biases and norms included). Writes `scaling_flops.csv` and the two-panel
 * `scaling_flops.png`, and checks the paper's claim: at k = 151 the SLaK
 * recipe needs fewer FLOPs and params than the full kernel at k = 51.
 *
 * ```sh
 * deno run -A scripts/scaling_flops.ts [--out out/scaling_flops/] [--max 151] [--step 2]
 * ```
 *
 * @example
 * ```ts
 * import { scalingRows } from "./scaling_flops.ts";
 * const rows = scalingRows([7, 51]);
 * console.log(rows[1].convnext_gflops.toFixed(2)); // 9.94 (every stage 51×51)
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { writeCsv } from "../analysis/csv.ts";
import { countModel, FLOPS_RULE, uniformDensities } from "../analysis/flops.ts";
import { type Mark, writeLineChart } from "../analysis/plot.ts";
import { convnext, CONVNEXT_PRESETS } from "../models/convnext.ts";
import { slak } from "../models/slak.ts";

/** One kernel size's counts (params in M, FLOPs in G). */
export interface ScalingRow {
  [column: string]: number;
  kernel: number;
  convnext_params_M: number;
  convnext_gflops: number;
  replknet_params_M: number;
  replknet_gflops: number;
  slak_params_M: number;
  slak_gflops: number;
  /** SLaK's count of the same model: non-zeros of conv/linear weights only. */
  slak_weight_nonzeros_M: number;
  slak_dense_params_M: number;
  slak_dense_gflops: number;
}

const TINY = CONVNEXT_PRESETS.convnext_tiny;
const SPARSITY = 0.4;
const WIDTH = 1.3;
const SMALL = 5;

/** Count the three recipes at each kernel size (224², batch 1). */
export function scalingRows(kernels: readonly number[]): ScalingRow[] {
  return kernels.map((k) => {
    const ks = [k, k, k, k];
    const naive = countModel(convnext({ ...TINY, kernels: ks }), 224);
    const rep = countModel(
      slak({ ...TINY, kernels: ks, smallKernel: SMALL, widthFactor: 1, mode: "full" }),
      224,
    );
    const sl = slak({ ...TINY, kernels: ks, smallKernel: SMALL, widthFactor: WIDTH });
    const sparse = countModel(sl, 224, { densities: uniformDensities(sl, 1 - SPARSITY) });
    return {
      kernel: k,
      convnext_params_M: naive.params / 1e6,
      convnext_gflops: naive.macs / 1e9,
      replknet_params_M: rep.params / 1e6,
      replknet_gflops: rep.macs / 1e9,
      slak_params_M: sparse.params / 1e6,
      slak_gflops: sparse.macs / 1e9,
      slak_weight_nonzeros_M: sparse.weightNonzeros / 1e6,
      slak_dense_params_M: sparse.denseParams / 1e6,
      slak_dense_gflops: sparse.denseMacs / 1e9,
    };
  });
}

/**
 * The paper's claim: SLaK at `big` costs less (FLOPs and params) than the full kernel at `ref`.
 *
 * @example
 * ```ts
 * import { checkClaim, scalingRows } from "./scaling_flops.ts";
 * const { ok, text } = checkClaim(scalingRows([51, 151]));
 * console.log(ok, text); // true, with the numbers behind it
 * ```
 */
export function checkClaim(rows: ScalingRow[], big = 151, ref = 51): { ok: boolean; text: string } {
  const a = rows.find((r) => r.kernel === big);
  const b = rows.find((r) => r.kernel === ref);
  if (!a || !b) return { ok: false, text: `kernels ${big} and ${ref} are not both in the sweep` };
  const ok = a.slak_gflops < b.convnext_gflops && a.slak_params_M < b.convnext_params_M &&
    a.slak_gflops < b.replknet_gflops && a.slak_params_M < b.replknet_params_M;
  const text =
    `SLaK at k=${big}: ${a.slak_gflops.toFixed(2)} GFLOPs, ${
      a.slak_params_M.toFixed(2)
    }M params; ` +
    `full kernel at k=${ref}: ConvNeXt ${b.convnext_gflops.toFixed(2)} G, ${
      b.convnext_params_M.toFixed(2)
    }M; ` +
    `RepLKNet ${b.replknet_gflops.toFixed(2)} G, ${b.replknet_params_M.toFixed(2)}M → ` +
    (ok ? "claim holds" : "claim FAILS");
  return { ok, text };
}

const HELP = `Usage: deno run -A scripts/scaling_flops.ts [--out DIR] [--max K] [--step S]

SLaK Figure 4: GFLOPs and params of ConvNeXt-T with every stage kernel k = 7, 9, …, K
under the ConvNeXt (k×k), RepLKNet (k×k + 5×5) and SLaK (k×5 + 5×k + 5×5, 40% sparse,
1.3× width) recipes. ${FLOPS_RULE}. No GPU needed.

  --out DIR    folder for scaling_flops.csv and scaling_flops.png (default out/scaling_flops/)
  --max K      largest kernel, odd, ≥ 151 for the claim check (default 151)
  --step S     kernel step, even (default 2)
  -h, --help   this help`;

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    out: { type: "string", default: "out/scaling_flops/" },
    max: { type: "int", min: 7, max: 1001, default: 151 },
    step: { type: "int", min: 2, max: 1000, default: 2 },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const { max, step } = values;
  if (max % 2 === 0) throw new Error(`--max: expected an odd integer ≥ 7, got "${max}"`);
  if (step % 2) throw new Error(`--step: expected an even integer ≥ 2, got "${step}"`);
  const kernels: number[] = [];
  for (let k = 7; k <= max; k += step) kernels.push(k);
  if (!kernels.includes(51)) kernels.push(51);
  if (max >= 151 && !kernels.includes(151)) kernels.push(151);
  kernels.sort((a, b) => a - b);

  const rows = scalingRows(kernels);
  const out = values.out.replace(/\/+$/, "");
  await writeCsv(`${out}/scaling_flops.csv`, rows, {
    comments: [
      `${FLOPS_RULE}; ConvNeXt-T at 224², every stage kernel k; params in millions, GFLOPs = 1e9 MACs`,
      `slak: k×5 + 5×k + 5×5, sparsity ${SPARSITY} (uniform over conv/linear weights), width ×${WIDTH}`,
    ],
  });

  const ks = rows.map((r) => r.kernel);
  const series = (key: "gflops" | "params_M") => [
    { name: "ConvNeXt (k×k)", x: ks, y: rows.map((r) => r[`convnext_${key}`]) },
    { name: "RepLKNet (k×k + 5×5)", x: ks, y: rows.map((r) => r[`replknet_${key}`]), dash: "7 4" },
    { name: "SLaK (k×5 + 5×k, 40% sparse, 1.3×)", x: ks, y: rows.map((r) => r[`slak_${key}`]) },
  ];
  const at = (k: number) => rows.find((r) => r.kernel === k);
  const marks = (key: "gflops" | "params_M", unit: string) =>
    [
      at(51) && {
        x: 51,
        y: at(51)![`convnext_${key}`],
        label: `k=51 full: ${at(51)![`convnext_${key}`].toFixed(1)}${unit}`,
      },
      at(151) && {
        x: 151,
        y: at(151)![`slak_${key}`],
        label: `k=151 SLaK: ${at(151)![`slak_${key}`].toFixed(1)}${unit}`,
        color: "#009E73",
        below: true,
      },
    ].filter((m) => !!m) as Mark[];
  // A level line through the full kernel at k = 51: SLaK's curve stays below it up to k = 151.
  const refLine = (key: "gflops" | "params_M") =>
    at(51) ? [{ y: at(51)![`convnext_${key}`], label: "full kernel at k=51" }] : [];
  const xTicks = [7, 31, 51, 71, 91, 111, 131, 151].filter((k) => k <= max);
  await writeLineChart(`${out}/scaling_flops.png`, {
    title: "Scaling efficiency of large-kernel recipes on ConvNeXt-T (SLaK Fig. 4)",
    subtitle: `${FLOPS_RULE}; 224×224 input; every stage kernel = k`,
    panels: [
      {
        title: "GFLOPs",
        xLabel: "kernel size k",
        yLabel: "GFLOPs",
        xTicks,
        series: series("gflops"),
        marks: marks("gflops", "G"),
        lines: refLine("gflops"),
      },
      {
        title: "Parameters",
        xLabel: "kernel size k",
        yLabel: "params (M)",
        xTicks,
        series: series("params_M"),
        marks: marks("params_M", "M"),
        lines: refLine("params_M"),
      },
    ],
  });
  console.log(`# ${FLOPS_RULE}`);
  console.log("kernel  ConvNeXt G / M     RepLKNet G / M     SLaK G / M");
  for (const r of rows.filter((r) => [7, 31, 51, 61, 101, 151].includes(r.kernel))) {
    const f = (g: number, m: number) => `${g.toFixed(2).padStart(7)} / ${m.toFixed(2).padStart(7)}`;
    console.log(
      `${String(r.kernel).padStart(6)}  ${f(r.convnext_gflops, r.convnext_params_M)}  ${
        f(r.replknet_gflops, r.replknet_params_M)
      }  ${f(r.slak_gflops, r.slak_params_M)}`,
    );
  }
  if (max >= 151) console.log(checkClaim(rows).text);
  console.log(`wrote ${out}/scaling_flops.csv and ${out}/scaling_flops.png`);
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
