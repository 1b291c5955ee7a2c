/**
 * End-to-end proof of the runtime: autograd through ConvNeXt blocks matches
 * finite differences, and a tiny ConvNeXt learns a synthetic 2-class task.
 */
import assert from "node:assert/strict";
import { backward } from "../ops/autograd.ts";
import { gpu } from "../ops/gpu.ts";
import { AdamW, decayGroups } from "../ops/optim.ts";
import { accuracyCounts, softmaxCrossEntropy } from "../ops/loss.ts";
import { poolStats, Rng, scope, Tensor } from "../ops/tensor.ts";
import { mul, sum } from "../ops/elementwise.ts";
import { ConvNeXt } from "../models/convnext.ts";
import { seedInit } from "../models/module.ts";
import { randomArray, setup } from "./harness.ts";

await setup();

/** Stripes: class 0 horizontal, class 1 vertical, random frequency, phase and noise. */
function stripes(n: number, size: number, rng: Rng): { x: Float32Array; y: number[] } {
  const x = new Float32Array(n * 3 * size * size);
  const y: number[] = [];
  for (let s = 0; s < n; s++) {
    const label = rng.int(2);
    y.push(label);
    const freq = 2 + rng.int(4);
    const phase = rng.uniform() * 2 * Math.PI;
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < size; i++) {
        for (let j = 0; j < size; j++) {
          const t = label === 0 ? i : j;
          const v = Math.sin((2 * Math.PI * freq * t) / size + phase) + 0.3 * rng.normal();
          x[((s * 3 + c) * size + i) * size + j] = v;
        }
      }
    }
  }
  return { x, y };
}

function tinyConvNeXt(layerScaleInit = 0.1): ConvNeXt {
  seedInit(7);
  return new ConvNeXt({
    depths: [1, 1, 1, 1],
    dims: [8, 12, 16, 16],
    kernels: [7, 5, 3, 3],
    numClasses: 2,
    layerScaleInit,
  });
}

Deno.test("autograd through a ConvNeXt model: parameter gradients match finite differences", async () => {
  const model = tinyConvNeXt(0.5);
  model.eval(); // no drop path: the function must be deterministic for finite differences
  const xData = randomArray(2 * 3 * 32 * 32, 3);
  const gy = Tensor.from(Float32Array.from(randomArray(4, 4)), [2, 2]);
  const x = Tensor.from(Float32Array.from(xData), [2, 3, 32, 32]);
  const loss = () => scope(() => sum(mul(model.forward(x), gy)));
  scope(() => backward(loss()));
  // Check a few entries of several parameters: stem conv, a depthwise kernel, a LayerScale, the head.
  const keys = [
    "downsample_layers.0.0.weight",
    "stages.1.0.dwconv.weight",
    "stages.2.0.gamma",
    "head.bias",
  ];
  const params = new Map(model.namedParameters());
  for (const key of keys) {
    const p = params.get(key)!;
    const analytic = await p.tensor.grad!.read();
    const values = await p.tensor.read();
    const eps = 1e-2;
    for (const idx of [0, Math.floor(p.size / 2), p.size - 1]) {
      const probe = async (delta: number) => {
        const v = values.slice();
        v[idx] += delta;
        p.set(Tensor.from(v, p.shape));
        const l = await loss().item();
        return l;
      };
      const numeric = ((await probe(eps)) - (await probe(-eps))) / (2 * eps);
      p.set(Tensor.from(values, p.shape));
      const err = Math.abs(numeric - analytic[idx]) / Math.max(1e-2, Math.abs(numeric));
      assert.ok(err < 2e-2, `${key}[${idx}]: analytic ${analytic[idx]} vs numeric ${numeric}`);
    }
  }
  x.dispose();
  gy.dispose();
  model.dispose();
});

Deno.test("a tiny ConvNeXt learns a 2-class stripe task to ≥ 95% training accuracy", async () => {
  const model = tinyConvNeXt();
  const rng = new Rng(11);
  const data = stripes(64, 32, rng);
  const opt = new AdamW(
    decayGroups([...model.namedParameters()].map(([k, p]) => [k, p.tensor]), 0.05),
    {
      lr: 1e-2,
    },
  );
  const batch = 16;
  const started = performance.now();
  // The first step compiles every kernel of a step; on a cold shader cache, with other test
  // files compiling beside it on llvmpipe, that alone took 35–75 s. The bound is on the training.
  let compiled = started;
  for (let step = 0; step < 60; step++) {
    if (step === 1) {
      await gpu().sync();
      compiled = performance.now();
    }
    const b = step % (64 / batch);
    scope(() => {
      const x = Tensor.from(data.x.subarray(b * batch * 3 * 1024, (b + 1) * batch * 3 * 1024), [
        batch,
        3,
        32,
        32,
      ]);
      const loss = softmaxCrossEntropy(model.forward(x), data.y.slice(b * batch, (b + 1) * batch));
      backward(loss);
      opt.step();
      opt.zeroGrad();
    });
    gpu().flush();
  }
  model.eval();
  const correct = await scope(async () => {
    const x = Tensor.from(data.x, [64, 3, 32, 32]);
    return (await accuracyCounts(model.forward(x), data.y, [1]).read())[0];
  });
  const now = performance.now();
  console.log(
    `e2e: training accuracy ${(correct / 64 * 100).toFixed(1)}% after 60 steps in ${
      ((now - started) / 1000).toFixed(1)
    } s (first step, compiling the kernels: ${((compiled - started) / 1000).toFixed(1)} s); ` +
      `pool ${poolStats().allocatedBytes} bytes`,
  );
  assert.ok(correct / 64 >= 0.95, `accuracy ${correct}/64`);
  model.dispose();
  opt.dispose();
});
