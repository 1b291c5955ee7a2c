/**
 * Dense (optionally grouped) 2-D convolution, NCHW, as PyTorch's `nn.Conv2d`
 * with zero padding, and its backward.
 *
 * Convolutions with `groups = 1` (1×1 and dense ones) run as implicit GEMMs
 * on the tiled, register-blocked kernels of `gemm_kernel.ts`: the im2col
 * addressing lives in the operand loaders, nothing is materialised. Grouped
 * convolutions, and every convolution under `setGemmImpl("simple")` (the
 * fallback and the test oracle), run straightforward kernels: the forward
 * runs one invocation per output value,
 * the input gradient one invocation per input value gathering the outputs it
 * fed (a transposed convolution without atomics), the weight gradient one
 * workgroup per weight value reducing over `N·Ho·Wo` in workgroup memory,
 * and the bias gradient one workgroup per channel reducing over `N·Ho·Wo`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { conv2d } from "./conv.ts";
 * await initGpu();
 * const x = Tensor.randn([1, 3, 8, 8], { seed: 1 });
 * const w = Tensor.randn([4, 3, 3, 3], { seed: 2 });
 * const y = conv2d(x, w, Tensor.zeros([4]), { stride: 2, padding: 1 });
 * console.log(y.shape); // [1, 4, 4, 4]
 * ```
 * @module
 */
import { needsGrad, record } from "./autograd.ts";
import { columnReduce, gemm } from "./gemm_kernel.ts";
import { gemmImpl } from "./gemm_plan.ts";
import { flatMain, launch, memoize, storage, sumPerOutputKernel } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";

/** Options of {@linkcode conv2d}; a single number applies to both axes. */
export interface Conv2dOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  groups?: number;
}

/**
 * Everything a conv2d kernel bakes in as constants: the shapes, stride
 * (`sh`, `sw`), top/left padding (`ph`, `pw`) and grouping. A depthwise
 * convolution is the grouped one with `groups = cin = cout` and one channel
 * per group.
 */
export interface Conv2dGeometry {
  n: number;
  cin: number;
  h: number;
  w: number;
  cout: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  groups: number;
  cinPerGroup: number;
  coutPerGroup: number;
  ho: number;
  wo: number;
}

function pair(what: string, v: number | [number, number], min: number): [number, number] {
  const p: [number, number] = typeof v === "number" ? [v, v] : [v[0], v[1]];
  if (!p.every((d) => Number.isInteger(d) && d >= min)) {
    throw new Error(
      `conv2d: ${what} must be an integer ≥ ${min} or a pair of them, got ${JSON.stringify(v)}`,
    );
  }
  return p;
}

function geometry(x: Tensor, w: Tensor, bias: Tensor | null, opts: Conv2dOptions): Conv2dGeometry {
  if (x.rank !== 4) throw new Error(`conv2d: input must be [N, C, H, W], got [${x.shape}]`);
  if (w.rank !== 4) {
    throw new Error(`conv2d: weight must be [Cout, Cin/groups, KH, KW], got [${w.shape}]`);
  }
  const groups = opts.groups ?? 1;
  if (!Number.isInteger(groups) || groups < 1) {
    throw new Error(`conv2d: groups must be a positive integer, got ${groups}`);
  }
  const [n, cin, h, wd] = x.shape;
  const [cout, cinPerGroup, kh, kw] = w.shape;
  if (cinPerGroup * groups !== cin) {
    throw new Error(
      `conv2d: input has ${cin} channels, weight expects ${
        cinPerGroup * groups
      } (groups=${groups})`,
    );
  }
  if (cout % groups !== 0) {
    throw new Error(
      `conv2d: weight has ${cout} output channels, not divisible by groups=${groups}`,
    );
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== cout)) {
    throw new Error(`conv2d: bias must be [${cout}] (one per output channel), got [${bias.shape}]`);
  }
  const [sh, sw] = pair("stride", opts.stride ?? 1, 1);
  const [ph, pw] = pair("padding", opts.padding ?? 0, 0);
  if (kh < 1 || kw < 1 || h + 2 * ph < kh || wd + 2 * pw < kw) {
    throw new Error(
      `conv2d: kernel ${kh}×${kw} does not fit in the padded input ${h + 2 * ph}×${wd + 2 * pw}`,
    );
  }
  const ho = Math.floor((h + 2 * ph - kh) / sh) + 1;
  const wo = Math.floor((wd + 2 * pw - kw) / sw) + 1;
  return {
    n,
    cin,
    h,
    w: wd,
    cout,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    groups,
    cinPerGroup,
    coutPerGroup: cout / groups,
    ho,
    wo,
  };
}

