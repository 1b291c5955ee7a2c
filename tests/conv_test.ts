import assert from "node:assert/strict";
import { conv2d, type Conv2dOptions } from "../ops/conv.ts";
import { depthwiseConv2d, type DepthwiseOptions, samePadding } from "../ops/depthwise.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { backward } from "../ops/autograd.ts";
import { checkOp, randomArray, relError, setup } from "./harness.ts";
import { conv2dRef } from "./reference.ts";

await setup();

const pair = (v: number | number[] | undefined, dflt: number[]) =>
  v === undefined ? dflt : typeof v === "number" ? [v, v] : v;

/** checkOp for conv2d on x [N, Cin, H, W], w [Cout, Cin/groups, KH, KW], with or without bias. */
function checkConv(
  name: string,
  xShape: number[],
  wShape: number[],
  bias: boolean,
  opts: Conv2dOptions,
) {
  const refOpts = {
    stride: pair(opts.stride, [1, 1]),
    padding: pair(opts.padding, [0, 0]),
    groups: opts.groups ?? 1,
  };
  return checkOp({
    name,
    inputs: bias
      ? [{ shape: xShape }, { shape: wShape }, { shape: [wShape[0]] }]
      : [{ shape: xShape }, { shape: wShape }],
    gpu: (x, w, b) => conv2d(x, w, b ?? null, opts),
    cpu: (x, w, b) => conv2dRef(x, w, b ?? null, xShape, wShape, refOpts),
  });
}

/** checkOp for depthwiseConv2d on x [N, C, H, W] with a KH×KW filter per channel. */
function checkDepthwise(
  name: string,
  xShape: number[],
  [kh, kw]: number[],
  bias: boolean,
  opts: DepthwiseOptions = {},
) {
  const c = xShape[1];
  const wShape = [c, 1, kh, kw];
  const padding = opts.padding === undefined || opts.padding === "same"
    ? samePadding(kh, kw)
    : pair(opts.padding, []);
  const refOpts = { stride: pair(opts.stride, [1, 1]), padding, groups: c };
  return checkOp({
    name,
    inputs: bias
      ? [{ shape: xShape }, { shape: wShape }, { shape: [c] }]
      : [{ shape: xShape }, { shape: wShape }],
    gpu: (x, w, b) => depthwiseConv2d(x, w, b ?? null, opts),
    cpu: (x, w, b) => conv2dRef(x, w, b ?? null, xShape, wShape, refOpts),
  });
}

Deno.test("conv2d against CPU: groups, stride, per-axis padding, rectangular kernels, bias", async () => {
  await checkConv("conv2d 3x3 pad1 bias", [2, 3, 5, 6], [4, 3, 3, 3], true, { padding: 1 });
  await checkConv("conv2d 3x2 groups2 stride2 pad[1,0]", [2, 4, 7, 6], [4, 2, 3, 2], false, {
    stride: 2,
    padding: [1, 0],
    groups: 2,
  });
  await checkConv("conv2d 2x5 stride[1,2] pad[1,2] bias", [1, 3, 6, 9], [5, 3, 2, 5], true, {
    stride: [1, 2],
    padding: [1, 2],
  });
});

Deno.test("depthwiseConv2d against CPU: square, strided, rectangular", async () => {
  await checkDepthwise("depthwise 3x3 bias", [2, 3, 5, 6], [3, 3], true);
  await checkDepthwise("depthwise 7x7 stride2", [2, 3, 9, 8], [7, 7], false, { stride: 2 });
  await checkDepthwise("depthwise 1x5 bias", [2, 4, 5, 7], [1, 5], true);
  await checkDepthwise("depthwise 5x1 stride2 pad[1,0]", [2, 4, 5, 7], [5, 1], true, {
    stride: 2,
    padding: [1, 0],
  });
});

Deno.test("depthwiseConv2d against CPU: kernels larger than the image", async () => {
  await checkDepthwise("depthwise 13x13 on 5x6 bias", [1, 2, 5, 6], [13, 13], true);
  await checkDepthwise("depthwise 151x3 on 4x3", [1, 2, 4, 3], [151, 3], false);
  await checkDepthwise("depthwise 3x151 stride2 on 3x4 bias", [1, 2, 3, 4], [3, 151], true, {
    stride: 2,
  });
});

Deno.test("conv shape errors", () =>
  scope(() => {
    const x = Tensor.zeros([1, 5, 4, 4]);
    assert.throws(
      () => conv2d(x, Tensor.zeros([2, 6, 3, 3]), null),
      /conv2d: input has 5 channels, weight expects 6 \(groups=1\)/,
    );
    assert.throws(
      () => conv2d(Tensor.zeros([1, 4, 4, 4]), Tensor.zeros([3, 2, 3, 3]), null, { groups: 2 }),
      /3 output channels, not divisible by groups=2/,
    );
    assert.throws(
      () => conv2d(x, Tensor.zeros([2, 5, 3, 3]), Tensor.zeros([3])),
      /bias must be \[2\]/,
    );
    assert.throws(() => conv2d(x, Tensor.zeros([2, 5, 7, 3]), null), /kernel 7×3 does not fit/);
    assert.throws(
      () => depthwiseConv2d(x, Tensor.zeros([4, 1, 3, 3]), null),
      /weight must be \[5, 1, KH, KW\]/,
    );
    assert.throws(
      () => depthwiseConv2d(x, Tensor.zeros([5, 1, 9, 3]), null, { padding: 1 }),
      /9×3 does not fit/,
    );
    assert.deepEqual(samePadding(51, 5), [25, 2]);
  }));

Deno.test("depthwiseConv2d filter gradient with more taps than one grid row holds", async () => {
  // 3·151·151 = 68403 taps > 65535 workgroups: the reduction runs on a 2-D grid.
  const [c, k] = [3, 151];
  const xs = randomArray(c * 4, 5);
  const gys = randomArray(c * 4, 6);
  const got = await scope(async () => {
    const x = Tensor.from(Float32Array.from(xs), [1, c, 2, 2]);
    const w = Tensor.zeros([c, 1, k, k]);
    w.requiresGrad = true;
    const y = depthwiseConv2d(x, w, null);
    backward(y, Tensor.from(Float32Array.from(gys), y.shape));
    return await w.grad!.read();
  });
  // gw[c, ky, kx] = Σ_{oy, ox} gy[c, oy, ox] · x[c, oy + ky − 75, ox + kx − 75].
  const want = new Float64Array(c * k * k);
  for (let ch = 0; ch < c; ch++) {
    for (let oy = 0; oy < 2; oy++) {
      for (let ox = 0; ox < 2; ox++) {
        for (let iy = 0; iy < 2; iy++) {
          for (let ix = 0; ix < 2; ix++) {
            want[(ch * k + iy - oy + 75) * k + ix - ox + 75] += gys[ch * 4 + oy * 2 + ox] *
              xs[ch * 4 + iy * 2 + ix];
          }
        }
      }
    }
  }
  const err = relError(got, want);
  console.log(`op-error depthwise 151x151 filter-grad (2-D grid) grads=${err.toExponential(2)}`);
  assert.ok(err <= 1e-4, `filter gradient error ${err}`);
});
