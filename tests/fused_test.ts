/**
 * The fused ops (ops/fused.ts) against the chains of unfused ops they
 * replace: forward and every gradient on odd shapes, with drop path and
 * LayerScale on and off, and the fused GEMM store through the split
 * inner-dimension epilogue too.
 */
import assert from "node:assert/strict";
import { dropPath } from "../ops/drop_path.ts";
import { add, gelu, mul } from "../ops/elementwise.ts";
import {
  dropPathScales,
  geluLinear,
  layerNormToChannelsLast,
  layerScaleResidual,
  linearGelu,
} from "../ops/fused.ts";
import { geluLinearResidual } from "../ops/fused_residual.ts";
import { layerNormLinear } from "../ops/fused_layernorm.ts";
import { setGemmImpl } from "../ops/gemm_plan.ts";
import { layerNorm } from "../ops/norm.ts";
import { planner } from "../ops/planner.ts";
import { linear } from "../ops/matmul.ts";
import { permute } from "../ops/shape.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { backward, noGrad, savedBytes } from "../ops/autograd.ts";
import { Block, depthwiseMixer } from "../models/convnext.ts";
import { setForwardSeed } from "../models/layers.ts";
import {
  assertSameOutputs,
  checkOp,
  forwardAndGrads,
  randomArray,
  relError,
  setup,
} from "./harness.ts";
import { erf, layerNormRef, linearRef, permuteRef } from "./reference.ts";

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

/**
 * {@linkcode compare} under the planner's tiles, under forced split-K tiles
 * with vec4 loads, double buffering and interior tiles, and under the plain
 * kernels (the fused op's fallback) against the tiled unfused chain.
 */
async function compareEveryPath(
  name: string,
  shapes: number[][],
  fused: (...xs: Tensor[]) => Tensor,
  unfused: (...xs: Tensor[]) => Tensor,
): Promise<void> {
  await compare(name, shapes, fused, unfused);
  const fast = { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4, splits: 2, vec: true, double: true };
  planner().force("gemm", { ...fast, interior: true });
  try {
    await compare(`${name} split vec`, shapes, fused, unfused);
  } finally {
    planner().force("gemm", null);
  }
  const want = await forwardAndGrads(shapes, unfused, 3);
  setGemmImpl("simple");
  try {
    assertSameOutputs(`${name} simple`, await forwardAndGrads(shapes, fused, 3), want, 2e-5);
  } finally {
    setGemmImpl("tiled");
  }
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

/** CPU `x + s[b] · γ[c] · (gelu(h) · Wᵀ + bias)[b, p, c]` written NCHW. */
function blockEndRef(
  [n, c, hw, f]: number[],
  x: Float64Array,
  h: Float64Array,
  w: Float64Array,
  b: Float64Array | null,
  gamma: Float64Array | null,
  scales: Float32Array | null,
): Float64Array {
  const z = linearRef(h.map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2))), w, b, f, c);
  const out = Float64Array.from(x);
  for (let bi = 0; bi < n; bi++) {
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < hw; p++) {
        const scale = (gamma ? gamma[ch] : 1) * (scales ? scales[bi] : 1);
        out[(bi * c + ch) * hw + p] += scale * z[(bi * hw + p) * c + ch];
      }
    }
  }
  return out;
}

