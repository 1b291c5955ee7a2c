/**
 * The kernel planner (ops/planner.ts) and its cache (ops/plan_cache.ts): a
 * candidate that throws, raises a GPU validation error or computes something
 * else never wins; plans are reused, not timed again; plans round-trip
 * through JSON and the cache file; a corrupt, oversized or hostile cache is
 * ignored with one warning; and a real op (the tiled GEMM) plans on llvmpipe
 * when asked.
 */
import assert from "node:assert/strict";
import { add, mul } from "../ops/elementwise.ts";
import { gpu } from "../ops/gpu.ts";
import { launch } from "../ops/kernel.ts";
import { matmul } from "../ops/matmul.ts";
import {
  loadPlanCache,
  PLAN_CACHE_MAX_BYTES,
  planCachePath,
  planProgress,
  planWithCache,
} from "../ops/plan_cache.ts";
import { type PlanJob, planKey, Planner, planner, validSavedPlans } from "../ops/planner.ts";
import { Tensor } from "../ops/tensor.ts";
import { restorePlans } from "../train/kernel_plans.ts";
import { setup } from "./harness.ts";

await setup();

type Choice = { v: number };
const isChoice = (c: unknown): c is Choice =>
  typeof c === "object" && c !== null && typeof (c as Choice).v === "number";

