/**
 * Plain CPU reference implementations (float64 loops) of every op, written
 * for clarity, not speed. GPU kernels are checked against these, and their
 * backward passes against finite differences of these.
 */

/** erf to double precision (Abramowitz–Stegun 7.1.26 is too coarse; this is a series/continued fraction). */
export function erf(x: number): number {
  const a = Math.abs(x);
  let r: number;
  if (a < 2.5) {
    // Maclaurin series: converges fast for |x| < 2.5.
    let term = a;
    let s = a;
    const z = a * a;
    for (let n = 1; n < 60; n++) {
      term *= -z / n;
      s += term / (2 * n + 1);
    }
    r = (2 / Math.sqrt(Math.PI)) * s;
  } else {
    // Continued fraction for erfc, evaluated bottom-up.
    let f = 0;
    for (let n = 60; n >= 1; n--) f = (n / 2) / (a + f);
    r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  }
  return x < 0 ? -r : r;
}

// ==================================================================== norm: batchNorm2d, layerNorm,
// layerNormChannelsFirst (ops/norm.ts)

/** Per-channel batch mean and biased variance of x [N, C, H, W]. */
export function batchStatsRef(
  x: ArrayLike<number>,
  shape: number[],
): { mean: number[]; variance: number[] } {
  const [n, c, h, w] = shape;
  const hw = h * w;
  const mean: number[] = [];
  const variance: number[] = [];
  for (let ch = 0; ch < c; ch++) {
    let s = 0;
    for (let b = 0; b < n; b++) for (let p = 0; p < hw; p++) s += x[(b * c + ch) * hw + p];
    const m = s / (n * hw);
    let q = 0;
    for (let b = 0; b < n; b++) {
      for (let p = 0; p < hw; p++) q += (x[(b * c + ch) * hw + p] - m) ** 2;
    }
    mean.push(m);
    variance.push(q / (n * hw));
  }
  return { mean, variance };
}

/**
 * nn.BatchNorm2d forward on x [N, C, H, W]: batch statistics when `mean`/`variance` are not
 * given (training), else those (eval, the running statistics).
 */
export function batchNorm2dRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  shape: number[],
  eps: number,
  stats?: { mean: ArrayLike<number>; variance: ArrayLike<number> },
): Float64Array {
  const [n, c, h, w] = shape;
  const hw = h * w;
  const { mean, variance } = stats ?? batchStatsRef(x, shape);
  const y = new Float64Array(n * c * hw);
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      for (let p = 0; p < hw; p++) {
        const i = (b * c + ch) * hw + p;
        y[i] = (x[i] - mean[ch]) / Math.sqrt(variance[ch] + eps) * weight[ch] + bias[ch];
      }
    }
  }
  return y;
}

/** PyTorch's running-buffer update after one training step (unbiased variance for runningVar). */
export function batchNormRunningRef(
  x: ArrayLike<number>,
  shape: number[],
  runningMean: ArrayLike<number>,
  runningVar: ArrayLike<number>,
  momentum: number,
): { runningMean: number[]; runningVar: number[] } {
  const count = shape[0] * shape[2] * shape[3];
  const { mean, variance } = batchStatsRef(x, shape);
  return {
    runningMean: mean.map((m, c) => (1 - momentum) * runningMean[c] + momentum * m),
    runningVar: variance.map((v, c) =>
      (1 - momentum) * runningVar[c] + momentum * v * count / (count - 1)
    ),
  };
}

/**
 * Layer norm over the channels of x viewed as [outer, C, inner] (channels-last: inner = 1;
 * channels-first [N, C, H, W]: outer = N, inner = H·W), biased variance.
 */
export function layerNormRef(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  outer: number,
  channels: number,
  inner: number,
  eps: number,
): Float64Array {
  const y = new Float64Array(outer * channels * inner);
  for (let o = 0; o < outer; o++) {
    for (let p = 0; p < inner; p++) {
      const at = (c: number) => (o * channels + c) * inner + p;
      let s = 0;
      for (let c = 0; c < channels; c++) s += x[at(c)];
      const m = s / channels;
      let q = 0;
      for (let c = 0; c < channels; c++) q += (x[at(c)] - m) ** 2;
      const rstd = 1 / Math.sqrt(q / channels + eps);
      for (let c = 0; c < channels; c++) y[at(c)] = (x[at(c)] - m) * rstd * weight[c] + bias[c];
    }
  }
  return y;
}
// ==================================================================== end norm

