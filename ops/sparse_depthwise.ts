/**
 * Sparse depthwise convolution: a stride-1 depthwise convolution that visits
 * only the active (mask = 1) taps of each channel's kernel, forward, input
 * gradient and filter gradient. This is what turns SLaK's "sparse FLOPs" into
 * wall-clock time.
 *
 * **The compacted taps.** A {@linkcode SparseDepthwisePlan} is built from a
 * weight mask whenever the mask changes (prune-and-grow, every `-u` steps; a
 * read-back there is fine, never per step). The kernel is seen along its long
 * axis ("u": rows of a 51×5 kernel, columns of a 5×51 one) and its short axis
 * ("v"). For each channel and each tap line along u the plan stores the set of
 * active taps along v as a bit pattern (row-wise runs of taps), plus the same
 * for the kernel rotated by 180° (the input gradient).
 *
 * **Forward** (and input gradient: the same kernel on `gy`, filter flipped,
 * padding mirrored): a workgroup owns an output tile of `planes` planes of one
 * channel and stages the input tile (zeros materialised outside the image),
 * the channel's filter and its patterns in workgroup memory. An invocation
 * keeps a `bu×bv` block of outputs in registers and slides along u: each step
 * loads one input segment of `bv + KV − 1` values (vec4s) into a ring of `bu`
 * register rows, then for every tap `kv` of the line that is active, adds
 * `bu·bv` FMAs. Every invocation of the workgroup is at the same tap line at
 * the same time (the tap range is a workgroup-uniform bound that already skips
 * lines falling wholly in the zero padding), so the "is this tap active" branch
 * is uniform: inactive taps cost a test, not `bu·bv` FMAs.
 * Tuner options ({@linkcode SparseForwardConfig}): `pre` loads the next
 * line's segment, weights and pattern before the current line's taps (the
 * uniform branches otherwise keep the compiler from hoisting them, exposing a
 * workgroup-memory latency per line); `lz` visits only the set bits of a
 * line's pattern (`countTrailingZeros`, clear the lowest bit, a switch on the
 * tap), so an empty line costs one test and a line of `a` active taps `a`
 * dispatches; `so` writes the output tile through workgroup memory so that
 * consecutive invocations store consecutive image columns (the direct stores
 * of the horizontal orientation, long axis along x, are strided by a row).
 *
 * **Filter gradient**: gw[c, ku, kv] = Σ_{n,u,v} gy·x, for active taps only
 * (zero elsewhere, as the masked gradient would be). A workgroup owns a
 * channel, a group of planes and `groups` chunks of `ck` tap lines; each chunk
 * is worked by its own `lanes` invocations (a warp for `lanes` = 32), which
 * split the planes' output blocks between them and keep `ck·KV` accumulators;
 * inactive taps are skipped by a branch uniform across the chunk (`acc` > 1
 * splits each tap's `bu·bv` FMAs over `acc` accumulators: shorter dependency
 * chains inside a branch the compiler cannot schedule across). Partial sums
 * go across the lanes in workgroup memory, then across plane groups in a
 * second pass.
 *
 * `depthwiseMaybeSparse` (`sparse_path.ts`) picks this path or the dense one
 * for each shape and density, by the planner's timing of both.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan, sparseDepthwiseConv2d } from "./sparse_depthwise.ts";
 * await initGpu();
 * const mask = SparseDepthwisePlan.randomMask(4, 7, 3, 0.6, 1);
 * const plan = SparseDepthwisePlan.fromMask(mask, [4, 1, 7, 3]);
 * const x = Tensor.randn([2, 4, 9, 9], { seed: 1 });
 * const w = Tensor.randn([4, 1, 7, 3], { seed: 2 });
 * console.log(sparseDepthwiseConv2d(x, w, plan, null).shape); // [2, 4, 9, 9]
 * plan.dispose();
 * ```
 * @module
 */
import { needsGrad, record } from "./autograd.ts";
import { channelSum } from "./conv.ts";
import { depthwiseConv2d, type DepthwiseOptions, samePadding } from "./depthwise.ts";
import { sumGroupsKernel } from "./depthwise_direct.ts";
import {
  plainDepthwiseBackwardFilter,
  plainDepthwiseBackwardInput,
  plainDepthwiseForward,
} from "./depthwise_plain.ts";
import { depthwiseShapeKey } from "./depthwise_plan.ts";
import { type CandidateOptions, distinctCandidates, type PlanJob, planner } from "./planner.ts";
import {
  type DepthwiseShape,
  depthwiseWork,
  transposedShape,
  workgroupMemoryLimit as sharedLimit,
} from "./depthwise_shape.ts";
import { mul } from "./elementwise.ts";
import { gpu } from "./gpu.ts";
import { ceilDiv, launch, memoize, storage } from "./kernel.ts";
import { randomNormal } from "./random.ts";
import { grid1d, keep, Rng, Tensor } from "./tensor.ts";

// ---------------------------------------------------------------- plan

/**
 * The compacted active taps of a depthwise weight mask [C, 1, KH, KW]: per
 * channel and tap line along the kernel's long axis, a bit pattern of the
 * active taps along the short axis (and the same for the flipped kernel),
 * on the GPU. Build it when the mask changes ({@linkcode SparseDepthwisePlan.fromMask},
 * {@linkcode SparseDepthwisePlan.fromTensor}, {@linkcode SparseDepthwisePlan.update});
 * the kernels read it, nothing is read back per step.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
 * await initGpu();
 * const mask = new Float32Array(2 * 3 * 3);
 * mask[4] = 1; // channel 0: the centre tap
 * mask[9] = 1; // channel 1: tap (0, 0)
 * const plan = SparseDepthwisePlan.fromMask(mask, [2, 1, 3, 3]);
 * console.log(plan.active, plan.density.toFixed(3), plan.taps(1)); // 2 "0.111" [[0, 0]]
 * plan.dispose();
 * ```
 */
export class SparseDepthwisePlan {
  readonly c: number;
  readonly kh: number;
  readonly kw: number;
  /** True when the kernel's long axis is vertical (KH ≥ KW): tap lines are kernel rows. */
  readonly vertical: boolean;
  /** Taps along the long axis (KU) and short axis (KV), and u32 words per pattern. */
  readonly ku: number;
  readonly kv: number;
  readonly words: number;
  /** Active taps in all, and active / (C·KH·KW). */
  active = 0;
  density = 0;
  /** Patterns [C, KU, words] of the kernel, and of the kernel rotated by 180°. */
  readonly patterns: Tensor;
  readonly flipped: Tensor;
  /** The mask as f32 [C, 1, KH, KW] (fallback paths multiply by it). */
  readonly mask: Tensor;
  #host: Uint8Array;

  private constructor(c: number, kh: number, kw: number) {
    this.c = c;
    this.kh = kh;
    this.kw = kw;
    this.vertical = kh >= kw;
    this.ku = this.vertical ? kh : kw;
    this.kv = this.vertical ? kw : kh;
    this.words = Math.ceil(this.kv / 32);
    this.patterns = keep(Tensor.empty([c * this.ku * this.words]));
    this.flipped = keep(Tensor.empty([c * this.ku * this.words]));
    this.mask = keep(Tensor.empty([c, 1, kh, kw]));
    this.#host = new Uint8Array(c * kh * kw);
  }

  /**
   * A plan from mask values (non-zero = active) of shape [C, 1, KH, KW].
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * await initGpu();
   * const plan = SparseDepthwisePlan.fromMask(new Float32Array(4 * 51 * 5).fill(1), [4, 1, 51, 5]);
   * console.log(plan.density, plan.vertical); // 1 true
   * plan.dispose();
   * ```
   */
  static fromMask(mask: ArrayLike<number>, shape: readonly number[]): SparseDepthwisePlan {
    if (shape.length !== 4 || shape[1] !== 1) {
      throw new Error(`SparseDepthwisePlan: mask must be [C, 1, KH, KW], got [${shape}]`);
    }
    const plan = new SparseDepthwisePlan(shape[0], shape[2], shape[3]);
    plan.update(mask);
    return plan;
  }

  /**
   * A plan from a mask tensor [C, 1, KH, KW] on the GPU (reads it back: call
   * it when masks change, not per step).
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { Tensor } from "./tensor.ts";
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * await initGpu();
   * const plan = await SparseDepthwisePlan.fromTensor(Tensor.ones([3, 1, 5, 51]));
   * console.log(plan.vertical, plan.active); // false 765
   * plan.dispose();
   * ```
   */
  static async fromTensor(mask: Tensor): Promise<SparseDepthwisePlan> {
    return SparseDepthwisePlan.fromMask(await mask.read(), mask.shape);
  }

