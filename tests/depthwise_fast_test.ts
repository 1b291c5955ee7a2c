/**
 * The fast depthwise kernels (ops/depthwise_direct.ts, ops/depthwise_fft.ts)
 * against the plain ones (ops/depthwise_plain.ts, themselves checked against
 * the CPU in conv_test.ts):
 * forward, input gradient, filter gradient and bias gradient on awkward tiny
 * shapes, with tile configs forced small so that partial tiles, several
 * planes per workgroup, chunked filter rows, several bands, tap-row splits
 * and the second summing pass all run on llvmpipe in seconds. Configs are
 * forced through the planner.
 */
import assert from "node:assert/strict";
import { depthwiseConv2d, type DepthwiseOptions, samePadding } from "../ops/depthwise.ts";
import {
  type ConvConfig,
  defaultFilterConfig,
  defaultForwardConfig,
  depthwisePlan,
  type DepthwiseShape,
  fusedBackwardConfig,
  setDepthwiseImpl,
  type WeightGradConfig,
} from "../ops/depthwise_plan.ts";
import type { FftConfig } from "../ops/depthwise_fft.ts";
import { gpu } from "../ops/gpu.ts";
import { planner } from "../ops/planner.ts";
import { assertSameOutputs, forwardAndGrads, setup } from "./harness.ts";

await setup();

/** Configs to force on the planner for every shape (see depthwise_plan.ts's keys). */
interface DepthwiseConfigs {
  forward?: ConvConfig;
  backwardInput?: ConvConfig;
  filter?: WeightGradConfig;
  /** Both gradients from one FFT kernel with this config. */
  fused?: FftConfig;
}

function force(configs: DepthwiseConfigs | null): void {
  const p = planner();
  p.force("depthwise.forward", configs?.forward ?? null);
  p.force("depthwise.backwardInput", configs?.backwardInput ?? null);
  p.force("depthwise.filter", configs?.filter ?? null);
  p.force("depthwise.fuse", configs ? { fft: configs.fused ?? null } : null);
}

function shapeOf(xShape: number[], [kh, kw]: number[], opts: DepthwiseOptions): DepthwiseShape {
  const [n, c, h, w] = xShape;
  const p = opts.padding ?? "same";
  const [ph, pw] = p === "same" ? samePadding(kh, kw) : typeof p === "number" ? [p, p] : p;
  return { n, c, h, w, kh, kw, ph, pw, ho: h + 2 * ph - kh + 1, wo: w + 2 * pw - kw + 1 };
}

/** Output and the gradients of x, w (and bias) of one depthwise conv, current implementation. */
function runOnce(
  xShape: number[],
  [kh, kw]: number[],
  bias: boolean,
  opts: DepthwiseOptions,
  seed: number,
): Promise<Float32Array[]> {
  const c = xShape[1];
  const shapes = [xShape, [c, 1, kh, kw], ...(bias ? [[c]] : [])];
  return forwardAndGrads(shapes, (x, w, b) => depthwiseConv2d(x, w, b ?? null, opts), seed);
}

/** Run generic and fast (with the given tile configs) and compare every output. */
async function compare(
  name: string,
  xShape: number[],
  k: number[],
  bias: boolean,
  opts: DepthwiseOptions,
  configs: DepthwiseConfigs | null,
): Promise<void> {
  setDepthwiseImpl("generic");
  const want = await runOnce(xShape, k, bias, opts, 7);
  setDepthwiseImpl("fast");
  force(configs);
  try {
    const plan = depthwisePlan(shapeOf(xShape, k, opts), 1);
    assert.ok(plan?.forward && plan.backwardInput && plan.filter, `${name}: a fast kernel is off`);
    const got = await runOnce(xShape, k, bias, opts, 7);
    assertSameOutputs(`depthwise-fast ${name}`, got, want, 1e-5);
  } finally {
    force(null);
    setDepthwiseImpl("auto");
  }
}

