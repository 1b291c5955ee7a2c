/**
 * Sparse or dense (ops/sparse_path.ts): which kernels a masked depthwise
 * convolution dispatches, untuned (the density threshold), forced, and as
 * the planner chooses after timing both paths, whose kernels it plans first.
 */
import assert from "node:assert/strict";
import { setDepthwiseImpl } from "../ops/depthwise_plan.ts";
import { gpu } from "../ops/gpu.ts";
import { planner } from "../ops/planner.ts";
import { SparseDepthwisePlan } from "../ops/sparse_depthwise.ts";
import { depthwiseMaybeSparse, SPARSE_DEPTHWISE_THRESHOLD } from "../ops/sparse_path.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { relError, setup } from "./harness.ts";

await setup();

/** The kernels `record` dispatches, by name. */
function dispatched(record: () => void): string[] {
  const names: string[] = [];
  const g = gpu();
  g.dispatchHook = (name, _kernel, run) => {
    names.push(name);
    run();
  };
  try {
    record();
  } finally {
    g.dispatchHook = null;
  }
  return names;
}

/** A 7×3 depthwise conv of `c` channels: a random mask of `density`, its plan, x and masked w. */
async function maskedConv(c: number, density: number, seed: number) {
  const mask = SparseDepthwisePlan.randomMask(c, 7, 3, density, seed);
  const plan = SparseDepthwisePlan.fromMask(mask, [c, 1, 7, 3]);
  const x = Tensor.randn([2, c, 9, 9], { seed: seed + 1 });
  const drawn = Tensor.randn([c, 1, 7, 3], { seed: seed + 2 });
  const raw = await drawn.read();
  drawn.dispose();
  const w = Tensor.from(raw.map((v, i) => v * mask[i]), [c, 1, 7, 3]);
  return { plan, x, w };
}

const onSparseKernels = (names: string[]) => names.some((n) => n.startsWith("sparse-depthwise"));

Deno.test("depthwiseMaybeSparse: threshold, untuned default and the planner's forced path pick the kernels", async () => {
  const { plan, x, w } = await maskedConv(3, 0.45, 2);
  const p = planner();
  try {
    const run = (threshold?: number) => {
      let y: Tensor | null = null;
      const names = dispatched(() => {
        y = scope(() => depthwiseMaybeSparse(x, w, plan, null, {}, threshold));
      });
      return { names, y: y! as Tensor };
    };
    const names = (threshold?: number) => {
      const r = run(threshold);
      r.y.dispose();
      return r.names;
    };
    assert.ok(onSparseKernels(names(0.5)), "density 0.45 below 0.5: sparse");
    assert.ok(!onSparseKernels(names(0.3)), "above 0.3: dense");
    assert.equal(onSparseKernels(names()), plan.density < SPARSE_DEPTHWISE_THRESHOLD, "untuned");
    p.force("sparse.path", { sparse: false });
    assert.ok(!onSparseKernels(names()), "forced dense");
    p.force("sparse.path", { sparse: true });
    assert.ok(onSparseKernels(names()), "forced sparse");
    // Both paths compute the same thing on masked weights.
    const sparse = run();
    p.force("sparse.path", { sparse: false });
    const dense = run();
    assert.ok(relError(await sparse.y.read(), await dense.y.read()) < 1e-5);
    sparse.y.dispose();
    dense.y.dispose();
  } finally {
    p.force("sparse.path", null);
    for (const t of [x, w]) t.dispose();
    plan.dispose();
  }
});

Deno.test("planner: the path is timed after both paths' kernels are planned, and then followed", async () => {
  const { plan, x, w } = await maskedConv(2, 0.4, 4);
  const p = planner();
  setDepthwiseImpl("fast"); // the dense tiled kernels on llvmpipe too, so that they have keys
  try {
    const step = () => scope(() => void depthwiseMaybeSparse(x, w, plan, null));
    const r = await p.plan(step, { software: true, retune: true });
    const ops = r.planned.map((row) => row.key.split("|")[0]);
    const path = ops.indexOf("sparse.path");
    assert.ok(path >= 0, `planned: ${ops}`);
    for (const op of ["depthwise.forward", "depthwise.filter", "sparse.forward", "sparse.filter"]) {
      const i = ops.indexOf(op);
      assert.ok(i >= 0 && i < path, `${op} planned before the path: ${ops}`);
    }
    const row = r.planned[path];
    assert.equal(row.candidates, 2);
    assert.deepEqual(row.rejected, []);
    // The same key again follows the plan, whichever path won.
    const choice = p.planOf(row.key) as { sparse: boolean };
    assert.equal(typeof choice.sparse, "boolean");
    assert.equal(onSparseKernels(dispatched(step)), choice.sparse);
  } finally {
    setDepthwiseImpl("auto");
    p.clear();
    for (const t of [x, w]) t.dispose();
    plan.dispose();
  }
});