Deno.test("geluLinearResidual: CPU reference, finite differences, and the unfused chain", async () => {
  // [N, C, H, W, F]; H·W = 4 gives the vec4 loads of the gradient, 3 the scalar ones; F = 70
  // spans more than one pass of the γ gradient's 64-lane row sums.
  for (const [n, c, hh, ww, f] of [[2, 5, 1, 3, 7], [3, 4, 2, 2, 8], [2, 3, 2, 2, 70]]) {
    const hw = hh * ww;
    for (
      const [prob, withGamma, withBias] of [[0.5, true, true], [0, false, true], [
        0.4,
        true,
        false,
      ]] as const
    ) {
      // Seed 1 drops sample 0 and keeps the others (at these sizes and rates).
      const scales = prob > 0 ? dropPathScales(n, prob, 1) : null;
      if (scales) assert.ok(scales[0] === 0 && scales[1] > 1, `draw ${scales}`);
      const name =
        `geluLinearResidual [${n},${c},${hh},${ww}]·${f} p=${prob} γ=${withGamma} b=${withBias}`;
      const shapes = [
        [n, c, hh, ww],
        [n, hh, ww, f],
        [c, f],
        ...(withBias ? [[c]] : []),
        ...(withGamma ? [[c]] : []),
      ];
      const split = (xs: Tensor[]) => {
        const [x, h, w] = xs;
        const b = withBias ? xs[3] : null;
        const g = withGamma ? xs[withBias ? 4 : 3] : null;
        return { x, h, w, b, g };
      };
      await checkOp({
        name,
        inputs: shapes.map((shape, i) => ({
          shape,
          low: i === 1 ? -3 : -1,
          high: i === 1 ? 3 : 1,
        })),
        gpu: (...xs) => {
          const { x, h, w, b, g } = split(xs);
          return geluLinearResidual(x, h, w, b, g, scales);
        },
        cpu: (...xs) => {
          const [x, h, w] = xs;
          const b = withBias ? xs[3] : null;
          const g = withGamma ? xs[withBias ? 4 : 3] : null;
          return blockEndRef([n, c, hw, f], x, h, w, b, g, scales);
        },
        gradTol: 2e-3,
      });
      const unfused = (...xs: Tensor[]) => {
        const { x, h, w, b, g } = split(xs);
        const z = b ? geluLinear(h, w, b) : linear(gelu(h), w, null);
        return layerScaleResidual(x, z, g, scales);
      };
      const fused = (...xs: Tensor[]) => {
        const { x, h, w, b, g } = split(xs);
        return geluLinearResidual(x, h, w, b, g, scales);
      };
      await compareEveryPath(name, shapes, fused, unfused);
    }
  }
});

Deno.test("ConvNeXt block: the fused tensor path equals the unfused chain, drop path drawing the same samples", async () => {
  const dim = 8;
  const block = new Block(dim, depthwiseMixer([7])(dim, 0), "dwconv", 0.5, 0.3);
  const params = [...block.namedParameters()].map(([, p]) => p.tensor);
  const xs = Float32Array.from(randomArray(4 * dim * 5 * 5, 8));
  const x = Tensor.from(xs, [4, dim, 5, 5]);
  x.requiresGrad = true;
  const run = (f: () => Tensor) =>
    scope(async () => {
      for (const t of [x, ...params]) t.grad = null;
      setForwardSeed(21);
      const y = f();
      saved.push(savedBytes([x, ...params]));
      backward(y, Tensor.from(Float32Array.from(randomArray(y.size, 9)), y.shape));
      return [await y.read(), ...await Promise.all([x, ...params].map((t) => t.grad!.read()))];
    });
  const saved: number[] = [];
  const unfused = () => {
    const y = permute(block.mixer.forward(x), [0, 2, 3, 1]);
    const z = block.pwconv2.forward(gelu(block.pwconv1.forward(block.norm.forward(y))));
    return add(x, block.dropPath.forward(permute(mul(z, block.gamma!.tensor), [0, 3, 1, 2])));
  };
  const want = await run(unfused);
  // Seed 21 drops some of the 4 samples and keeps others: the comparison covers both.
  const per = dim * 25;
  const dropped = [0, 1, 2, 3].map((b) =>
    want[0].slice(b * per, (b + 1) * per).every((v, i) => v === xs[b * per + i])
  );
  assert.ok(dropped.some((d) => d) && dropped.some((d) => !d), `dropped ${dropped}`);
  assertSameOutputs("ConvNeXt block", await run(() => block.forward(x)), want, 2e-5);
  // The unfused chain also keeps the normalised activation (1 activation's width), gelu(h) (4)
  // and the branch before LayerScale (1) for its backward; the fused path none of them.
  const activation = 4 * x.size;
  assert.equal(saved[0] - saved[1], 6 * activation, `saved ${saved[1]} vs unfused ${saved[0]}`);
});