  /**
   * A seeded random mask [C, 1, KH, KW] with exactly `round(density·KH·KW)`
   * active taps per channel (unstructured, as SLaK's random/ERK masks).
   *
   * @example
   * ```ts
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * const m = SparseDepthwisePlan.randomMask(2, 5, 5, 0.4, 7);
   * console.log(m.reduce((a, b) => a + b, 0)); // 20
   * ```
   */
  static randomMask(c: number, kh: number, kw: number, density: number, seed = 0): Float32Array {
    const rng = new Rng(seed);
    const k = kh * kw;
    const on = Math.round(Math.min(1, Math.max(0, density)) * k);
    const out = new Float32Array(c * k);
    const idx = Array.from({ length: k }, (_, i) => i);
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < on; i++) {
        const j = i + rng.int(k - i);
        [idx[i], idx[j]] = [idx[j], idx[i]];
        out[ch * k + idx[i]] = 1;
      }
    }
    return out;
  }

  /**
   * Recompute the compacted taps from new mask values (same shape). The upload
   * is recorded in order, so work recorded before it still sees the old taps.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * await initGpu();
   * const plan = SparseDepthwisePlan.fromMask(new Float32Array(9).fill(1), [1, 1, 3, 3]);
   * plan.update(new Float32Array(9));
   * console.log(plan.density); // 0
   * plan.dispose();
   * ```
   */
  update(mask: ArrayLike<number>): void {
    const { c, kh, kw, ku, kv, words } = this;
    if (mask.length !== c * kh * kw) {
      throw new Error(
        `SparseDepthwisePlan.update: ${mask.length} mask values for [${c}, 1, ${kh}, ${kw}]`,
      );
    }
    const pat = new Uint32Array(c * ku * words);
    const flip = new Uint32Array(c * ku * words);
    const f = new Float32Array(mask.length);
    let active = 0;
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < kh; y++) {
        for (let x = 0; x < kw; x++) {
          const i = (ch * kh + y) * kw + x;
          const on = mask[i] !== 0;
          this.#host[i] = on ? 1 : 0;
          f[i] = on ? 1 : 0;
          if (!on) continue;
          active++;
          const [u, v] = this.vertical ? [y, x] : [x, y];
          pat[(ch * ku + u) * words + (v >> 5)] |= 1 << (v & 31);
          const [fu, fv] = [ku - 1 - u, kv - 1 - v];
          flip[(ch * ku + fu) * words + (fv >> 5)] |= 1 << (fv & 31);
        }
      }
    }
    this.active = active;
    this.density = active / (c * kh * kw);
    gpu().upload(this.patterns.buffer, pat);
    gpu().upload(this.flipped.buffer, flip);
    gpu().upload(this.mask.buffer, f);
  }

  /**
   * The active taps `[ky, kx]` of channel `ch`, row-major: the compact tap
   * list of that channel.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * await initGpu();
   * const plan = SparseDepthwisePlan.fromMask([0, 1, 0, 0, 0, 0, 1, 0, 0], [1, 1, 3, 3]);
   * console.log(plan.taps(0)); // [[0, 1], [2, 0]]
   * plan.dispose();
   * ```
   */
  taps(ch: number): [number, number][] {
    const out: [number, number][] = [];
    for (let y = 0; y < this.kh; y++) {
      for (let x = 0; x < this.kw; x++) {
        if (this.#host[(ch * this.kh + y) * this.kw + x]) out.push([y, x]);
      }
    }
    return out;
  }

  /**
   * Free the plan's GPU buffers.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
   * await initGpu();
   * SparseDepthwisePlan.fromMask([1], [1, 1, 1, 1]).dispose();
   * ```
   */
  dispose(): void {
    for (const t of [this.patterns, this.flipped, this.mask]) if (!t.disposed) t.dispose();
  }
}

// ---------------------------------------------------------------- configs

/**
 * Tiling of the sparse forward / input-gradient kernel: an invocation owns
 * `bu` outputs along the kernel's long axis × `bv` (a multiple of 4) along
 * the short one; a workgroup `nub·bu × nvb·bv` outputs of `planes` planes.
 */
export interface SparseForwardConfig {
  bu: number;
  bv: number;
  planes: number;
  nub: number;
  nvb: number;
  /** Load each tap line's input segment, weights and pattern one line ahead (hides their latency). */
  pre?: boolean;
  /** Visit only the set bits of each line's pattern (countTrailingZeros loop): empty lines cost one test. */
  lz?: boolean;
  /** Write the output tile through workgroup memory, image rows contiguous (coalesced stores). */
  so?: boolean;
}

/**
 * Tiling of the sparse filter-gradient kernel: `ck` tap lines per chunk and
 * `groups` chunks per workgroup, each worked by `nvb·planes·nub` lanes that
 * own `bu×bv` output blocks of a `nub·bu × nvb·bv` tile of `planes` planes;
 * `planesPerGroup` planes summed per workgroup (partial sums per group).
 */
export interface SparseFilterConfig {
  bu: number;
  bv: number;
  planes: number;
  nub: number;
  nvb: number;
  ck: number;
  groups: number;
  planesPerGroup: number;
  /** Partial sums per tap (1 or `bu`): `acc` independent FMA chains instead of one of `bu·bv`. */
  acc?: number;
}

/** The three configs for a shape; null where the kernel does not fit (dense fallback). */
export interface SparseDepthwiseConfigs {
  forward: SparseForwardConfig | null;
  backwardInput: SparseForwardConfig | null;
  filter: SparseFilterConfig | null;
}

/** Virtual geometry: u along the kernel's long axis, v along the short one. */
interface VShape {
  n: number;
  c: number;
  /** Real input/output dims (global indexing). */
  h: number;
  w: number;
  ho: number;
  wo: number;
  kh: number;
  kw: number;
  vertical: boolean;
  U: number;
  V: number;
  UO: number;
  VO: number;
  KU: number;
  KV: number;
  PU: number;
  PV: number;
}

function virt(s: DepthwiseShape, vertical: boolean): VShape {
  return {
    n: s.n,
    c: s.c,
    h: s.h,
    w: s.w,
    ho: s.ho,
    wo: s.wo,
    kh: s.kh,
    kw: s.kw,
    vertical,
    U: vertical ? s.h : s.w,
    V: vertical ? s.w : s.h,
    UO: vertical ? s.ho : s.wo,
    VO: vertical ? s.wo : s.ho,
    KU: vertical ? s.kh : s.kw,
    KV: vertical ? s.kw : s.kh,
    PU: vertical ? s.ph : s.pw,
    PV: vertical ? s.pw : s.ph,
  };
}

const COMP = ["x", "y", "z", "w"];
const lane = (name: string, m: number) => `${name}${m >> 2}.${COMP[m & 3]}`;

function threadLimit(): number {
  return Math.min(256, gpu().limits.maxComputeInvocationsPerWorkgroup);
}

interface FwdLayout {
  TU: number;
  TV: number;
  T: number;
  nv: number;
  XVV: number;
  ROWS: number;
  PS: number;
  WR: number;
  wsv: number;
  NW: number;
  tilesU: number;
  tilesV: number;
  /** Output staging row stride (vec4s, odd) when `so`. */
  OS: number;
  bytes: number;
}

const fwdLayout = memoize(fwdLayoutOf);
function fwdLayoutOf(s: VShape, c: SparseForwardConfig): FwdLayout {
  const TU = c.bu * c.nub;
  const TV = c.bv * c.nvb;
  const XVV = ceilDiv(TV + s.KV - 1, 4);
  const ROWS = TU + s.KU + c.bu - 2;
  // Odd plane stride (in vec4s) spreads planes over the banks.
  const PS = ROWS * XVV + ((ROWS * XVV) % 2 === 0 ? 1 : 0);
  const WR = s.KU + c.bu - 1;
  const wsv = ceilDiv(s.KV, 4);
  const NW = ceilDiv(s.KV, 32);
  const OS = TV / 4 + ((TV / 4) % 2 === 0 ? 1 : 0);
  // One line more of input, weights and patterns when loading a line ahead (read, never used).
  const extra = c.pre ? 1 : 0;
  return {
    TU,
    TV,
    T: c.nvb * c.planes * c.nub,
    nv: ceilDiv(c.bv + s.KV - 1, 4),
    XVV,
    ROWS,
    PS,
    WR,
    wsv,
    NW,
    tilesU: ceilDiv(s.UO, TU),
    tilesV: ceilDiv(s.VO, TV),
    OS,
    bytes: 16 * (c.planes * PS + extra * XVV + (WR + extra) * wsv) + 4 * (WR + extra) * NW,
  };
}

