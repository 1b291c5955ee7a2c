/**
 * The ops of ShiftwiseConv (Li et al., CVPR 2025) beyond the common set, each
 * with its backward, all plain gathers (one invocation per output element, no
 * atomics):
 *
 * - {@linkcode addShift}: the SW "add-shift" operator (the official CUDA op
 *   `addshift_kernel_vmp.cu`, `AddShift_mp_module`): sums shifted copies of
 *   the outputs of a one-to-many 3×3 group conv into a horizontal-strip, a
 *   vertical-strip and a small (identity) map, emulating an N×M, an M×N and
 *   an N×N kernel. Its index tables are a {@linkcode ShiftPlan}.
 * - {@linkcode selectChannels}: `torch.index_select(x, 1, indices)`, which
 *   splits the SW channels from the "ghost" channels.
 * - {@linkcode grn}: ConvNeXt-V2's Global Response Normalization on NHWC, as
 *   the official `GRNwithNHWC` (used in the SW block's MLP).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { addShift, ShiftPlan } from "./shift.ts";
 * await initGpu();
 * // One output channel fed by nk = 2 conv outputs, extra padding 1: [1, 2, 3, 4] → [1, 1, 1, 2].
 * const x = Tensor.from(Array.from({ length: 24 }, (_, i) => i), [1, 2, 3, 4]);
 * const plan = new ShiftPlan({
 *   channels: 1, nk: 2, groups: 1, extraPad: 1,
 *   padH: [1, -1], padV: [0, -1], identity: [1],
 * });
 * console.log(await addShift(x, plan, "horizontal").read()); // Float32Array [17, 22]
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { elementwiseKernel, launch } from "./kernel.ts";
import { f32, keep, numel, Tensor } from "./tensor.ts";

// ---------------------------------------------------------------- add-shift

/** Which of the three add-shift maps to compute. */
export type ShiftMap = "horizontal" | "vertical" | "identity";

/** The index tables of an add-shift, as plain integers. */
export interface ShiftPlanSpec {
  /** C: output channels per map (the SW channels, `repN`). */
  channels: number;
  /** Input channels per output channel (`⌈M/N⌉`): output c reads inputs c·nk … c·nk+nk−1. */
  nk: number;
  /** G: shift groups (`N_rep`, the paper's edges), each with its own shifts, summed. */
  groups: number;
  /** e: how much larger than the output the input is on each side (conv padding − N//2). */
  extraPad: number;
  /** Column shift of input channel j in group g, at `j·G + g` (C·nk·G values). */
  padH: ArrayLike<number>;
  /** Row shift of input channel j in group g, at `j·G + g` (C·nk·G values). */
  padV: ArrayLike<number>;
  /** The input channel (absolute, in c·nk … c·nk+nk−1) that output c takes in group g, at `c·G + g`. */
  identity: ArrayLike<number>;
}

/**
 * The index tables of an add-shift: the integers of a {@linkcode ShiftPlanSpec},
 * uploaded once (as exact small f32 integers) on first use and kept until
 * {@linkcode ShiftPlan.dispose}.
 */
export class ShiftPlan {
  readonly channels: number;
  readonly nk: number;
  readonly groups: number;
  readonly extraPad: number;
  readonly padH: Int32Array;
  readonly padV: Int32Array;
  readonly identity: Int32Array;
  #tables: Record<ShiftMap, Tensor> | null = null;

