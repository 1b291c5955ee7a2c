/**
 * The fused ops (ops/fused.ts) against the chains of unfused ops they
 * replace: forward and every gradient on odd shapes, with drop path and
 * LayerScale on and off, and the fused GEMM store through the split
 * inner-dimension epilogue too.
 */
import { dropPath } from "../ops/drop_path.ts";
import { add, gelu, mul } from "../ops/elementwise.ts";
import {
  dropPathScales,
  geluLinear,
  layerNormToChannelsLast,
  layerScaleResidual,
  linearGelu,
} from "../ops/fused.ts";
import { layerNorm } from "../ops/norm.ts";
import { planner } from "../ops/planner.ts";
import { linear } from "../ops/matmul.ts";
import { permute } from "../ops/shape.ts";
import type { Tensor } from "../ops/tensor.ts";
import { assertSameOutputs, checkOp, forwardAndGrads, setup } from "./harness.ts";
import { erf, linearRef } from "./reference.ts";

await setup();

async function compare(
  name: string,
  shapes: number[][],
  fused: (...xs: Tensor[]) => Tensor,
  unfused: (...xs: Tensor[]) => Tensor,
): Promise<void> {
  const want = await forwardAndGrads(shapes, unfused, 3);
  const got = await forwardAndGrads(shapes, fused, 3);
  assertSameOutputs(`fused ${name}`, got, want, 2e-5);
}

Deno.test("linearGelu equals gelu(linear(...)), also through the split epilogue", async () => {
  const shapes = [[2, 3, 5, 7], [13, 7], [13]];
  const fused = (x: Tensor, w: Tensor, b: Tensor) => linearGelu(x, w, b);
  const unfused = (x: Tensor, w: Tensor, b: Tensor) => gelu(linear(x, w, b));
  await compare("linearGelu", shapes, fused, unfused);
  planner().force("gemm", { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2 });
  try {
    await compare("linearGelu split", shapes, fused, unfused);
    // 12 input features: vec4 loads of x and the weight, double-buffered, unchecked interior tiles.
    const fast = { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2, vec: true, double: true };
    planner().force("gemm", { ...fast, interior: true });
    await compare("linearGelu vec", [[2, 3, 5, 12], [13, 12], [13]], fused, unfused);
  } finally {
    planner().force("gemm", null);
  }
});

Deno.test("geluLinear: CPU reference and finite differences, and equal to linear(gelu(...))", async () => {
  const geluRef = (h: Float64Array) => h.map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
  for (const [rows, inF, outF] of [[6, 7, 5], [4, 12, 8]]) {
    await checkOp({
      name: `geluLinear ${rows}×${inF}→${outF}`,
      inputs: [{ shape: [rows, inF], low: -3, high: 3 }, { shape: [outF, inF] }, { shape: [outF] }],
      gpu: (h, w, b) => geluLinear(h, w, b),
      cpu: (h, w, b) => linearRef(geluRef(h), w, b, inF, outF),
      gradTol: 2e-3,
    });
  }
  const shapes = [[2, 3, 5, 7], [13, 7], [13]];
  const fused = (h: Tensor, w: Tensor, b: Tensor) => geluLinear(h, w, b);
  const unfused = (h: Tensor, w: Tensor, b: Tensor) => linear(gelu(h), w, b);
  await compare("geluLinear", shapes, fused, unfused);
  planner().force("gemm", { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2 });
  try {
    await compare("geluLinear split", shapes, fused, unfused);
    const fast = { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2, vec: true, double: true };
    planner().force("gemm", { ...fast, interior: true });
    await compare("geluLinear vec", [[2, 3, 5, 12], [16, 12], [16]], fused, unfused);
  } finally {
    planner().force("gemm", null);
  }
});

Deno.test("layerScaleResidual equals add(x, dropPath(permute(mul(y, gamma))))", async () => {
  const [n, c, h, w] = [3, 5, 3, 7];
  const seed = 11;
  for (const [prob, withGamma] of [[0.5, true], [0, true], [0.4, false], [0, false]] as const) {
    const scales = prob > 0 ? dropPathScales(n, prob, seed) : null;
    const shapes = [[n, c, h, w], [n, h, w, c], ...(withGamma ? [[c]] : [])];
    await compare(
      `layerScaleResidual p=${prob} gamma=${withGamma}`,
      shapes,
      (x, y, g) => layerScaleResidual(x, y, g ?? null, scales),
      (x, y, g) => {
        const branch = permute(g ? mul(y, g) : y, [0, 3, 1, 2]);
        return add(x, dropPath(branch, prob, { training: true, seed }));
      },
    );
  }
});

Deno.test("layerNormToChannelsLast equals layerNorm(permute(x, [0, 2, 3, 1]))", async () => {
  for (const shape of [[2, 5, 3, 7], [1, 33, 1, 1], [3, 1, 2, 2]]) {
    const c = shape[1];
    await compare(
      `layerNormToChannelsLast [${shape}]`,
      [shape, [c], [c]],
      (x, w, b) => layerNormToChannelsLast(x, w, b, 1e-6),
      (x, w, b) => layerNorm(permute(x, [0, 2, 3, 1]), w, b, { eps: 1e-6 }),
    );
  }
});