function fwdFits(s: VShape, c: SparseForwardConfig): boolean {
  const ok = [c.bu, c.bv, c.planes, c.nub, c.nvb].every((v) => Number.isInteger(v) && v > 0) &&
    c.bv % 4 === 0 && (!c.lz || s.KV <= 32);
  if (!ok) return false;
  const L = fwdLayout(s, c);
  if (c.so && L.TU * L.OS > L.PS) return false;
  return L.T <= threadLimit() && L.bytes <= sharedLimit();
}

/** Heuristic forward tiling with register block bu×bv, ~`threads` invocations, ≤ `maxTU` rows. */
function fitFwd(
  s: VShape,
  { bu, bv, threads = 128, lanes = 32, maxTU = 32, pre, lz, so }: {
    bu: number;
    bv: number;
    threads?: number;
    lanes?: number;
    maxTU?: number;
    pre?: boolean;
    lz?: boolean;
    so?: boolean;
  },
): SparseForwardConfig {
  const nvb = Math.max(1, Math.min(ceilDiv(s.VO, bv), Math.floor(64 / bv)));
  let planes = Math.max(1, Math.min(s.n, Math.floor(lanes / nvb)));
  const nubFor = () =>
    Math.max(
      1,
      Math.min(
        Math.floor(threads / (nvb * planes)),
        ceilDiv(s.UO, bu),
        Math.max(1, Math.floor(maxTU / bu)),
      ),
    );
  let nub = nubFor();
  const flags = {
    ...(pre ? { pre: true } : {}),
    ...(lz && s.KV <= 32 ? { lz: true } : {}),
    ...(so ? { so: true } : {}),
  };
  const cfg = (): SparseForwardConfig => ({ bu, bv, planes, nub, nvb, ...flags });
  while (!fwdFits(s, cfg()) && planes > 1) {
    planes = Math.max(1, planes >> 1);
    nub = nubFor();
  }
  while (!fwdFits(s, cfg()) && nub > 1) nub = Math.max(1, nub >> 1);
  // A tile too small to stage its output: store directly.
  if (!fwdFits(s, cfg()) && flags.so) delete flags.so;
  return cfg();
}

function defaultFwd(s: VShape): SparseForwardConfig {
  if (gpu().isFallback) {
    // Small unrolled bodies: llvmpipe's compile time grows with them.
    // Loading a line ahead measured ~12% faster there (n 4, c 16, 48², 21×5).
    return fitFwd(s, { bu: 2, bv: 4, threads: 16, lanes: 8, maxTU: 4, pre: true });
  }
  return fitFwd(s, { bu: 4, bv: s.VO >= 24 && s.KV <= 16 ? 8 : 4 });
}

interface FltLayout {
  TU: number;
  TV: number;
  L: number;
  T: number;
  nvx: number;
  XR: number;
  XVV: number;
  GVV: number;
  PSX: number;
  PSG: number;
  NW: number;
  NACC: number;
  tilesU: number;
  tilesV: number;
  kGroups: number;
  pGroups: number;
  bytes: number;
}

const fltLayout = memoize(fltLayoutOf);
function fltLayoutOf(s: VShape, c: SparseFilterConfig): FltLayout {
  const TU = c.bu * c.nub;
  const TV = c.bv * c.nvb;
  const L = c.nvb * c.planes * c.nub;
  const T = L * c.groups;
  const XR = TU + c.groups * c.ck - 1;
  const XVV = ceilDiv(TV + s.KV - 1, 4);
  const GVV = TV / 4;
  const PSX = XR * XVV + ((XR * XVV) % 2 === 0 ? 1 : 0);
  const PSG = TU * GVV + ((TU * GVV) % 2 === 0 ? 1 : 0);
  const NACC = c.ck * s.KV;
  return {
    TU,
    TV,
    L,
    T,
    nvx: ceilDiv(c.bv + s.KV - 1, 4),
    XR,
    XVV,
    GVV,
    PSX,
    PSG,
    NW: ceilDiv(s.KV, 32),
    NACC,
    tilesU: ceilDiv(s.UO, TU),
    tilesV: ceilDiv(s.VO, TV),
    kGroups: ceilDiv(s.KU, c.groups * c.ck),
    pGroups: ceilDiv(s.n, c.planesPerGroup),
    bytes: 16 * c.planes * (PSX + PSG) + 4 * NACC * T + 4 * c.groups * c.ck * ceilDiv(s.KV, 32),
  };
}

function fltFits(s: VShape, c: SparseFilterConfig): boolean {
  const ok =
    [c.bu, c.bv, c.planes, c.nub, c.nvb, c.ck, c.groups, c.planesPerGroup].every((v) =>
      Number.isInteger(v) && v > 0
    ) && c.bv % 4 === 0 && c.ck * s.KV <= 96 &&
    // A workgroup's planes all lie in one group: fewer planes per group sum wrong partials.
    c.planesPerGroup >= c.planes &&
    (c.acc === undefined || (Number.isInteger(c.acc) && c.acc >= 1 && c.ck * s.KV * c.acc <= 128));
  if (!ok) return false;
  const L = fltLayout(s, c);
  return L.T <= threadLimit() && L.bytes <= sharedLimit();
}

function fitFlt(
  s: VShape,
  { bu, bv, ck, lanes = 32, threads = 128, planesPerGroup = 8, acc }: {
    bu: number;
    bv: number;
    ck: number;
    lanes?: number;
    threads?: number;
    planesPerGroup?: number;
    acc?: number;
  },
): SparseFilterConfig {
  ck = Math.max(1, Math.min(ck, s.KU, Math.floor(96 / s.KV)));
  const nvb = Math.max(1, Math.min(ceilDiv(s.VO, bv), Math.floor(64 / bv)));
  const planes = Math.max(1, Math.min(s.n, Math.floor(lanes / nvb)));
  const nub = Math.max(1, Math.min(Math.floor(lanes / (nvb * planes)), ceilDiv(s.UO, bu)));
  const L = nvb * planes * nub;
  let groups = Math.max(1, Math.min(Math.floor(threads / L), ceilDiv(s.KU, ck)));
  const cfg = (): SparseFilterConfig => ({
    bu,
    bv,
    planes,
    nub,
    nvb,
    ck,
    groups,
    planesPerGroup: Math.max(planes, Math.min(s.n, planesPerGroup)),
    ...(acc && acc > 1 ? { acc: Math.min(acc, bu) } : {}),
  });
  while (!fltFits(s, cfg()) && groups > 1) groups--;
  while (!fltFits(s, cfg()) && ck > 1) ck--;
  return cfg();
}

function defaultFlt(s: VShape): SparseFilterConfig {
  if (gpu().isFallback) {
    return fitFlt(s, { bu: 2, bv: 4, ck: 2, lanes: 4, threads: 8, planesPerGroup: 4 });
  }
  return fitFlt(s, { bu: 4, bv: 4, ck: 4 });
}

const isFwdConfig = (c: unknown): c is SparseForwardConfig =>
  typeof c === "object" && c !== null &&
  ["bu", "bv", "planes", "nub", "nvb"].every((k) => Number.isInteger((c as never)[k])) &&
  ["pre", "lz", "so"].every((k) => ["boolean", "undefined"].includes(typeof (c as never)[k]));

const isFltConfig = (c: unknown): c is SparseFilterConfig =>
  typeof c === "object" && c !== null &&
  ["bu", "bv", "planes", "nub", "nvb", "ck", "groups", "planesPerGroup"].every((k) =>
    Number.isInteger((c as never)[k])
  ) && ["number", "undefined"].includes(typeof (c as SparseFilterConfig).acc);

/**
 * The shape part of the sparse kernels' plan keys: the dense key and the
 * density to a tenth (the fastest tiling depends on how many taps are set:
 * densities a tenth apart plan apart).
 *
 * @example
 * ```ts
 * import { sparseConfigKey } from "./sparse_depthwise.ts";
 * const s = { n: 2, c: 4, h: 9, w: 9, kh: 7, kw: 3, ph: 3, pw: 1, ho: 9, wo: 9 };
 * console.log(sparseConfigKey(s, 0.42)); // "2,4,9,9,7,3,3,1,9,9,d0.4"
 * ```
 */
export function sparseConfigKey(s: DepthwiseShape, density: number): string {
  return `${depthwiseShapeKey(s)},d${density.toFixed(1)}`;
}