/**
 * 2-D convolution of `x` [N, Cin, H, W] with `w` [Cout, Cin/groups, KH, KW]
 * plus an optional `bias` [Cout]: output [N, Cout, Ho, Wo] with
 * Ho = ⌊(H + 2·ph − KH)/sh⌋ + 1 (likewise Wo). Padding is zeros, the same on
 * both sides of an axis; kernels may be rectangular. Differentiable in all
 * three tensors.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { conv2d } from "./conv.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 4, 9, 9], { seed: 1 });
 * const w = Tensor.randn([6, 2, 1, 5], { seed: 2 }); // 1×5 kernel, 2 groups
 * const y = conv2d(x, w, null, { padding: [0, 2], groups: 2 });
 * console.log(y.shape); // [2, 6, 9, 9]
 * ```
 */
export function conv2d(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  opts: Conv2dOptions = {},
): Tensor {
  const g = geometry(x, w, bias, opts);
  const y = Tensor.empty([g.n, g.cout, g.ho, g.wo]);
  // groups = 1 (1×1 and dense convolutions) run as implicit GEMMs with the tiled kernels.
  const tiled = g.groups === 1 && gemmImpl() === "tiled";
  if (tiled) gemmForward(x, w, bias, y, g);
  else {
    launch(groupedConvForwardKernel(g, bias !== null), bias ? [x, w, bias, y] : [x, w, y], y.size);
  }
  const inputs = bias ? [x, w, bias] : [x, w];
  const [wantX, wantW, wantBias] = [needsGrad(x), needsGrad(w), bias !== null && needsGrad(bias)];
  record("conv2d", inputs, y, [x, w], (gy, [sx, sw]) => [
    wantX ? (tiled ? gemmBackwardInput(gy, sw, g) : conv2dBackwardInput(gy, sw, g)) : null,
    wantW ? (tiled ? gemmBackwardWeight(gy, sx, g) : conv2dBackwardWeight(gy, sx, g)) : null,
    wantBias ? channelSum(gy) : null,
  ]);
  return y;
}

// ---------------------------------------------------------------- implicit GEMM (groups = 1)

/** True for the 1×1, stride-1, unpadded case, whose loaders need no im2col arithmetic. */
const isPointwise = (g: Conv2dGeometry) =>
  g.kh === 1 && g.kw === 1 && g.sh === 1 && g.sw === 1 && g.ph === 0 && g.pw === 0;

/**
 * WGSL statements binding `iy`, `ix` (i32) and `b`: the input pixel under
 * tap `t` (`ky·KW + kx`) of output pixel `q` (`b·Ho·Wo + oy·Wo + ox`).
 */
function tapPixel(g: Conv2dGeometry, q: string, t: string): string {
  return `let b = ${q} / ${g.ho * g.wo}u; let p = ${q} % ${g.ho * g.wo}u;
  let iy = i32((p / ${g.wo}u) * ${g.sh}u + ${t} / ${g.kw}u) - ${g.ph};
  let ix = i32((p % ${g.wo}u) * ${g.sw}u + ${t} % ${g.kw}u) - ${g.pw};`;
}

/** WGSL: return zero unless (iy, ix) lies in the input, else `x[b, ci, iy, ix]`. */
function inputAt(g: Conv2dGeometry, ci: string): string {
  return `if (iy < 0 || iy >= ${g.h} || ix < 0 || ix >= ${g.w}) { return 0.0; }
  return x[((b * ${g.cin}u + ${ci}) * ${g.h}u + u32(iy)) * ${g.w}u + u32(ix)];`;
}

