/**
 * scripts/trends.ts: the confidence intervals against published Student-t
 * quantiles, the verdicts, the flag checks, the equal-FLOPs width search, and
 * tables 2–4 run end to end at the smallest settings (CSV columns, header
 * lines with the wall time, and each row's interval recomputed from its per-seed
 * accuracies), in under a minute on llvmpipe.
 */
import assert from "node:assert/strict";
import { incompleteBeta, meanCi, studentTCdf, studentTQuantile } from "../analysis/stats.ts";
import {
  DEFAULT_SEEDS,
  lockOut,
  type ModelSpec,
  OUT_LOCK,
  parseTrendArgs,
  RUN_RESULT,
  runTrends,
  scalingComparisons,
  TABLES,
  verdict,
  widthForMacs,
} from "../scripts/trends.ts";
import { createModel } from "../models/registry.ts";
import { countModel } from "../analysis/flops.ts";

Deno.test("stats: Student-t quantiles match the printed tables", () => {
  // Two-sided 95% (p = 0.975) and 99% (p = 0.995) critical values, 3 decimals as printed.
  const t975: Record<number, number> = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    9: 2.262,
    10: 2.228,
    29: 2.045,
    30: 2.042,
    120: 1.98,
  };
  for (const [df, v] of Object.entries(t975)) {
    assert.equal(studentTQuantile(0.975, Number(df)).toFixed(3), v.toFixed(3), `df ${df}`);
  }
  assert.equal(studentTQuantile(0.995, 4).toFixed(3), "4.604");
  assert.equal(studentTQuantile(0.025, 2).toFixed(3), "-4.303");
  assert.equal(studentTQuantile(0.5, 7), 0);
  assert.ok(Math.abs(studentTCdf(1.96, 1e6) - 0.975) < 1e-4); // the normal limit
  assert.ok(Math.abs(incompleteBeta(0.3, 1, 1) - 0.3) < 1e-12); // I_x(1, 1) = x
  assert.throws(() => studentTQuantile(1, 3), /p must be in/);
  assert.throws(() => studentTQuantile(0.9, 0), /df must be positive/);
});

Deno.test("stats: meanCi is mean ± t·s/√n, and no interval from one value", () => {
  const c = meanCi([80, 82, 84]);
  assert.equal(c.mean, 82);
  assert.equal(c.sd, 2);
  assert.ok(Math.abs(c.half - (4.302653 * 2) / Math.sqrt(3)) < 1e-5);
  assert.equal(c.lo, 82 - c.half);
  const two = meanCi([10, 14]);
  assert.ok(Math.abs(two.half - 12.706205 * Math.SQRT2 * 2 / Math.SQRT2) < 1e-4);
  const one = meanCi([5]);
  assert.equal(one.mean, 5);
  assert.ok(Number.isNaN(one.half) && Number.isNaN(one.lo));
  assert.throws(() => meanCi([]), /no values/);
});

Deno.test("trends: table 1 compares the largest kernel with each other kernel once", () => {
  assert.deepEqual(scalingComparisons([7, 13, 31, 51]), [0, 2]);
  assert.deepEqual(scalingComparisons([7, 13, 51]), [0, 1]);
  assert.deepEqual(scalingComparisons([7, 51]), [0]);
});

Deno.test("trends: verdicts compare per-seed differences", () => {
  const clear = verdict("a > b", [80, 82, 84], [70, 71, 75]);
  assert.ok(clear.held && clear.clear);
  assert.match(clear.text, /held, \+10\.00 ± 2\.48.*excludes 0/);
  const noisy = verdict("a > b", [70, 90, 60], [75, 70, 72]);
  assert.ok(noisy.held && !noisy.clear); // +1 on average, interval includes 0
  const reversed = verdict("a > b", [60, 61, 62], [70, 72, 71]);
  assert.ok(!reversed.held && reversed.clear);
  assert.match(reversed.text, /NOT held/);
  // "matches": held unless clearly worse.
  assert.ok(verdict("a ≈ b", [70, 90, 60], [75, 70, 80], true).held);
  assert.ok(!verdict("a ≈ b", [60, 61, 62], [70, 72, 71], true).held);
  assert.throws(() => verdict("x", [1, 2], [1]), /2 vs 1 seeds/);
});