/**
 * The sparse kernels' configs for a stride-1 shape: the planner's (forced or
 * planned, under the keys `sparse.forward|shape,density`,
 * `sparse.backwardInput|…` and `sparse.filter|…`, density to a tenth; forcing `sparse.forward` forces the input
 * gradient too), else the heuristic's; null where a kernel's tiles do not
 * fit (that kernel then runs the dense path on masked weights). `density` is
 * the mask's, for the planner's own test masks.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { sparseDepthwiseConfigs } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = { n: 2, c: 4, h: 9, w: 9, kh: 7, kw: 3, ph: 3, pw: 1, ho: 9, wo: 9 };
 * console.log(sparseDepthwiseConfigs(s).forward !== null); // true
 * ```
 */
export function sparseDepthwiseConfigs(s: DepthwiseShape, density = 0.5): SparseDepthwiseConfigs {
  const vertical = s.kh >= s.kw;
  const v = virt(s, vertical);
  const vt = virt(transposedShape(s), vertical);
  const p = planner();
  const key = sparseConfigKey(s, density);
  const forward = p.choose("sparse.forward", key, isFwdConfig, () => forwardJob(s, density)) ??
    defaultFwd(v);
  const forcedForward = p.forced("sparse.forward");
  const backwardInput =
    (p.forced("sparse.backwardInput") === undefined && forcedForward
      ? forcedForward as SparseForwardConfig
      : p.choose("sparse.backwardInput", key, isFwdConfig, () => backwardInputJob(s, density))) ??
      defaultFwd(vt);
  const filter = p.choose("sparse.filter", key, isFltConfig, () => filterJob(s, density)) ??
    defaultFlt(v);
  return {
    forward: forward && fwdFits(v, forward) ? forward : null,
    backwardInput: backwardInput && fwdFits(vt, backwardInput) ? backwardInput : null,
    filter: filter && fltFits(v, filter) ? filter : null,
  };
}

// ---------------------------------------------------------------- WGSL helpers

/** WGSL index of virtual (u, v) in a plane with real row length `w`. */
function gidx(s: VShape, u: string, v: string, w: number): string {
  return s.vertical ? `(${u}) * ${w}u + (${v})` : `(${v}) * ${w}u + (${u})`;
}

/** WGSL index into w[c] of virtual tap (ku, kv), optionally rotated by 180°. */
function widx(s: VShape, ku: string, kv: string, flip: boolean): string {
  let [ky, kx] = s.vertical ? [ku, kv] : [kv, ku];
  if (flip) [ky, kx] = [`${s.kh - 1}u - (${ky})`, `${s.kw - 1}u - (${kx})`];
  return `(${ky}) * ${s.kw}u + (${kx})`;
}

/** WGSL test that bit kv (a constant) of the pattern words at `base` is set. */
function bit(pt: string, base: string, kv: number): string {
  const word = kv >> 5;
  return `((${pt}[${base}${word ? ` + ${word}u` : ""}] >> ${kv & 31}u) & 1u) != 0u`;
}

// ---------------------------------------------------------------- forward kernel

const forwardKernel = memoize(forwardKernelSource);
/**
 * WGSL of the sparse forward tile kernel on virtual shape `s` (x of real dims
 * h×w → y of ho×wo); `flip` reads the filter rotated by 180° (input gradient,
 * with the flipped patterns bound).
 */
