import assert from "node:assert/strict";
import { linear, matmul } from "../ops/matmul.ts";
import { accuracyCounts, softmaxCrossEntropy } from "../ops/loss.ts";
import { maxPool2d, meanHW } from "../ops/pool.ts";
import { concat, permute, toChannelsFirst, toChannelsLast } from "../ops/shape.ts";
import { dropPath } from "../ops/drop_path.ts";
import { backward, noGrad } from "../ops/autograd.ts";
import { gpu } from "../ops/gpu.ts";
import { Rng, scope, Tensor } from "../ops/tensor.ts";
import { checkOp, randomArray, relError, setup } from "./harness.ts";
import {
  concatRef,
  linearRef,
  matmulRef,
  maxPool2dRef,
  meanHWRef,
  permuteRef,
  softmaxCrossEntropyRef,
} from "./reference.ts";

await setup();

/** Shapes as stored of op(a) [M, K] and op(b) [K, N] under the given transposes. */
function stored(m: number, k: number, n: number, transA: boolean, transB: boolean): number[][] {
  return [transA ? [k, m] : [m, k], transB ? [n, k] : [k, n]];
}

Deno.test("matmul 2-D, every transpose combination, odd sizes", async () => {
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      const [as, bs] = stored(5, 7, 3, transA, transB);
      await checkOp({
        name: `matmul[5x7x3${transA ? ",tA" : ""}${transB ? ",tB" : ""}]`,
        inputs: [{ shape: as }, { shape: bs }],
        gpu: (a, b) => matmul(a, b, { transA, transB }),
        cpu: (a, b) => matmulRef(a, b, as, bs, transA, transB),
      });
    }
  }
});

Deno.test("matmul crossing tile borders in every dimension (17x33x18)", async () => {
  for (const [transA, transB] of [[false, false], [true, true]]) {
    const [as, bs] = stored(17, 33, 18, transA, transB);
    await checkOp({
      name: `matmul[17x33x18${transA ? ",tA,tB" : ""}]`,
      inputs: [{ shape: as }, { shape: bs }],
      gpu: (a, b) => matmul(a, b, { transA, transB }),
      cpu: (a, b) => matmulRef(a, b, as, bs, transA, transB),
    });
  }
});

Deno.test("matmul batched 3-D, equal and broadcast batch axes", async () => {
  await checkOp({
    name: "matmul[2x5x7x3]",
    inputs: [{ shape: [2, 5, 7] }, { shape: [2, 7, 3] }],
    gpu: (a, b) => matmul(a, b),
    cpu: (a, b) => matmulRef(a, b, [2, 5, 7], [2, 7, 3]),
  });
  // b broadcasts over a's batch; its gradient sums over the batch.
  await checkOp({
    name: "matmul[2x5x7 · 7x3]",
    inputs: [{ shape: [2, 5, 7] }, { shape: [7, 3] }],
    gpu: (a, b) => matmul(a, b),
    cpu: (a, b) => matmulRef(a, b, [2, 5, 7], [7, 3]),
  });
});

Deno.test("linear on a channels-last 4-D input, with and without bias", async () => {
  const xShape = [2, 3, 3, 5];
  await checkOp({
    name: "linear[bias]",
    inputs: [{ shape: xShape }, { shape: [4, 5] }, { shape: [4] }],
    gpu: (x, w, b) => linear(x, w, b),
    cpu: (x, w, b) => linearRef(x, w, b, 5, 4),
  });
  await checkOp({
    name: "linear[no bias]",
    inputs: [{ shape: xShape }, { shape: [4, 5] }],
    gpu: (x, w) => {
      const y = linear(x, w, null);
      assert.deepEqual(y.shape, [2, 3, 3, 4]);
      return y;
    },
    cpu: (x, w) => linearRef(x, w, null, 5, 4),
  });
});

