/**
 * The sparse depthwise kernels (ops/sparse_depthwise.ts) against the generic
 * dense kernels on masked weights (ops/depthwise.ts, themselves checked
 * against the CPU in conv_test.ts): forward, input gradient, filter gradient
 * (zero at inactive taps) and bias gradient, on awkward tiny shapes (odd
 * sizes, kernels larger than the image, rectangular kernels in both
 * orientations, densities 0, 1 and random), with tile configs forced small so
 * that partial tiles, several planes, several chunk groups and plane groups
 * run on llvmpipe in seconds; plus a finite-difference check of the backward
 * against the CPU reference.
 */
import assert from "node:assert/strict";
import { mul } from "../ops/elementwise.ts";
import { depthwiseConv2d, type DepthwiseOptions, samePadding } from "../ops/depthwise.ts";
import { setDepthwiseImpl } from "../ops/depthwise_plan.ts";
import { planner } from "../ops/planner.ts";
import { depthwiseMaybeSparse } from "../ops/sparse_path.ts";
import {
  type SparseDepthwiseConfigs,
  sparseDepthwiseConfigs,
  sparseDepthwiseConv2d,
  SparseDepthwisePlan,
} from "../ops/sparse_depthwise.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { assertSameOutputs, checkOp, forwardAndGrads, relError, setup } from "./harness.ts";
import { conv2dRef } from "./reference.ts";

await setup();

/**
 * Output and the gradients of x, w (and bias): the sparse op on the raw
 * weights (it must ignore the inactive taps), or the dense reference on the
 * masked weights (whose weight gradient is then masked too).
 */
async function run(
  sparse: boolean,
  xShape: number[],
  [kh, kw]: number[],
  mask: Float32Array,
  bias: boolean,
  opts: DepthwiseOptions,
  seed: number,
): Promise<Float32Array[]> {
  const c = xShape[1];
  const wShape = [c, 1, kh, kw];
  const shapes = [xShape, wShape, ...(bias ? [[c]] : [])];
  const plan = sparse ? SparseDepthwisePlan.fromMask(mask, wShape) : null;
  try {
    return await forwardAndGrads(
      shapes,
      (x, w, b) =>
        plan
          ? sparseDepthwiseConv2d(x, w, plan, b ?? null, opts)
          : depthwiseConv2d(x, mul(w, Tensor.from(mask, wShape)), b ?? null, opts),
      seed,
    );
  } finally {
    plan?.dispose();
  }
}

/** Force sparse configs for every shape on the planner; null lifts them. */
function forceSparse(configs: Partial<SparseDepthwiseConfigs> | null): void {
  const p = planner();
  p.force("sparse.forward", configs?.forward ?? null);
  p.force("sparse.backwardInput", configs?.backwardInput ?? null);
  p.force("sparse.filter", configs?.filter ?? null);
}

async function compare(
  name: string,
  xShape: number[],
  k: number[],
  density: number,
  bias: boolean,
  opts: DepthwiseOptions = {},
  configs: Partial<SparseDepthwiseConfigs> | null = null,
): Promise<void> {
  const c = xShape[1];
  const mask = SparseDepthwisePlan.randomMask(c, k[0], k[1], density, 11);
  setDepthwiseImpl("generic");
  const want = await run(false, xShape, k, mask, bias, opts, 7);
  setDepthwiseImpl("auto");
  forceSparse(configs);
  let got: Float32Array[];
  try {
    got = await run(true, xShape, k, mask, bias, opts, 7);
  } finally {
    forceSparse(null);
  }
  assertSameOutputs(`sparse ${name}`, got, want, 1e-4);
  // Inactive taps get exactly zero gradient.
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) assert.ok(got[2][i] === 0, `${name}: gw at inactive tap ${i}`);
  }
}

const fwd = (bu: number, bv: number, planes: number, nub: number, nvb: number) => ({
  bu,
  bv,
  planes,
  nub,
  nvb,
});