function forwardKernelSource(
  s: VShape,
  cfg: SparseForwardConfig,
  opts: { flip: boolean; bias: boolean },
): string {
  const Ly = fwdLayout(s, cfg);
  const { bu, bv, planes: P, nvb } = cfg;
  const { TU, TV, T, nv, XVV, ROWS, PS, WR, wsv, NW, OS } = Ly;
  const { n: N, c: C, KU, KV, PU, PV, U, V, UO, VO } = s;
  const pre = cfg.pre === true;
  const extra = pre ? 1 : 0;
  const out: string[] = [];
  const e = (l: string) => out.push(l);
  e(storage(...(opts.bias ? ["x", "w", "pat:u32", "b", "y!"] : ["x", "w", "pat:u32", "y!"])));
  e(`var<workgroup> xt: array<vec4<f32>, ${P * PS + extra * XVV}>;`);
  e(`var<workgroup> wt: array<vec4<f32>, ${(WR + extra) * wsv}>;`);
  e(`var<workgroup> pt: array<u32, ${(WR + extra) * NW}>;`);
  e(`@compute @workgroup_size(${T})`);
  e(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {`);
  e(`  let c = wid.y;`);
  e(`  let n0 = wid.z * ${P}u;`);
  e(`  let uT = i32((wid.x / ${Ly.tilesV}u) * ${TU}u);`);
  e(`  let vT = i32((wid.x % ${Ly.tilesV}u) * ${TV}u);`);
  // Tap lines whose input line lies in the image for some output line of the tile.
  e(`  let k0 = max(0, ${PU} - (min(uT + ${TU}, ${UO}) - 1));`);
  e(`  let k1 = min(${KU}, ${U + PU} - uT);`);
  e(`  let steps = max(0, (k1 - k0 + ${bu - 1}) / ${bu});`);
  e(`  let r0 = uT + k0 - ${PU};`);
  e(`  let nRows = ${TU - 1} + steps * ${bu};`);
  // Filter lines k0 … (virtual rows, vec4 along v) and their patterns; zeros past KU.
  e(`  for (var i = tid; i < ${WR * wsv}u; i += ${T}u) {`);
  e(`    let ku = u32(k0) + i / ${wsv}u;`);
  e(`    let kv0 = (i % ${wsv}u) * 4u;`);
  e(`    var v = vec4<f32>(0.0);`);
  e(`    if (ku < ${KU}u) {`);
  for (let k = 0; k < 4; k++) {
    e(`      if (kv0 + ${k}u < ${KV}u) { v.${COMP[k]} = w[c * ${s.kh * s.kw}u + ${
      widx(s, "ku", `kv0 + ${k}u`, opts.flip)
    }]; }`);
  }
  e(`    }`);
  e(`    wt[i] = v;`);
  e(`  }`);
  e(`  for (var i = tid; i < ${WR * NW}u; i += ${T}u) {`);
  e(`    let ku = u32(k0) + i / ${NW}u;`);
  e(
    `    pt[i] = select(0u, pat[(c * ${KU}u + ku) * ${NW}u + i % ${NW}u], ku < ${KU}u);`,
  );
  e(`  }`);
  // Input lines r0 … r0 + nRows of `P` planes; zeros outside the image.
  e(`  for (var i = tid; i < ${P * ROWS * XVV}u; i += ${T}u) {`);
  if (s.vertical) {
    e(`    let tv = i % ${XVV}u;`);
    e(`    let rho = (i / ${XVV}u) % ${ROWS}u;`);
  } else {
    // Real rows are along v here: walk u (real columns) fastest for coalesced loads.
    e(`    let rho = i % ${ROWS}u;`);
    e(`    let tv = (i / ${ROWS}u) % ${XVV}u;`);
  }
  e(`    let p = i / ${ROWS * XVV}u;`);
  e(`    if (i32(rho) < nRows) {`);
  e(`      var v = vec4<f32>(0.0);`);
  e(`      let iu = r0 + i32(rho);`);
  e(`      if (n0 + p < ${N}u && iu >= 0 && iu < ${U}) {`);
  e(`        let plane = ((n0 + p) * ${C}u + c) * ${U * V}u;`);
  e(`        let iv0 = vT - ${PV} + i32(tv * 4u);`);
  for (let k = 0; k < 4; k++) {
    e(`        if (iv0 + ${k} >= 0 && iv0 + ${k} < ${V}) { v.${COMP[k]} = x[plane + ${
      gidx(s, "u32(iu)", `u32(iv0 + ${k})`, s.w)
    }]; }`);
  }
  e(`      }`);
  e(`      xt[p * ${PS}u + rho * ${XVV}u + tv] = v;`);
  e(`    }`);
  e(`  }`);
  e(`  workgroupBarrier();`);
  e(`  let q = tid % ${nvb}u;`);
  e(`  let p = (tid / ${nvb}u) % ${P}u;`);
  e(`  let rb = tid / ${nvb * P}u;`);
  const init = opts.bias ? "b[c]" : "0.0";
  for (let b = 0; b < bu; b++) for (let j = 0; j < bv; j++) e(`  var a${b}_${j} = ${init};`);
  e(`  let xb = p * ${PS}u + rb * ${bu * XVV}u + q * ${bv / 4}u;`);
  // Ring of bu input segments: segment of line ρ (relative to the step's first tap) in slot ρ % bu.
  for (let r = 0; r < bu; r++) {
    for (let v = 0; v < nv; v++) {
      e(`  var s${r}_${v} = ${r < bu - 1 ? `xt[xb + ${r * XVV + v}u]` : "vec4<f32>(0.0)"};`);
    }
  }
  /** FMAs of tap `kv` of tap line `i` of the step (weights `w…`). */
  const fmas = (i: number, kv: number, ind: string) => {
    for (let b = 0; b < bu; b++) {
      const sl = `s${(b + i) % bu}_`;
      for (let j = 0; j < bv; j++) {
        e(`${ind}a${b}_${j} = fma(${lane("w", kv)}, ${lane(sl, j + kv)}, a${b}_${j});`);
      }
    }
  };
  /** The taps of line `i`: a test per tap, or (lz) a loop over the set bits of `word0`. */
  const lineTaps = (i: number, word: (k: number) => string) => {
    if (cfg.lz) {
      e(`      var m = ${word(0)};`);
      e(`      loop {`);
      e(`        if (m == 0u) { break; }`);
      e(`        let kv = countTrailingZeros(m);`);
      e(`        m &= m - 1u;`);
      e(`        switch kv {`);
      for (let kv = 0; kv < KV; kv++) {
        e(`          case ${kv}u: {`);
        fmas(i, kv, "            ");
        e(`          }`);
      }
      e(`          default: {}`);
      e(`        }`);
      e(`      }`);
      return;
    }
    for (let kv = 0; kv < KV; kv++) {
      e(`      if (((${word(kv >> 5)} >> ${kv & 31}u) & 1u) != 0u) {`);
      fmas(i, kv, "        ");
      e(`      }`);
    }
  };
  if (pre) {
    // The next line's segment, weights and pattern words, loaded before the current line's taps.
    for (let v = 0; v < nv; v++) e(`  var nx${v} = xt[xb + ${(bu - 1) * XVV + v}u];`);
    for (let v = 0; v < wsv; v++) e(`  var nw${v} = wt[${v}u];`);
    for (let k = 0; k < NW; k++) e(`  var np${k} = pt[${k}u];`);
  }
  e(`  for (var st = 0; st < steps; st++) {`);
  e(`    let sb = xb + u32(st * ${bu}) * ${XVV}u;`);
  e(`    let kb = u32(st * ${bu});`);
  for (let i = 0; i < bu; i++) {
    const slot = (bu - 1 + i) % bu;
    if (pre) {
      for (let v = 0; v < nv; v++) e(`    s${slot}_${v} = nx${v};`);
      e(`    {`);
      for (let v = 0; v < wsv; v++) e(`      let w${v} = nw${v};`);
      for (let k = 0; k < NW; k++) e(`      let p${k} = np${k};`);
      e(`      let kn = kb + ${i + 1}u;`);
      for (let v = 0; v < nv; v++) e(`      nx${v} = xt[sb + ${(bu + i) * XVV + v}u];`);
      for (let v = 0; v < wsv; v++) e(`      nw${v} = wt[kn * ${wsv}u + ${v}u];`);
      for (let k = 0; k < NW; k++) e(`      np${k} = pt[kn * ${NW}u + ${k}u];`);
      lineTaps(i, (k) => `p${k}`);
      e(`    }`);
      continue;
    }
    for (let v = 0; v < nv; v++) e(`    s${slot}_${v} = xt[sb + ${(bu - 1 + i) * XVV + v}u];`);
    e(`    {`);
    e(`      let kl = kb + ${i}u;`);
    for (let v = 0; v < wsv; v++) e(`      let w${v} = wt[kl * ${wsv}u + ${v}u];`);
    if (cfg.lz) lineTaps(i, (k) => `pt[kl * ${NW}u + ${k}u]`);
    else {
      for (let kv = 0; kv < KV; kv++) {
        e(`      if (${bit("pt", `kl * ${NW}u`, kv)}) {`);
        fmas(i, kv, "        ");
        e(`      }`);
      }
    }
    e(`    }`);
  }
  e(`  }`);
  if (cfg.so) {
    // Through workgroup memory: [plane][u][v] (vec4s along v, odd row stride), then stored
    // with the image's x fastest across invocations.
    e(`  workgroupBarrier();`);
    e(`  let ob = p * ${TU * OS}u + rb * ${bu * OS}u + q * ${bv / 4}u;`);
    for (let b = 0; b < bu; b++) {
      for (let v = 0; v < bv / 4; v++) {
        e(`  xt[ob + ${b * OS + v}u] = vec4<f32>(${
          [0, 1, 2, 3].map((k) => `a${b}_${v * 4 + k}`).join(", ")
        });`);
      }
    }
    e(`  workgroupBarrier();`);
    e(`  for (var i = tid; i < ${P * TU * TV}u; i += ${T}u) {`);
    if (s.vertical) {
      e(`    let tv = i % ${TV}u;`);
      e(`    let tu = (i / ${TV}u) % ${TU}u;`);
    } else {
      e(`    let tu = i % ${TU}u;`);
      e(`    let tv = (i / ${TU}u) % ${TV}u;`);
    }
    e(`    let n = n0 + i / ${TU * TV}u;`);
    e(`    let ou = u32(uT) + tu;`);
    e(`    let ov = u32(vT) + tv;`);
    e(`    if (n < ${N}u && ou < ${UO}u && ov < ${VO}u) {`);
    e(`      y[(n * ${C}u + c) * ${UO * VO}u + ${gidx(s, "ou", "ov", s.wo)}] = xt[(i / ${
      TU * TV
    }u) * ${TU * OS}u + tu * ${OS}u + tv / 4u][tv % 4u];`);
    e(`    }`);
    e(`  }`);
    e(`}`);
    return out.join("\n");
  }
  // Store the block.
  e(`  let n = n0 + p;`);
  e(`  if (n < ${N}u) {`);
  e(`    let yPlane = (n * ${C}u + c) * ${UO * VO}u;`);
  e(`    let u0 = uT + i32(rb * ${bu}u);`);
  e(`    let v0 = vT + i32(q * ${bv}u);`);
  for (let b = 0; b < bu; b++) {
    e(`    if (u0 + ${b} < ${UO}) {`);
    for (let j = 0; j < bv; j++) {
      e(`      if (v0 + ${j} < ${VO}) { y[yPlane + ${
        gidx(s, `u32(u0 + ${b})`, `u32(v0 + ${j})`, s.wo)
      }] = a${b}_${j}; }`);
    }
    e(`    }`);
  }
  e(`  }`);
  e(`}`);
  return out.join("\n");
}

function launchForward(
  s: DepthwiseShape,
  vertical: boolean,
  cfg: SparseForwardConfig,
  flip: boolean,
  x: Tensor,
  w: Tensor,
  pat: Tensor,
  bias: Tensor | null,
  y: Tensor,
): void {
  const v = virt(s, vertical);
  const L = fwdLayout(v, cfg);
  launch(
    forwardKernel(v, cfg, { flip, bias: bias !== null }),
    bias ? [x, w, pat, bias, y] : [x, w, pat, y],
    [L.tilesU * L.tilesV, s.c, ceilDiv(s.n, cfg.planes)],
    undefined,
    {
      name: flip ? "sparse-depthwise-backward-input" : "sparse-depthwise-forward",
      config: { shape: s, vertical, cfg },
    },
  );
}

// ---------------------------------------------------------------- filter-gradient kernel

const filterKernel = memoize(filterKernelSource);
function filterKernelSource(s: VShape, cfg: SparseFilterConfig, direct: boolean): string {
  const Ly = fltLayout(s, cfg);
  const { bu, bv, planes: P, nvb, ck: CK, groups: G, planesPerGroup: NPG } = cfg;
  const { TU, TV, L, T, nvx, XR, XVV, GVV, PSX, PSG, NW, NACC } = Ly;
  const { n: N, c: C, KU, KV, PU, PV, U, V, UO, VO } = s;
  const out: string[] = [];
  const e = (l: string) => out.push(l);
  e(storage("gy", "x", "pat:u32", "part!"));
  e(`var<workgroup> xt: array<vec4<f32>, ${P * PSX}>;`);
  e(`var<workgroup> gt: array<vec4<f32>, ${P * PSG}>;`);
  e(`var<workgroup> red: array<f32, ${NACC * T}>;`);
  e(`var<workgroup> pt: array<u32, ${G * CK * NW}>;`);
  e(`@compute @workgroup_size(${T})`);
  e(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {`);
  e(`  let c = wid.y;`);
  e(`  let pg = wid.x;`);
  e(`  let kw0 = i32(wid.z * ${G * CK}u);`);
  e(`  for (var i = tid; i < ${G * CK * NW}u; i += ${T}u) {`);
  e(`    let ku = u32(kw0) + i / ${NW}u;`);
  e(`    pt[i] = select(0u, pat[(c * ${KU}u + ku) * ${NW}u + i % ${NW}u], ku < ${KU}u);`);
  e(`  }`);
  e(`  workgroupBarrier();`);
  e(`  let gi = tid / ${L}u;`);
  e(`  let l = tid % ${L}u;`);
  e(`  let q = l % ${nvb}u;`);
  e(`  let p = (l / ${nvb}u) % ${P}u;`);
  e(`  let rb = l / ${nvb * P}u;`);
  e(`  let kc0 = kw0 + i32(gi * ${CK}u);`);
  // Any active tap in the workgroup / in this chunk (uniform over the workgroup / the chunk).
  // From the read-only buffer, not pt: the loops below hold barriers, so this must be uniform.
  e(`  var anyW = 0u;`);
  e(`  for (var ku = u32(kw0); ku < min(${KU}u, u32(kw0) + ${G * CK}u); ku++) {`);
  e(`    for (var k = 0u; k < ${NW}u; k++) { anyW |= pat[(c * ${KU}u + ku) * ${NW}u + k]; }`);
  e(`  }`);
  e(`  var anyC = 0u;`);
  e(`  for (var i = 0u; i < ${CK * NW}u; i++) { anyC |= pt[gi * ${CK * NW}u + i]; }`);
  const R = cfg.acc ?? 1;
  // Accumulator r of tap (t, kv): partial sums over the block rows b ≡ r (mod R).
  const acc = (t: number, kv: number, r: number) => R === 1 ? `a${t}_${kv}` : `a${t}_${kv}_${r}`;
  for (let t = 0; t < CK; t++) {
    for (let kv = 0; kv < KV; kv++) {
      for (let r = 0; r < R; r++) e(`  var ${acc(t, kv, r)} = 0.0;`);
    }
  }
  e(`  if (anyW != 0u) {`);
  e(`  for (var pi = 0u; pi < ${NPG}u; pi += ${P}u) {`);
  e(`    let n0 = pg * ${NPG}u + pi;`);
  e(`    if (n0 >= ${N}u) { break; }`);
  e(`    for (var ut = 0u; ut < ${Ly.tilesU}u; ut++) {`);
  e(`      let uA = i32(ut * ${TU}u);`);
  e(`      let r0 = uA + kw0 - ${PU};`);
  // Input lines of the whole workgroup's tap range all outside the image: nothing to add.
  e(`      if (r0 + ${XR} <= 0 || r0 >= ${U}) { continue; }`);
  e(`      for (var vt = 0u; vt < ${Ly.tilesV}u; vt++) {`);
  e(`        let vA = i32(vt * ${TV}u);`);
  e(`        workgroupBarrier();`);
  // Stage x lines r0 … r0 + XR (columns vA − PV …) and gy lines uA … uA + TU, zeros outside.
  e(`        for (var i = tid; i < ${P * XR * XVV}u; i += ${T}u) {`);
  if (s.vertical) {
    e(`          let tv = i % ${XVV}u;`);
    e(`          let rho = (i / ${XVV}u) % ${XR}u;`);
  } else {
    e(`          let rho = i % ${XR}u;`);
    e(`          let tv = (i / ${XR}u) % ${XVV}u;`);
  }
  e(`          let pp = i / ${XR * XVV}u;`);
  e(`          var v = vec4<f32>(0.0);`);
  e(`          let iu = r0 + i32(rho);`);
  e(`          if (n0 + pp < ${N}u && iu >= 0 && iu < ${U}) {`);
  e(`            let plane = ((n0 + pp) * ${C}u + c) * ${U * V}u;`);
  e(`            let iv0 = vA - ${PV} + i32(tv * 4u);`);
  for (let k = 0; k < 4; k++) {
    e(`            if (iv0 + ${k} >= 0 && iv0 + ${k} < ${V}) { v.${COMP[k]} = x[plane + ${
      gidx(s, "u32(iu)", `u32(iv0 + ${k})`, s.w)
    }]; }`);
  }
  e(`          }`);
  e(`          xt[pp * ${PSX}u + rho * ${XVV}u + tv] = v;`);
  e(`        }`);
  e(`        for (var i = tid; i < ${P * TU * GVV}u; i += ${T}u) {`);
  if (s.vertical) {
    e(`          let tv = i % ${GVV}u;`);
    e(`          let rho = (i / ${GVV}u) % ${TU}u;`);
  } else {
    e(`          let rho = i % ${TU}u;`);
    e(`          let tv = (i / ${TU}u) % ${GVV}u;`);
  }
  e(`          let pp = i / ${TU * GVV}u;`);
  e(`          var v = vec4<f32>(0.0);`);
  e(`          let ou = uA + i32(rho);`);
  e(`          if (n0 + pp < ${N}u && ou < ${UO}) {`);
  e(`            let plane = ((n0 + pp) * ${C}u + c) * ${UO * VO}u;`);
  e(`            let ov0 = vA + i32(tv * 4u);`);
  for (let k = 0; k < 4; k++) {
    e(`            if (ov0 + ${k} < ${VO}) { v.${COMP[k]} = gy[plane + ${
      gidx(s, "u32(ou)", `u32(ov0 + ${k})`, s.wo)
    }]; }`);
  }
  e(`          }`);
  e(`          gt[pp * ${PSG}u + rho * ${GVV}u + tv] = v;`);
  e(`        }`);
  e(`        workgroupBarrier();`);
  // This chunk's input lines: r0 + gi·CK + rb·bu + [0, bu + CK − 1).
  e(`        let cr = r0 + i32(gi * ${CK}u + rb * ${bu}u);`);
  e(`        if (anyC != 0u && cr + ${bu + CK - 1} > 0 && cr < ${U}) {`);
  e(`          let gb = p * ${PSG}u + rb * ${bu * GVV}u + q * ${bv / 4}u;`);
  for (let b = 0; b < bu; b++) {
    for (let v = 0; v < bv / 4; v++) e(`          let g${b}_${v} = gt[gb + ${b * GVV + v}u];`);
  }
  e(`          let xb = p * ${PSX}u + (gi * ${CK}u + rb * ${bu}u) * ${XVV}u + q * ${bv / 4}u;`);
  for (let r = 0; r < bu + CK - 1; r++) {
    for (let v = 0; v < nvx; v++) e(`          let x${r}_${v} = xt[xb + ${r * XVV + v}u];`);
  }
  for (let t = 0; t < CK; t++) {
    for (let kv = 0; kv < KV; kv++) {
      e(`          if (${bit("pt", `${t * NW}u + gi * ${CK * NW}u`, kv)}) {`);
      for (let b = 0; b < bu; b++) {
        for (let j = 0; j < bv; j++) {
          e(`            ${acc(t, kv, b % R)} = fma(${lane(`g${b}_`, j)}, ${
            lane(`x${b + t}_`, j + kv)
          }, ${acc(t, kv, b % R)});`);
        }
      }
      e(`          }`);
    }
  }
  e(`        }`);
  e(`      }`);
  e(`    }`);
  e(`  }`);
  e(`  }`);
  // Sum over the chunk's lanes.
  for (let t = 0; t < CK; t++) {
    for (let kv = 0; kv < KV; kv++) {
      const sum = Array.from({ length: R }, (_, r) => acc(t, kv, r)).join(" + ");
      e(`  red[${(t * KV + kv) * T}u + tid] = ${sum};`);
    }
  }
  e(`  workgroupBarrier();`);
  e(`  for (var i = tid; i < ${G * NACC}u; i += ${T}u) {`);
  e(`    let g = i / ${NACC}u;`);
  e(`    let a = i % ${NACC}u;`);
  e(`    let t = a / ${KV}u;`);
  e(`    let kv = a % ${KV}u;`);
  e(`    let ku = u32(kw0) + g * ${CK}u + t;`);
  e(`    if (ku < ${KU}u) {`);
  e(`      var sum = 0.0;`);
  e(`      for (var li = 0u; li < ${L}u; li++) { sum += red[a * ${T}u + g * ${L}u + li]; }`);
  const outIdx = direct ? `c * ${s.kh * s.kw}u` : `(pg * ${C}u + c) * ${s.kh * s.kw}u`;
  e(`      part[${outIdx} + ${widx(s, "ku", "kv", false)}] = sum;`);
  e(`    }`);
  e(`  }`);
  e(`}`);
  return out.join("\n");
}