Deno.test("fast depthwise = generic: partial tiles, planes, bands, split taps, 2-pass sum", async () => {
  // 7×3 on 7×9, N=2, C=3: 2×3 output tiles, 2 planes per workgroup, 2 bands of input rows,
  // tap rows split over 2 workgroups, one plane per group (second pass sums 2 groups).
  await compare("7x3 bias", [2, 3, 7, 9], [7, 3], true, {}, {
    forward: { bw: 4, bh: 2, planes: 2, tileH: 4, tileW: 4, kc: 3 },
    filter: { tbh: 2, tbw: 4, u: 4, lanes: 2, planesPerGroup: 1, bandRows: 4, kySplit: 2 },
  });
  // Kernel larger than the image; filter rows in two chunks of 8 taps.
  await compare("13x13 on 5x6", [2, 3, 5, 6], [13, 13], false, {}, {
    forward: { bw: 4, bh: 2, planes: 1, tileH: 4, tileW: 4, kc: 8 },
    filter: { tbh: 4, tbw: 8, u: 4, lanes: 4, planesPerGroup: 2, bandRows: 4, kySplit: 1 },
  });
});

Deno.test("fast depthwise = generic: 1×k, k×1, even and explicit padding", async () => {
  await compare("1x9", [2, 3, 6, 11], [1, 9], true, {}, {
    forward: { bw: 8, bh: 1, planes: 2, tileH: 3, tileW: 8, kc: 9 },
    filter: { tbh: 1, tbw: 8, u: 8, lanes: 4, planesPerGroup: 2, bandRows: 4, kySplit: 1 },
  });
  await compare("9x1", [2, 3, 11, 5], [9, 1], false, {}, {
    forward: { bw: 4, bh: 4, planes: 1, tileH: 8, tileW: 4, kc: 1 },
    filter: { tbh: 4, tbw: 4, u: 4, lanes: 4, planesPerGroup: 1, bandRows: 8, kySplit: 3 },
  });
  // Even kernel, "same" = [2, 3]: a 6×8 output from 5×7, mirrored padding [1, 2] backward.
  await compare("4x6 same", [2, 3, 5, 7], [4, 6], true, {}, {
    forward: { bw: 4, bh: 2, planes: 2, tileH: 4, tileW: 8, kc: 4 },
    filter: { tbh: 2, tbw: 4, u: 4, lanes: 2, planesPerGroup: 1, bandRows: 2, kySplit: 1 },
  });
  // Explicit padding smaller than "same": 8×7 → 6×9.
  await compare("5x5 pad[1,3]", [2, 3, 8, 7], [5, 5], false, { padding: [1, 3] }, {
    forward: { bw: 4, bh: 2, planes: 1, tileH: 4, tileW: 8, kc: 5 },
    filter: { tbh: 2, tbw: 4, u: 8, lanes: 2, planesPerGroup: 2, bandRows: 4, kySplit: 2 },
  });
});

Deno.test("fast depthwise = generic: default configs of this adapter", async () => {
  await compare("31x31 on 9x10 defaults", [2, 3, 9, 10], [31, 31], false, {}, null);
});

Deno.test("fast depthwise = generic: the tiles the heuristic picks on a hardware GPU", async () => {
  // Tall and wide kernels on 26² (4-row blocks, 2- or 4-row tap blocks, 16 planes per group) and
  // 5×5 on 10² (2-row blocks): looked up with the adapter taken for a hardware one, then run here.
  const cases: [number[], number[]][] = [
    [[2, 3, 26, 26], [13, 5]],
    [[2, 3, 26, 26], [5, 13]],
    [[3, 2, 10, 10], [5, 5]],
  ];
  for (const [xShape, k] of cases) {
    const s = shapeOf(xShape, k, {});
    const g = gpu() as { isFallback: boolean };
    const was = g.isFallback;
    g.isFallback = false;
    let forward: ConvConfig, filter: WeightGradConfig;
    try {
      [forward, filter] = [defaultForwardConfig(s), defaultFilterConfig(s)];
    } finally {
      g.isFallback = was;
    }
    await compare(`${k.join("x")} on ${xShape[2]}² hardware heuristic`, xShape, k, false, {}, {
      forward,
      filter,
    });
  }
});