// ==================================================================== conv: conv2d, depthwiseConv2d
// (ops/conv.ts, ops/depthwise.ts)

/**
 * nn.Conv2d forward with zero padding: x [N, Cin, H, W], w [Cout, Cin/groups, KH, KW], b [Cout]
 * or null. Depthwise convolution is the case groups = C. Every tap is visited and out-of-image
 * taps are skipped one by one, independently of the GPU kernels' clamped loop bounds.
 */
export function conv2dRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  xShape: number[],
  wShape: number[],
  { stride = [1, 1], padding = [0, 0], groups = 1 }: {
    stride?: number[];
    padding?: number[];
    groups?: number;
  } = {},
): Float64Array {
  const [n, cin, h, wd] = xShape;
  const [cout, cinPerGroup, kh, kw] = wShape;
  const [sh, sw] = stride;
  const [ph, pw] = padding;
  const ho = Math.floor((h + 2 * ph - kh) / sh) + 1;
  const wo = Math.floor((wd + 2 * pw - kw) / sw) + 1;
  const coutPerGroup = cout / groups;
  const y = new Float64Array(n * cout * ho * wo);
  for (let bi = 0; bi < n; bi++) {
    for (let co = 0; co < cout; co++) {
      const group = Math.floor(co / coutPerGroup);
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          let s = b ? b[co] : 0;
          for (let c = 0; c < cinPerGroup; c++) {
            const ci = group * cinPerGroup + c;
            for (let ky = 0; ky < kh; ky++) {
              const iy = oy * sh - ph + ky;
              if (iy < 0 || iy >= h) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ix = ox * sw - pw + kx;
                if (ix < 0 || ix >= wd) continue;
                s += x[((bi * cin + ci) * h + iy) * wd + ix] *
                  w[((co * cinPerGroup + c) * kh + ky) * kw + kx];
              }
            }
          }
          y[((bi * cout + co) * ho + oy) * wo + ox] = s;
        }
      }
    }
  }
  return y;
}
// ==================================================================== end conv

// ==================================================================== misc: matmul, linear,
// softmaxCrossEntropy, meanHW, maxPool2d, permute, concat (ops/matmul.ts, ops/loss.ts,
// ops/pool.ts, ops/shape.ts)

/**
 * torch.matmul of op(a) [..., M, K] and op(b) [..., K, N] with NumPy-broadcast batch axes, where
 * op transposes the last two axes of an operand stored transposed (aShape/bShape are as stored).
 */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  aShape: number[],
  bShape: number[],
  transA = false,
  transB = false,
): Float64Array {
  const [a0, a1] = aShape.slice(-2);
  const [b0, b1] = bShape.slice(-2);
  const [m, k] = transA ? [a1, a0] : [a0, a1];
  const n = transB ? b0 : b1;
  const aBatch = aShape.slice(0, -2);
  const bBatch = bShape.slice(0, -2);
  const rank = Math.max(aBatch.length, bBatch.length);
  const pa = [...new Array(rank - aBatch.length).fill(1), ...aBatch];
  const pb = [...new Array(rank - bBatch.length).fill(1), ...bBatch];
  const batch = pa.map((d, i) => Math.max(d, pb[i]));
  const count = batch.reduce((x, y) => x * y, 1);
  const y = new Float64Array(count * m * n);
  for (let bt = 0; bt < count; bt++) {
    // Coordinates of batch bt, then the operands' own (broadcast) batch indices.
    let rest = bt;
    const coord = new Array(rank).fill(0);
    for (let d = rank - 1; d >= 0; d--) {
      coord[d] = rest % batch[d];
      rest = Math.floor(rest / batch[d]);
    }
    let ai = 0;
    let bi = 0;
    for (let d = 0; d < rank; d++) {
      ai = ai * pa[d] + (pa[d] === 1 ? 0 : coord[d]);
      bi = bi * pb[d] + (pb[d] === 1 ? 0 : coord[d]);
    }
    const A = (r: number, c: number) => a[ai * m * k + (transA ? c * m + r : r * k + c)];
    const B = (r: number, c: number) => b[bi * k * n + (transB ? c * k + r : r * n + c)];
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let s = 0;
        for (let j = 0; j < k; j++) s += A(r, j) * B(j, c);
        y[(bt * m + r) * n + c] = s;
      }
    }
  }
  return y;
}

