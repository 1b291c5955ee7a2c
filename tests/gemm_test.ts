/**
 * The tiled GEMM kernels (ops/gemm_kernel.ts) against the simple ones they replace
 * (themselves checked against the CPU in misc_ops_test.ts and conv_test.ts):
 * matmul with every transpose and broadcast batches, linear with bias, and
 * conv2d with groups = 1 as an implicit GEMM (1×1, stride 2, padding,
 * rectangular kernels, kernels larger than the image), forward and every
 * gradient, on odd sizes; once with the heuristic tiles and once with tiny
 * forced tiles and a split inner dimension, so that partial tiles and the
 * summing epilogue run on llvmpipe in seconds.
 */
import assert from "node:assert/strict";
import { conv2d, type Conv2dOptions } from "../ops/conv.ts";
import { type GemmConfig, gemmConfig, isGemmConfig, setGemmImpl } from "../ops/gemm_plan.ts";
import { gemmReference } from "../ops/gemm_kernel.ts";
import { gpu } from "../ops/gpu.ts";
import { planner } from "../ops/planner.ts";
import { linear, matmul, type MatmulOptions } from "../ops/matmul.ts";
import { Tensor } from "../ops/tensor.ts";
import { assertSameOutputs, forwardAndGrads, randomArray, relError, setup } from "./harness.ts";

await setup();

const TINY: GemmConfig = { bm: 8, bn: 12, bk: 4, tm: 4, tn: 4, splits: 3 };
/** Tiny tiles with the next slabs fetched during the arithmetic (odd chunks end the pipeline). */
const TINY_PREFETCH: GemmConfig = { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2, prefetch: true };

const label = (cfg: GemmConfig | null) =>
  cfg === null ? "default" : cfg.prefetch ? "tiny prefetch" : "tiny";

/** Tiled (heuristic tiles, then tiny tiles with a split) vs simple: forward and gradients. */
async function compare(
  name: string,
  shapes: number[][],
  fn: (...xs: Tensor[]) => Tensor,
  tol = 1e-5,
): Promise<void> {
  setGemmImpl("simple");
  const want = await forwardAndGrads(shapes, fn, 7);
  for (const cfg of [null, TINY, TINY_PREFETCH]) {
    setGemmImpl("tiled");
    planner().force("gemm", cfg);
    try {
      const got = await forwardAndGrads(shapes, fn, 7);
      assertSameOutputs(`gemm ${name} ${label(cfg)}`, got, want, tol);
    } finally {
      planner().force("gemm", null);
      setGemmImpl("tiled");
    }
  }
}

Deno.test("gemm: matmul with transposes and broadcast batches matches the simple kernel", async () => {
  const cases: [string, number[], number[], MatmulOptions][] = [
    ["plain 5x7·7x3", [5, 7], [7, 3], {}],
    ["aT 33x37ᵀ·33x41", [33, 37], [33, 41], { transA: true }],
    ["bT 3x45·19x45ᵀ", [3, 45], [19, 45], { transB: true }],
    ["both batched", [2, 1, 9, 6], [3, 5, 9], { transA: true, transB: true }],
  ];
  for (const [name, a, b, opts] of cases) {
    await compare(name, [a, b], (x, y) => matmul(x, y, opts));
  }
});

Deno.test("gemm: linear with bias (long inner product split) matches the simple kernel", async () => {
  await compare("linear", [[3, 5, 7, 11], [13, 11], [13]], (x, w, b) => linear(x, w, b));
  await compare("linear long", [[300, 6], [5, 6], [5]], (x, w, b) => linear(x, w, b));
});