/** The FFT path of size f for all three kernels, both gradients from one kernel or not. */
function fft(f: number, pairs: number, fuseBackward = false): DepthwiseConfigs {
  return {
    forward: { fft: f, pairs },
    backwardInput: { fft: f, pairs },
    filter: { fft: f, pairs },
    ...(fuseBackward ? { fused: { fft: f, pairs } } : {}),
  };
}

Deno.test("FFT depthwise = generic: tiles, odd batch, K > H, padding, bias, pairs", async () => {
  // Separate input- and filter-gradient kernels.
  // 7×7 with F = 8: 2×2-output tiles (5×5 of them), 3 planes = a pair and a half.
  await compare("fft 7x7 F8", [3, 2, 9, 10], [7, 7], true, {}, fft(8, 1));
  // Kernel larger than the image, 2×2 tiles of 4×4 outputs, 2 pairs per workgroup over 3 pairs.
  await compare("fft 13x13 on 5x6 F16", [5, 2, 5, 6], [13, 13], false, {}, fft(16, 2));
  // Rectangular, explicit padding smaller than "same"; even kernel with "same" padding.
  await compare("fft 5x3 pad[1,2] F8", [2, 3, 8, 7], [5, 3], true, { padding: [1, 2] }, fft(8, 1));
  await compare("fft 4x6 same F8", [2, 3, 5, 7], [4, 6], false, {}, fft(8, 4));
  // One plane (an empty imaginary half), a tall image, an even×narrow kernel: 3 tiles of 8 rows.
  await compare("fft 9x2 N1 F16", [1, 2, 20, 5], [9, 2], true, {}, fft(16, 2));
});

Deno.test("FFT depthwise = generic: both gradients from one kernel (overlap-add)", async () => {
  const fuses = (x: number[], k: number[], opts: DepthwiseOptions, f: number, fuse = true) => {
    setDepthwiseImpl("fast");
    force(fft(f, 1, fuse));
    const s = shapeOf(x, k, opts);
    const fused = fusedBackwardConfig(depthwisePlan(s, 1)!, s) !== null;
    force(null);
    setDepthwiseImpl("auto");
    return fused;
  };
  assert.ok(fuses([3, 2, 9, 10], [7, 7], {}, 8));
  assert.ok(!fuses([3, 2, 9, 10], [7, 7], {}, 8, false), "fusion off: separate kernels");
  assert.ok(!fuses([1, 1, 20, 20], [3, 3], {}, 8), "400 pixels > 16 per invocation × 16");
  // Many tiles (5×5 of 2×2 outputs), odd batch, bias.
  await compare("fused 7x7 F8", [3, 2, 9, 10], [7, 7], true, {}, fft(8, 1, true));
  // One tile per plane, 2 pairs per workgroup; an even kernel; explicit padding (the input
  // gradient's padding differs per axis); one plane and a tall image (3 tiles along y).
  await compare("fused 5x5 F16", [3, 2, 6, 7], [5, 5], true, {}, fft(16, 2, true));
  await compare("fused 4x6 same F16", [2, 3, 5, 7], [4, 6], false, {}, fft(16, 1, true));
  await compare(
    "fused 5x3 pad[1,2]",
    [3, 2, 4, 5],
    [5, 3],
    false,
    { padding: [1, 2] },
    fft(16, 1, true),
  );
  await compare("fused 9x2 N1 F16", [1, 2, 20, 5], [9, 2], false, {}, fft(16, 2, true));
  // F = 32 and 64 (radices 8·4 and 8·8) take llvmpipe minutes to compile; scripts/latency.ts
  // --check compares them with the generic kernels on a GPU.
});

Deno.test("fast depthwise: stride 2 and the generic switch run the plain kernels", () => {
  const s = shapeOf([2, 3, 9, 9], [3, 3], {});
  setDepthwiseImpl("fast");
  try {
    assert.equal(depthwisePlan(s, 2), null);
    assert.ok(depthwisePlan(s, 1)?.forward);
    setDepthwiseImpl("generic");
    assert.equal(depthwisePlan(s, 1), null);
  } finally {
    setDepthwiseImpl("auto");
  }
  assert.throws(() => setDepthwiseImpl("tiled" as "fast"), /expected "generic", "fast" or "auto"/);
});