function launchFilter(
  s: DepthwiseShape,
  vertical: boolean,
  cfg: SparseFilterConfig,
  gy: Tensor,
  x: Tensor,
  pat: Tensor,
): Tensor {
  const v = virt(s, vertical);
  const L = fltLayout(v, cfg);
  const gw = Tensor.empty([s.c, 1, s.kh, s.kw]);
  const grid = [L.pGroups, s.c, L.kGroups];
  const kernel = { name: "sparse-depthwise-filter", config: { shape: s, vertical, cfg } };
  if (L.pGroups === 1) {
    launch(filterKernel(v, cfg, true), [gy, x, pat, gw], grid, undefined, kernel);
    return gw;
  }
  const part = Tensor.empty([L.pGroups, s.c, s.kh, s.kw]);
  launch(filterKernel(v, cfg, false), [gy, x, pat, part], grid, undefined, kernel);
  launch(sumGroupsKernel(gw.size, L.pGroups), [part, gw], grid1d(gw.size));
  part.dispose();
  return gw;
}

// ---------------------------------------------------------------- raw kernels (no autograd)

function checkPlan(plan: SparseDepthwisePlan, s: DepthwiseShape): void {
  if (plan.c !== s.c || plan.kh !== s.kh || plan.kw !== s.kw) {
    throw new Error(
      `sparse depthwise: plan is for [${plan.c}, 1, ${plan.kh}, ${plan.kw}], weight is [${s.c}, 1, ${s.kh}, ${s.kw}]`,
    );
  }
}

