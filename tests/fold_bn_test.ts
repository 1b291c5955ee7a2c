/**
 * Batch norm folded into the conv before it (ops/fold_bn.ts, models/conv_bn.ts):
 * the folded conv against a CPU reference of conv then evaluation batch norm
 * with finite differences of every gradient, against the unfused chain, and
 * inside the models' conv-BN modules in evaluation (non-trivial statistics).
 */
import assert from "node:assert/strict";
import { conv2d } from "../ops/conv.ts";
import { depthwiseConv2d } from "../ops/depthwise.ts";
import { add, relu } from "../ops/elementwise.ts";
import { foldBatchNorm } from "../ops/fold_bn.ts";
import { gpu } from "../ops/gpu.ts";
import { batchNorm2d } from "../ops/norm.ts";
import { Tensor } from "../ops/tensor.ts";
import { convBatchNorm } from "../models/conv_bn.ts";
import { BatchNorm2d, Conv2d } from "../models/layers.ts";
import { RepLKConvBN } from "../models/replknet.ts";
import { Bottleneck } from "../models/resnet.ts";
import { ConvBN } from "../models/slak.ts";
import type { Module } from "../models/module.ts";
import {
  assertSameOutputs,
  checkOp,
  forwardAndGrads,
  randomArray,
  relError,
  setup,
} from "./harness.ts";
import { batchNorm2dRef, conv2dRef } from "./reference.ts";

await setup();

const EPS = 1e-5;
// Running statistics far from 0 and 1, so that a wrong fold cannot pass.
const mean = (c: number) => randomArray(c, 40, -2, 2);
const variance = (c: number) => randomArray(c, 41, 0.2, 3);

Deno.test("foldBatchNorm: conv with folded weights equals conv then eval BN (CPU reference, finite differences)", async () => {
  const cases = [
    { x: [2, 3, 5, 4], w: [4, 3, 3, 3], groups: 1, padding: [1, 1], bias: true },
    { x: [1, 4, 6, 5], w: [4, 1, 5, 3], groups: 4, padding: [2, 1], bias: false },
  ];
  for (const k of cases) {
    const c = k.w[0];
    const [m, v] = [mean(c), variance(c)];
    const shapes = [k.x, k.w, [c], [c], ...(k.bias ? [[c]] : [])];
    await checkOp({
      name: `foldBatchNorm w[${k.w}] bias=${k.bias}`,
      inputs: shapes.map((shape) => ({ shape })),
      gpu: (x, w, g, b, cb) => {
        const bn = {
          weight: g,
          bias: b,
          mean: Tensor.from(Float32Array.from(m)),
          variance: Tensor.from(Float32Array.from(v)),
        };
        const f = foldBatchNorm(w, cb ?? null, bn, EPS);
        return conv2d(x, f.weight, f.bias, {
          padding: k.padding as [number, number],
          groups: k.groups,
        });
      },
      cpu: (x, w, g, b, cb) => {
        const y = conv2dRef(x, w, cb ?? null, k.x, k.w, { padding: k.padding, groups: k.groups });
        const outShape = [k.x[0], c, k.x[2], k.x[3]];
        return batchNorm2dRef(y, g, b, outShape, EPS, { mean: m, variance: v });
      },
      gradTol: 2e-3,
    });
    // And the unfused GPU chain, every gradient included.
    const stats = () => ({
      mean: Tensor.from(Float32Array.from(m)),
      variance: Tensor.from(Float32Array.from(v)),
    });
    const opts = { padding: k.padding as [number, number], groups: k.groups };
    const fused = (x: Tensor, w: Tensor, g: Tensor, b: Tensor, cb?: Tensor) => {
      const f = foldBatchNorm(w, cb ?? null, { weight: g, bias: b, ...stats() }, EPS);
      return conv2d(x, f.weight, f.bias, opts);
    };
    const unfused = (x: Tensor, w: Tensor, g: Tensor, b: Tensor, cb?: Tensor) => {
      const s = stats();
      return batchNorm2d(conv2d(x, w, cb ?? null, opts), g, b, s.mean, s.variance, {
        training: false,
        eps: EPS,
      });
    };
    const want = await forwardAndGrads(shapes, unfused, 5);
    assertSameOutputs(
      `foldBatchNorm w[${k.w}] vs unfused`,
      await forwardAndGrads(shapes, fused, 5),
      want,
      1e-5,
    );
  }
});