Deno.test("trends: one command per --out folder; a lock left by a dead process is taken over", async () => {
  const out = await Deno.makeTempDir({ prefix: "trends_lock_" });
  try {
    const release = await lockOut(out);
    await assert.rejects(
      lockOut(out),
      new RegExp(`--out: ${out} is in use by another trends command \\(pid ${Deno.pid}`),
    );
    await release();
    await assert.rejects(Deno.stat(`${out}/${OUT_LOCK}`), Deno.errors.NotFound);
    // Above the kernel's largest pid: no such process.
    await Deno.writeTextFile(`${out}/${OUT_LOCK}`, "4194305\n");
    const again = await lockOut(out);
    assert.equal((await Deno.readTextFile(`${out}/${OUT_LOCK}`)).trim(), String(Deno.pid));
    await again();
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("trends: bad flags are one-line errors naming the flag", () => {
  const bad: [string[], RegExp][] = [
    [["--seeds", "1"], /^--seeds: expected an integer ≥ 2/],
    [["--table", "6"], /^--table: expected table numbers 1–5/],
    [["--kernels", "7,5"], /^--kernels: expected 2 or more increasing/],
    [["--kernels", "8,12"], /^--kernels: expected odd kernel sizes/],
    [["--small-kernel", "7"], /^--small-kernel: expected a kernel smaller/],
    [["--steps", "10", "--epochs", "2"], /^--steps: give --steps or --epochs/],
    [["--lr", "0"], /^--lr: expected a positive number/],
    [["--bogus"], /--bogus/],
    [["--input-size", "8"], /^--input-size: expected an integer ≥ 16/],
    [["--jobs", "0"], /^--jobs: expected an integer ≥ 1/],
    [["--jobs", "65"], /^--jobs: expected an integer from 1 to 64/],
    [["--worker", "2/2"], /^--worker: expected K\/N with 0 ≤ K < N/],
    [["--worker", "1"], /^--worker: expected K\/N/],
  ];
  for (const [args, re] of bad) {
    assert.throws(
      () => parseTrendArgs(args),
      (e: Error) => re.test(e.message) && !e.message.includes("\n"),
    );
  }
  const s = parseTrendArgs(["--table", "3,1,3", "--seeds", "5", "--steps", "40"]);
  assert.deepEqual(s.tables, [1, 3]);
  assert.deepEqual(s.seeds, [0, 1, 2, 3, 4]);
  assert.equal(s.steps, 40);
  assert.deepEqual(s.kernels, [7, 13, 31, 51]);
  // --seeds sets every table; without it the default size has its seeds per table.
  assert.deepEqual(Object.values(s.tableSeeds).map((t) => t.length), [5, 5, 5, 5, 5]);
  assert.deepEqual(
    Object.values(parseTrendArgs([]).tableSeeds).map((t) => t.length),
    Object.values(DEFAULT_SEEDS),
  );
  const quick = parseTrendArgs(["--quick"]);
  assert.equal(quick.quick, true);
  assert.deepEqual(Object.values(quick.tableSeeds).map((t) => t.length), [3, 3, 3, 3, 3]);
});

Deno.test("trends: the equal-FLOPs width search lands next to the target", () => {
  const s = parseTrendArgs(["--quick"]);
  const target = countModel(createModel("slak_cpu", { kernels: [15, 15, 15, 15, 3] }), 32).macs;
  for (const model of ["resnet_cpu", "convnext_cpu"]) {
    const spec: ModelSpec = { key: model, label: model, model, widthFactor: 1 };
    const w = widthForMacs(spec, target, s);
    const at = (f: number) =>
      countModel(createModel(model, { widthFactor: f, numClasses: 4 }), 32).macs;
    // Closest of the widths around it: a little narrower or wider is no closer.
    const here = Math.abs(at(w) - target);
    assert.ok(here <= Math.abs(at(w * 0.9) - target), `${model}: ×${w} vs ×${w * 0.9}`);
    assert.ok(here <= Math.abs(at(w * 1.1) - target), `${model}: ×${w} vs ×${w * 1.1}`);
    assert.ok(here / target < 0.15, `${model}: ${at(w)} MACs vs ${target}`);
  }
});

/** Rows of a CSV written by trends (comment lines first), as header → cell maps. */
function readCsv(text: string): { comments: string[]; rows: Record<string, string>[] } {
  const lines = text.trimEnd().split("\n");
  const comments = lines.filter((l) => l.startsWith("# ")).map((l) => l.slice(2));
  const body = lines.filter((l) => !l.startsWith("# "));
  const split = (l: string) => {
    const out: string[] = [];
    let cur = "";
    let quoted = false;
    for (let i = 0; i < l.length; i++) {
      const ch = l[i];
      if (quoted && ch === '"' && l[i + 1] === '"') (cur += '"', i++);
      else if (ch === '"') quoted = !quoted;
      else if (ch === "," && !quoted) (out.push(cur), cur = "");
      else cur += ch;
    }
    out.push(cur);
    return out;
  };
  const head = split(body[0]);
  return {
    comments,
    rows: body.slice(1).map((l) => Object.fromEntries(split(l).map((v, i) => [head[i], v]))),
  };
}

const ACCURACY_COLUMNS = [
  "row",
  "model",
  "kernels",
  "width_factor",
  "sparsity",
  "params",
  "mflops",
  "data",
  "input_size",
  "train_images",
  "epochs",
  "steps",
  "seeds",
  "top1_mean",
  "top1_ci95",
  "top1_lo",
  "top1_hi",
  "top1_per_seed",
  "run_mode",
];

Deno.test({
  name: "trends: tables 2–4 run at the smallest settings and write their CSV and PNG",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "trends_test_" });
    try {
      const args = [
        "--quick",
        "--seeds",
        "2",
        "--train-size",
        "16",
        "--val-size",
        "16",
        "--kernels",
        "5,9",
        // Tables 1 and 5 run the same code as 2 (runSeeds, accuracyRow, writeTable) on other
        // families; each family and width costs 15–25 s of kernel compilation on llvmpipe.
        "--table",
        "2,3,4",
        "--out",
        out,
      ];
      const s = parseTrendArgs(args);
      await runTrends(s);
      for (const n of s.tables) {
        const stem = TABLES[n];
        const { comments, rows } = readCsv(await Deno.readTextFile(`${out}/${stem}.csv`));
        assert.ok((await Deno.stat(`${out}/${stem}.png`)).size > 1000, `${stem}.png`);
        assert.match(comments[0], /QUICK SMOKE MODE/);
        assert.ok(comments.some((c) => c.startsWith("claim: ")), `table ${n}: claim`);
        assert.ok(comments.some((c) => c.startsWith("data: procedural")), `table ${n}: data`);
        assert.ok(comments.some((c) => /^verdict: .*(held|NOT held)/.test(c)), `table ${n}`);
        assert.ok(
          comments.some((c) => /^wall time: \d+ s for this table .* kernels compiled\)$/.test(c)),
          `table ${n}: wall time`,
        );
        assert.ok(rows.length >= 2, `table ${n}: ${rows.length} rows`);
        for (const r of rows) {
          for (const c of ACCURACY_COLUMNS) assert.ok(c in r, `table ${n}: column ${c}`);
          assert.equal(r.seeds, "2");
          assert.equal(r.steps, "1");
          // The interval is mean ± t(0.975, 1)·s/√2 of the per-seed values.
          const perSeed = r.top1_per_seed.split(";").map(Number);
          assert.equal(perSeed.length, 2);
          const c = meanCi(perSeed);
          assert.ok(Math.abs(Number(r.top1_mean) - c.mean) < 0.01, `${r.row}: mean`);
          assert.ok(Math.abs(Number(r.top1_ci95) - c.half) < 0.01, `${r.row}: ci`);
          assert.ok(Number(r.params) > 0 && Number(r.mflops) > 0, `${r.row}: counts`);
        }
        if (stem === TABLES[3]) {
          for (const c of ["state", "transform", "r20_mean", "r30_mean", "r50_mean", "r99_ci95"]) {
            assert.ok(c in rows[0], `table 3: column ${c}`);
          }
          assert.deepEqual(new Set(rows.map((r) => r.state)), new Set(["trained", "untrained"]));
          for (const r of rows) assert.ok(Number(r.r20_mean) > 0 && Number(r.r99_mean) <= 100);
        }
        if (stem === TABLES[4]) {
          const sparse = rows.find((r) => r.sparsity === "0.4")!;
          const dense = rows.find((r) => r.sparsity === "0")!;
          // 40% sparse large kernels at the same width: FLOPs from the final masks, fewer.
          assert.equal(sparse.width_factor, dense.width_factor);
          assert.ok(Number(sparse.params) < Number(dense.params));
          assert.ok(Number(sparse.mflops) < Number(dense.mflops));
        }
      }
      // A second command over the same folder reads every finished run from disk, so a
      // stopped command resumes; a run with an unreadable result, or --fresh, trains again.
      const table2 = async (extra: string[] = []) => {
        await runTrends(parseTrendArgs([...args, "--table", "2", ...extra]));
        return readCsv(await Deno.readTextFile(`${out}/${TABLES[2]}.csv`));
      };
      const seedsOf = (t: { rows: Record<string, string>[] }) => t.rows.map((r) => r.top1_per_seed);
      const wall = (t: { comments: string[] }) => t.comments.find((c) => c.startsWith("wall"))!;
      const before = readCsv(await Deno.readTextFile(`${out}/${TABLES[2]}.csv`));
      const resumed = await table2();
      assert.match(
        wall(resumed),
        /\(0 runs trained, 0 reused .*, 6 finished before, read from disk/,
      );
      assert.deepEqual(seedsOf(resumed), seedsOf(before));
      const [oneRun] = [...Deno.readDirSync(`${out}/runs`)].filter((e) => e.name.includes("full"));
      await Deno.writeTextFile(`${out}/runs/${oneRun.name}/seed1/${RUN_RESULT}`, "{ torn");
      assert.match(wall(await table2()), /\(1 runs trained, 0 reused .*, 5 finished before/);
      // Another command on the same folder is refused before it trains anything.
      const hold = await lockOut(out);
      await assert.rejects(table2(), /--out: .* is in use by another trends command/);
      await hold();
      // A result path that is not a file is named, not trained over.
      const dirty = `${out}/runs/${oneRun.name}/seed0/${RUN_RESULT}`;
      await Deno.remove(dirty);
      await Deno.mkdir(dirty);
      await assert.rejects(
        table2(),
        (e: Error) => e.message.startsWith(`${dirty}: expected a finished run's result file`),
      );
      await Deno.remove(dirty);
      assert.match(
        wall(await table2(["--fresh"])),
        /\(6 runs trained, 0 reused .*, 0 finished before/,
      );
      assert.deepEqual(seedsOf(await table2()), seedsOf(before), "the same runs, trained again");
      // --jobs: two worker processes train the runs (each its share), this one writes the table.
      const jobs = await table2(["--fresh", "--jobs", "2"]);
      assert.match(
        wall(jobs),
        /\(0 runs trained, 0 reused .*, 6 finished before.*2 worker processes/,
      );
      assert.deepEqual(seedsOf(jobs), seedsOf(before), "the same runs, trained by the workers");
      for (const k of [0, 1]) {
        assert.match(
          await Deno.readTextFile(`${out}/jobs/worker-${k}.log`),
          /runs \d–\d of 6 finished/,
        );
      }
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
