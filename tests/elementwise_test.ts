import { add, gelu, mul, relu, scale, sigmoid, sub, sum, sumAxes } from "../ops/elementwise.ts";
import assert from "node:assert/strict";
import { backward } from "../ops/autograd.ts";
import { Tensor } from "../ops/tensor.ts";
import { checkOp, setup } from "./harness.ts";
import { erf } from "./reference.ts";

await setup();

const map = (f: (v: number) => number) => (x: Float64Array) => x.map(f);

Deno.test("add/sub/mul broadcast against CPU", async () => {
  const bcast = (f: (a: number, b: number) => number) => (a: Float64Array, b: Float64Array) => {
    // a: [2,3,4], b: [3,1] broadcast → [2,3,4]
    const out = new Float64Array(24);
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 3; j++) {
        for (let k = 0; k < 4; k++) out[i * 12 + j * 4 + k] = f(a[i * 12 + j * 4 + k], b[j]);
      }
    }
    return out;
  };
  const inputs = [{ shape: [2, 3, 4] }, { shape: [3, 1] }];
  await checkOp({ name: "add", inputs, gpu: add, cpu: bcast((a, b) => a + b) });
  await checkOp({ name: "sub", inputs, gpu: sub, cpu: bcast((a, b) => a - b) });
  await checkOp({ name: "mul", inputs, gpu: mul, cpu: bcast((a, b) => a * b) });
});

Deno.test("activations against CPU", async () => {
  const inputs = [{ shape: [3, 7], low: -4, high: 4 }];
  await checkOp({
    name: "gelu",
    inputs,
    gpu: gelu,
    cpu: map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2))),
  });
  await checkOp({ name: "sigmoid", inputs, gpu: sigmoid, cpu: map((v) => 1 / (1 + Math.exp(-v))) });
  await checkOp({ name: "scale", inputs, gpu: (x) => scale(x, -2.5), cpu: map((v) => -2.5 * v) });
  // Keep ReLU inputs away from its kink, where finite differences are undefined.
  const data = Array.from({ length: 21 }, (_, i) => (i - 10) / 3 + 0.1);
  await checkOp({
    name: "relu",
    inputs: [{ shape: [21], data }],
    gpu: relu,
    cpu: map((v) => Math.max(v, 0)),
  });
});

Deno.test("sum and sumAxes against CPU", async () => {
  await checkOp({
    name: "sum",
    inputs: [{ shape: [5, 6] }],
    gpu: sum,
    cpu: (x) => [x.reduce((a, b) => a + b, 0)],
  });
  await checkOp({
    name: "sumAxes[0,2]",
    inputs: [{ shape: [3, 4, 5] }],
    gpu: (x) => sumAxes(x, [0, 2]),
    cpu: (x) => {
      const out = new Float64Array(4);
      for (let i = 0; i < 3; i++) {
        for (let j = 0; j < 4; j++) for (let k = 0; k < 5; k++) out[j] += x[i * 20 + j * 5 + k];
      }
      return out;
    },
  });
});

Deno.test("sum of a large tensor (two-pass path) against CPU, gradient all ones", async () => {
  for (const n of [1 << 20, 3 * (1 << 18)]) {
    const a = Float32Array.from({ length: n }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5);
    const want = a.reduce((s, v) => s + v, 0);
    const x = Tensor.from(a, [n]);
    x.requiresGrad = true;
    const s = sum(x);
    const got = (await s.read())[0];
    assert.ok(
      Math.abs(got - want) <= 1e-5 * Math.max(1, Math.abs(want)),
      `${n}: ${got} vs ${want}`,
    );
    backward(s);
    assert.ok((await x.grad!.read()).every((v) => v === 1));
    x.grad!.dispose();
    x.dispose();
  }
});
