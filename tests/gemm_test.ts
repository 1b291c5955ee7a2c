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
import {
  type GemmConfig,
  gemmConfig,
  gemmConfigName,
  gemmSweepConfigs,
  isGemmConfig,
  setGemmImpl,
} from "../ops/gemm_plan.ts";
import { columnReduce, gemm, gemmReference } from "../ops/gemm_kernel.ts";
import { gpu } from "../ops/gpu.ts";
import { planner } from "../ops/planner.ts";
import { linear, matmul, type MatmulOptions } from "../ops/matmul.ts";
import { Tensor } from "../ops/tensor.ts";
import { assertSameOutputs, forwardAndGrads, randomArray, relError, setup } from "./harness.ts";

await setup();

const TINY: GemmConfig = { bm: 8, bn: 12, bk: 4, tm: 4, tn: 4, splits: 3 };
/** Tiny tiles with the next slabs fetched during the arithmetic (odd chunks end the pipeline). */
const TINY_PREFETCH: GemmConfig = { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2, prefetch: true };

/** Tiny tiles with every switch: vec4 loads, unchecked interior tiles, double buffering. */
const TINY_FAST: GemmConfig = {
  bm: 8,
  bn: 12,
  bk: 4,
  tm: 4,
  tn: 4,
  splits: 3,
  vec: true,
  interior: true,
  double: true,
  unroll: true,
};

const label = (cfg: GemmConfig | null) => cfg === null ? "default" : gemmConfigName(cfg);

/** Tiled (heuristic tiles, then tiny tiles with a split) vs simple: forward and gradients. */
async function compare(
  name: string,
  shapes: number[][],
  fn: (...xs: Tensor[]) => Tensor,
  tol = 1e-5,
): Promise<void> {
  setGemmImpl("simple");
  const want = await forwardAndGrads(shapes, fn, 7);
  for (const cfg of [null, TINY, TINY_PREFETCH, TINY_FAST]) {
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
    // Fast extents that are multiples of 4 (vec4 loads), tiles and slabs that are not.
    ["plain vec 13x20·20x28", [13, 20], [20, 28], {}],
    ["aT vec 36x20ᵀ·36x24", [36, 20], [36, 24], { transA: true }],
    ["bT vec batched", [2, 9, 12], [2, 16, 12], { transB: true }],
  ];
  for (const [name, a, b, opts] of cases) {
    await compare(name, [a, b], (x, y) => matmul(x, y, opts));
  }
});

Deno.test("gemm: linear with bias (long inner product split) matches the simple kernel", async () => {
  await compare("linear", [[3, 5, 7, 11], [13, 11], [13]], (x, w, b) => linear(x, w, b));
  await compare("linear long", [[300, 6], [5, 6], [5]], (x, w, b) => linear(x, w, b));
  await compare("linear vec", [[2, 7, 12], [20, 12], [20]], (x, w, b) => linear(x, w, b));
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

/** `A·B` on the CPU in float64: A(m, k) and B(k, n) read through the given layouts. */
function cpuProduct(
  m: number,
  n: number,
  k: number,
  a: Float32Array,
  b: Float32Array,
  transA: boolean,
  transB: boolean,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let q = 0; q < k; q++) {
        acc += a[transA ? q * m + i : i * k + q] * b[transB ? j * k + q : q * n + j];
      }
      out[i * n + j] = acc;
    }
  }
  return out;
}

/**
 * The switch sets of the sweep on tiny tiles (so that llvmpipe compiles them in seconds), over
 * edges in m and n, k not a multiple of bk, and splits of k.
 */
