/**
 * The small kernels that sparsity, the EMA and the ERF analysis launch
 * (ops/masked.ts, ops/ema.ts, ops/center_point.ts, inverseSqrtOrOne, and
 * copyInto) against plain CPU references, on odd sizes that leave a partial
 * workgroup.
 */
import assert from "node:assert/strict";
import { centerPoint } from "../ops/center_point.ts";
import { emaUpdate } from "../ops/ema.ts";
import { inverseSqrtOrOne } from "../ops/elementwise.ts";
import { multiplyByMaskInPlace } from "../ops/masked.ts";
import { copyInto, Tensor } from "../ops/tensor.ts";
import { checkOp, randomArray, relError, setup } from "./harness.ts";

await setup();

const f32 = (a: ArrayLike<number>) => Float32Array.from(a);

Deno.test("multiplyByMaskInPlace: every target times the mask, one dispatch", async () => {
  const n = 261;
  const mask = f32(randomArray(n, 1).map((v) => (v > 0 ? 1 : v < -0.5 ? 0.25 : 0)));
  const a = randomArray(n, 2);
  const b = randomArray(n, 3);
  const [ta, tb] = [Tensor.from(f32(a)), Tensor.from(f32(b))];
  multiplyByMaskInPlace(Tensor.from(mask), [ta, tb]);
  const want = (x: Float64Array) => x.map((v, i) => Math.fround(v) * mask[i]);
  assert.ok(relError(await ta.read(), want(a)) < 1e-7);
  assert.ok(relError(await tb.read(), want(b)) < 1e-7);
  assert.throws(
    () => multiplyByMaskInPlace(Tensor.from(mask), [Tensor.zeros([n + 1])]),
    /target of 262 values, mask of 261/,
  );
});

Deno.test("emaUpdate: d·average + (1 − d)·x, and a copy at d = 0", async () => {
  const n = 300;
  const avg = randomArray(n, 4);
  const x = randomArray(n, 5);
  for (const d of [0, 0.9, 0.999]) {
    const t = Tensor.from(f32(avg));
    emaUpdate(t, Tensor.from(f32(x)), d);
    const want = avg.map((v, i) => d * Math.fround(v) + (1 - d) * Math.fround(x[i]));
    const e = relError(await t.read(), want);
    assert.ok(e < 1e-6, `d=${d}: error ${e}`);
  }
  assert.throws(() => emaUpdate(Tensor.zeros([2]), Tensor.zeros([2]), 1.5), /decay 1.5/);
  assert.throws(() => emaUpdate(Tensor.zeros([2]), Tensor.zeros([3]), 0.5), /average of 2/);
});

Deno.test("copyInto: copies in recording order, after earlier kernels", async () => {
  const src = Tensor.from(f32(randomArray(77, 6)));
  const dst = Tensor.zeros([7, 11]);
  const before = await src.read();
  copyInto(src, dst);
  // A kernel recorded after the copy must not change what was copied.
  multiplyByMaskInPlace(Tensor.zeros([77]), [src]);
  assert.deepEqual(await dst.read(), before);
  assert.throws(() => copyInto(src, Tensor.zeros([3])), /source of 77 values, destination of 3/);
});

Deno.test("inverseSqrtOrOne: 1/√x for x > 0, 1 elsewhere; gradient by finite differences", async () => {
  await checkOp({
    name: "inverseSqrtOrOne",
    inputs: [{ shape: [7], data: [-1.5, -0.2, 0.3, 0.7, 2, 4.5, 9] }],
    gpu: inverseSqrtOrOne,
    cpu: (x) => x.map((v) => (v > 0 ? 1 / Math.sqrt(v) : 1)),
  });
  assert.deepEqual(await inverseSqrtOrOne(Tensor.from([0, 16])).read(), f32([1, 0.25]));
});

Deno.test("centerPoint: forward picks the centre, backward scatters to it", async () => {
  // Odd and even sides: the centre is (⌊H/2⌋, ⌊W/2⌋).
  for (const [h, w] of [[5, 4], [3, 3]]) {
    await checkOp({
      name: `centerPoint ${h}x${w}`,
      inputs: [{ shape: [2, 3, h, w] }],
      gpu: centerPoint,
      cpu: (m) => {
        const out = new Float64Array(6);
        for (let p = 0; p < 6; p++) {
          out[p] = m[p * h * w + Math.floor(h / 2) * w + Math.floor(w / 2)];
        }
        return out;
      },
    });
  }
  assert.throws(() => centerPoint(Tensor.zeros([2, 3])), /expected \[N, C, H, W\]/);
});
