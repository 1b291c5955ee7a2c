import assert from "node:assert/strict";
import {
  batchNorm2d,
  layerNorm,
  layerNormChannelsFirst,
  pixelStats,
  setNormChunkPositions,
} from "../ops/norm.ts";
import { clearTape, noGrad, tapeLength } from "../ops/autograd.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { checkOp, randomArray, relError, setup } from "./harness.ts";
import { batchNorm2dRef, batchNormRunningRef, layerNormRef } from "./reference.ts";

await setup();

// C = 3 and H·W = 45 are not multiples of 4; n = N·H·W = 270 per channel exceeds one
// workgroup (256), so the strided accumulation before the workgroup reduction is exercised.
const BN_SHAPE = [2, 3, 5, 9];
const C = BN_SHAPE[1];
/** x, weight, bias, running mean and running variance (the last two without gradients). */
const BN_INPUTS = [
  { shape: BN_SHAPE, low: -2, high: 3 },
  { shape: [C], low: 0.5, high: 1.5 },
  { shape: [C] },
  { shape: [C], grad: false },
  { shape: [C], low: 0.5, high: 2, grad: false },
];

Deno.test("batchNorm2d training: forward and grads of x, weight, bias against CPU", async () => {
  await checkOp({
    name: "batchNorm2d[train]",
    inputs: BN_INPUTS,
    gpu: (x, w, b, rm, rv) => batchNorm2d(x, w, b, rm, rv, { training: true }),
    cpu: (x, w, b) => batchNorm2dRef(x, w, b, BN_SHAPE, 1e-5),
  });
});

Deno.test("batchNorm2d eval: forward and grads use the running statistics", async () => {
  await checkOp({
    name: "batchNorm2d[eval]",
    inputs: BN_INPUTS,
    gpu: (x, w, b, rm, rv) => batchNorm2d(x, w, b, rm, rv, { training: false }),
    cpu: (x, w, b, rm, rv) => batchNorm2dRef(x, w, b, BN_SHAPE, 1e-5, { mean: rm, variance: rv }),
  });
});

Deno.test("batchNorm2d training updates the running buffers in place as PyTorch", async () => {
  const n = BN_SHAPE.reduce((a, b) => a * b, 1);
  const x1 = randomArray(n, 7, -1, 3);
  const x2 = randomArray(n, 8, -2, 1);
  const rm0 = randomArray(C, 9);
  const rv0 = randomArray(C, 10, 0.5, 2);
  const want1 = batchNormRunningRef(x1, BN_SHAPE, rm0, rv0, 0.1);
  const want2 = batchNormRunningRef(x2, BN_SHAPE, want1.runningMean, want1.runningVar, 0.3);
  await scope(async () => {
    const rm = Tensor.from(Float32Array.from(rm0));
    const rv = Tensor.from(Float32Array.from(rv0));
    const w = Tensor.ones([C]);
    const b = Tensor.zeros([C]);
    w.requiresGrad = true;
    // Recorded or not, the update happens once per call and never lands on the tape.
    batchNorm2d(Tensor.from(Float32Array.from(x1), BN_SHAPE), w, b, rm, rv, { training: true });
    const after1 = [await rm.read(), await rv.read()];
    noGrad(() =>
      batchNorm2d(Tensor.from(Float32Array.from(x2), BN_SHAPE), w, b, rm, rv, {
        training: true,
        momentum: 0.3,
      })
    );
    const after2 = [await rm.read(), await rv.read()];
    assert.equal(tapeLength(), 1);
    clearTape();
    const errors = [
      relError(after1[0], want1.runningMean),
      relError(after1[1], want1.runningVar),
      relError(after2[0], want2.runningMean),
      relError(after2[1], want2.runningVar),
    ];
    console.log(`op-error batchNorm2d[running] ${errors.map((e) => e.toExponential(2)).join(",")}`);
    errors.forEach((e) => assert.ok(e <= 1e-5, `running buffer error ${e}`));
    // Eval mode leaves them alone.
    batchNorm2d(Tensor.from(Float32Array.from(x1), BN_SHAPE), w, b, rm, rv, { training: false });
    assert.deepEqual(await rm.read(), after2[0]);
    assert.deepEqual(await rv.read(), after2[1]);
  });
});

Deno.test("layerNorm over the last dimension (C = 5) against CPU", async () => {
  const shape = [2, 3, 2, 5];
  await checkOp({
    name: "layerNorm[C=5]",
    inputs: [{ shape, low: -2, high: 3 }, { shape: [5], low: 0.5, high: 1.5 }, { shape: [5] }],
    gpu: (x, w, b) => layerNorm(x, w, b),
    cpu: (x, w, b) => layerNormRef(x, w, b, 12, 5, 1, 1e-6),
  });
});

Deno.test("layerNormChannelsFirst over C (C = 7) of [N, C, H, W] against CPU", async () => {
  const shape = [2, 7, 2, 3];
  await checkOp({
    name: "layerNormChannelsFirst[C=7]",
    inputs: [{ shape, low: -2, high: 3 }, { shape: [7], low: 0.5, high: 1.5 }, { shape: [7] }],
    gpu: (x, w, b) => layerNormChannelsFirst(x, w, b, { eps: 1e-3 }),
    cpu: (x, w, b) => layerNormRef(x, w, b, 2, 7, 6, 1e-3),
  });
});