const VARIANTS: GemmConfig[] = [
  { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 },
  { bm: 8, bn: 12, bk: 8, tm: 4, tn: 4, prefetch: true, vec: true, interior: true },
  { bm: 12, bn: 8, bk: 4, tm: 4, tn: 4, vec: true, interior: true, double: true, splits: 3 },
  { bm: 8, bn: 8, bk: 8, tm: 8, tn: 4, vec: true, interior: true, double: true, unroll: true },
  { bm: 16, bn: 8, bk: 12, tm: 4, tn: 8, vec: true, double: true, splits: 2 },
  { bm: 8, bn: 16, bk: 4, tm: 4, tn: 4, interior: true, unroll: true, splits: 2 },
  // Lane-major slabs: unrolled and double-buffered, rolled with register prefetch, scalar.
  {
    bm: 16,
    bn: 8,
    bk: 8,
    tm: 8,
    tn: 4,
    vec: true,
    interior: true,
    double: true,
    unroll: true,
    lanes: true,
  },
  { bm: 8, bn: 16, bk: 4, tm: 4, tn: 8, vec: true, prefetch: true, lanes: true, splits: 2 },
  { bm: 12, bn: 8, bk: 4, tm: 4, tn: 4, lanes: true },
];

/** The error of `cfg`'s product of `a` [m·k] and `b` [k·n], read as stored per `transA`/`transB`, against the CPU. */
async function productError(
  m: number,
  n: number,
  k: number,
  [a, av]: [Tensor, Float32Array],
  [b, bv]: [Tensor, Float32Array],
  [transA, transB]: boolean[],
  cfg: GemmConfig,
): Promise<number> {
  const want = cpuProduct(m, n, k, av, bv, transA, transB);
  const aAt = transA ? `k * ${m}u + m` : `m * ${k}u + k`;
  const bAt = transB ? `n * ${k}u + k` : `k * ${n}u + n`;
  const aFast = transA ? m : k;
  const bFast = transB ? k : n;
  const y = Tensor.empty([m, n]);
  gemm({
    batch: 1,
    m,
    n,
    k,
    inputs: { a, b },
    loadA: `return a[${aAt}];`,
    aKFast: !transA,
    vecA: aFast % 4 === 0 ? { input: "a", index: aAt } : undefined,
    loadB: `return b[${bAt}];`,
    bKFast: transB,
    vecB: bFast % 4 === 0 ? { input: "b", index: bAt } : undefined,
    outputs: { y },
    store: `y[m * ${n}u + n] = v;`,
  }, cfg);
  const err = relError(await y.read(), want);
  y.dispose();
  return err;
}

/** Random operands of an `m × n × k` product, on the GPU and on the CPU. */
function operands(m: number, n: number, k: number): [Tensor, Float32Array][] {
  const av = Float32Array.from(randomArray(m * k, m + k));
  const bv = Float32Array.from(randomArray(k * n, n + k));
  return [[Tensor.from(av, [m * k]), av], [Tensor.from(bv, [k * n]), bv]];
}

Deno.test("gemm: every switch set matches a CPU product on odd shapes and every layout", async () => {
  // [m, n, k]: fast extents multiples of 4 (vec4 loads) or not (scalar fallback); tiny m.
  const shapes = [[20, 24, 36], [9, 7, 11], [3, 16, 40]];
  for (const [m, n, k] of shapes) {
    const [a, b] = operands(m, n, k);
    for (const layout of [[false, false], [true, false], [false, true]]) {
      for (const cfg of VARIANTS) {
        const err = await productError(m, n, k, a, b, layout, cfg);
        assert.ok(err < 1e-5, `${m}x${n}x${k} trans=${layout} ${gemmConfigName(cfg)}: ${err}`);
      }
    }
    a[0].dispose();
    b[0].dispose();
  }
});