/** nn.Linear: x [rows, in] (any leading axes flattened), w [out, in], b [out] or null. */
export function linearRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  inFeatures: number,
  outFeatures: number,
): Float64Array {
  const rows = x.length / inFeatures;
  const y = new Float64Array(rows * outFeatures);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outFeatures; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inFeatures; i++) s += x[r * inFeatures + i] * w[o * inFeatures + i];
      y[r * outFeatures + o] = s;
    }
  }
  return y;
}

/**
 * Mean softmax cross-entropy of logits [N, K] (one-element array): with class labels and label
 * smoothing ε (target (1 − ε)·onehot + ε/K, as nn.CrossEntropyLoss), or with soft targets [N, K]
 * (−Σ t·log_softmax, as timm's SoftTargetCrossEntropy).
 */
export function softmaxCrossEntropyRef(
  logits: ArrayLike<number>,
  classes: number,
  target: { labels: ArrayLike<number>; smoothing?: number } | { soft: ArrayLike<number> },
): number[] {
  const rows = logits.length / classes;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < classes; c++) m = Math.max(m, logits[r * classes + c]);
    let s = 0;
    for (let c = 0; c < classes; c++) s += Math.exp(logits[r * classes + c] - m);
    const lse = m + Math.log(s);
    for (let c = 0; c < classes; c++) {
      let t: number;
      if ("soft" in target) t = target.soft[r * classes + c];
      else {
        const eps = target.smoothing ?? 0;
        t = (c === target.labels[r] ? 1 - eps : 0) + eps / classes;
      }
      total -= t * (logits[r * classes + c] - lse);
    }
  }
  return [total / rows];
}

/** Mean over H, W of x [N, C, H, W] → [N, C]. */
export function meanHWRef(x: ArrayLike<number>, shape: number[]): Float64Array {
  const [n, c, h, w] = shape;
  const y = new Float64Array(n * c);
  for (let p = 0; p < n * c; p++) {
    let s = 0;
    for (let j = 0; j < h * w; j++) s += x[p * h * w + j];
    y[p] = s / (h * w);
  }
  return y;
}

/** nn.MaxPool2d(kernel, stride, padding), ceil_mode=False, −∞ padding, on x [N, C, H, W]. */
export function maxPool2dRef(
  x: ArrayLike<number>,
  shape: number[],
  kernel: number,
  stride: number,
  padding: number,
): Float64Array {
  const [n, c, h, w] = shape;
  const oh = Math.floor((h + 2 * padding - kernel) / stride) + 1;
  const ow = Math.floor((w + 2 * padding - kernel) / stride) + 1;
  const y = new Float64Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        let best = -Infinity;
        for (let ky = 0; ky < kernel; ky++) {
          for (let kx = 0; kx < kernel; kx++) {
            const iy = oy * stride - padding + ky;
            const ix = ox * stride - padding + kx;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            best = Math.max(best, x[(p * h + iy) * w + ix]);
          }
        }
        y[(p * oh + oy) * ow + ox] = best;
      }
    }
  }
  return y;
}

/** torch.permute: output axis d is input axis dims[d]. */
export function permuteRef(x: ArrayLike<number>, shape: number[], dims: number[]): Float64Array {
  const outShape = dims.map((d) => shape[d]);
  const inStrides = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) inStrides[i] = inStrides[i + 1] * shape[i + 1];
  const y = new Float64Array(x.length);
  for (let o = 0; o < y.length; o++) {
    let rest = o;
    let at = 0;
    for (let d = outShape.length - 1; d >= 0; d--) {
      at += (rest % outShape[d]) * inStrides[dims[d]];
      rest = Math.floor(rest / outShape[d]);
    }
    y[o] = x[at];
  }
  return y;
}