/**
 * Forward as a GEMM: `y[co, (b, oy, ox)] = Σ_{(ci, ky, kx)} w[co, (ci, ky, kx)] · x[b, ci, oy·sh − ph + ky, ox·sw − pw + kx]`.
 */
function gemmForward(x: Tensor, w: Tensor, bias: Tensor | null, y: Tensor, g: Conv2dGeometry) {
  const khw = g.kh * g.kw;
  const howo = g.ho * g.wo;
  gemm({
    batch: 1,
    m: g.cout,
    n: g.n * howo,
    k: g.cin * khw,
    inputs: { w, x },
    loadA: `return w[m * ${g.cin * khw}u + k];`,
    aKFast: true,
    loadB: isPointwise(g)
      ? `return x[(n / ${howo}u * ${g.cin}u + k) * ${howo}u + n % ${howo}u];`
      : `${tapPixel(g, "n", `(k % ${khw}u)`)}
  ${inputAt(g, `k / ${khw}u`)}`,
    bKFast: false,
    outputs: bias ? { y, bias } : { y },
    store: `y[(n / ${howo}u * ${g.cout}u + m) * ${howo}u + n % ${howo}u] = v${
      bias ? " + bias[m]" : ""
    };`,
  });
}

/**
 * Input gradient as a GEMM: `gx[ci, (b, iy, ix)] = Σ_{(co, ky, kx)} w[co, ci, ky, kx] · gy[b, co, oy, ox]`
 * over the taps with `oy·sh = iy + ph − ky` (likewise x) inside the output; with a stride, taps
 * that fall between outputs read zero.
 */
function gemmBackwardInput(gy: Tensor, w: Tensor, g: Conv2dGeometry): Tensor {
  const gx = Tensor.empty([g.n, g.cin, g.h, g.w]);
  const khw = g.kh * g.kw;
  const hw = g.h * g.w;
  const howo = g.ho * g.wo;
  const strided = g.sh > 1 || g.sw > 1;
  gemm({
    batch: 1,
    m: g.cin,
    n: g.n * hw,
    k: g.cout * khw,
    inputs: { w, gy },
    loadA: `return w[(k / ${khw}u * ${g.cin}u + m) * ${khw}u + k % ${khw}u];`,
    aKFast: khw > 1,
    loadB: isPointwise(g)
      ? `return gy[(n / ${hw}u * ${g.cout}u + k) * ${howo}u + n % ${hw}u];`
      : `let b = n / ${hw}u; let p = n % ${hw}u; let t = k % ${khw}u;
  let sy = i32(p / ${g.w}u) + ${g.ph} - i32(t / ${g.kw}u);
  let sx = i32(p % ${g.w}u) + ${g.pw} - i32(t % ${g.kw}u);
  if (sy < 0 || sx < 0${
        strided ? ` || sy % ${g.sh} != 0 || sx % ${g.sw} != 0` : ""
      }) { return 0.0; }
  let oy = u32(sy) / ${g.sh}u; let ox = u32(sx) / ${g.sw}u;
  if (oy >= ${g.ho}u || ox >= ${g.wo}u) { return 0.0; }
  return gy[((b * ${g.cout}u + k / ${khw}u) * ${g.ho}u + oy) * ${g.wo}u + ox];`,
    bKFast: false,
    outputs: { gx },
    store: `gx[(n / ${hw}u * ${g.cin}u + m) * ${hw}u + n % ${hw}u] = v;`,
  });
  return gx;
}

/**
 * Weight gradient as a GEMM (split over its long inner dimension):
 * `gw[co, (ci, ky, kx)] = Σ_{(b, oy, ox)} gy[b, co, oy, ox] · x[b, ci, oy·sh − ph + ky, ox·sw − pw + kx]`.
 */