  constructor(spec: ShiftPlanSpec) {
    const { channels, nk, groups, extraPad } = spec;
    for (const [k, v] of Object.entries({ channels, nk, groups })) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`ShiftPlan: ${k} must be ≥ 1, got ${v}`);
    }
    if (!Number.isInteger(extraPad) || extraPad < 0) {
      throw new Error(`ShiftPlan: extraPad must be ≥ 0, got ${extraPad}`);
    }
    const perInput = channels * nk * groups;
    const ints = (name: string, a: ArrayLike<number>, n: number) => {
      if (a.length !== n) throw new Error(`ShiftPlan: ${name} needs ${n} values, got ${a.length}`);
      const out = Int32Array.from(a);
      if (out.some((v, i) => v !== a[i])) throw new Error(`ShiftPlan: ${name} must be integers`);
      return out;
    };
    this.channels = channels;
    this.nk = nk;
    this.groups = groups;
    this.extraPad = extraPad;
    this.padH = ints("padH", spec.padH, perInput);
    this.padV = ints("padV", spec.padV, perInput);
    this.identity = ints("identity", spec.identity, channels * groups);
    this.identity.forEach((j, k) => {
      const c = Math.floor(k / groups);
      if (j < c * nk || j >= (c + 1) * nk) {
        throw new Error(
          `ShiftPlan: identity[${k}] = ${j} is not one of output ${c}'s inputs ${c * nk}…${
            c * nk + nk - 1
          }`,
        );
      }
    });
  }

  /** Input channels: C·nk. */
  get inChannels(): number {
    return this.channels * this.nk;
  }

  /** The GPU table a map reads (uploaded on first use). */
  table(map: ShiftMap): Tensor {
    if (!this.#tables) {
      const up = (a: Int32Array) => keep(Tensor.from(Float32Array.from(a), [a.length]));
      this.#tables = {
        horizontal: up(this.padH),
        vertical: up(this.padV),
        identity: up(this.identity),
      };
    }
    return this.#tables[map];
  }

  /** Free the GPU tables (they are uploaded again if used later). */
  dispose(): void {
    if (!this.#tables) return;
    for (const t of Object.values(this.#tables)) t.dispose();
    this.#tables = null;
  }
}

function shiftGeometry(x: Tensor, plan: ShiftPlan) {
  if (x.rank !== 4) throw new Error(`addShift: expected [B, C·nk, H+2e, W+2e], got [${x.shape}]`);
  const [b, cin, hin, win] = x.shape;
  const e = plan.extraPad;
  if (cin !== plan.inChannels) {
    throw new Error(
      `addShift: input has ${cin} channels, the plan expects ${plan.inChannels} (${plan.channels}·${plan.nk})`,
    );
  }
  if (hin <= 2 * e || win <= 2 * e) {
    throw new Error(`addShift: input ${hin}×${win} leaves no output with extraPad ${e}`);
  }
  return {
    b,
    cin,
    hin,
    win,
    e,
    c: plan.channels,
    nk: plan.nk,
    g: plan.groups,
    h: hin - 2 * e,
    w: win - 2 * e,
  };
}

type Geometry = ReturnType<typeof shiftGeometry>;

/** WGSL body of the forward gather of one map: `i` is a flat output index [B, C, H, W]. */
function forwardBody(map: ShiftMap, s: Geometry): string {
  const { cin, hin, win, e, c, nk, g, h, w } = s;
  const head = `let ow = i % ${w}u;
  let oh = (i / ${w}u) % ${h}u;
  let c = (i / ${h * w}u) % ${c}u;
  let n = i / ${c * h * w}u;
  var acc = 0.0;`;
  if (map === "identity") {
    return `${head}
  for (var k = 0u; k < ${g}u; k++) {
    let j = u32(tab[c * ${g}u + k]);
    acc += x[((n * ${cin}u + j) * ${hin}u + oh + ${e}u) * ${win}u + ow + ${e}u];
  }
  y[i] = acc;`;
  }
  const inner = map === "horizontal"
    ? `let col = i32(ow) - i32(tab[j * ${g}u + k]);
      if (col >= 0 && col < ${win}) { acc += x[(plane + oh + ${e}u) * ${win}u + u32(col)]; }`
    : `let row = i32(oh) - i32(tab[j * ${g}u + k]);
      if (row >= 0 && row < ${hin}) { acc += x[(plane + u32(row)) * ${win}u + ow + ${e}u]; }`;
  return `${head}
  for (var t = 0u; t < ${nk}u; t++) {
    let j = c * ${nk}u + t;
    let plane = (n * ${cin}u + j) * ${hin}u;
    for (var k = 0u; k < ${g}u; k++) {
      ${inner}
    }
  }
  y[i] = acc;`;
}

/** WGSL body of the backward gather of one map: `i` is a flat input index [B, C·nk, H+2e, W+2e]. */
function backwardBody(map: ShiftMap, s: Geometry): string {
  const { cin, hin, win, e, c, nk, g, h, w } = s;
  const head = `let pw = i % ${win}u;
  let ph = (i / ${win}u) % ${hin}u;
  let j = (i / ${hin * win}u) % ${cin}u;
  let n = i / ${cin * hin * win}u;
  let c = j / ${nk}u;
  let plane = (n * ${c}u + c) * ${h}u;
  var acc = 0.0;`;
  let body: string;
  if (map === "identity") {
    body = `let oh = i32(ph) - ${e};
  let ow = i32(pw) - ${e};
  if (oh >= 0 && oh < ${h} && ow >= 0 && ow < ${w}) {
    var hits = 0.0;
    for (var k = 0u; k < ${g}u; k++) {
      if (u32(tab[c * ${g}u + k]) == j) { hits += 1.0; }
    }
    acc = hits * g[(plane + u32(oh)) * ${w}u + u32(ow)];
  }`;
  } else if (map === "horizontal") {
    body = `let oh = i32(ph) - ${e};
  if (oh >= 0 && oh < ${h}) {
    for (var k = 0u; k < ${g}u; k++) {
      let ow = i32(pw) + i32(tab[j * ${g}u + k]);
      if (ow >= 0 && ow < ${w}) { acc += g[(plane + u32(oh)) * ${w}u + u32(ow)]; }
    }
  }`;
  } else {
    body = `let ow = i32(pw) - ${e};
  if (ow >= 0 && ow < ${w}) {
    for (var k = 0u; k < ${g}u; k++) {
      let oh = i32(ph) + i32(tab[j * ${g}u + k]);
      if (oh >= 0 && oh < ${h}) { acc += g[(plane + u32(oh)) * ${w}u + u32(ow)]; }
    }
  }`;
  }
  return `${head}
  ${body}
  y[i] = acc;`;
}

/**
 * One map of ShiftwiseConv's add-shift (the official `AddShift_mp_module`,
 * whose CUDA kernel scatters with atomics; this gathers). `x` is the output of
 * the one-to-many group conv, `[B, C·nk, H+2e, W+2e]` (input channel
 * j = c·nk + t is the t-th conv output of SW channel c); the result is
 * `[B, C, H, W]`. With `pad…[j, g]` = `plan.pad…[j·G + g]` and out-of-range
 * input positions read as zero:
 *
 * - `"horizontal"` (strip along W, the official first output, `lora1`):
 *   `y[b,c,h,w] = Σ_t Σ_g x[b, c·nk+t, h+e, w − padH[c·nk+t, g]]`
 * - `"vertical"` (strip along H, `lora2`):
 *   `y[b,c,h,w] = Σ_t Σ_g x[b, c·nk+t, h − padV[c·nk+t, g], w+e]`
 * - `"identity"` (the small kernel, `small`):
 *   `y[b,c,h,w] = Σ_g x[b, identity[c, g], h+e, w+e]`
 *
 * In the official plan (see `officialShiftPlan` in models/shiftwise.ts) the
 * shifts of the nk channels of one SW channel are `M//2 − (N−1) − N·i`
 * (i = 0…nk−1), permuted at random per channel and per group, so with N = 3
 * the 3×3 windows of the nk conv outputs tile a 3 × 3·nk strip centred on the
 * output pixel. The shift op costs no multiply-accumulates (fvcore sees an
 * opaque Python op; it is indexing and adds).
 *
 * The backward is the transposed gather: each input element sums the output
 * gradients it was added into. Differentiable in `x`; the plan is constant.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { addShift, ShiftPlan } from "./shift.ts";
 * await initGpu();
 * // x[0, t] is a 3×4 plane with values 12·t + 4·row + col.
 * const x = Tensor.from(Array.from({ length: 24 }, (_, i) => i), [1, 2, 3, 4]);
 * const plan = new ShiftPlan({
 *   channels: 1, nk: 2, groups: 1, extraPad: 1,
 *   padH: [1, -1], padV: [0, -1], identity: [1],
 * });
 * // horizontal: y[w] = x[0,0,1,w−1] + x[0,1,1,w+1] = [0 + 17, 4 + 18]
 * console.log(await addShift(x, plan, "horizontal").read()); // Float32Array [17, 22]
 * // vertical: y[w] = x[0,0,0,w+1] + x[0,1,1,w+1] = [1 + 17, 2 + 18]
 * console.log(await addShift(x, plan, "vertical").read()); // Float32Array [18, 20]
 * // identity: y[w] = x[0,1,1,w+1]
 * console.log(await addShift(x, plan, "identity").read()); // Float32Array [17, 18]
 * ```
 */
export function addShift(x: Tensor, plan: ShiftPlan, map: ShiftMap): Tensor {
  const s = shiftGeometry(x, plan);
  const y = Tensor.empty([s.b, s.c, s.h, s.w]);
  const tab = plan.table(map);
  launch(elementwiseKernel(y.size, ["x", "tab"], forwardBody(map, s)), [x, tab, y], y.size);
  record(`addShift.${map}`, [x], y, [tab], (gy, [sTab]) => {
    const gx = Tensor.empty(x.shape);
    launch(elementwiseKernel(gx.size, ["g", "tab"], backwardBody(map, s)), [gy, sTab, gx], gx.size);
    return [gx];
  });
  return y;
}

// ---------------------------------------------------------------- channel selection

/** WGSL private array of u32 or i32 values. */
function wgslArray(name: string, type: "u32" | "i32", values: readonly number[]): string {
  const lit = values.map((v) => `${v}${type === "u32" ? "u" : "i"}`).join(", ");
  return `var<private> ${name}: array<${type}, ${values.length}> = array<${type}, ${values.length}>(${lit});`;
}

/**
 * `torch.index_select(x, 1, indices)`: the channels `indices` (distinct, in
 * the given order) of `x` `[N, C, …]`, shape `[N, indices.length, …]`. The
 * backward puts each gradient channel back at its source channel (zeros
 * elsewhere).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { selectChannels } from "./shift.ts";
 * await initGpu();
 * const x = Tensor.from([0, 1, 2, 3, 4, 5], [1, 3, 2]);
 * console.log(await selectChannels(x, [2, 0]).read()); // Float32Array [4, 5, 0, 1]
 * ```
 */
export function selectChannels(x: Tensor, indices: readonly number[]): Tensor {
  if (x.rank < 2) throw new Error(`selectChannels: expected [N, C, …], got [${x.shape}]`);
  const [n, c] = x.shape;
  const rest = x.shape.slice(2);
  const inner = numel(rest);
  const k = indices.length;
  if (new Set(indices).size !== k || indices.some((i) => !Number.isInteger(i) || i < 0 || i >= c)) {
    throw new Error(`selectChannels: indices must be distinct channels in 0…${c - 1}`);
  }
  const y = Tensor.empty([n, k, ...rest]);
  if (y.size === 0) return y;
  const body = `let r = i % ${inner}u;
  let k = (i / ${inner}u) % ${k}u;
  let n = i / ${inner * k}u;
  y[i] = x[(n * ${c}u + SEL[k]) * ${inner}u + r];`;
  launch(elementwiseKernel(y.size, ["x"], body, wgslArray("SEL", "u32", indices)), [x, y], y.size);
  record("selectChannels", [x], y, [], (g) => {
    const position = new Array<number>(c).fill(-1);
    indices.forEach((ch, p) => (position[ch] = p));
    const gx = Tensor.empty(x.shape);
    const back = `let r = i % ${inner}u;
  let ch = (i / ${inner}u) % ${c}u;
  let n = i / ${inner * c}u;
  let p = POS[ch];
  y[i] = select(0.0, x[(n * ${k}u + u32(max(p, 0))) * ${inner}u + r], p >= 0);`;
    launch(
      elementwiseKernel(gx.size, ["x"], back, wgslArray("POS", "i32", position)),
      [g, gx],
      gx.size,
    );
    return [gx];
  });
  return y;
}

// ---------------------------------------------------------------- GRN

/** A kernel with one invocation per output element over `n` outputs, body given as WGSL. */
function run(inputs: Tensor[], names: string[], shape: number[], body: string): Tensor {
  const y = Tensor.empty(shape);
  launch(elementwiseKernel(y.size, names, body), [...inputs, y], y.size);
  return y;
}

/**
 * Global Response Normalization (ConvNeXt V2) on channels-last `x`
 * `[N, H, W, C]`, as the official `GRNwithNHWC` with bias:
 * `G = ‖x[n,:,:,c]‖₂`, `Nx = G / (mean_c G + eps)`,
 * `y = (gamma·Nx + 1)·x + beta`. `gamma`, `beta` hold C values (any shape,
 * officially `[1, 1, 1, C]`). Differentiable in all three; where a channel's
 * norm is 0 its norm has gradient 0, as `torch.norm`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { grn } from "./shift.ts";
 * await initGpu();
 * const x = Tensor.from([3, 0, 4, 2], [1, 2, 1, 2]); // channel norms 5 and 2, mean 3.5
 * const y = grn(x, Tensor.ones([1, 1, 1, 2]), Tensor.zeros([1, 1, 1, 2]));
 * console.log(await y.read()); // ≈ [7.29, 0, 9.71, 3.14]
 * ```
 */
export function grn(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-6): Tensor {
  if (x.rank !== 4) throw new Error(`grn: expected [N, H, W, C], got [${x.shape}]`);
  const [n, h, w, c] = x.shape;
  if (gamma.size !== c || beta.size !== c) {
    throw new Error(`grn: gamma and beta need ${c} values, got ${gamma.size} and ${beta.size}`);
  }
  const hw = h * w;
  const norms = run(
    [x],
    ["x"],
    [n, c],
    `let ch = i % ${c}u;
  let base = (i / ${c}u) * ${hw}u;
  var acc = 0.0;
  for (var p = 0u; p < ${hw}u; p++) { let v = x[(base + p) * ${c}u + ch]; acc += v * v; }
  y[i] = sqrt(acc);`,
  );
  // den[n] = mean over channels of the norms + eps.
  const den = run(
    [norms],
    ["gx"],
    [n],
    `var acc = 0.0;
  for (var ch = 0u; ch < ${c}u; ch++) { acc += gx[i * ${c}u + ch]; }
  y[i] = acc * ${f32(1 / c)} + ${f32(eps)};`,
  );
  const y = run(
    [x, norms, den, gamma, beta],
    ["x", "gx", "den", "gamma", "beta"],
    [...x.shape],
    `let ch = i % ${c}u;
  let n = i / ${hw * c}u;
  y[i] = (gamma[ch] * gx[n * ${c}u + ch] / den[n] + 1.0) * x[i] + beta[ch];`,
  );
  record("grn", [x, gamma, beta], y, [x, norms, den, gamma], (g, [sx, sNorms, sDen, sGamma]) => {
    // a[n,c] = Σ_hw g·x: the gradient reaching Nx[n,c] is gamma[c]·a[n,c].
    const a = run(
      [g, sx],
      ["g", "x"],
      [n, c],
      `let ch = i % ${c}u;
  let base = (i / ${c}u) * ${hw}u;
  var acc = 0.0;
  for (var p = 0u; p < ${hw}u; p++) { let k = (base + p) * ${c}u + ch; acc += g[k] * x[k]; }
  y[i] = acc;`,
    );
    // t[n] = Σ_c gamma·a·G: what the shared denominator passes back to every channel.
    const t = run(
      [sGamma, a, sNorms],
      ["gamma", "a", "gx"],
      [n],
      `var acc = 0.0;
  for (var ch = 0u; ch < ${c}u; ch++) { let k = i * ${c}u + ch; acc += gamma[ch] * a[k] * gx[k]; }
  y[i] = acc;`,
    );
    // dx = (gamma·G/s + 1)·g + x·dG/G, dG = gamma·a/s − t/(C·s²) (0 where G = 0).
    const gx = run(
      [g, sx, sGamma, sNorms, sDen, a, t],
      ["g", "x", "gamma", "gx", "den", "a", "t"],
      [...x.shape],
      `let ch = i % ${c}u;
  let n = i / ${hw * c}u;
  let o = n * ${c}u + ch;
  let s = den[n];
  let gn = gx[o];
  let dG = gamma[ch] * a[o] / s - t[n] * ${f32(1 / c)} / (s * s);
  y[i] = (gamma[ch] * gn / s + 1.0) * g[i] + select(0.0, dG / gn, gn > 0.0) * x[i];`,
    );
    const gGamma = run(
      [a, sNorms, sDen],
      ["a", "gx", "den"],
      [c],
      `var acc = 0.0;
  for (var n = 0u; n < ${n}u; n++) { let k = n * ${c}u + i; acc += a[k] * gx[k] / den[n]; }
  y[i] = acc;`,
    );
    const gBeta = run(
      [g],
      ["g"],
      [c],
      `var acc = 0.0;
  for (var r = 0u; r < ${n * hw}u; r++) { acc += g[r * ${c}u + i]; }
  y[i] = acc;`,
    );
    return [gx, gGamma.view(gamma.shape), gBeta.view(beta.shape)];
  });
  return y;
}