Deno.test("sparse depthwise: rectangular kernels in both orientations, random masks", async () => {
  // 7×3 (vertical: tap lines are kernel rows) and 3×7 (horizontal), odd sizes, partial tiles.
  await compare("7x3 d0.6 bias", [2, 3, 9, 11], [7, 3], 0.6, true);
  await compare("3x7 d0.6", [2, 3, 11, 9], [3, 7], 0.6, false);
  await compare("7x3 d0.4 small tiles", [3, 2, 10, 7], [7, 3], 0.4, true, {}, {
    forward: fwd(2, 4, 2, 2, 1),
    filter: { bu: 2, bv: 4, planes: 2, nub: 1, nvb: 1, ck: 2, groups: 2, planesPerGroup: 2 },
  });
  await compare("3x7 d0.5 small tiles", [3, 2, 7, 10], [3, 7], 0.5, false, {}, {
    forward: fwd(3, 4, 1, 2, 2),
    filter: { bu: 1, bv: 4, planes: 1, nub: 2, nvb: 2, ck: 3, groups: 2, planesPerGroup: 3 },
  });
});

Deno.test("sparse depthwise: kernels larger than the image, densities 0 and 1", async () => {
  await compare("13x5 on 6x7 d0.5", [2, 2, 6, 7], [13, 5], 0.5, true);
  await compare("5x13 on 7x6 d0.3", [1, 3, 7, 6], [5, 13], 0.3, false);
  await compare("5x5 d1", [2, 2, 7, 9], [5, 5], 1, true);
  await compare("7x3 d0", [2, 2, 6, 5], [7, 3], 0, true);
  await compare("1x1 d1", [1, 2, 3, 5], [1, 1], 1, false);
});

Deno.test("sparse depthwise: explicit padding, stride 2 falls back to dense on masked weights", async () => {
  await compare("5x3 pad[1,2] d0.5", [2, 2, 8, 7], [5, 3], 0.5, true, { padding: [1, 2] });
  await compare("3x5 pad0 d0.7", [1, 2, 6, 9], [3, 5], 0.7, false, { padding: 0 });
  await compare("7x3 stride2 d0.5", [2, 2, 9, 9], [7, 3], 0.5, true, { stride: 2 });
});

Deno.test("sparse depthwise: GPU-sized register blocks, multi-word patterns", async () => {
  // The tilings a GPU gets (bv 8, bu 4, several chunk groups of many lanes), forced on tiny shapes.
  await compare("11x5 gpu tiles d0.6", [3, 2, 13, 17], [11, 5], 0.6, true, {}, {
    forward: fwd(4, 8, 2, 2, 2),
    filter: { bu: 4, bv: 8, planes: 2, nub: 1, nvb: 2, ck: 4, groups: 2, planesPerGroup: 2 },
  });
  await compare("5x11 gpu tiles d0.6", [3, 2, 17, 13], [5, 11], 0.6, false, {}, {
    forward: fwd(4, 8, 1, 2, 2),
    filter: { bu: 4, bv: 4, planes: 1, nub: 2, nvb: 2, ck: 4, groups: 2, planesPerGroup: 3 },
  });
  // Short axis of 33 taps: two pattern words per tap line.
  await compare("33x34 on 5x6 d0.3", [1, 2, 5, 6], [33, 34], 0.3, true, {}, {
    forward: fwd(1, 4, 1, 2, 2),
    filter: { bu: 1, bv: 4, planes: 1, nub: 2, nvb: 2, ck: 2, groups: 1, planesPerGroup: 1 },
  });
});