/**
 * Forward of the sparse kernel on a stride-1 shape, no autograd: y = x ⋆
 * (w ⊙ mask) (+ bias). Falls back to nothing: `cfg` must fit
 * ({@linkcode sparseDepthwiseConfigs}).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan, sparseDepthwiseConfigs, sparseDepthwiseForward } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 3, w: 3, kh: 3, kw: 3, ph: 1, pw: 1, ho: 3, wo: 3 };
 * const plan = SparseDepthwisePlan.fromMask([0, 0, 0, 0, 1, 1, 0, 0, 0], [1, 1, 3, 3]);
 * const y = sparseDepthwiseForward(Tensor.ones([1, 1, 3, 3]), Tensor.ones([1, 1, 3, 3]), plan, null,
 *   s, sparseDepthwiseConfigs(s).forward!);
 * console.log(await y.read()); // Float32Array [2, 2, 1, 2, 2, 1, 2, 2, 1]
 * plan.dispose();
 * ```
 */
export function sparseDepthwiseForward(
  x: Tensor,
  w: Tensor,
  plan: SparseDepthwisePlan,
  bias: Tensor | null,
  s: DepthwiseShape,
  cfg: SparseForwardConfig,
): Tensor {
  checkPlan(plan, s);
  const y = Tensor.empty([s.n, s.c, s.ho, s.wo]);
  launchForward(s, plan.vertical, cfg, false, x, w, plan.patterns, bias, y);
  return y;
}

/**
 * Input gradient of the sparse kernel: the forward kernel on `gy` with the
 * filter and the taps rotated by 180° and the padding mirrored.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan, sparseDepthwiseBackwardInput, sparseDepthwiseConfigs } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 3, w: 3, kh: 3, kw: 3, ph: 1, pw: 1, ho: 3, wo: 3 };
 * const plan = SparseDepthwisePlan.fromMask([0, 0, 0, 0, 1, 1, 0, 0, 0], [1, 1, 3, 3]);
 * const gx = sparseDepthwiseBackwardInput(Tensor.ones([1, 1, 3, 3]), Tensor.ones([1, 1, 3, 3]),
 *   plan, s, sparseDepthwiseConfigs(s).backwardInput!);
 * console.log(await gx.read()); // Float32Array [1, 2, 2, 1, 2, 2, 1, 2, 2]
 * plan.dispose();
 * ```
 */
export function sparseDepthwiseBackwardInput(
  gy: Tensor,
  w: Tensor,
  plan: SparseDepthwisePlan,
  s: DepthwiseShape,
  cfg: SparseForwardConfig,
): Tensor {
  checkPlan(plan, s);
  const gx = Tensor.empty([s.n, s.c, s.h, s.w]);
  launchForward(transposedShape(s), plan.vertical, cfg, true, gy, w, plan.flipped, null, gx);
  return gx;
}

/**
 * Filter gradient of the sparse kernel: Σ gy·x at the active taps, zero at
 * the others; dense shape [C, 1, KH, KW].
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan, sparseDepthwiseBackwardFilter, sparseDepthwiseConfigs } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 3, w: 3, kh: 3, kw: 3, ph: 1, pw: 1, ho: 3, wo: 3 };
 * const plan = SparseDepthwisePlan.fromMask([0, 0, 0, 0, 1, 1, 0, 0, 0], [1, 1, 3, 3]);
 * const gw = sparseDepthwiseBackwardFilter(Tensor.ones([1, 1, 3, 3]), Tensor.ones([1, 1, 3, 3]),
 *   plan, s, sparseDepthwiseConfigs(s).filter!);
 * console.log(await gw.read()); // Float32Array [0, 0, 0, 0, 9, 6, 0, 0, 0]
 * plan.dispose();
 * ```
 */
export function sparseDepthwiseBackwardFilter(
  gy: Tensor,
  x: Tensor,
  plan: SparseDepthwisePlan,
  s: DepthwiseShape,
  cfg: SparseFilterConfig,
): Tensor {
  checkPlan(plan, s);
  return launchFilter(s, plan.vertical, cfg, gy, x, plan.patterns);
}

// ---------------------------------------------------------------- the op

/**
 * The shape of a depthwise convolution of `x` [N, C, H, W] with `w`
 * [C, 1, KH, KW] under `opts` (padding "same" by default), with its stride;
 * throws on other shapes.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseShapeOf } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = depthwiseShapeOf(Tensor.zeros([1, 2, 8, 8]), Tensor.zeros([2, 1, 7, 3]), {});
 * console.log(s.ph, s.pw, s.ho); // 3 1 8
 * ```
 */
export function depthwiseShapeOf(x: Tensor, w: Tensor, opts: DepthwiseOptions): DepthwiseShape & {
  stride: number;
} {
  if (x.rank !== 4 || w.rank !== 4 || w.shape[0] !== x.shape[1] || w.shape[1] !== 1) {
    throw new Error(
      `sparseDepthwiseConv2d: expected x [N, C, H, W] and w [C, 1, KH, KW], got [${x.shape}] and [${w.shape}]`,
    );
  }
  const [n, c, h, wd] = x.shape;
  const [, , kh, kw] = w.shape;
  const stride = opts.stride ?? 1;
  const p = opts.padding ?? "same";
  const [ph, pw] = p === "same" ? samePadding(kh, kw) : typeof p === "number" ? [p, p] : p;
  return {
    n,
    c,
    h,
    w: wd,
    kh,
    kw,
    ph,
    pw,
    ho: Math.floor((h + 2 * ph - kh) / stride) + 1,
    wo: Math.floor((wd + 2 * pw - kw) / stride) + 1,
    stride,
  };
}

/**
 * Depthwise convolution of `x` [N, C, H, W] with `w` [C, 1, KH, KW] masked by
 * `plan` (only its active taps count), plus an optional `bias` [C]: the same
 * result as `depthwiseConv2d(x, w ⊙ mask, bias, opts)`, differentiable in all
 * three; the gradient of `w` has w's dense shape with zeros at inactive taps.
 * Stride 1 runs the sparse kernels; stride 2, or a shape whose tiles do not
 * fit, runs the dense path on `w ⊙ mask`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { backward } from "./autograd.ts";
 * import { SparseDepthwisePlan, sparseDepthwiseConv2d } from "./sparse_depthwise.ts";
 * await initGpu();
 * const plan = SparseDepthwisePlan.fromMask(SparseDepthwisePlan.randomMask(3, 5, 7, 0.4, 3), [3, 1, 5, 7]);
 * const x = Tensor.randn([1, 3, 8, 8], { seed: 1 });
 * const w = Tensor.randn([3, 1, 5, 7], { seed: 2 });
 * w.requiresGrad = true;
 * backward(sparseDepthwiseConv2d(x, w, plan, null));
 * const g = await w.grad!.read();
 * console.log(g.filter((v) => v !== 0).length <= plan.active); // true
 * plan.dispose();
 * ```
 */