function gemmBackwardWeight(gy: Tensor, x: Tensor, g: Conv2dGeometry): Tensor {
  const gw = Tensor.empty([g.cout, g.cin, g.kh, g.kw]);
  const khw = g.kh * g.kw;
  const howo = g.ho * g.wo;
  gemm({
    batch: 1,
    m: g.cout,
    n: g.cin * khw,
    k: g.n * howo,
    inputs: { gy, x },
    loadA: `return gy[(k / ${howo}u * ${g.cout}u + m) * ${howo}u + k % ${howo}u];`,
    aKFast: true,
    loadB: isPointwise(g)
      ? `return x[(k / ${howo}u * ${g.cin}u + n) * ${howo}u + k % ${howo}u];`
      : `${tapPixel(g, "k", `(n % ${khw}u)`)}
  ${inputAt(g, `n / ${khw}u`)}`,
    bKFast: true,
    outputs: { gw },
    store: `gw[m * ${g.cin * khw}u + n] = v;`,
  });
  return gw;
}

/**
 * WGSL opening the loop over the `count` channels of a group, bound to `c`;
 * with one channel per group (depthwise) a plain block with `c = 0`, so the
 * kernel does not loop at all.
 */
function channelsOfGroup(count: number): string {
  return count === 1 ? "{\n    let c = 0u;" : `for (var c = 0u; c < ${count}u; c++) {`;
}

/**
 * WGSL of the grouped convolution's forward (bindings x, w, optional b, y):
 * one invocation per output value, taps restricted to those inside the
 * image. Cached per geometry: a step launches it once per layer, and building
 * the source costs more CPU than recording the dispatch. Launch over `y.size`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { launch } from "./kernel.ts";
 * import { groupedConvForwardKernel } from "./conv.ts";
 * await initGpu();
 * // Depthwise 3×3 on 2 channels of 4×4, padding 1: groups = cin = cout.
 * const g = { n: 1, cin: 2, h: 4, w: 4, cout: 2, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1,
 *   groups: 2, cinPerGroup: 1, coutPerGroup: 1, ho: 4, wo: 4 };
 * const y = Tensor.empty([1, 2, 4, 4]);
 * launch(groupedConvForwardKernel(g, false), [Tensor.ones([1, 2, 4, 4]), Tensor.ones([2, 1, 3, 3]), y], y.size);
 * console.log((await y.read())[5]); // 9: an inner pixel sees all 9 taps
 * ```
 */
export const groupedConvForwardKernel: (g: Conv2dGeometry, hasBias: boolean) => string = memoize((
  g: Conv2dGeometry,
  hasBias: boolean,
): string =>
  `${storage(...(hasBias ? ["x", "w", "b", "y!"] : ["x", "w", "y!"]))}
${flatMain(g.n * g.cout * g.ho * g.wo)}
  let ox = i % ${g.wo}u;
  let oy = (i / ${g.wo}u) % ${g.ho}u;
  let co = (i / ${g.wo * g.ho}u) % ${g.cout}u;
  let n = i / ${g.wo * g.ho * g.cout}u;
  let ciFirst = (co / ${g.coutPerGroup}u) * ${g.cinPerGroup}u;
  // Input pixel under tap (0, 0); taps landing in the zero padding add nothing, so skip them.
  let iy0 = i32(oy * ${g.sh}u) - ${g.ph};
  let ix0 = i32(ox * ${g.sw}u) - ${g.pw};
  let kyLo = u32(max(0, -iy0));
  let kyHi = u32(clamp(${g.h} - iy0, 0, ${g.kh}));
  let kxLo = u32(max(0, -ix0));
  let kxHi = u32(clamp(${g.w} - ix0, 0, ${g.kw}));
  var acc = ${hasBias ? "b[co]" : "0.0"};
  ${channelsOfGroup(g.cinPerGroup)}
    let xPlane = (n * ${g.cin}u + ciFirst + c) * ${g.h * g.w}u;
    let wPlane = (co * ${g.cinPerGroup}u + c) * ${g.kh * g.kw}u;
    for (var ky = kyLo; ky < kyHi; ky++) {
      let xRow = xPlane + u32(iy0 + i32(ky)) * ${g.w}u;
      let wRow = wPlane + ky * ${g.kw}u;
      for (var kx = kxLo; kx < kxHi; kx++) {
        acc += x[xRow + u32(ix0 + i32(kx))] * w[wRow + kx];
      }
    }
  }
  y[i] = acc;
}`
);