Deno.test("layerNormLinear: CPU reference, finite differences, and the unfused chain", async () => {
  // [N, C, H, W, out]: C = 8 gives vec4 weight loads, 5 scalar ones; 36 gives each pixel two
  // lanes in the statistics and in the input gradient.
  for (const [n, c, hh, ww, outF] of [[2, 5, 3, 1, 7], [1, 8, 2, 3, 12], [1, 36, 2, 2, 4]]) {
    for (const withBias of [true, false]) {
      const name = `layerNormLinear [${n},${c},${hh},${ww}]→${outF} b=${withBias}`;
      const shapes = [[n, c, hh, ww], [c], [c], [outF, c], ...(withBias ? [[outF]] : [])];
      const eps = 1e-6;
      await checkOp({
        name,
        inputs: shapes.map((shape, i) => ({
          shape,
          low: i === 1 ? 0.5 : -1,
          high: i === 1 ? 1.5 : 1,
        })),
        gpu: (x, lw, lb, w, b) => layerNormLinear(x, lw, lb, w, b ?? null, eps),
        cpu: (x, lw, lb, w, b) => {
          const normed = layerNormRef(x, lw, lb, n, c, hh * ww, eps);
          const nhwc = permuteRef(normed, [n, c, hh, ww], [0, 2, 3, 1]);
          return linearRef(nhwc, w, b ?? null, c, outF);
        },
        gradTol: 2e-3,
      });
      const fused = (x: Tensor, lw: Tensor, lb: Tensor, w: Tensor, b?: Tensor) =>
        layerNormLinear(x, lw, lb, w, b ?? null, eps);
      const unfused = (x: Tensor, lw: Tensor, lb: Tensor, w: Tensor, b?: Tensor) =>
        linear(layerNormToChannelsLast(x, lw, lb, eps), w, b ?? null);
      await compareEveryPath(name, shapes, fused, unfused);
    }
  }
});

Deno.test("the inference ends: layerNormLinear's GELU store and geluLinearResidual's activated h match the chain", async () => {
  const [n, c, hh, ww, f] = [2, 8, 3, 2, 12];
  const t = (shape: number[], seed: number, low = -1) =>
    Tensor.from(Float32Array.from(randomArray(shape.reduce((a, b) => a * b), seed, low)), shape);
  const [x, lw, lb, w1, b1, w2, b2, gamma] = [
    t([n, c, hh, ww], 1),
    t([c], 2, 0.5),
    t([c], 3),
    t([f, c], 4),
    t([f], 5),
    t([c, f], 6),
    t([c], 7),
    t([c], 8),
  ];
  for (const impl of ["tiled", "simple"] as const) {
    setGemmImpl(impl);
    try {
      const [want, got] = [false, true].map((infer) =>
        noGrad(() => {
          const h = layerNormLinear(x, lw, lb, w1, b1, 1e-6, { gelu: infer });
          const y = geluLinearResidual(x, h, w2, b2, gamma, null, { activated: infer });
          h.dispose();
          return y;
        })
      );
      const [wantValues, gotValues] = [await want.read(), await got.read()];
      want.dispose();
      got.dispose();
      const err = relError(gotValues, wantValues);
      assert.ok(err < 1e-5, `${impl}: ${err}`);
    } finally {
      setGemmImpl("tiled");
    }
  }
  // With a gradient to record, both refuse: nothing is kept for a backward.
  w1.requiresGrad = true;
  w2.requiresGrad = true;
  assert.throws(() => layerNormLinear(x, lw, lb, w1, b1, 1e-6, { gelu: true }), /no backward/);
  assert.throws(
    () => geluLinearResidual(x, t([n, hh, ww, f], 9), w2, b2, gamma, null, { activated: true }),
    /no backward/,
  );
});
