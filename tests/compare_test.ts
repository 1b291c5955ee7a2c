import assert from "node:assert/strict";
import { DIFFERENCE_FLOOR, relativeDifference } from "../ops/compare.ts";
import { Rng, Tensor } from "../ops/tensor.ts";
import { setup } from "./harness.ts";

await setup();

/** The CPU reference: max |a − b| over max(max |b|, floor) on finite b; Infinity on a finiteness mismatch. */
function relativeDifferenceRef(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let diff = 0;
  let scale = DIFFERENCE_FLOOR;
  for (let i = 0; i < a.length; i++) {
    if (Number.isFinite(a[i]) !== Number.isFinite(b[i])) return Infinity;
    if (!Number.isFinite(b[i])) continue;
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

async function both(a: Float32Array, b: Float32Array): Promise<[number, number]> {
  const ta = Tensor.from(a);
  const tb = Tensor.from(b);
  try {
    return [await relativeDifference(ta, tb), relativeDifferenceRef(a, b)];
  } finally {
    ta.dispose();
    tb.dispose();
  }
}

Deno.test("relativeDifference matches the CPU reference, beyond one pass of the grid", async () => {
  const rng = new Rng(7);
  // 1024 workgroups × 256 invocations cover 262144 entries per pass: 300001 needs a second.
  for (const n of [1, 255, 257, 300_001]) {
    const b = new Float32Array(n).map(() => rng.normal() * 3);
    const a = b.map((v) => v + rng.normal() * 1e-3);
    // The largest difference sits in the last entry, which only the second pass reaches.
    a[n - 1] = b[n - 1] + 0.5;
    const [got, want] = await both(a, b);
    assert.ok(Math.abs(got - want) <= 1e-6 * want, `n=${n}: ${got} vs ${want}`);
  }
});

Deno.test("relativeDifference: equal, zero, non-finite entries and sizes", async () => {
  const x = new Float32Array([1, -2, 3]);
  assert.deepEqual(await both(x, x), [0, 0]);
  assert.deepEqual(await both(new Float32Array(4), new Float32Array(4)), [0, 0]);
  for (const bad of [NaN, Infinity, -Infinity]) {
    const a = new Float32Array([1, bad, 3]);
    // One finite and one not is a mismatch; two non-finite entries are skipped, as on the CPU.
    assert.deepEqual(await both(a, x), [Infinity, Infinity]);
    assert.deepEqual(await both(x, a), [Infinity, Infinity]);
    assert.deepEqual(await both(a, new Float32Array([1, NaN, 3])), [0, 0]);
  }
  const [got] = await both(new Float32Array([3e38, 0]), new Float32Array([-3e38, 0]));
  assert.equal(got, Infinity); // the difference overflows f32
  assert.equal(await relativeDifference(Tensor.from([1, 2]), Tensor.from([1])), Infinity);
});