Deno.test("layer norms of 40 channels (two lanes a position) against CPU, both layouts", async () => {
  // 40 channels on few positions give each position two invocations (ops/pixel_lanes.ts), each
  // with 20 channels: statistics and input gradient combine them in workgroup memory.
  const w = { shape: [40], low: 0.5, high: 1.5 };
  await checkOp({
    name: "layerNorm[C=40]",
    inputs: [{ shape: [3, 40], low: -2, high: 3 }, w, { shape: [40] }],
    gpu: (x, wt, b) => layerNorm(x, wt, b),
    cpu: (x, wt, b) => layerNormRef(x, wt, b, 3, 40, 1, 1e-6),
  });
  await checkOp({
    name: "layerNormChannelsFirst[C=40]",
    inputs: [{ shape: [1, 40, 1, 3], low: -2, high: 3 }, w, { shape: [40] }],
    gpu: (x, wt, b) => layerNormChannelsFirst(x, wt, b, { eps: 1e-3 }),
    cpu: (x, wt, b) => layerNormRef(x, wt, b, 1, 40, 3, 1e-3),
  });
});

Deno.test("per-channel reductions in chunks: batch norm and layer norm affine grads against CPU", async () => {
  // 270 positions per channel in workgroups of at most 80: 4 chunks, the last shorter (66), so the
  // chunk kernels and the combining ones (moments by Chan's update, sums) run.
  const before = setNormChunkPositions(80);
  try {
    await checkOp({
      name: "batchNorm2d[train, chunks]",
      inputs: BN_INPUTS,
      gpu: (x, w, b, rm, rv) => batchNorm2d(x, w, b, rm, rv, { training: true }),
      cpu: (x, w, b) => batchNorm2dRef(x, w, b, BN_SHAPE, 1e-5),
    });
    // Values far from zero: a one-pass variance would lose them to cancellation, Chan's does not.
    const n = BN_SHAPE.reduce((a, b) => a * b, 1);
    const x = randomArray(n, 11, 999, 1001);
    const rm0 = randomArray(C, 12);
    const rv0 = randomArray(C, 13, 0.5, 2);
    const want = batchNormRunningRef(x, BN_SHAPE, rm0, rv0, 0.1);
    await scope(async () => {
      const rm = Tensor.from(Float32Array.from(rm0));
      const rv = Tensor.from(Float32Array.from(rv0));
      noGrad(() =>
        batchNorm2d(
          Tensor.from(Float32Array.from(x), BN_SHAPE),
          Tensor.ones([C]),
          Tensor.zeros([C]),
          rm,
          rv,
          {
            training: true,
          },
        )
      );
      assert.ok(relError(await rm.read(), want.runningMean) <= 1e-5);
      assert.ok(
        relError(await rv.read(), want.runningVar) <= 1e-3,
        `${await rv.read()} vs ${want.runningVar}`,
      );
    });
    // Layer norm's weight and bias gradients reduce over the positions per channel the same way.
    const shape = [6, 3, 9, 5];
    await checkOp({
      name: "layerNormChannelsFirst[chunks]",
      inputs: [{ shape, low: -2, high: 3 }, { shape: [3], low: 0.5, high: 1.5 }, { shape: [3] }],
      gpu: (x, w, b) => layerNormChannelsFirst(x, w, b, { eps: 1e-3 }),
      cpu: (x, w, b) => layerNormRef(x, w, b, 6, 3, 45, 1e-3),
    });
  } finally {
    setNormChunkPositions(before);
  }
});

Deno.test("pixelStats: per-pixel LayerNorm moments, one lane or several per pixel, against the CPU", async () => {
  // 5 channels keep one invocation per pixel; 64 and 130 give several lanes (4 and 8 on a
  // software adapter's few pixels), 130 with lanes of unequal channel counts. Values near
  // 1000 ± 1 would lose the variance to cancellation in a one-pass sum of squares.
  for (const [n, c, h, w, offset] of [[2, 5, 3, 3, 0], [1, 64, 3, 5, 0], [2, 130, 2, 3, 1000]]) {
    const values = randomArray(n * c * h * w, c, offset - 1, offset + 1);
    const x = Tensor.from(Float32Array.from(values), [n, c, h, w]);
    const { mean, rstd } = pixelStats(x, 1e-6);
    const [gotMean, gotRstd] = [await mean.read(), await rstd.read()];
    const hw = h * w;
    const wantMean: number[] = [];
    const wantRstd: number[] = [];
    for (let i = 0; i < n * hw; i++) {
      const at = (k: number) => (Math.floor(i / hw) * c + k) * hw + (i % hw);
      let s = 0;
      for (let k = 0; k < c; k++) s += Math.fround(values[at(k)]);
      const m = s / c;
      let q = 0;
      for (let k = 0; k < c; k++) q += (Math.fround(values[at(k)]) - m) ** 2;
      wantMean.push(m);
      wantRstd.push(1 / Math.sqrt(q / c + 1e-6));
    }
    for (let i = 0; i < n * hw; i++) {
      assert.ok(
        Math.abs(gotMean[i] - wantMean[i]) <= 1e-6 * Math.max(1, Math.abs(wantMean[i])),
        `c=${c} mean ${i}: ${gotMean[i]} vs ${wantMean[i]}`,
      );
      assert.ok(
        Math.abs(gotRstd[i] - wantRstd[i]) <= 1e-3 * wantRstd[i],
        `c=${c} rstd ${i}: ${gotRstd[i]} vs ${wantRstd[i]}`,
      );
    }
    for (const t of [x, mean, rstd]) t.dispose();
  }
});
