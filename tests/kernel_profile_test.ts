import assert from "node:assert/strict";
import { add } from "../ops/elementwise.ts";
import { gpu } from "../ops/gpu.ts";
import { profileKernels } from "../ops/kernel_profile.ts";
import { matmul } from "../ops/matmul.ts";
import { Tensor } from "../ops/tensor.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("profileKernels: every dispatch timed once, by kernel, and the results unchanged", async () => {
  const a = Tensor.randn([24, 40], { seed: 1 });
  const b = Tensor.randn([40, 16], { seed: 2 });
  const want = await matmul(a, b).read();
  let got: Float32Array | null = null;
  const before = gpu().dispatches;
  const rows = await profileKernels(() => {
    const y = matmul(a, b);
    const z = add(y, y);
    y.dispose();
    z.read().then((v) => (got = v));
    z.dispose();
  });
  const dispatched = gpu().dispatches - before;
  assert.equal(gpu().dispatchHook, null, "the hook is lifted");
  if (rows === null) {
    assert.ok(!gpu().features.has("timestamp-query"));
    return;
  }
  assert.equal(rows.reduce((n, r) => n + r.calls, 0), dispatched);
  const gemm = rows.find((r) => r.kernel === "gemm");
  assert.ok(gemm && /"m":24,"n":16,"k":40/.test(gemm.detail), JSON.stringify(rows));
  assert.ok(rows.some((r) => r.kernel.startsWith("add") || r.kernel.includes("elementwise")));
  assert.ok(rows.every((r) => r.totalMs >= 0 && Number.isFinite(r.totalMs)));
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].totalMs >= rows[i].totalMs);
  await gpu().sync();
  assert.deepEqual(got, want.map((v) => v + v), "timed passes change nothing the kernels compute");
  // Recording goes back to normal, and a profile cannot nest.
  assert.deepEqual(await matmul(a, b).read(), want);
  gpu().dispatchHook = () => {};
  await assert.rejects(() => profileKernels(() => {}), /already being recorded/);
  gpu().dispatchHook = null;
  a.dispose();
  b.dispose();
});