Deno.test("foldBatchNorm: depthwise kernel path equals depthwise conv then eval BN", async () => {
  const c = 3;
  const [m, v] = [mean(c), variance(c)];
  const stats = () => ({
    mean: Tensor.from(Float32Array.from(m)),
    variance: Tensor.from(Float32Array.from(v)),
  });
  const shapes = [[2, c, 7, 6], [c, 1, 5, 5], [c], [c]];
  const fused = (x: Tensor, w: Tensor, g: Tensor, b: Tensor) => {
    const f = foldBatchNorm(w, null, { weight: g, bias: b, ...stats() }, EPS);
    return depthwiseConv2d(x, f.weight, f.bias);
  };
  const unfused = (x: Tensor, w: Tensor, g: Tensor, b: Tensor) => {
    const s = stats();
    return batchNorm2d(depthwiseConv2d(x, w, null), g, b, s.mean, s.variance, {
      training: false,
      eps: EPS,
    });
  };
  const want = await forwardAndGrads(shapes, unfused, 9);
  assertSameOutputs("foldBatchNorm depthwise", await forwardAndGrads(shapes, fused, 9), want, 1e-5);
});

/** Give every batch norm under `m` random affine parameters and running statistics. */
function randomiseBatchNorms(m: Module, seed: number): void {
  let s = seed;
  for (const [, bn] of m.namedModules()) {
    if (!(bn instanceof BatchNorm2d)) continue;
    const c = bn.channels;
    bn.weight.set(Tensor.from(Float32Array.from(randomArray(c, s++, 0.5, 1.5))));
    bn.bias.set(Tensor.from(Float32Array.from(randomArray(c, s++, -1, 1))));
    bn.runningMean.set(Tensor.from(Float32Array.from(randomArray(c, s++, -1, 1))));
    bn.runningVar.set(Tensor.from(Float32Array.from(randomArray(c, s++, 0.3, 2))));
  }
}

Deno.test("conv-BN modules in eval: folded forward equals the unfused chain within 1e-5 relative", async () => {
  const x = Tensor.from(Float32Array.from(randomArray(2 * 8 * 9 * 9, 3)), [2, 8, 9, 9]);
  const unfused = (conv: Conv2d, bn: BatchNorm2d, v: Tensor) => bn.forward(conv.forward(v));
  const cases: [string, Module, (v: Tensor) => Tensor, (v: Tensor) => Tensor][] = [];
  const slak = new ConvBN(8, [7, 3], 1);
  cases.push([
    "SLaK ConvBN 7×3",
    slak,
    (v) => slak.forward(v),
    (v) => unfused(slak.conv, slak.bn, v),
  ]);
  const rep = new RepLKConvBN(8, 6, 3, { relu: true });
  cases.push([
    "RepLKConvBN 3×3",
    rep,
    (v) => rep.forward(v),
    (v) => relu(unfused(rep.conv, rep.bn, v)),
  ]);
  const plain = new Conv2d(8, 5, 1, { bias: true });
  const pbn = new BatchNorm2d(5);
  cases.push([
    "1×1 conv with bias",
    pbn,
    (v) => convBatchNorm(plain, pbn, v),
    (v) => unfused(plain, pbn, v),
  ]);
  const bottleneck = new Bottleneck(8, 4, 2, false);
  cases.push(["ResNet Bottleneck s2", bottleneck, (v) => bottleneck.forward(v), (v) => {
    const b = bottleneck;
    const y1 = relu(unfused(b.conv1, b.bn1, v));
    const y2 = relu(unfused(b.conv2, b.bn2, y1));
    const y3 = unfused(b.conv3, b.bn3, y2);
    const ds = b.downsample!.layers as [Conv2d, BatchNorm2d];
    return relu(add(y3, unfused(ds[0], ds[1], v)));
  }]);
  for (const [i, [name, module, run, chain]] of cases.entries()) {
    randomiseBatchNorms(module, 100 * i);
    module.eval();
    const d0 = gpu().dispatches;
    const got = await run(x).read();
    const d1 = gpu().dispatches;
    const want = await chain(x).read();
    // Folded: one fold and one conv per pair where the unfused chain runs conv, stats and BN.
    assert.ok(d1 - d0 < gpu().dispatches - d1, `${name}: ${d1 - d0} dispatches folded`);
    const err = relError(got, want);
    console.log(`op-error ${name} forward=${err.toExponential(2)}`);
    assert.ok(err <= 1e-5, `${name}: ${err}`);
  }
});

Deno.test("convBatchNorm: weights larger than the output leave the batch norm unfused", async () => {
  const conv = new Conv2d(16, 16, 3);
  const bn = new BatchNorm2d(16);
  randomiseBatchNorms(bn, 7);
  bn.eval();
  const x = Tensor.from(Float32Array.from(randomArray(16 * 4, 2)), [1, 16, 2, 2]); // 2304 weights, 64 outputs
  const d0 = gpu().dispatches;
  const got = await convBatchNorm(conv, bn, x).read();
  const d1 = gpu().dispatches;
  const want = await bn.forward(conv.forward(x)).read();
  assert.equal(d1 - d0, gpu().dispatches - d1);
  assert.deepEqual(got, want);
});