Deno.test("sparse depthwise: look-ahead loads, set-bit loops, staged stores, split sums", async () => {
  // The flags the tuner can pick, forced on tiny shapes: partial tiles, both orientations, bias.
  const flt = { bu: 2, bv: 4, planes: 2, nub: 1, nvb: 2, ck: 2, groups: 2, planesPerGroup: 2 };
  await compare("7x3 pre so d0.6", [3, 2, 10, 9], [7, 3], 0.6, true, {}, {
    forward: { ...fwd(2, 4, 2, 2, 2), pre: true, so: true },
    filter: { ...flt, acc: 2 },
  });
  await compare("3x7 pre lz so d0.4", [3, 2, 9, 10], [3, 7], 0.4, false, {}, {
    forward: { ...fwd(3, 4, 2, 2, 2), pre: true, lz: true, so: true },
    filter: { ...flt, bu: 3, acc: 3 },
  });
  await compare("9x5 lz d0.3 (empty lines)", [2, 3, 8, 11], [9, 5], 0.3, true, {}, {
    forward: { ...fwd(2, 4, 1, 3, 2), lz: true },
    filter: { ...flt, acc: 2 },
  });
  await compare("5x9 so d1", [2, 2, 11, 7], [5, 9], 1, true, {}, {
    forward: { ...fwd(2, 4, 2, 2, 1), so: true },
    filter: { ...flt, ck: 3, acc: 2 },
  });
});

Deno.test("sparse depthwise: backward against finite differences of the CPU reference", async () => {
  const xShape = [2, 2, 6, 5];
  const [kh, kw] = [5, 3];
  const wShape = [2, 1, kh, kw];
  const mask = SparseDepthwisePlan.randomMask(2, kh, kw, 0.5, 3);
  const plan = SparseDepthwisePlan.fromMask(mask, wShape);
  try {
    await checkOp({
      name: "sparseDepthwiseConv2d 5x3 d0.5 bias",
      inputs: [{ shape: xShape }, { shape: wShape }, { shape: [2] }],
      gpu: (x, w, b) => sparseDepthwiseConv2d(x, w, plan, b),
      cpu: (x, w, b) => {
        const wm = w.map((v, i) => v * mask[i]);
        return conv2dRef(x, wm, b, xShape, wShape, {
          padding: samePadding(kh, kw),
          groups: 2,
        });
      },
    });
  } finally {
    plan.dispose();
  }
});

Deno.test("sparse depthwise: plan compaction, update, depthwiseMaybeSparse choice", async () => {
  const mask = SparseDepthwisePlan.randomMask(3, 5, 4, 0.45, 5);
  const plan = SparseDepthwisePlan.fromMask(mask, [3, 1, 5, 4]);
  assert.equal(plan.active, 3 * 9);
  assert.equal(plan.vertical, true);
  const taps = plan.taps(1);
  assert.equal(taps.length, 9);
  for (const [y, x] of taps) assert.equal(mask[20 + y * 4 + x], 1);
  // depthwiseMaybeSparse = dense result when w is masked, whichever path it takes.
  await scope(async () => {
    const x = Tensor.randn([1, 3, 6, 6], { seed: 1 });
    const wv = (await Tensor.randn([3, 1, 5, 4], { seed: 2 }).read()).map((v, i) => v * mask[i]);
    const w = Tensor.from(wv, [3, 1, 5, 4]);
    const dense = await depthwiseConv2d(x, w, null).read();
    const sparse = await depthwiseMaybeSparse(x, w, plan, null, {}, 0.5).read();
    const viaDense = await depthwiseMaybeSparse(x, w, plan, null, {}, 0.3).read();
    assert.ok(relError(sparse, dense) < 1e-5);
    assert.ok(relError(viaDense, dense) < 1e-5);
  });
  plan.update(new Float32Array(mask.length).fill(1));
  assert.equal(plan.density, 1);
  plan.dispose();
});

Deno.test("sparse depthwise: a filter tiling with fewer planes per group than per workgroup does not fit", () => {
  const s = { n: 2, c: 4, h: 8, w: 8, kh: 7, kw: 3, ph: 3, pw: 1, ho: 8, wo: 8 };
  const bad = { bu: 2, bv: 4, planes: 2, nub: 1, nvb: 2, ck: 2, groups: 2, planesPerGroup: 1 };
  planner().force("sparse.filter", bad);
  try {
    assert.equal(sparseDepthwiseConfigs(s).filter, null);
    planner().force("sparse.filter", { ...bad, planesPerGroup: 2 });
    assert.ok(sparseDepthwiseConfigs(s).filter, "the consistent tiling fits");
  } finally {
    planner().force("sparse.filter", null);
  }
});
