/**
 * The PyTorch anchors of the benchmarks (`bench/pytorch/*.py`), seen from
 * the TypeScript side: run one with `python3` and read its CSV, join its rows
 * with ours on the columns both print, and lay the result out as a table
 * with ratios (ours ÷ PyTorch).
 *
 * @example
 * ```ts
 * import { parseCsv } from "../analysis/csv.ts";
 * import { joinAnchor, MODEL_JOIN } from "./pytorch_anchor.ts";
 * const torch = parseCsv("# torch 2.11\nmodel,kernels,batch,res,train_img_s\nconvnext_tiny,7-7-7-7,64,224,600\n");
 * const ours = [{ model: "convnext_tiny", kernels: "7-7-7-7", batch: 64, res: 224, train_img_s: 450 }];
 * console.log(joinAnchor(ours, torch, MODEL_JOIN)[0].train_img_s_ratio); // 0.75
 * ```
 * @module
 */
import type { Cell, CsvRow } from "../analysis/csv.ts";

/**
 * The `#` comment lines of a CSV text, without the `# ` (an anchor's first
 * line names torch's version and the device).
 *
 * @example
 * ```ts
 * import { csvComments } from "./pytorch_anchor.ts";
 * console.log(csvComments("# torch 2.11 NVIDIA H200\na\n1\n")); // [ "torch 2.11 NVIDIA H200" ]
 * ```
 */
