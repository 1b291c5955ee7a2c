import assert from "node:assert/strict";
import { copyVec4, FMA_ADD, FMA_SCALE, fmaThroughput } from "../ops/ceiling.ts";
import { Tensor } from "../ops/tensor.ts";
import { ceilingRows } from "../scripts/gpu_ceiling.ts";
import { setup } from "./harness.ts";

await setup();

/** The FMA probe on the CPU: per invocation, 8 chains of x ← x·0.999 + 1e-4 in f32, lanes summed. */
function fmaProbeRef(invocations: number, iterations: number): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(invocations);
  for (let i = 0; i < invocations; i++) {
    let s = 0;
    for (let c = 0; c < 8; c++) {
      let x = f(f(i + c) * f(1e-3));
      for (let t = 0; t < iterations; t++) x = f(x * f(FMA_SCALE) + f(FMA_ADD));
      s = f(s + x);
    }
    out[i] = f(4 * s);
  }
  return out;
}

Deno.test("fma probe: each invocation's chains match the CPU recurrence", async () => {
  const { values, tflops } = await fmaThroughput({
    groups: 2,
    iterations: 40,
    runs: 1,
    keep: true,
  });
  const want = fmaProbeRef(512, 40);
  assert.equal(values!.length, want.length);
  for (let i = 0; i < want.length; i++) {
    assert.ok(
      Math.abs(values![i] - want[i]) <= 1e-5 * Math.abs(want[i]),
      `${i}: ${values![i]} vs ${want[i]}`,
    );
  }
  assert.ok(tflops > 0 && Number.isFinite(tflops));
});

Deno.test("copy probe: copies every vec4, refuses mismatched sizes; the script's rows", async () => {
  const data = new Float32Array(4 * 1000).map((_, i) => i * 0.5 - 7);
  const x = Tensor.from(data);
  const y = Tensor.zeros([data.length]);
  copyVec4(x, y);
  assert.deepEqual(await y.read(), data);
  assert.throws(() => copyVec4(x, Tensor.zeros([8])), /one size, a multiple of 4/);
  x.dispose();
  y.dispose();
  const rows = await ceilingRows({ groups: 1, iterations: 4, floats: 1024, runs: 1 });
  assert.deepEqual(rows.map((r) => [r.probe, r.unit]), [["fma_fp32", "TFLOP/s"], [
    "copy_vec4",
    "GB/s",
  ]]);
  assert.ok(rows.every((r) => typeof r.value === "number" && r.value > 0));
});