/** torch.cat of tensors with the given shapes along `axis`. */
export function concatRef(xs: ArrayLike<number>[], shapes: number[][], axis: number): Float64Array {
  const outer = shapes[0].slice(0, axis).reduce((a, b) => a * b, 1);
  const chunks = shapes.map((s) => s.slice(axis).reduce((a, b) => a * b, 1));
  const y: number[] = [];
  for (let o = 0; o < outer; o++) {
    xs.forEach((x, k) => {
      for (let j = 0; j < chunks[k]; j++) y.push(x[o * chunks[k] + j]);
    });
  }
  return Float64Array.from(y);
}
// ==================================================================== end misc

// ==================================================================== shift: addShift, selectChannels, grn
// (ops/shift.ts)

/** The integer tables of an add-shift (see ops/shift.ts `ShiftPlanSpec`). */
export interface AddShiftRefPlan {
  channels: number;
  nk: number;
  groups: number;
  extraPad: number;
  padH: ArrayLike<number>;
  padV: ArrayLike<number>;
  identity: ArrayLike<number>;
}

/**
 * One map of ShiftwiseConv's add-shift, written as the official CUDA kernel
 * does it: every input element is scattered (added) into the outputs it
 * reaches. x: [B, C·nk, H+2e, W+2e] → [B, C, H, W].
 */
export function addShiftRef(
  x: ArrayLike<number>,
  [b, cin, hin, win]: number[],
  plan: AddShiftRefPlan,
  map: "horizontal" | "vertical" | "identity",
): Float64Array {
  const { channels: c, nk, groups: g, extraPad: e } = plan;
  const h = hin - 2 * e;
  const w = win - 2 * e;
  const y = new Float64Array(b * c * h * w);
  const put = (n: number, oc: number, oh: number, ow: number, v: number) => {
    if (oh >= 0 && oh < h && ow >= 0 && ow < w) y[((n * c + oc) * h + oh) * w + ow] += v;
  };
  for (let n = 0; n < b; n++) {
    for (let j = 0; j < cin; j++) {
      const oc = Math.floor(j / nk);
      for (let ph = 0; ph < hin; ph++) {
        for (let pw = 0; pw < win; pw++) {
          const v = x[((n * cin + j) * hin + ph) * win + pw];
          for (let k = 0; k < g; k++) {
            if (map === "horizontal") put(n, oc, ph - e, pw + plan.padH[j * g + k], v);
            else if (map === "vertical") put(n, oc, ph + plan.padV[j * g + k], pw - e, v);
            else if (plan.identity[oc * g + k] === j) put(n, oc, ph - e, pw - e, v);
          }
        }
      }
    }
  }
  return y;
}

/** torch.index_select(x, 1, indices) for x of shape [N, C, ...inner]. */
export function selectChannelsRef(
  x: ArrayLike<number>,
  shape: number[],
  indices: number[],
): Float64Array {
  const [n, c] = shape;
  const inner = shape.slice(2).reduce((a, d) => a * d, 1);
  const y = new Float64Array(n * indices.length * inner);
  for (let b = 0; b < n; b++) {
    indices.forEach((ch, k) => {
      for (let r = 0; r < inner; r++) {
        y[(b * indices.length + k) * inner + r] = x[(b * c + ch) * inner + r];
      }
    });
  }
  return y;
}

/** GRN (ConvNeXt V2, `GRNwithNHWC` with bias) on x [N, H, W, C]. */
export function grnRef(
  x: ArrayLike<number>,
  [n, h, w, c]: number[],
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  eps = 1e-6,
): Float64Array {
  const y = new Float64Array(n * h * w * c);
  for (let b = 0; b < n; b++) {
    const norms = new Float64Array(c);
    for (let p = 0; p < h * w; p++) {
      for (let ch = 0; ch < c; ch++) norms[ch] += x[(b * h * w + p) * c + ch] ** 2;
    }
    for (let ch = 0; ch < c; ch++) norms[ch] = Math.sqrt(norms[ch]);
    const mean = norms.reduce((a, v) => a + v, 0) / c;
    for (let p = 0; p < h * w; p++) {
      for (let ch = 0; ch < c; ch++) {
        const i = (b * h * w + p) * c + ch;
        y[i] = (gamma[ch] * norms[ch] / (mean + eps) + 1) * x[i] + beta[ch];
      }
    }
  }
  return y;
}
// ==================================================================== end shift