/** Gradient wrt the input of the grouped kernels; see {@linkcode groupedConvBackwardInputKernel}. */
function conv2dBackwardInput(gy: Tensor, w: Tensor, g: Conv2dGeometry): Tensor {
  const gx = Tensor.empty([g.n, g.cin, g.h, g.w]);
  launch(groupedConvBackwardInputKernel(g), [gy, w, gx], gx.size);
  return gx;
}

/**
 * WGSL of the grouped convolution's input gradient (bindings gy, w, gx):
 * each input value gathers `gy · w` over the outputs whose window covered it
 * (output `oy` sees input `iy` through tap `ky` when `oy·sh + ky = iy + ph`),
 * a transposed convolution without atomics. Cached per geometry; launch over
 * `gx.size`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { launch } from "./kernel.ts";
 * import { groupedConvBackwardInputKernel } from "./conv.ts";
 * await initGpu();
 * const g = { n: 1, cin: 1, h: 5, w: 5, cout: 1, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1,
 *   groups: 1, cinPerGroup: 1, coutPerGroup: 1, ho: 5, wo: 5 };
 * const gx = Tensor.empty([1, 1, 5, 5]);
 * launch(groupedConvBackwardInputKernel(g), [Tensor.ones([1, 1, 5, 5]), Tensor.ones([1, 1, 3, 3]), gx], gx.size);
 * console.log((await gx.read())[0]); // 4: a corner feeds 4 outputs
 * ```
 */
export const groupedConvBackwardInputKernel: (g: Conv2dGeometry) => string = memoize((
  g: Conv2dGeometry,
): string =>
  `${storage("gy", "w", "gx!")}
${flatMain(g.n * g.cin * g.h * g.w)}
  let ix = i % ${g.w}u;
  let iy = (i / ${g.w}u) % ${g.h}u;
  let ci = (i / ${g.w * g.h}u) % ${g.cin}u;
  let n = i / ${g.w * g.h * g.cin}u;
  let coFirst = (ci / ${g.cinPerGroup}u) * ${g.coutPerGroup}u;
  let cInGroup = ci % ${g.cinPerGroup}u;
  let ty = i32(iy) + ${g.ph};
  let tx = i32(ix) + ${g.pw};
  // Taps for which some output in [0, Ho) lies on this pixel.
  let kyLo = u32(max(0, ty - ${(g.ho - 1) * g.sh}));
  let kyHi = u32(min(ty + 1, ${g.kh}));
  let kxLo = u32(max(0, tx - ${(g.wo - 1) * g.sw}));
  let kxHi = u32(min(tx + 1, ${g.kw}));
  var acc = 0.0;
  ${channelsOfGroup(g.coutPerGroup)}
    let co = coFirst + c;
    let gyPlane = (n * ${g.cout}u + co) * ${g.ho * g.wo}u;
    let wPlane = (co * ${g.cinPerGroup}u + cInGroup) * ${g.kh * g.kw}u;
    for (var ky = kyLo; ky < kyHi; ky++) {
      let sy = ty - i32(ky);
      if (sy % ${g.sh} != 0) { continue; }
      let gyRow = gyPlane + u32(sy / ${g.sh}) * ${g.wo}u;
      for (var kx = kxLo; kx < kxHi; kx++) {
        let sx = tx - i32(kx);
        if (sx % ${g.sw} != 0) { continue; }
        acc += gy[gyRow + u32(sx / ${g.sw})] * w[wPlane + ky * ${g.kw}u + kx];
      }
    }
  }
  gx[i] = acc;
}`
);

