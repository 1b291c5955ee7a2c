/**
 * Params and FLOPs of every model row the papers report — SLaK Tables 1, 2,
 * 3 and 7, RepLKNet Tables 5 and 6, ShiftwiseConv Table 3 — counted here
 * (no GPU) next to the paper's values, their difference, and whether they
 * agree at the paper's rounding. FLOPs = multiply-accumulates, fvcore rules.
 *
 * Sparse rows (SLaK's 40 % sparsity) use SLaK's masking rule (every conv
 * and linear weight) at a uniform density; their params are the non-zeros
 * of those weights, as SLaK counts them (`print_model_param_nums`, the
 * count the paper's params column reports). The paper's sparse FLOPs come from SNIP layer-wise densities
 * measured on an ImageNet batch, which cannot be recomputed without the
 * data: those rows say so in `note`, with the density they imply.
 *
 * ```sh
 * deno run -A scripts/model_table.ts                 # print, write out/model_table/model_table.csv
 * deno run -A scripts/model_table.ts --only "SLaK Table 2" --out /tmp/t
 * ```
 *
 * @example
 * ```ts
 * import { computeRows } from "./model_table.ts";
 * const [row] = computeRows({ only: "SLaK Table 3" }).filter((r) => r.model === "ConvNeXt-T");
 * console.log(row.params_M, row.gflops, row.match); // 28.59 4.47 yes
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { type Cell, writeCsv } from "../analysis/csv.ts";
import {
  countModel,
  FLOPS_RULE,
  FVCORE_SKIPPED_KINDS,
  type ModelCount,
  uniformDensities,
} from "../analysis/flops.ts";
import { Conv2d } from "../models/layers.ts";
import type { Module } from "../models/module.ts";
import { createModel, MODEL_NAMES, modelInfo, type ModelOverrides } from "../models/registry.ts";

/** One paper row: what to build and what the paper reports. */
export interface RowSpec {
  table: string;
  model: string;
  /** Registry preset and overrides. */
  preset: string;
  overrides?: ModelOverrides;
  /** Input side (default: the preset's). */
  input?: number;
  /** Fraction of zeros in every masked weight (SLaK's rule), e.g. 0.4. */
  sparsity?: number;
  /** The paper's values as printed: params in M, FLOPs in G (their decimals set the rounding). */
  paper: { params: string; gflops: string };
  /** What kind of row, for the explanation of a mismatch. */
  kind?: "naive" | "replknet_recipe" | "replknet";
  /**
   * `fvcore` (default): every counted kind, BatchNorm at 2 per element.
   * `bn_fused`: the deployed model with every BatchNorm folded into its conv
   * (RepLKNet's `deep_fuse_BN`), so BatchNorm counts nothing.
   */
  rule?: "fvcore" | "bn_fused";
}

/** One result row (CSV columns). */
export interface Row extends Record<string, Cell> {
  table: string;
  model: string;
  preset: string;
  kernels: string;
  width: number;
  sparsity: number;
  input: number;
  params_M: number;
  paper_params_M: string;
  params_diff_M: number;
  gflops: number;
  paper_gflops: string;
  gflops_diff: number;
  dense_params_M: number;
  dense_gflops: number;
  /** "yes" when params and FLOPs both agree at the paper's rounding. */
  match: "yes" | "no";
  /** How FLOPs were counted (see {@linkcode RowSpec.rule}) and which form of the model. */
  counting: string;
  note: string;
}

const KS = [[31, 29, 27, 13], [51, 49, 47, 13], [61, 59, 57, 13]];

/**
 * RepLKNet's own sizes are those of the deployed model: large kernels merged
 * and BatchNorm folded into the convs. Counted that way its FLOPs agree with
 * Table 6 (45.1G, 96.0G, 128.7G) and four of five Table 5 rows.
 */