Deno.test("softmaxCrossEntropy with labels (plain and smoothed) and soft targets", async () => {
  const labels = [0, 6, 2];
  const inputs = [{ shape: [3, 7], low: -4, high: 4 }];
  for (const smoothing of [0, 0.1]) {
    await checkOp({
      name: `softmaxCrossEntropy[labels,ε=${smoothing}]`,
      inputs,
      gpu: (x) => softmaxCrossEntropy(x, labels, { labelSmoothing: smoothing }),
      cpu: (x) => softmaxCrossEntropyRef(x, 7, { labels, smoothing }),
    });
  }
  await checkOp({
    name: "softmaxCrossEntropy[soft]",
    inputs: [...inputs, { shape: [3, 7], low: 0, high: 0.3, grad: false }],
    gpu: (x, t) => softmaxCrossEntropy(x, t),
    cpu: (x, t) => softmaxCrossEntropyRef(x, 7, { soft: t }),
  });
  // Large logits must not overflow the exponentials.
  const big = randomArray(21, 5, 500, 900);
  await scope(async () => {
    const loss = await softmaxCrossEntropy(Tensor.from(Float32Array.from(big), [3, 7]), labels)
      .item();
    const want = softmaxCrossEntropyRef(Float32Array.from(big), 7, { labels })[0];
    assert.ok(Math.abs(loss - want) <= 1e-3 * Math.max(1, want), `${loss} vs ${want}`);
  });
});

Deno.test("loss and accuracy record no submit (no read-back inside the ops)", () => {
  scope(() => {
    const x = Tensor.randn([3, 7], { seed: 2 });
    x.requiresGrad = true;
    gpu().flush();
    const before = gpu().submits;
    const loss = softmaxCrossEntropy(x, Int32Array.from([1, 2, 3]), { labelSmoothing: 0.1 });
    accuracyCounts(x, [1, 2, 3]);
    backward(loss);
    assert.equal(gpu().submits, before);
    x.dispose();
  });
});

Deno.test("accuracyCounts on a hand-made case, ties counted as misses", async () => {
  // Row ranks of the label (classes strictly or equally above it): 0, 1, 4, 2 (a tie), 0 (a tie at the top).
  const logits = [
    [5, 1, 2, 3, 4], // label 0: rank 0
    [5, 4, 1, 2, 3], // label 1: rank 1
    [5, 4, 3, 2, 1], // label 4: rank 4
    [3, 1, 3, 2, 9], // label 2: 9 and the tied 3 are ≥, rank 2
    [7, 7, 0, 0, 0], // label 1: the tied 7 is ≥, rank 1
  ];
  const labels = [0, 1, 4, 2, 1];
  await scope(async () => {
    const x = Tensor.from(logits.flat(), [5, 5]);
    const counts = await accuracyCounts(x, labels, [1, 2, 3, 5]).read();
    assert.deepEqual([...counts], [1, 3, 4, 5]);
    assert.deepEqual([...await accuracyCounts(x, labels).read()], [1, 5]);
  });
});

Deno.test("meanHW against CPU", async () => {
  const shape = [2, 3, 3, 5];
  await checkOp({
    name: "meanHW",
    inputs: [{ shape }],
    gpu: meanHW,
    cpu: (x) => meanHWRef(x, shape),
  });
});

/** Distinct values 0.01 apart in seeded order: no ties, and finite differences never swap a max. */
function distinct(n: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return Float64Array.from(order, (v) => (v - n / 2) * 0.01);
}