/** A kernel whose workgroup is far beyond any adapter's invocation limits. */
const TOO_BIG = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(65536, 65536) fn main() { y[0] = 1.0; }`;

/**
 * Squares of [1, 2, 3, 4]: v 0 and 4 right, 1 wrong (x + x), 2 a GPU
 * validation error, 3 throws.
 */
function squaresJob(): PlanJob<Choice> {
  return {
    candidates: () => [{ v: 0 }, { v: 1 }, { v: 2 }, { v: 3 }, { v: 4 }],
    bench: () => {
      const x = Tensor.from([1, 2, 3, 4]);
      return {
        run: ({ v }) => {
          if (v === 3) throw new Error("candidate 3 does not apply");
          if (v === 1) return [add(x, x)];
          if (v === 2) {
            const y = Tensor.zeros([4]);
            launch(TOO_BIG, [y], [1, 1, 1]);
            return [y];
          }
          return [mul(x, x)];
        },
        reference: () => [mul(x, x)],
        dispose: () => x.dispose(),
      };
    },
  };
}

Deno.test("planner: bad candidates never win, a plan is reused untimed, forcing overrides", async (t) => {
  const p = new Planner(gpu());
  const step = () => p.choose("test.squares", "4", isChoice, squaresJob);
  const r = await p.plan(step, { software: true, maxCandidates: 5 });
  assert.deepEqual(r.keys, ["test.squares|4|f32"]);
  const [row] = r.planned;
  assert.deepEqual(row.rejected.map((x) => (x.choice as Choice).v), [1, 2, 3]);
  assert.match(row.rejected[0].reason, /differs from the reference/);
  assert.match(row.rejected[1].reason, /GPU validation error/);
  assert.match(row.rejected[2].reason, /does not apply/);
  assert.ok([0, 4].includes((row.choice as Choice).v));
  assert.equal(p.timings, 2, "the two passing candidates are timed");
  assert.deepEqual(p.choose("test.squares", "4", isChoice, squaresJob), row.choice);
  // Planned keys are not timed again; retune times them again.
  const again = await p.plan(step, { software: true, maxCandidates: 5 });
  assert.equal(again.reused, 1);
  assert.equal(again.planned.length, 0);
  assert.equal(p.timings, 2);
  await p.plan(step, { software: true, maxCandidates: 5, retune: true });
  assert.equal(p.timings, 4);
  // Without `software`, a software adapter plans nothing.
  const software = gpu().isFallback;
  await t.step({
    name: "a software adapter plans nothing unless asked" +
      (software ? "" : " (ignored: this adapter is not a software one)"),
    ignore: !software,
    fn: async () => assert.equal((await p.plan(step)).skipped, "software adapter"),
  });
  p.force("test.squares", { v: 9 });
  assert.deepEqual(p.choose("test.squares", "4", isChoice, squaresJob), { v: 9 });
  p.force("test.squares", "not a choice");
  assert.throws(() => p.choose("test.squares", "4", isChoice, squaresJob), /forced .* invalid/);
  p.clearForced();
});

Deno.test("planner: JSON round trip, other adapters kept, malformed plans refused", () => {
  const p = new Planner(gpu());
  const mine = { adapter: p.adapter, key: "test.a|1|f32", choice: { v: 1 } };
  const other = { adapter: "Other / gpu / driver", key: "test.a|1|f32", choice: { v: 2 } };
  assert.equal(p.load({ version: 1, plans: [mine, other] }), 1);
  assert.deepEqual(p.planOf("test.a|1|f32"), { v: 1 });
  assert.deepEqual(p.toJSON().plans.length, 2);
  assert.deepEqual(p.toJSON(["test.a|1|f32"]).plans, [mine]);
  const q = new Planner(gpu());
  q.load(JSON.parse(JSON.stringify(p.toJSON())));
  assert.deepEqual(q.toJSON(), p.toJSON());
  assert.throws(() => validSavedPlans({ version: 2, plans: [] }), /expected version 1/);
  assert.throws(() => validSavedPlans([]), /expected version 1/);
  assert.throws(() => validSavedPlans({ version: 1, plans: {} }), /array/);
  const deep = { a: { b: { c: { d: 1 } } } };
  assert.throws(
    () => validSavedPlans({ version: 1, plans: [{ ...mine, choice: deep }] }),
    /malformed plan/,
  );
  assert.throws(
    () => validSavedPlans({ version: 1, plans: [{ ...mine, key: 7 }] }),
    /malformed plan/,
  );
  // A checkpoint's malformed plans: one line naming --resume and the field.
  assert.throws(
    () => restorePlans({ version: 3, plans: [] }),
    /^Error: --resume: .*"plans": expected version 1/,
  );
});

Deno.test("plan cache: the second run plans nothing; a bad file is ignored with one warning", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/largekernel/plans.json`;
  assert.equal(planCachePath({ XDG_CACHE_HOME: dir }), path);
  assert.equal(planCachePath({ HOME: "/h" }), "/h/.cache/largekernel/plans.json");
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (...a: unknown[]) => warnings.push(a.join(" "));
  try {
    const first = new Planner(gpu());
    const step1 = () => first.choose("test.squares", "4", isChoice, squaresJob);
    const r1 = await planWithCache(first, step1, { cachePath: path, software: true });
    assert.equal(r1.planned.length, 1);
    assert.deepEqual([...Deno.readDirSync(`${dir}/largekernel`)].map((e) => e.name), [
      "plans.json",
    ]);
    // A second process: everything comes from the cache, nothing is timed.
    const second = new Planner(gpu());
    const step2 = () => second.choose("test.squares", "4", isChoice, squaresJob);
    const r2 = await planWithCache(second, step2, { cachePath: path, software: true });
    assert.equal(r2.planned.length, 0);
    assert.equal(r2.reused, 1);
    assert.equal(second.timings, 0);
    assert.equal(warnings.length, 0);
    // Corrupt, hostile and oversized files: one warning each, nothing loaded, and a run rewrites it.
    const bad = [
      "{ not json",
      JSON.stringify({ version: 1, plans: [{ adapter: 1, key: "x", choice: null }] }),
      JSON.stringify({ version: 1, plans: "x".repeat(PLAN_CACHE_MAX_BYTES) }),
    ];
    for (const text of bad) {
      await Deno.writeTextFile(path, text);
      const before: number = warnings.length;
      assert.equal(await loadPlanCache(new Planner(gpu()), path), 0);
      assert.equal(warnings.length, before + 1, warnings.join("\n"));
      assert.match(warnings.at(-1)!, /ignoring the plan cache/);
    }
    const third = new Planner(gpu());
    const step3 = () => third.choose("test.squares", "4", isChoice, squaresJob);
    await planWithCache(third, step3, { cachePath: path, software: true });
    assert.equal(await loadPlanCache(new Planner(gpu()), path), 1);
  } finally {
    console.warn = warn;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("plan cache: a run stopped while planning keeps the keys it planned; progress is reported", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/plans.json`;
  try {
    const stopped = (): PlanJob<Choice> => ({
      candidates: () => [{ v: 0 }, { v: 1 }],
      bench: () => {
        throw new Error("stopped while planning");
      },
    });
    const first = new Planner(gpu());
    const progress: string[] = [];
    const lines: string[] = [];
    const report = planProgress(1, (line) => lines.push(line));
    const step = () => {
      first.choose("test.squares", "4", isChoice, squaresJob);
      first.choose("test.stopped", "5", isChoice, stopped);
    };
    await assert.rejects(
      planWithCache(first, step, {
        cachePath: path,
        software: true,
        onPlanned: (row, done, total) => {
          progress.push(`${row.key} ${done}/${total}`);
          report(row, done, total);
        },
      }),
      /stopped while planning/,
    );
    assert.deepEqual(progress, ["test.squares|4|f32 1/2"]);
    assert.equal(lines.length, 1);
    assert.match(
      lines[0],
      /^planning kernels: 1\/2 keys in \d+\.\d s \(longest: test\.squares\|4\|f32, /,
    );
    // The next run finds the first key's plan in the cache and plans only the other one.
    const second = new Planner(gpu());
    assert.equal(await loadPlanCache(second, path), 1);
    assert.deepEqual(second.planOf("test.squares|4|f32"), { v: 0 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("planner: collecting a step's keys compiles and runs none of its kernels", async () => {
  const p = new Planner(gpu());
  const x = Tensor.from([1, 2, 3, 4]);
  const y = Tensor.zeros([4]);
  // A kernel never compiled before: collecting must not compile it (it does not even parse).
  const broken = "this is not WGSL";
  const before = gpu().dispatches;
  const jobs = await p.collect(() => {
    p.choose("test.squares", "4", isChoice, squaresJob);
    launch(broken, [y], [1, 1, 1]);
    mul(x, x).dispose();
  });
  assert.deepEqual([...jobs.keys()], ["test.squares|4|f32"]);
  assert.equal(jobs.get("test.squares|4|f32")!.launches, 1);
  assert.equal(gpu().dispatches, before);
  assert.equal(gpu().skipDispatches, false);
  // Afterwards dispatches record again.
  const z = mul(x, x);
  assert.deepEqual([...await z.read()], [1, 4, 9, 16]);
  for (const t of [x, y, z]) t.dispose();
});

Deno.test("planner: under a time budget the heaviest keys go first, the rest are deferred", async () => {
  // Each key's one candidate takes at least 60 ms to check (a busy wait on the CPU).
  const slowJob = (work: number) => (): PlanJob<Choice> => ({
    work,
    candidates: () => [{ v: work }],
    bench: () => {
      const x = Tensor.from([1, 2]);
      return {
        run: () => {
          const until = performance.now() + 60;
          while (performance.now() < until) { /* busy */ }
          return [mul(x, x)];
        },
        reference: () => [mul(x, x)],
        dispose: () => x.dispose(),
      };
    },
  });
  const step = (p: Planner) => () => {
    for (const w of [1, 3, 2]) p.choose("test.slow", `${w}`, isChoice, slowJob(w));
  };
  const keys = (rows: { key: string }[]) => rows.map((r) => r.key.split("|")[1]);
  // No budget: every key, in the order the step ran them.
  const all = new Planner(gpu());
  const full = await all.plan(step(all), { software: true });
  assert.deepEqual(keys(full.planned), ["1", "3", "2"]);
  assert.equal(full.deferred, undefined);
  // 100 ms: the heaviest key starts at once; after it, 60 ms spent + a 60 ms mean pass the budget.
  const p = new Planner(gpu());
  const bounded = await p.plan(step(p), { software: true, budgetMs: 100 });
  assert.deepEqual(keys(bounded.planned), ["3"]);
  assert.deepEqual(bounded.deferred, ["test.slow|2|f32", "test.slow|1|f32"]);
  assert.equal(p.planOf("test.slow|2|f32"), undefined);
  // The next plan picks up exactly the deferred keys, heaviest first.
  const next = await p.plan(step(p), { software: true, budgetMs: 10_000 });
  assert.deepEqual(keys(next.planned), ["2", "1"]);
  assert.equal(next.reused, 1);
  assert.equal(next.deferred, undefined);
  // A budget of 0 plans nothing.
  const none = new Planner(gpu());
  const zero = await none.plan(step(none), { software: true, budgetMs: 0 });
  assert.deepEqual(zero.planned, []);
  assert.equal(zero.deferred?.length, 3);
  for (const bad of [-1, NaN]) {
    await assert.rejects(none.plan(step(none), { software: true, budgetMs: bad }), /budgetMs/);
  }
  // Work per step: a key of work 2 launched three times (6) goes before one of work 5 launched
  // once, and that before one of work 3 launched once.
  const repeated = (p: Planner) => () => {
    for (const w of [3, 2, 5, 2, 2]) p.choose("test.slow", `${w}`, isChoice, slowJob(w));
  };
  const r = new Planner(gpu());
  const collected = await r.collect(repeated(r));
  assert.deepEqual([...collected].map(([k, c]) => [k.split("|")[1], c.launches]), [
    ["3", 1],
    ["2", 3],
    ["5", 1],
  ]);
  const perStep = await r.plan(repeated(r), { software: true, budgetMs: 10_000 });
  assert.deepEqual(keys(perStep.planned), ["2", "5", "3"]);
});

Deno.test("planner: the next key's kernels compile while this key is timed; failures stay with their candidate", async () => {
  const events: string[] = [];
  // y = 2x + salt; each candidate's source differs (a comment), so each compiles on its own.
  const doublingJob = (name: string, salt: number) => (): PlanJob<Choice> => ({
    candidates: () => [{ v: 0 }, { v: 1 }],
    bench: () => {
      const x = Tensor.from([1, 2, 3, 4]);
      const run = (variant: string) => {
        const y = Tensor.zeros([4]);
        const before = gpu().pipelineCount;
        launch(
          `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
// ${name} ${variant}
@compute @workgroup_size(4) fn main(@builtin(local_invocation_index) i: u32) {
  y[i] = 2.0 * x[i] + ${salt.toFixed(4)};
}`,
          [x, y],
          [1, 1, 1],
        );
        const how = gpu().pipelineCount > before ? "compiled" : "cached";
        events.push(`${name} ${variant} ${gpu().precompiling ? "ahead" : "run"} ${how}`);
        return y;
      };
      return {
        run: ({ v }) => [run(`candidate ${v}`)],
        reference: () => [run("reference")],
        dispose: () => x.dispose(),
      };
    },
  });
  const p = new Planner(gpu());
  const step = () => {
    p.choose("test.doubling", "a", isChoice, doublingJob("a", 0.4321));
    p.choose("test.doubling", "b", isChoice, doublingJob("b", 0.8765));
    p.choose("test.squares", "4", isChoice, squaresJob);
  };
  const r = await p.plan(step, {
    software: true,
    maxCandidates: 5,
    onPlanned: (row) => void events.push(`planned ${row.key.split("|")[1]}`),
  });
  assert.deepEqual(r.planned.map((x) => x.rejected.length), [0, 0, 3]);
  if (!gpu().features.has("timestamp-query")) return; // no batched timing, nothing overlaps
  const of = (prefix: string) => events.filter((e) => e.startsWith(prefix));
  // Key a compiles in its own check; key b's kernels compile before a is done, and b's check
  // and timing find them compiled.
  assert.deepEqual(of("a candidate 0")[0], "a candidate 0 run compiled");
  const bAhead = events.indexOf("b candidate 0 ahead compiled");
  assert.ok(bAhead > events.indexOf("a candidate 1 run compiled"), events.join("; "));
  assert.ok(bAhead < events.indexOf("planned a"), events.join("; "));
  assert.ok(events.includes("b candidate 1 ahead compiled"), events.join("; "));
  assert.ok(events.includes("b reference ahead compiled"), events.join("; "));
  assert.deepEqual(
    of("b").filter((e) => e.includes(" run ")).filter((e) => !e.endsWith("cached")),
    [],
  );
  // The squares key came third, its bad candidates compiled ahead: the same reasons as above.
  const [, , squares] = r.planned;
  assert.deepEqual(squares.rejected.map((x) => (x.choice as Choice).v), [1, 2, 3]);
  assert.match(squares.rejected[0].reason, /differs from the reference/);
  assert.match(squares.rejected[1].reason, /GPU validation error/);
  assert.match(squares.rejected[2].reason, /does not apply/);
  assert.equal(gpu().precompiling, false);
  await gpu().checkErrors(); // nothing compiled ahead is reported afterwards
});

Deno.test("planner: a key that reads other keys' plans is planned after them, with or without a budget", async () => {
  const job = (work: number, after?: string[]) => (): PlanJob<Choice> => ({
    work,
    after,
    candidates: () => [{ v: work }],
    bench: () => {
      const x = Tensor.from([1, 2]);
      return { run: () => [mul(x, x)], reference: () => [mul(x, x)], dispose: () => x.dispose() };
    },
  });
  const step = (p: Planner) => () => {
    p.choose("test.reads", "r", isChoice, job(9, [planKey("test.read", "b"), "not|a|key"]));
    p.choose("test.read", "a", isChoice, job(5));
    p.choose("test.read", "b", isChoice, job(1));
    p.choose("test.read", "c", isChoice, job(3));
  };
  const order = async (budgetMs?: number) => {
    const p = new Planner(gpu());
    const r = await p.plan(step(p), { software: true, budgetMs });
    return r.planned.map((row) => row.key.split("|")[1]);
  };
  assert.deepEqual(await order(), ["a", "b", "r", "c"]);
  assert.deepEqual(await order(10_000), ["a", "c", "b", "r"]);
});

Deno.test("planner: a matrix product plans on llvmpipe when asked, checked against the reference", async () => {
  const a = Tensor.randn([20, 12], { seed: 1 });
  const b = Tensor.randn([12, 24], { seed: 2 });
  const p = planner();
  try {
    const r = await p.plan(() => matmul(a, b).dispose(), { software: true, retune: true });
    assert.equal(r.keys.length, 1);
    assert.match(r.keys[0], /^gemm\|1x\d+x\d+x\d+:[0-9a-f]{16}\|f32$/);
    assert.equal(r.planned[0].candidates, 2);
    assert.deepEqual(r.planned[0].rejected, []);
    assert.ok(p.planOf(r.keys[0]) !== undefined);
  } finally {
    p.clear();
    a.dispose();
    b.dispose();
  }
});