const REPLKNET_DEPLOYED = {
  overrides: { mode: "merged" },
  rule: "bn_fused",
  kind: "replknet",
} as const satisfies Partial<RowSpec>;
const kname = (k: number[]) => k.join("-");

/** Every row of the papers, in table order. */
export const ROWS: readonly RowSpec[] = [
  ...KS.flatMap((k, i): RowSpec[] => [
    {
      table: "SLaK Table 1",
      model: `ConvNeXt-T naive ${kname(k)}`,
      preset: "slak_tiny",
      // The official naive run: `--kernel_size K1 K2 K3 K4 100` (one M×M conv + BN, no small kernel).
      overrides: { kernels: [...k, 100], widthFactor: 1 },
      paper: { params: ["32", "38", "43"][i], gflops: ["6.5", "9.4", "11.6"][i] },
      kind: "naive",
    },
    {
      table: "SLaK Table 1",
      // Counted re-parameterised (one M×M kernel with bias), as deployed: the paper's params and FLOPs are this model's.
      model: `ConvNeXt-T RepLKNet recipe ${kname(k)} (merged)`,
      preset: "slak_tiny",
      overrides: { kernels: [...k, 5], widthFactor: 1, mode: "merged" },
      paper: { params: ["32", "38", "43"][i], gflops: ["6.1", "9.3", "11.5"][i] },
      kind: "replknet_recipe",
    },
  ]),
  {
    table: "SLaK Table 1",
    model: "ConvNeXt-T 7-7-7-7",
    preset: "convnext_tiny",
    paper: { params: "29", gflops: "4.5" },
  },
  ...KS.flatMap((k, i): RowSpec[] => [
    {
      table: "SLaK Table 2",
      model: `ConvNeXt-T decomposed ${kname(k)}`,
      preset: "slak_tiny",
      overrides: { kernels: [...k, 5], widthFactor: 1 },
      paper: { params: ["30", "31", "31"][i], gflops: ["5.0", "5.4", "5.6"][i] },
    },
    {
      table: "SLaK Table 2",
      model: `ConvNeXt-T sparse decomposed ${kname(k)}`,
      preset: "slak_tiny",
      overrides: { kernels: [...k, 5], widthFactor: 1 },
      sparsity: 0.4,
      paper: { params: ["18", "18", "19"][i], gflops: ["2.9", "3.1", "3.2"][i] },
    },
    {
      table: "SLaK Table 2",
      model: `ConvNeXt-T sparse decomposed 1.3× width ${kname(k)}`,
      preset: "slak_tiny",
      overrides: { kernels: [...k, 5], widthFactor: 1.3 },
      sparsity: 0.4,
      paper: { params: ["30", "30", "31"][i], gflops: ["4.8", "5.0", "5.2"][i] },
    },
  ]),
  {
    table: "SLaK Table 2",
    model: "ConvNeXt-T 7-7-7-7",
    preset: "convnext_tiny",
    paper: { params: "29", gflops: "4.5" },
  },
  ...([
    ["SLaK-T", "slak_tiny", 0.4, "30", "5.0"],
    ["SLaK-S", "slak_small", 0.4, "55", "9.8"],
    ["SLaK-B", "slak_base", 0.4, "95", "17.1"],
    ["ConvNeXt-T", "convnext_tiny", 0, "29", "4.5"],
    ["ConvNeXt-S", "convnext_small", 0, "50", "8.7"],
    ["ConvNeXt-B", "convnext_base", 0, "89", "15.4"],
    ["ResNet-50", "resnet50", 0, "26", "4.1"],
    ["ResNet-101", "resnet101", 0, "45", "7.9"],
    ["RepLKNet-31B", "replknet_31b", 0, "79", "15.3"],
  ] as const).map(([model, preset, sparsity, params, gflops]): RowSpec => ({
    table: "SLaK Table 3",
    model,
    preset,
    ...(sparsity ? { sparsity } : {}),
    ...(preset === "replknet_31b" ? REPLKNET_DEPLOYED : {}),
    paper: { params, gflops },
  })),
  ...([
    [0.2, 1.1, "29", "5.0"],
    [0.4, 1.3, "30", "5.0"],
    [0.55, 1.5, "30", "4.9"],
    [0.7, 1.9, "32", "5.0"],
    [0.82, 2.5, "32", "5.1"],
  ] as const).map(([sparsity, width, params, gflops]): RowSpec => ({
    table: "SLaK Table 7",
    model: `SLaK-T sparsity ${sparsity}, width ${width}×`,
    preset: "slak_tiny",
    overrides: { widthFactor: width },
    sparsity,
    paper: { params, gflops },
  })),
  ...([
    [[3, 3, 3, 3], "71.8", "12.9"],
    [[7, 7, 7, 7], "72.2", "13.1"],
    [[13, 13, 13, 13], "73.7", "13.4"],
    [[25, 25, 25, 13], "78.2", "14.8"],
    [[31, 29, 27, 13], "79.3", "15.3"],
  ] as const).map(([k, params, gflops]): RowSpec => ({
    table: "RepLKNet Table 5",
    model: `RepLKNet ${kname([...k])}`,
    preset: "replknet_31b",
    ...REPLKNET_DEPLOYED,
    overrides: { kernels: [...k], mode: "merged" },
    paper: { params, gflops },
  })),
  ...([
    ["RepLKNet-31B", "replknet_31b", 224, "79", "15.3"],
    ["RepLKNet-31B", "replknet_31b", 384, "79", "45.1"],
    ["RepLKNet-31L", "replknet_31l", 384, "172", "96.0"],
    ["RepLKNet-XL", "replknet_xl", 320, "335", "128.7"],
  ] as const).map(([model, preset, input, params, gflops]): RowSpec => ({
    table: "RepLKNet Table 6",
    model: `${model} @${input}`,
    preset,
    input,
    ...REPLKNET_DEPLOYED,
    paper: { params, gflops },
  })),
  {
    table: "ShiftwiseConv Table 3",
    model: "SW-tiny (merged)",
    preset: "sw_tiny",
    // The deployed form (N_path convs merged into one), whose size the paper reports.
    overrides: { mode: "merged" },
    paper: { params: "31", gflops: "5.0" },
  },
  {
    table: "ShiftwiseConv Table 3",
    model: "SW-small (merged)",
    preset: "sw_small",
    overrides: { mode: "merged" },
    paper: { params: "56", gflops: "9.4" },
  },
];