Deno.test("gemm: the hardware heuristic's tile matches a CPU product, interior and edge tiles", async () => {
  // What gemmConfig gives a hardware GPU for big products; forced here, since llvmpipe gets
  // its own heuristic. k = 44 ends mid-slab.
  const cfg: GemmConfig = {
    bm: 128,
    bn: 64,
    bk: 8,
    tm: 8,
    tn: 8,
    vec: true,
    interior: true,
    double: true,
    unroll: true,
    lanes: true,
  };
  // It is the heuristic's tile for a hardware adapter (stubbed for the lookup).
  const g = gpu() as { isFallback: boolean };
  const was = g.isFallback;
  g.isFallback = false;
  try {
    const { splits: _, ...tile } = gemmConfig(1, 200704, 496, 124);
    assert.deepEqual(tile, cfg);
    // More columns than rows (a weight gradient's 124 × 496): the tile turns.
    const { splits: __, ...turned } = gemmConfig(1, 124, 496, 200704);
    assert.deepEqual(turned, { ...cfg, bm: 64, bn: 128 });
  } finally {
    g.isFallback = was;
  }
  // Each tile on a product it covers once with an edge beyond: 136 × 72 for 128 × 64, and turned.
  const cases: [number[], GemmConfig][] = [
    [[136, 72, 44], cfg],
    [[72, 136, 44], { ...cfg, bm: 64, bn: 128 }],
  ];
  for (const [[m, n, k], tile] of cases) {
    const [a, b] = operands(m, n, k);
    for (const layout of [[false, false], [true, true]]) {
      for (const splits of [1, 3]) {
        const c = { ...tile, splits };
        const err = await productError(m, n, k, a, b, layout, c);
        assert.ok(err < 1e-5, `${m}x${n}x${k} trans=${layout} ${gemmConfigName(c)}: ${err}`);
      }
    }
    a[0].dispose();
    b[0].dispose();
  }
});

Deno.test("gemm: the sweep offers only configs within the adapter's limits", () => {
  const limits = gpu().limits;
  const configs = gemmSweepConfigs(1, 200704, 496, 124).map((v) => v.config);
  assert.ok(configs.length > 0);
  assert.deepEqual(configs[0], gemmConfig(1, 200704, 496, 124), "the heuristic first");
  for (const c of configs) {
    const bytes = 4 * c.bk * (c.bm + 4 + c.bn + 4) * (c.double ? 2 : 1);
    assert.ok(bytes <= limits.maxComputeWorkgroupStorageSize, gemmConfigName(c));
    assert.ok((c.bm / c.tm) * (c.bn / c.tn) <= limits.maxComputeInvocationsPerWorkgroup);
  }
  const names = configs.map(gemmConfigName);
  assert.equal(new Set(names).size, names.length, "no repeats");
  const wgrad = gemmSweepConfigs(1, 384, 96, 200704).map((v) => v.config);
  assert.ok(wgrad.some((c) => (c.splits ?? 1) > 1), "a long-k product is split");
});

Deno.test("gemm: columnReduce sums channels-last, NCHW and mixed terms, in one strip and in several", async () => {
  // rows = samples · pixels; cols = channels. 13 channels leave a ragged block of 8, 16 none; 5
  // rows fit one strip, 1000 (4 samples of 250 pixels) need several and the second kernel.
  for (const [cols, samples, hw] of [[13, 4, 250], [16, 4, 250], [13, 1, 5], [3, 2, 300]]) {
    const rows = samples * hw;
    const cl = randomArray(rows * cols, 1);
    const nchw = randomArray(rows * cols, 2);
    const at = (r: number, c: number) => (Math.floor(r / hw) * cols + c) * hw + (r % hw);
    const a = Tensor.from(Float32Array.from(cl), [rows, cols]);
    const b = Tensor.from(Float32Array.from(nchw), [samples, cols, hw]);
    const nchwAt = `b[((r / ${hw}u) * ${cols}u + c) * ${hw}u + r % ${hw}u]`;
    const cases: [string, string, (r: number, c: number) => number][] = [
      ["channels-last", `a[r * ${cols}u + c]`, (r, c) => cl[r * cols + c]],
      ["NCHW", nchwAt, (r, c) => nchw[at(r, c)]],
      ["mixed", `a[r * ${cols}u + c] * ${nchwAt}`, (r, c) => cl[r * cols + c] * nchw[at(r, c)]],
    ];
    for (const [what, term, cpu] of cases) {
      const out = Tensor.empty([cols]);
      columnReduce({ rows, cols, inputs: { a, b }, term }, out);
      const got = await out.read();
      out.dispose();
      const want = Array.from({ length: cols }, (_, c) => {
        let s = 0;
        for (let r = 0; r < rows; r++) s += cpu(r, c);
        return s;
      });
      assert.ok(
        relError(got, want) < 1e-5,
        `${what} ${rows}×${cols}: ${relError(got, want)} (${got.slice(0, 3)} vs ${
          want.slice(0, 3)
        })`,
      );
    }
    a.dispose();
    b.dispose();
  }
});
