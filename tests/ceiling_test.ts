import assert from "node:assert/strict";
import {
  copyVec4,
  DEFAULT_FMA_PROBE,
  FMA_ADD,
  FMA_SCALE,
  type FmaProbe,
  fmaProbeSweep,
  fmaThroughput,
} from "../ops/ceiling.ts";
import { gpu } from "../ops/gpu.ts";
import { Tensor } from "../ops/tensor.ts";
import { ceilingRows } from "../scripts/gpu_ceiling.ts";
import { setup } from "./harness.ts";

await setup();

/**
 * The FMA probe on the CPU: per invocation, `chains` chains of x ← x·0.999 + 1e-4 in f32, the
 * chains summed, times the lanes (every lane of a chain holds the same value).
 */
function fmaProbeRef(
  invocations: number,
  iterations: number,
  { chains, lanes }: Pick<FmaProbe, "chains" | "lanes"> = DEFAULT_FMA_PROBE,
): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(invocations);
  for (let i = 0; i < invocations; i++) {
    let s = 0;
    for (let c = 0; c < chains; c++) {
      let x = f(f(i + c) * f(1e-3));
      for (let t = 0; t < iterations; t++) x = f(x * f(FMA_SCALE) + f(FMA_ADD));
      s = f(s + x);
    }
    out[i] = f(lanes * s);
  }
  return out;
}

function assertClose(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    assert.ok(
      Math.abs(got[i] - want[i]) <= 1e-5 * Math.abs(want[i]),
      `${what} ${i}: ${got[i]} vs ${want[i]}`,
    );
  }
}

Deno.test("fma probe: each invocation's chains match the CPU recurrence", async () => {
  const { values, tflops } = await fmaThroughput({
    groups: 2,
    iterations: 40,
    runs: 1,
    keep: true,
  });
  assertClose(values!, fmaProbeRef(512, 40), "default probe");
  assert.ok(tflops > 0 && Number.isFinite(tflops));
});

Deno.test("fma probe shapes: scalar and vec4, chains, workgroups and forms match the CPU", async () => {
  const shapes: FmaProbe[] = [
    { lanes: 1, chains: 16, workgroup: 64, form: "muladd" },
    { lanes: 4, chains: 4, workgroup: 128, form: "fma" },
    { lanes: 1, chains: 3, workgroup: 32, form: "fma" },
  ];
  for (const probe of shapes) {
    const { values } = await fmaThroughput({
      groups: 2,
      iterations: 9,
      runs: 1,
      keep: true,
      probe,
    });
    assertClose(values!, fmaProbeRef(2 * probe.workgroup, 9, probe), JSON.stringify(probe));
  }
  for (const bad of [{ lanes: 2 }, { chains: 0 }, { workgroup: 1 << 20 }, { form: "mad" }]) {
    const probe = { ...DEFAULT_FMA_PROBE, ...bad } as FmaProbe;
    await assert.rejects(
      fmaThroughput({ groups: 1, iterations: 1, runs: 1, probe }),
      /expected lanes 1 or 4, chains ≥ 1/,
    );
  }
  // The sweep: the default first, no shape twice, the same multiply-adds per invocation.
  const sweep = fmaProbeSweep(64);
  assert.equal(sweep[0].name, "v4 c8 wg256 fma");
  assert.equal(new Set(sweep.map((s) => s.name)).size, sweep.length);
  for (const s of sweep) assert.equal(s.probe.lanes * s.probe.chains * s.iterations, 4 * 8 * 64);
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
  const swept = await ceilingRows({ groups: 1, iterations: 4, floats: 1024, runs: 1, sweep: true });
  const largest = gpu().limits.maxComputeInvocationsPerWorkgroup;
  assert.equal(swept.length, 2 + fmaProbeSweep(4, largest).length);
  assert.equal(fmaProbeSweep(4, 256).length, 24, "no 1024-invocation probe under a 256 limit");
  assert.equal(swept[2].probe, "fma_fp32 v4 c8 wg256 fma");
  assert.ok(swept.every((r) => typeof r.value === "number" && r.value > 0));
});