const decimals = (s: string) => (s.split(".")[1] ?? "").length;
const atPaper = (v: number, paper: string) => Number(v.toFixed(decimals(paper))) === Number(paper);
/** How far `v` lies outside the interval that rounds to `paper`. */
const beyondRounding = (v: number, paper: string) => {
  const half = 0.5 * 10 ** -decimals(paper);
  const p = Number(paper);
  return Math.max(v - (p + half), p - half - v).toFixed(3);
};
const r2 = (v: number) => Math.round(v * 100) / 100;
const r3 = (v: number) => Math.round(v * 1000) / 1000;

/** A count, plus the params of the model with every BatchNorm folded away. */
type Counted = ModelCount & { bnFoldedParams: number };

function count(spec: RowSpec, overrides = spec.overrides, rule = spec.rule): Counted {
  const model = createModel(spec.preset, overrides);
  const input = spec.input ?? modelInfo(spec.preset).inputSize;
  const c = countModel(model, input, {
    densities: spec.sparsity ? uniformDensities(model, 1 - spec.sparsity) : undefined,
    excludeKinds: rule === "bn_fused" ? [...FVCORE_SKIPPED_KINDS, "bn"] : undefined,
  });
  return { ...c, bnFoldedParams: bnFoldedParams(model, c) };
}