export function sparseDepthwiseConv2d(
  x: Tensor,
  w: Tensor,
  plan: SparseDepthwisePlan,
  bias: Tensor | null,
  opts: DepthwiseOptions = {},
): Tensor {
  const s = depthwiseShapeOf(x, w, opts);
  checkPlan(plan, s);
  const cfgs = s.stride === 1 ? sparseDepthwiseConfigs(s, plan.density) : null;
  if (!cfgs?.forward || !cfgs.backwardInput || !cfgs.filter) {
    return depthwiseConv2d(x, mul(w, plan.mask), bias, opts);
  }
  const { forward, backwardInput, filter } = cfgs;
  const y = sparseDepthwiseForward(x, w, plan, bias, s, forward);
  const inputs = bias ? [x, w, bias] : [x, w];
  const [wantX, wantW, wantB] = [needsGrad(x), needsGrad(w), bias !== null && needsGrad(bias)];
  const vertical = plan.vertical;
  // The plan's buffers are saved too: a mask update before backward records a new upload after
  // this node's kernels would read them, so the backward sees the taps as they are then.
  record(
    "sparseDepthwiseConv2d",
    inputs,
    y,
    [x, w, plan.patterns, plan.flipped],
    (gy, [sx, sw, pat, flip]) => {
      let gx: Tensor | null = null;
      if (wantX) {
        gx = Tensor.empty([s.n, s.c, s.h, s.w]);
        launchForward(transposedShape(s), vertical, backwardInput, true, gy, sw, flip, null, gx);
      }
      return [
        gx,
        wantW ? launchFilter(s, vertical, filter, gy, sx, pat) : null,
        wantB ? channelSum(gy) : null,
      ];
    },
  );
  return y;
}

// ---------------------------------------------------------------- tuning

function forwardCandidates(v: VShape, { software, max }: CandidateOptions): SparseForwardConfig[] {
  const d = defaultFwd(v);
  // A software adapter: the heuristic and the same without the look-ahead loads (small kernels).
  if (software) return distinctCandidates([d, { ...d, pre: !d.pre }].filter((c) => fwdFits(v, c)));
  // First the earlier winner and its variants with the look-ahead loads (pre), set-bit loops (lz),
  // staged coalesced stores (so) and whole-image-height tiles (maxTU 64); then the older ones.
  const variants = [
    { bu: 4, bv: 4, threads: 256 },
    { bu: 4, bv: 4, threads: 256, pre: true, so: true },
    { bu: 4, bv: 4, threads: 256, pre: true, lz: true, so: true },
    { bu: 8, bv: 4, pre: true, so: true },
    { bu: 4, bv: 4, threads: 256, lanes: 16, maxTU: 64, pre: true, so: true },
    { bu: 4, bv: 8, pre: true, lz: true, so: true },
    { bu: 4, bv: 4, threads: 256, so: true },
    { bu: 4, bv: 8 },
    { bu: 4, bv: 4 },
    { bu: 8, bv: 4 },
    { bu: 4, bv: 8, maxTU: 16 },
    { bu: 4, bv: 8, maxTU: 64, threads: 256 },
    { bu: 8, bv: 8 },
    { bu: 2, bv: 8 },
    { bu: 4, bv: 4, threads: 256 },
    { bu: 4, bv: 8, threads: 64 },
    { bu: 8, bv: 4, maxTU: 64 },
    { bu: 4, bv: 4, threads: 256, lz: true },
    { bu: 8, bv: 8, pre: true, so: true },
    { bu: 2, bv: 8, threads: 256, pre: true, lz: true, so: true },
  ];
  const all = distinctCandidates(
    [d, ...variants.map((x) => fitFwd(v, x))].filter((c) => fwdFits(v, c)),
  );
  return all.slice(0, max ?? 8);
}

function filterCandidates(v: VShape, { software, max }: CandidateOptions): SparseFilterConfig[] {
  const d = defaultFlt(v);
  if (software) {
    // The heuristic and the same tiles with half as many planes per group (more partial sums).
    const half = fitFlt(v, { bu: 2, bv: 4, ck: 2, lanes: 4, threads: 8, planesPerGroup: 2 });
    return distinctCandidates([d, half].filter((c) => fltFits(v, c)));
  }
  // The earlier winner, then split accumulators (acc: `acc` FMA chains per tap), then the older ones.
  const variants = [
    { bu: 4, bv: 4, ck: 2 },
    { bu: 4, bv: 4, ck: 2, acc: 4 },
    { bu: 4, bv: 4, ck: 4, acc: 4 },
    { bu: 4, bv: 8, ck: 2, acc: 4 },
    { bu: 4, bv: 4, ck: 4, threads: 256, acc: 4 },
    { bu: 4, bv: 4, ck: 2, acc: 2 },
    { bu: 8, bv: 4, ck: 2, acc: 4 },
    { bu: 4, bv: 8, ck: 4 },
    { bu: 2, bv: 8, ck: 4 },
    { bu: 4, bv: 4, ck: 8 },
    { bu: 4, bv: 4, ck: 4, threads: 256 },
    { bu: 4, bv: 4, ck: 4, planesPerGroup: 16 },
    { bu: 8, bv: 4, ck: 4 },
    { bu: 4, bv: 4, ck: 2 },
    { bu: 4, bv: 4, ck: 4, threads: 64 },
    { bu: 4, bv: 8, ck: 2, planesPerGroup: 16 },
  ];
  const all = distinctCandidates(
    [d, ...variants.map((x) => fitFlt(v, x))].filter((c) => fltFits(v, c)),
  );
  return all.slice(0, max ?? 8);
}

/** What {@linkcode sparseBenchInputs} returns. */
export interface SparseBenchInputs {
  plan: SparseDepthwisePlan;
  x: Tensor;
  w: Tensor;
  gy: Tensor;
  /** `w` times the mask. */
  masked: Tensor;
  /** `s` with its stride (1), as the plain kernels take it. */
  g: DepthwiseShape & { stride: number };
  dispose(): void;
}

/**
 * The planner's inputs for shape `s`: a random mask of `density` and its
 * plan, random x, w and gy, w masked, and the shape with its stride; one
 * `dispose` frees them all.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { sparseBenchInputs } from "./sparse_depthwise.ts";
 * await initGpu();
 * const s = { n: 1, c: 2, h: 6, w: 6, kh: 5, kw: 3, ph: 2, pw: 1, ho: 6, wo: 6 };
 * const t = sparseBenchInputs(s, 0.4);
 * console.log(t.masked.shape); // [2, 1, 5, 3]
 * t.dispose();
 * ```
 */
export function sparseBenchInputs(s: DepthwiseShape, density: number): SparseBenchInputs {
  const plan = SparseDepthwisePlan.fromMask(
    SparseDepthwisePlan.randomMask(s.c, s.kh, s.kw, density, 5),
    [s.c, 1, s.kh, s.kw],
  );
  const x = randomNormal([s.n, s.c, s.h, s.w], { seed: 1 });
  const w = randomNormal([s.c, 1, s.kh, s.kw], { seed: 2 });
  const gy = randomNormal([s.n, s.c, s.ho, s.wo], { seed: 3 });
  const masked = mul(w, plan.mask);
  const g = { ...s, stride: 1 };
  const dispose = () => {
    for (const t of [x, w, gy, masked]) t.dispose();
    plan.dispose();
  };
  return { plan, x, w, gy, masked, g, dispose };
}

function forwardJob(s: DepthwiseShape, density: number): PlanJob<SparseForwardConfig> {
  return {
    work: depthwiseWork(s) * density,
    candidates: (o) => forwardCandidates(virt(s, s.kh >= s.kw), o),
    bench: () => {
      const t = sparseBenchInputs(s, density);
      return {
        run: (c) => [sparseDepthwiseForward(t.x, t.w, t.plan, null, s, c)],
        reference: () => [plainDepthwiseForward(t.x, t.masked, null, t.g)],
        dispose: t.dispose,
      };
    },
  };
}

function backwardInputJob(s: DepthwiseShape, density: number): PlanJob<SparseForwardConfig> {
  return {
    work: depthwiseWork(s) * density,
    candidates: (o) => forwardCandidates(virt(transposedShape(s), s.kh >= s.kw), o),
    bench: () => {
      const t = sparseBenchInputs(s, density);
      return {
        run: (c) => [sparseDepthwiseBackwardInput(t.gy, t.w, t.plan, s, c)],
        reference: () => [plainDepthwiseBackwardInput(t.gy, t.masked, t.g)],
        dispose: t.dispose,
      };
    },
  };
}

function filterJob(s: DepthwiseShape, density: number): PlanJob<SparseFilterConfig> {
  return {
    work: depthwiseWork(s) * density,
    candidates: (o) => filterCandidates(virt(s, s.kh >= s.kw), o),
    bench: () => {
      const t = sparseBenchInputs(s, density);
      return {
        run: (c) => [sparseDepthwiseBackwardFilter(t.gy, t.x, t.plan, s, c)],
        reference: () => {
          const dense = plainDepthwiseBackwardFilter(t.gy, t.x, t.g);
          const gw = mul(dense, t.plan.mask);
          dense.dispose();
          return [gw];
        },
        dispose: t.dispose,
      };
    },
  };
}
