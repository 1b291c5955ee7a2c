/**
 * The sweep of `scripts/bench_gemm.ts --sweep` on a tiny product (llvmpipe): every variant it
 * times is checked against the heuristic's output, and the summary ranks the variants by their
 * time over the fastest of each product.
 */
import assert from "node:assert/strict";
import { matmul } from "../ops/matmul.ts";
import { Tensor } from "../ops/tensor.ts";
import { sweepProduct, sweepSummary, sweepVariants } from "../scripts/gemm_sweep.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("gemm sweep: a tiny product's variants run, match the heuristic and get timed", async () => {
  const only = /^64x64x8\/4x4 vec db int$/;
  assert.equal(sweepVariants(36, 40, 20, only).length, 2, "the heuristic and one variant");
  const rows = await sweepProduct({
    cases: ["tiny"],
    m: 36,
    n: 40,
    k: 20,
    layout: "tn",
    make() {
      const a = Tensor.randn([20, 36], { seed: 1 });
      const b = Tensor.randn([20, 40], { seed: 2 });
      return { tensors: [a, b], run: () => matmul(a, b, { transA: true }) };
    },
  }, { runs: 1, minMs: 0, peakTflops: 1, only });
  assert.deepEqual(rows.map((r) => r.variant), ["heuristic", "64x64x8/4x4 vec db int"]);
  for (const r of rows) {
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.ok((r.rel_err as number) < 1e-5 && (r.ms as number) > 0, JSON.stringify(r));
  }
});

Deno.test("gemm sweep: the summary counts wins and ranks by time over the fastest", () => {
  const summary = sweepSummary([
    { case: "p", variant: "a", ok: true, ms: 2 },
    { case: "p", variant: "b", ok: true, ms: 1 },
    { case: "q", variant: "a", ok: true, ms: 1 },
    { case: "q", variant: "b", ok: true, ms: 4 },
    { case: "q", variant: "c", ok: false, ms: 0.5 },
  ]);
  assert.deepEqual(summary.map((r) => [r.variant, r.wins, r.geomean_vs_best, r.worst_vs_best]), [
    ["a", 1, 1.414, 2],
    ["b", 1, 2, 4],
  ]);
});