/**
 * Params once every BatchNorm is folded into a neighbouring conv or linear
 * layer (exact in eval mode): a BN right after a bias-free conv becomes that
 * conv's bias (C of its 2C values stay); any other BN (RepLKNet's BN before a
 * 1×1 conv, the final BN before the head) folds into the next layer's
 * weights and bias and leaves nothing.
 */
function bnFoldedParams(model: Module, c: ModelCount): number {
  const modules = new Map(model.namedModules());
  let n = c.params;
  c.layers.forEach((l, i) => {
    if (l.kind !== "bn") return;
    const prev = c.layers[i - 1];
    const conv = prev?.kind === "conv" ? modules.get(prev.name) : undefined;
    n -= conv instanceof Conv2d && conv.bias === null ? l.params / 2 : l.params;
  });
  return n;
}

/** Why a row differs from the paper, with numbers; empty when it agrees. */
function explain(spec: RowSpec, c: Counted, paramsOk: boolean, flopsOk: boolean): string {
  const notes: string[] = [];
  const g = (n: number) => (n / 1e9).toFixed(2);
  if (spec.sparsity) {
    const d = 1 - spec.sparsity;
    notes.push(
      `params = non-zeros of conv/linear weights (SLaK's print_model_param_nums); all non-zeros incl. biases and norms: ${
        (c.params / 1e6).toFixed(2)
      }M`,
    );
    if (!flopsOk) {
      const masked = c.layers.filter((l) => l.density < 1).reduce((a, l) => a + l.denseMacs, 0);
      const implied = (Number(spec.paper.gflops) * 1e9 - (c.denseMacs - masked)) / masked;
      notes.push(
        `FLOPs at a uniform density ${d.toFixed(2)} on every masked layer: ${
          g(c.macs)
        }G; the paper's ${spec.paper.gflops}G ` +
          `implies a MAC-weighted density of ${implied.toFixed(3)} over the masked layers (${
            g(masked)
          }G dense), ` +
          `below their parameter density ${
            d.toFixed(2)
          }: the official SNIP layer-wise densities (scored on one ImageNet ` +
          `batch; not reproducible without it) leave fewer non-zeros where a weight costs many MACs (high-resolution stages)`,
      );
    }
  }
  if (spec.kind === "naive" && !flopsOk) {
    const k = spec.overrides!.kernels!.slice(0, 4);
    const rep = count(spec, { ...spec.overrides, kernels: [...k, 5], mode: "full" });
    const same = atPaper(rep.macs / 1e9, spec.paper.gflops);
    notes.push(
      `naive = one M×M depthwise conv + BN per block: ${
        g(c.macs)
      }G (= the re-parameterised RepLKNet recipe); ` +
        `the RepLKNet recipe as trained (M×M+BN and 5×5+BN) has ${g(rep.macs)}G${
          same
            ? ", the paper's naive value: the paper's naive column seems to hold the unmerged RepLKNet-recipe count"
            : `, not the paper's ${spec.paper.gflops}G either (its kernel column also has a typo, 31-29-37-13)`
        }`,
    );
  }
  if (spec.kind === "replknet_recipe") {
    const trained = count(spec, { ...spec.overrides, mode: "full" });
    notes.push(
      `counted re-parameterised (one M×M conv with bias); as trained (M×M+BN and 5×5+BN): ` +
        `${(trained.params / 1e6).toFixed(2)}M, ${g(trained.macs)}G`,
    );
  }
  if (spec.kind === "replknet") {
    const merged = count(spec, spec.overrides, "fvcore");
    const trained = count(spec, { ...spec.overrides, mode: "full" }, "fvcore");
    const m = (n: number) => `${(n / 1e6).toFixed(2)}M`;
    notes.push(
      `deployed: kernels merged and every BN folded into a conv (RepLKNet's structural_reparam + ` +
        `deep_fuse_BN), BN not counted; merged with BN: ${m(merged.params)}, ${
          g(merged.macs)
        }G (fvcore eval rule); ` +
        `as trained: ${m(trained.params)}, ${g(trained.macs)}G`,
    );
    const p = c.bnFoldedParams / 1e6;
    const f = c.macs / 1e9;
    if (!paramsOk) {
      notes.push(
        `params ${p.toFixed(3)}M vs ${spec.paper.params}M (${
          beyondRounding(p, spec.paper.params)
        }M outside the interval that rounds to it)`,
      );
    }
    if (!flopsOk) {
      notes.push(
        `FLOPs ${f.toFixed(3)}G vs ${spec.paper.gflops}G (${
          beyondRounding(f, spec.paper.gflops)
        }G outside the interval that rounds to it)`,
      );
    }
    return notes.join("; ");
  }
  if (!paramsOk && !spec.sparsity) {
    notes.push(`params ${(c.params / 1e6).toFixed(2)}M vs ${spec.paper.params}M`);
  }
  if (!flopsOk && !spec.sparsity && !spec.kind) {
    const bn = c.byKind.bn ?? 0;
    // fvcore counts BatchNorm 5 per element in training mode instead of 2 in eval mode.
    const trainBn = c.macs + 1.5 * bn;
    notes.push(
      `FLOPs ${g(c.macs)}G vs ${spec.paper.gflops}G (BatchNorm ${g(bn)}G of it, eval mode)` +
        (bn && atPaper(trainBn / 1e9, spec.paper.gflops)
          ? `; with BatchNorm counted in training mode (fvcore: 5 per element) ${
            g(trainBn)
          }G, the paper's value`
          : ""),
    );
  }
  return notes.join("; ");
}