Deno.test("gemm: conv2d with groups = 1 as an implicit GEMM matches the simple kernels", async () => {
  const cases: [string, number[], number[], boolean, Conv2dOptions][] = [
    ["1x1", [2, 5, 7, 9], [6, 5, 1, 1], true, {}],
    ["1x1 stride 2", [2, 5, 7, 9], [3, 5, 1, 1], false, { stride: 2 }],
    ["3x3 stride 2 pad 1", [2, 3, 9, 7], [5, 3, 3, 3], true, { stride: 2, padding: 1 }],
    ["1x5 rectangular", [1, 4, 6, 11], [3, 4, 1, 5], false, { padding: [0, 2] }],
    ["5x5 > image", [2, 2, 3, 4], [3, 2, 5, 5], true, { padding: 2 }],
    ["7x7 stride 2 pad 3", [1, 3, 13, 11], [4, 3, 7, 7], false, { stride: [2, 3], padding: 3 }],
  ];
  for (const [name, xs, ws, bias, opts] of cases) {
    await compare(
      name,
      bias ? [xs, ws, [ws[0]]] : [xs, ws],
      (x, w, b) => conv2d(x, w, b ?? null, opts),
    );
  }
});

Deno.test("gemm: the big-product tiles (64×64, 8×8 blocks) match the simple kernels", async () => {
  // Heuristic tiles of big products on llvmpipe; a GPU's 128×128 tiles share the same generator.
  setGemmImpl("simple");
  const shapes = [[2, 5, 19, 13], [67, 5, 3, 3]];
  const fn = (x: Tensor, w: Tensor) => conv2d(x, w, null, { padding: 1 });
  const want = await forwardAndGrads(shapes, fn, 5);
  setGemmImpl("tiled");
  planner().force("gemm", { bm: 64, bn: 64, bk: 8, tm: 8, tn: 8 });
  try {
    const got = await forwardAndGrads(shapes, fn, 5);
    got.forEach((g, i) => assert.ok(relError(g, want[i]) < 1e-5, `output ${i}`));
  } finally {
    planner().force("gemm", null);
  }
});

Deno.test("gemm: a tile config beyond the adapter's limits is not a config", () => {
  assert.ok(isGemmConfig({ bm: 64, bn: 64, bk: 8, tm: 4, tn: 4 }));
  const wgMemory = gpu().limits.maxComputeWorkgroupStorageSize;
  assert.ok(!isGemmConfig({ bm: 64, bn: 64, bk: Math.ceil(wgMemory / 256) * 2, tm: 4, tn: 4 }));
  assert.ok(!isGemmConfig({ bm: 128, bn: 128, bk: 8, tm: 4, tn: 4 }), "1024 invocations");
  assert.ok(!isGemmConfig({ bm: 8, bn: 8, bk: 4, tm: 3, tn: 4 }), "tm not a multiple of 4");
});

Deno.test("gemm: small outputs with long inner products split the inner dimension", () => {
  planner().force("gemm", null);
  const c = gemmConfig(1, 16, 24, 200704);
  assert.ok((c.splits ?? 1) > 1, JSON.stringify(c));
  assert.equal(gemmConfig(4, 4096, 4096, 64).splits, 1);
});

Deno.test("gemm: the plain reference kernel runs the spec's loaders and store", async () => {
  // y = a·bᵀ + y0 with a [3, 5], b [4, 5]: the store reads the output it writes.
  const a = Tensor.from(Float32Array.from(randomArray(15, 1)), [3, 5]);
  const b = Tensor.from(Float32Array.from(randomArray(20, 2)), [4, 5]);
  const y0 = Float32Array.from(randomArray(12, 3));
  const y = Tensor.from(y0, [3, 4]);
  gemmReference({
    batch: 1,
    m: 3,
    n: 4,
    k: 5,
    inputs: { a, b },
    loadA: "return a[m * 5u + k];",
    aKFast: true,
    loadB: "return b[n * 5u + k];",
    bKFast: true,
    outputs: { y },
    store: "y[m * 4u + n] = y[m * 4u + n] + v;",
  });
  const [av, bv, got] = [await a.read(), await b.read(), await y.read()];
  for (let m = 0; m < 3; m++) {
    for (let n = 0; n < 4; n++) {
      let want = y0[m * 4 + n];
      for (let k = 0; k < 5; k++) want += av[m * 5 + k] * bv[n * 5 + k];
      assert.ok(Math.abs(got[m * 4 + n] - want) < 1e-5, `y[${m}, ${n}]`);
    }
  }
  for (const t of [a, b, y]) t.dispose();
});