Deno.test("maxPool2d 3x3/2 pad 1 on 7x7, and 2x2/1 pad 1 on 5x6", async () => {
  const shape = [2, 3, 7, 7];
  await checkOp({
    name: "maxPool2d[3/2/1,7x7]",
    inputs: [{ shape, data: distinct(2 * 3 * 49, 3) }],
    gpu: (x) => {
      const y = maxPool2d(x, { kernel: 3, stride: 2, padding: 1 });
      assert.deepEqual(y.shape, [2, 3, 4, 4]);
      return y;
    },
    cpu: (x) => maxPool2dRef(x, shape, 3, 2, 1),
  });
  const odd = [1, 2, 5, 6];
  await checkOp({
    name: "maxPool2d[2/1/1,5x6]",
    inputs: [{ shape: odd, data: distinct(60, 4) }],
    gpu: (x) => maxPool2d(x, { kernel: 2, stride: 1, padding: 1 }),
    cpu: (x) => maxPool2dRef(x, odd, 2, 1, 1),
  });
});

Deno.test("permute rank 4 and rank 3, channels-last round trip", async () => {
  const s4 = [2, 3, 4, 5];
  await checkOp({
    name: "permute[0,2,3,1]",
    inputs: [{ shape: s4 }],
    gpu: (x) => permute(x, [0, 2, 3, 1]),
    cpu: (x) => permuteRef(x, s4, [0, 2, 3, 1]),
  });
  const s3 = [3, 4, 5];
  await checkOp({
    name: "permute[2,0,1]",
    inputs: [{ shape: s3 }],
    gpu: (x) => permute(x, [2, 0, 1]),
    cpu: (x) => permuteRef(x, s3, [2, 0, 1]),
  });
  await scope(async () => {
    const x = Tensor.randn(s4, { seed: 3 });
    const nhwc = toChannelsLast(x);
    assert.deepEqual(nhwc.shape, [2, 4, 5, 3]);
    assert.deepEqual(await toChannelsFirst(nhwc).read(), await x.read());
  });
});

Deno.test("concat along a middle axis and the last axis", async () => {
  const shapes = [[2, 3, 4], [2, 1, 4], [2, 2, 4]];
  await checkOp({
    name: "concat[axis 1]",
    inputs: shapes.map((shape) => ({ shape })),
    gpu: (a, b, c) => concat([a, b, c], 1),
    cpu: (a, b, c) => concatRef([a, b, c], shapes, 1),
  });
  const last = [[2, 3, 4], [2, 3, 1]];
  await checkOp({
    name: "concat[axis -1]",
    inputs: last.map((shape) => ({ shape })),
    gpu: (a, b) => concat([a, b], -1),
    cpu: (a, b) => concatRef([a, b], last, 2),
  });
});

Deno.test("dropPath: whole samples dropped or scaled, same mask in the backward; eval is identity", async () => {
  const shape = [8, 2, 3];
  const prob = 0.4;
  const seed = 11;
  const rng = new Rng(seed);
  const keep = Array.from({ length: 8 }, () => rng.uniform() < 1 - prob);
  assert.ok(
    keep.includes(true) && keep.includes(false),
    "the seed should keep some samples and drop others",
  );
  const xs = randomArray(48, 1);
  const gs = randomArray(48, 2);
  await scope(async () => {
    const x = Tensor.from(Float32Array.from(xs), shape);
    x.requiresGrad = true;
    const y = dropPath(x, prob, { training: true, seed });
    const got = await y.read();
    backward(y, Tensor.from(Float32Array.from(gs), shape));
    const grad = await x.grad!.read();
    const want = xs.map((v, i) => (keep[Math.floor(i / 6)] ? v / (1 - prob) : 0));
    const wantGrad = gs.map((v, i) => (keep[Math.floor(i / 6)] ? v / (1 - prob) : 0));
    const forward = relError(got, want);
    const grads = relError(grad, wantGrad);
    console.log(
      `op-error dropPath forward=${forward.toExponential(2)} grads=${grads.toExponential(2)}`,
    );
    assert.ok(forward <= 1e-6 && grads <= 1e-6);
    assert.equal(dropPath(x, prob, { training: false, seed }), x);
    assert.equal(dropPath(x, 0, { training: true, seed }), x);
    const all = await noGrad(() => dropPath(x, 1, { training: true, seed })).read();
    assert.ok(all.every((v) => v === 0));
  });
});