/**
 * Count one row.
 *
 * @example
 * ```ts
 * import { computeRow, ROWS } from "./model_table.ts";
 * const row = computeRow(ROWS.find((r) => r.model === "ConvNeXt-T")!);
 * console.log(row.params_M, row.gflops, row.match); // 28.59 4.47 yes
 * ```
 */
export function computeRow(spec: RowSpec): Row {
  const c = count(spec);
  const params = spec.sparsity
    ? c.weightNonzeros
    : spec.rule === "bn_fused"
    ? c.bnFoldedParams
    : c.params;
  const paramsOk = atPaper(params / 1e6, spec.paper.params);
  const flopsOk = atPaper(c.macs / 1e9, spec.paper.gflops);
  const o = spec.overrides ?? {};
  return {
    table: spec.table,
    model: spec.model,
    preset: spec.preset,
    kernels: o.kernels ? kname(o.kernels) : "",
    width: o.widthFactor ?? (spec.preset.startsWith("slak_") ? 1.3 : 1),
    sparsity: spec.sparsity ?? 0,
    input: spec.input ?? modelInfo(spec.preset).inputSize,
    params_M: r2(params / 1e6),
    paper_params_M: spec.paper.params,
    params_diff_M: r2(params / 1e6 - Number(spec.paper.params)),
    gflops: r2(c.macs / 1e9),
    paper_gflops: spec.paper.gflops,
    gflops_diff: r3(c.macs / 1e9 - Number(spec.paper.gflops)),
    dense_params_M: r2(c.denseParams / 1e6),
    dense_gflops: r2(c.denseMacs / 1e9),
    match: paramsOk && flopsOk ? "yes" : "no",
    counting: [
      spec.rule === "bn_fused"
        ? "fvcore, every BN folded into a conv (no BN FLOPs or params)"
        : "fvcore",
      o.mode === "merged" ? "merged kernels" : "",
      spec.sparsity
        ? `uniform density ${
          (1 - spec.sparsity).toFixed(2)
        } on conv/linear weights; params = their non-zeros`
        : "",
    ].filter(Boolean).join("; "),
    note: explain(spec, c, paramsOk, flopsOk),
  };
}