export function csvComments(text: string): string[] {
  return text.split(/\r?\n/).filter((l) => l.startsWith("#")).map((l) => l.replace(/^#\s?/, ""));
}

/** How {@linkcode joinAnchor} lines up our rows with an anchor's. */
export interface JoinSpec {
  /** Columns that must agree (compared as numbers where both read as numbers). */
  keys: string[];
  /** Columns measured by both; each gets `pytorch_<col>` and `<col>_ratio` = ours ÷ PyTorch. */
  measures: string[];
  /** Per key, anchor values that name the same thing as one of ours (older anchor files). */
  aliases?: Record<string, Record<string, string>>;
}

/**
 * Whole models: joined on model, stage kernels, batch and resolution; the
 * ratios are of images/s (above 1: ours is faster) and of peak memory (above
 * 1: ours holds more). The older anchor's `convnext-t` names `convnext_tiny`.
 *
 * @example
 * ```ts
 * import { MODEL_JOIN } from "./pytorch_anchor.ts";
 * console.log(MODEL_JOIN.keys); // [ "model", "kernels", "batch", "res" ]
 * ```
 */
export const MODEL_JOIN: JoinSpec = {
  keys: ["model", "kernels", "batch", "res"],
  measures: ["params_m", "infer_img_s", "train_img_s", "peak_gib"],
  aliases: { model: { "convnext-t": "convnext_tiny" } },
};

/**
 * Matrix products: joined on the case name and its m, n, k; the ratio is of
 * GFLOP/s (above 1: ours is faster).
 *
 * @example
 * ```ts
 * import { GEMM_JOIN } from "./pytorch_anchor.ts";
 * console.log(GEMM_JOIN.measures); // [ "gflop_s" ]
 * ```
 */
export const GEMM_JOIN: JoinSpec = { keys: ["case", "m", "n", "k"], measures: ["gflop_s"] };

function keyCell(v: Cell): string {
  const s = String(v ?? "").trim();
  return s !== "" && Number.isFinite(Number(s)) ? String(Number(s)) : s;
}

function numberOf(v: Cell): number | null {
  const s = String(v ?? "").trim();
  const n = Number(s);
  return s !== "" && Number.isFinite(n) ? n : null;
}

/**
 * Our rows side by side with an anchor's: every row of ours with the
 * matching anchor row's measures (`pytorch_<col>`, and its `impl` as
 * `pytorch_impl`) and `<col>_ratio` = ours ÷ PyTorch (3 significant digits;
 * empty where either side lacks a number), then the anchor rows that match
 * none of ours, with our measures empty. The first anchor row of a key wins;
 * an anchor row without every key is not a measurement (a line that the
 * model's own code printed among the CSV) and is left out.
 *
 * @example
 * ```ts
 * import { GEMM_JOIN, joinAnchor } from "./pytorch_anchor.ts";
 * const ours = [{ impl: "tiled", case: "slak s1 fc1 fwd", m: 200704, n: 496, k: 124, gflop_s: 31000 }];
 * const torch = [{ impl: "torch-matmul", case: "slak s1 fc1 fwd", m: "200704", n: "496", k: "124", gflop_s: "40000" }];
 * console.log(joinAnchor(ours, torch, GEMM_JOIN)[0].gflop_s_ratio); // 0.775
 * ```
 */
export function joinAnchor(
  ours: readonly Record<string, Cell>[],
  anchor: readonly CsvRow[],
  spec: JoinSpec,
): Record<string, Cell>[] {
  const named = (k: string, v: Cell) => spec.aliases?.[k]?.[keyCell(v)] ?? v;
  const keyOf = (row: Record<string, Cell>) =>
    spec.keys.map((k) => keyCell(named(k, row[k]))).join("\u0000");
  const byKey = new Map<string, CsvRow>();
  for (const a of anchor) {
    if (spec.keys.some((k) => keyCell(a[k]) === "")) continue;
    const key = keyOf(a);
    if (!byKey.has(key)) byKey.set(key, a);
  }
  const used = new Set<string>();
  const rows = ours.map((row) => {
    const key = keyOf(row);
    if (byKey.has(key)) used.add(key);
    return sideBySide(row, byKey.get(key), spec);
  });
  for (const [key, a] of byKey) {
    if (used.has(key)) continue;
    rows.push(sideBySide(Object.fromEntries(spec.keys.map((k) => [k, named(k, a[k])])), a, spec));
  }
  return rows;
}

/**
 * One row of ours (or only the keys) with an anchor row's measures and the
 * ratios, each measure's three columns together where ours had it.
 */
function sideBySide(
  row: Record<string, Cell>,
  theirs: CsvRow | undefined,
  spec: JoinSpec,
): Record<string, Cell> {
  const out: Record<string, Cell> = {};
  const put = (m: string) => {
    const a = numberOf(row[m]);
    const b = theirs ? numberOf(theirs[m]) : null;
    out[m] = a ?? "";
    out[`pytorch_${m}`] = b ?? "";
    out[`${m}_ratio`] = a !== null && b ? Number((a / b).toPrecision(3)) : "";
  };
  for (const [k, v] of Object.entries(row)) {
    if (spec.measures.includes(k)) put(k);
    else out[k] = v;
  }
  for (const m of spec.measures) if (!(m in out)) put(m);
  if (theirs?.impl !== undefined) out.pytorch_impl = theirs.impl;
  return out;
}

/**
 * A plain-text table of `columns` (a header, `headers[column]` where given,
 * a rule, one line per row), numbers right-aligned, for the terminal.
 *
 * @example
 * ```ts
 * import { formatTable } from "./pytorch_anchor.ts";
 * console.log(formatTable([{ model: "convnext_tiny", ratio: 0.75 }], ["model", "ratio"]));
 * // model          ratio
 * // -------------  -----
 * // convnext_tiny   0.75
 * ```
 */
export function formatTable(
  rows: readonly Record<string, Cell>[],
  columns: string[],
  headers: Record<string, string> = {},
): string {
  const head = columns.map((c) => headers[c] ?? c);
  const text = rows.map((r) => columns.map((c) => String(r[c] ?? "")));
  const width = head.map((h, i) => Math.max(h.length, ...text.map((t) => t[i].length)));
  const numeric = columns.map((_, i) =>
    text.every((t) => t[i] === "" || Number.isFinite(Number(t[i])))
  );
  const line = (cells: string[]) =>
    cells.map((s, i) => numeric[i] ? s.padStart(width[i]) : s.padEnd(width[i])).join("  ")
      .trimEnd();
  return [line(head), width.map((w) => "-".repeat(w)).join("  "), ...text.map(line)].join("\n");
}

/**
 * The path of an anchor script in `bench/pytorch/` (beside this repository's scripts).
 *
 * @example
 * ```ts
 * import { anchorScript } from "./pytorch_anchor.ts";
 * console.log(anchorScript("dwconv.py").endsWith("/bench/pytorch/dwconv.py")); // true
 * ```
 */
export function anchorScript(name: string): string {
  return decodeURIComponent(new URL(`../bench/pytorch/${name}`, import.meta.url).pathname);
}

/**
 * Run a PyTorch anchor (`python script args…`) and return its CSV text
 * (stdout; its stderr goes to ours). Exit status 2 means torch, timm, CUDA
 * or a model file is missing, and fails with one line naming `flag`; any
 * other failure keeps the rows printed so far (the anchors flush each row)
 * and warns.
 *
 * @example
 * ```ts
 * import { anchorScript, runAnchor } from "./pytorch_anchor.ts";
 * const csv = await runAnchor("python3", anchorScript("matmul.py"), ["--list"], "--with-pytorch");
 * console.log(csv.split("\n")[0]); // "case,m,n,k,layout"
 * ```
 */
export async function runAnchor(
  python: string,
  script: string,
  args: string[],
  flag: string,
): Promise<string> {
  const shown = `${python} ${script.replace(/^.*\/bench\//, "bench/")} ${args.join(" ")}`;
  console.log(`# running ${shown}`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(python, {
      args: [script, ...args],
      stdout: "piped",
      stderr: "inherit",
    })
      .output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${flag}: "${python}" not found (--python names the Python to run)`);
    }
    throw e;
  }
  const text = new TextDecoder().decode(out.stdout);
  if (out.code === 2) {
    throw new Error(`${flag}: ${shown} exited with status 2 (its line above says what is missing)`);
  }
  if (!out.success) {
    console.error(`${flag}: ${shown} failed (status ${out.code}); keeping its rows`);
  }
  return text;
}

/** One anchor command: the script in `bench/pytorch/` and its flags. */
export interface AnchorRun {
  script: string;
  args: string[];
}

/** What {@linkcode modelAnchorRuns} needs to know besides the models. */
export interface ModelAnchorOptions {
  batch: number;
  size: number;
  classes: number;
  steps: number;
  warmup: number;
  passes: string[];
  /** The official SLaK.py, for `slak_tiny`. */
  slakPy?: string;
  /** The official replknet.py, for `replknet_31b`. */
  replknetPy?: string;
}

/** The stage kernels of RepLKNet-31B, fixed in the official `create_RepLKNet31B`. */
const REPLKNET_31B_KERNELS = "31-29-27-13";

/**
 * The anchor commands that measure the same models as ours in PyTorch:
 * timm's ConvNeXt-T (`convnext.py`, any stage kernels) and the official
 * SLaK-T and RepLKNet-31B (`official_models.py`, given their files), with
 * our batch, size, classes, steps and passes. `skipped` says, per model
 * left without an anchor, why.
 *
 * @example
 * ```ts
 * import { modelAnchorRuns } from "./pytorch_anchor.ts";
 * const plan = modelAnchorRuns(
 *   [{ name: "convnext_tiny", kernels: "7-7-7-7" }, { name: "slak_tiny", kernels: "51-49-47-13", smallKernel: 5 }],
 *   { batch: 64, size: 224, classes: 1000, steps: 5, warmup: 2, passes: ["infer", "train"] },
 * );
 * console.log(plan.runs[0].args.slice(0, 2), plan.skipped.length); // [ "--kernels", "7-7-7-7" ] 1
 * ```
 */
export function modelAnchorRuns(
  models: readonly { name: string; kernels: string; smallKernel?: number | null }[],
  o: ModelAnchorOptions,
): { runs: AnchorRun[]; skipped: string[] } {
  const common = [
    ...["--batch", `${o.batch}`, "--res", `${o.size}`, "--classes", `${o.classes}`],
    ...["--steps", `${o.steps}`, "--warmup", `${o.warmup}`, "--pass", o.passes.join(",")],
  ];
  const runs: AnchorRun[] = [];
  const skipped: string[] = [];
  const convnext = [
    ...new Set(models.filter((m) => m.name === "convnext_tiny").map((m) => m.kernels)),
  ];
  if (convnext.length) {
    runs.push({ script: "convnext.py", args: ["--kernels", convnext.join(","), ...common] });
  }
  const officialModels: string[] = [];
  const officialArgs: string[] = [];
  for (const m of models) {
    const id = `${m.name}@${m.kernels}`;
    if (m.name === "convnext_tiny") continue;
    if (officialModels.includes(m.name)) {
      skipped.push(`${id}: official_models.py runs one ${m.name} per command`);
    } else if (m.name === "slak_tiny") {
      if (!o.slakPy) {
        skipped.push(`${id}: no official SLaK.py (--official-dir DIR or --slak-py FILE)`);
      } else if (!m.smallKernel) skipped.push(`${id}: the official SLaK-T needs a small kernel`);
      else {
        officialModels.push(m.name);
        officialArgs.push("--slak-py", o.slakPy, "--slak-kernels", `${m.kernels}-${m.smallKernel}`);
      }
    } else if (m.name === "replknet_31b") {
      if (!o.replknetPy) {
        skipped.push(`${id}: no official replknet.py (--official-dir DIR or --replknet-py FILE)`);
      } else if (m.kernels !== REPLKNET_31B_KERNELS) {
        skipped.push(`${id}: the official RepLKNet-31B has ${REPLKNET_31B_KERNELS} kernels`);
      } else {
        officialModels.push(m.name);
        officialArgs.push("--replknet-py", o.replknetPy);
      }
    } else skipped.push(`${id}: no PyTorch anchor for this model`);
  }
  if (officialModels.length) {
    runs.push({
      script: "official_models.py",
      args: ["--models", officialModels.join(","), ...officialArgs, ...common],
    });
  }
  return { runs, skipped };
}