/** Gradient wrt the weight of the grouped kernels; see {@linkcode groupedConvBackwardWeightKernel}. */
function conv2dBackwardWeight(gy: Tensor, x: Tensor, g: Conv2dGeometry): Tensor {
  const gw = Tensor.empty([g.cout, g.cinPerGroup, g.kh, g.kw]);
  launch(groupedConvBackwardWeightKernel(g), [gy, x, gw], grid1d(gw.size, 1));
  return gw;
}

/**
 * WGSL of the grouped convolution's weight gradient (bindings gy, x, gw):
 * one workgroup per weight value sums
 * `gy[n, co, oy, ox] · x[n, ci, oy·sh − ph + ky, ox·sw − pw + kx]` over
 * `N·Ho·Wo` (see {@linkcode sumPerOutputKernel}). Cached per geometry; launch
 * with `grid1d(gw.size, 1)`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { grid1d, Tensor } from "./tensor.ts";
 * import { launch } from "./kernel.ts";
 * import { groupedConvBackwardWeightKernel } from "./conv.ts";
 * await initGpu();
 * const g = { n: 2, cin: 1, h: 4, w: 4, cout: 1, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1,
 *   groups: 1, cinPerGroup: 1, coutPerGroup: 1, ho: 4, wo: 4 };
 * const gw = Tensor.empty([1, 1, 3, 3]);
 * launch(groupedConvBackwardWeightKernel(g), [Tensor.ones([2, 1, 4, 4]), Tensor.ones([2, 1, 4, 4]), gw], grid1d(9, 1));
 * console.log((await gw.read())[4]); // 32: the centre tap sees every pixel of both images
 * ```
 */
export const groupedConvBackwardWeightKernel: (g: Conv2dGeometry) => string = memoize((
  g: Conv2dGeometry,
): string =>
  sumPerOutputKernel({
    buffers: ["gy", "x", "gw!"],
    count: g.cout * g.cinPerGroup * g.kh * g.kw,
    terms: g.n * g.ho * g.wo,
    setup: `let kx = o % ${g.kw}u;
  let ky = (o / ${g.kw}u) % ${g.kh}u;
  let cInGroup = (o / ${g.kw * g.kh}u) % ${g.cinPerGroup}u;
  let co = o / ${g.kw * g.kh * g.cinPerGroup}u;
  let ci = (co / ${g.coutPerGroup}u) * ${g.cinPerGroup}u + cInGroup;`,
    term: `let ox = r % ${g.wo}u;
    let oy = (r / ${g.wo}u) % ${g.ho}u;
    let n = r / ${g.wo * g.ho}u;
    let iy = i32(oy * ${g.sh}u + ky) - ${g.ph};
    let ix = i32(ox * ${g.sw}u + kx) - ${g.pw};
    if (iy >= 0 && iy < ${g.h} && ix >= 0 && ix < ${g.w}) {
      acc += gy[(n * ${g.cout}u + co) * ${g.ho * g.wo}u + oy * ${g.wo}u + ox] *
        x[(n * ${g.cin}u + ci) * ${g.h * g.w}u + u32(iy) * ${g.w}u + u32(ix)];
    }`,
  })
);

/**
 * The bias gradient of an NCHW output: `gb[c] = Σ_{n, y, x} gy[n, c, y, x]`,
 * as {@linkcode columnReduce} sums it: each channel's positions cut into
 * strips over many workgroups (one workgroup per channel left most of a
 * large GPU idle where there are few channels of many positions each: a
 * network's first stage).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { channelSum } from "./conv.ts";
 * await initGpu();
 * const gy = Tensor.ones([2, 3, 4, 4]); // N=2, C=3, 4×4
 * console.log(await channelSum(gy).read()); // Float32Array [32, 32, 32]
 * ```
 */
export function channelSum(gy: Tensor): Tensor {
  const [n, c, h, w] = gy.shape;
  const hw = h * w;
  const gb = Tensor.empty([c]);
  columnReduce({
    rows: n * hw,
    cols: c,
    inputs: { gy },
    term: `gy[((r / ${hw}u) * ${c}u + c) * ${hw}u + r % ${hw}u]`,
  }, gb);
  return gb;
}