/**
 * Per-stage params and GFLOPs of a row, dense and as counted (sparse rows differ).
 *
 * @example
 * ```ts
 * import { computeStages, ROWS } from "./model_table.ts";
 * const stages = computeStages(ROWS.find((r) => r.model === "ConvNeXt-T")!);
 * console.log(stages.map((s) => s.stage)); // stem, stage0…stage3, head
 * ```
 */
export function computeStages(spec: RowSpec): Record<string, Cell>[] {
  return count(spec).byStage.map((st) => ({
    table: spec.table,
    model: spec.model,
    stage: st.stage,
    params_M: r3(st.params / 1e6),
    dense_params_M: r3(st.denseParams / 1e6),
    gflops: r3(st.macs / 1e9),
    dense_gflops: r3(st.denseMacs / 1e9),
  }));
}

/** Rows whose preset exists (families still missing are left out and listed in `missing`). */
export function computeRows(opts: { only?: string } = {}): Row[] & { missing?: string[] } {
  const specs = ROWS.filter((s) => !opts.only || s.table.includes(opts.only));
  const available = specs.filter((s) => MODEL_NAMES.includes(s.preset));
  const rows: Row[] & { missing?: string[] } = available.map(computeRow);
  rows.missing = [...new Set(specs.filter((s) => !available.includes(s)).map((s) => s.preset))];
  return rows;
}

function printTable(rows: Row[]): void {
  const cols: [string, (r: Row) => string, number][] = [
    ["table", (r) => r.table, 22],
    ["model", (r) => r.model, 52],
    ["input", (r) => String(r.input), 5],
    ["params M", (r) => r.params_M.toFixed(2), 9],
    ["paper", (r) => r.paper_params_M, 6],
    ["GFLOPs", (r) => r.gflops.toFixed(2), 7],
    ["paper", (r) => r.paper_gflops, 6],
    ["match", (r) => r.match, 5],
  ];
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(cols[i][2]) : c.padStart(cols[i][2]))).join("  ");
  console.log(
    `# ${FLOPS_RULE}; params in millions; sparse rows: SLaK's masking at a uniform density`,
  );
  console.log(line(cols.map((c) => c[0])));
  for (const r of rows) {
    console.log(line(cols.map((c) => c[1](r))));
    if (r.note) console.log(`    note: ${r.note}`);
  }
}

const HELP = `Usage: deno run -A scripts/model_table.ts [--out DIR] [--only TABLE]

Params and GFLOPs (${FLOPS_RULE}) of every model row of SLaK Tables 1/2/3/7,
RepLKNet Tables 5/6 and ShiftwiseConv Table 3, next to the paper's values.
No GPU needed.

  --out DIR     folder for model_table.csv and model_table_stages.csv (per-stage,
                dense and sparse; default out/model_table/)
  --only TABLE  only rows whose table name contains TABLE (e.g. "SLaK Table 2")
  -h, --help    this help`;

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    out: { type: "string", default: "out/model_table/" },
    only: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const rows = computeRows({ only: values.only });
  if (!rows.length) throw new Error(`--only: no table matches "${values.only}"`);
  printTable(rows);
  if (rows.missing?.length) {
    console.log(`left out (model not in the registry): ${rows.missing.join(", ")}`);
  }
  const path = `${values.out.replace(/\/+$/, "")}/model_table.csv`;
  await writeCsv(path, rows, {
    comments: [`${FLOPS_RULE}; params in millions; GFLOPs = 1e9 MACs`],
  });
  const specs = ROWS.filter((s) =>
    MODEL_NAMES.includes(s.preset) && (!values.only || s.table.includes(values.only))
  );
  const stagePath = `${values.out.replace(/\/+$/, "")}/model_table_stages.csv`;
  await writeCsv(stagePath, specs.flatMap(computeStages), {
    comments: [`${FLOPS_RULE}; per stage; dense_* = every weight dense`],
  });
  const matched = rows.filter((r) => r.match === "yes").length;
  console.log(
    `${matched}/${rows.length} rows agree at the paper's rounding; wrote ${path} and ${stagePath}`,
  );
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
