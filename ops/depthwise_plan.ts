/**
 * Which depthwise kernels a stride-1 shape runs: the switch between the
 * plain kernels (`depthwise_plain.ts`), the direct tiled kernels
 * (`depthwise_direct.ts`) and the FFT kernels (`depthwise_fft.ts`); the
 * heuristic tilings; the candidates the planner times; and the lookup
 * ({@linkcode depthwisePlan}) that asks the planner for each kernel's
 * config under the keys
 *
 * - `depthwise.forward|shape` (the forward kernel),
 * - `depthwise.backwardInput|shape` (the input gradient),
 * - `depthwise.filter|shape` (the filter gradient),
 * - `depthwise.fuse|shape` (both gradients from one FFT kernel, or not).
 *
 * Forcing `depthwise.forward` on the planner forces the input gradient too,
 * unless `depthwise.backwardInput` is forced as well.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseConv2d } from "./depthwise.ts";
 * import { setDepthwiseImpl } from "./depthwise_plan.ts";
 * await initGpu();
 * setDepthwiseImpl("fast");
 * const x = Tensor.randn([2, 3, 9, 9], { seed: 1 });
 * const w = Tensor.randn([3, 1, 5, 7], { seed: 2 });
 * console.log(depthwiseConv2d(x, w, null).shape); // [2, 3, 9, 9]
 * setDepthwiseImpl("auto");
 * ```
 * @module
 */
import {
  type ConvConfig,
  depthwiseBackwardFilterFast,
  depthwiseBackwardInputFast,
  depthwiseForwardFast,
  type FilterConfig,
  filterFits,
  type ForwardConfig,
  forwardFits,
  type WeightGradConfig,
} from "./depthwise_direct.ts";
import {
  fftCandidates,
  type FftConfig,
  fftDepthwiseBackward,
  fftFits,
  fftFusedBackwardFits,
  isFftConfig,
} from "./depthwise_fft.ts";
import {
  plainDepthwiseBackwardFilter,
  plainDepthwiseBackwardInput,
  plainDepthwiseForward,
} from "./depthwise_plain.ts";
import { type DepthwiseShape, depthwiseWork, transposedShape } from "./depthwise_shape.ts";
import { gpu } from "./gpu.ts";
import { ceilDiv, memoize } from "./kernel.ts";
import {
  type CandidateOptions,
  distinctCandidates,
  type PlanJob,
  planKey,
  planner,
} from "./planner.ts";
import { randomNormal } from "./random.ts";

export type { ConvConfig, DepthwiseShape, FilterConfig, ForwardConfig, WeightGradConfig };

/** Which kernels `depthwiseConv2d` runs. */
export type DepthwiseImpl = "generic" | "fast" | "auto";

let impl: DepthwiseImpl = "auto";

/**
 * Choose the depthwise kernels: `"generic"` (the plain kernels), `"fast"`
 * (the tiled or FFT kernels wherever they apply: stride 1 and the tiles fit)
 * or `"auto"` (the default: fast where it applies, except on a software
 * adapter). Tests and benchmarks use it to compare the two.
 *
 * @example
 * ```ts
 * import { depthwiseImpl, setDepthwiseImpl } from "./depthwise_plan.ts";
 * setDepthwiseImpl("generic");
 * console.log(depthwiseImpl()); // "generic"
 * setDepthwiseImpl("auto");
 * ```
 */
export function setDepthwiseImpl(which: DepthwiseImpl): void {
  if (!["generic", "fast", "auto"].includes(which)) {
    throw new Error(`setDepthwiseImpl: expected "generic", "fast" or "auto", got "${which}"`);
  }
  impl = which;
}

/**
 * The current choice of {@linkcode setDepthwiseImpl}.
 *
 * @example
 * ```ts
 * import { depthwiseImpl } from "./depthwise_plan.ts";
 * console.log(depthwiseImpl()); // "auto"
 * ```
 */
export function depthwiseImpl(): DepthwiseImpl {
  return impl;
}

/** The kernels chosen for one shape; null where the plain kernel runs. */
export interface DepthwisePlan {
  forward: ConvConfig | null;
  backwardInput: ConvConfig | null;
  filter: WeightGradConfig | null;
  /** Both gradients from one FFT kernel with this config (where it was faster), else null. */
  fused: FftConfig | null;
}

/** The planner's choice for `depthwise.fuse`: the FFT config of the fused backward, or none. */
export interface FuseChoice {
  fft: FftConfig | null;
}

/**
 * The planner key part of a shape.
 *
 * @example
 * ```ts
 * import { depthwiseShapeKey } from "./depthwise_plan.ts";
 * const shape = { n: 1, c: 8, h: 16, w: 16, kh: 7, kw: 7, ph: 3, pw: 3, ho: 16, wo: 16 };
 * console.log(depthwiseShapeKey(shape)); // 1,8,16,16,7,7,3,3,16,16
 * ```
 */
export function depthwiseShapeKey(s: DepthwiseShape): string {
  return [s.n, s.c, s.h, s.w, s.kh, s.kw, s.ph, s.pw, s.ho, s.wo].join(",");
}

const roundUp = (a: number, b: number) => Math.ceil(a / b) * b;
const isInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;

function isForwardConfig(c: unknown): c is ForwardConfig {
  const f = c as ForwardConfig;
  return typeof c === "object" && c !== null &&
    [f.bw, f.bh, f.planes, f.tileH, f.tileW, f.kc].every(isInt) &&
    (f.globalWeights === undefined || typeof f.globalWeights === "boolean");
}

function isFilterConfig(c: unknown): c is FilterConfig {
  const f = c as FilterConfig;
  return typeof c === "object" && c !== null &&
    [f.tbh, f.tbw, f.u, f.lanes, f.planesPerGroup, f.bandRows, f.kySplit].every(isInt);
}

const isConv = (c: unknown): c is ConvConfig => isFftConfig(c) || isForwardConfig(c);
const isWeightGrad = (c: unknown): c is WeightGradConfig => isFftConfig(c) || isFilterConfig(c);
const isFuse = (c: unknown): c is FuseChoice =>
  typeof c === "object" && c !== null && "fft" in c &&
  ((c as FuseChoice).fft === null || isFftConfig((c as FuseChoice).fft));

const convFits = (s: DepthwiseShape, c: ConvConfig) =>
  isFftConfig(c) ? fftFits(s, c) : forwardFits(s, c);
const weightGradFits = (s: DepthwiseShape, c: WeightGradConfig) =>
  isFftConfig(c) ? fftFits(s, c) : filterFits(s, c);

/** Whether some FFT config computes both gradients of `s` in one kernel. */
const fusable = memoize((s: DepthwiseShape) =>
  fftCandidates(s).some((c) => fftFusedBackwardFits(s, c))
);

/**
 * The fast plan for a stride-1 shape, or null where the plain kernels run
 * (`"generic"` chosen, stride 2, or `"auto"` on a software adapter); within a
 * plan, a kernel whose tiles do not fit in workgroup memory (a 151×151 filter)
 * is null and runs the plain kernel. Each config is the planner's (forced or
 * planned), else the heuristic's.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { depthwisePlan } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 1, c: 8, h: 16, w: 16, kh: 7, kw: 7, ph: 3, pw: 3, ho: 16, wo: 16 };
 * console.log(depthwisePlan(s, 1) !== null); // true on a GPU, false ("auto") on llvmpipe
 * ```
 */
export function depthwisePlan(s: DepthwiseShape, stride: number): DepthwisePlan | null {
  if (impl === "generic" || stride !== 1) return null;
  // llvmpipe compiles a large unrolled tile kernel for minutes (a 31×31 forward: ~75 s) and runs
  // tiny shapes about as fast with the plain kernels, so "auto" keeps software adapters on those.
  if (impl === "auto" && gpu().isFallback) return null;
  if (s.ph >= s.kh || s.pw >= s.kw) return null; // padding wider than the filter: rare, plain path
  const p = planner();
  const key = depthwiseShapeKey(s);
  const ts = transposedShape(s);
  const forward = p.choose("depthwise.forward", key, isConv, () => forwardJob(s)) ??
    defaultForwardConfig(s);
  const forcedForward = p.forced("depthwise.forward");
  const backwardInput =
    (p.forced("depthwise.backwardInput") === undefined && forcedForward
      ? forcedForward as ConvConfig
      : p.choose("depthwise.backwardInput", key, isConv, () => backwardInputJob(s))) ??
      defaultForwardConfig(ts);
  const filter = p.choose("depthwise.filter", key, isWeightGrad, () => filterJob(s)) ??
    defaultFilterConfig(s);
  const fuse = p.forced("depthwise.fuse") !== undefined || fusable(s)
    ? p.choose("depthwise.fuse", key, isFuse, () => fuseJob(s))
    : undefined;
  const fused = fuse?.fft ?? null;
  return {
    forward: convFits(s, forward) ? forward : null,
    backwardInput: convFits(ts, backwardInput) ? backwardInput : null,
    filter: weightGradFits(s, filter) ? filter : null,
    fused: fused && fftFusedBackwardFits(s, fused) ? fused : null,
  };
}

/**
 * The FFT config under which one kernel computes both gradients of shape
 * `s` (see `fftDepthwiseBackward`): the plan's `fused` config, where the
 * fused kernel fits the shape; null otherwise.
 *
 * @example
 * ```ts
 * import { fusedBackwardConfig } from "./depthwise_plan.ts";
 * const s = { n: 2, c: 4, h: 8, w: 8, kh: 3, kw: 3, ph: 1, pw: 1, ho: 8, wo: 8 };
 * const direct = { bw: 4, bh: 2, planes: 1, tileH: 8, tileW: 8, kc: 3 };
 * const plan = { forward: direct, backwardInput: direct, filter: null, fused: null };
 * console.log(fusedBackwardConfig(plan, s)); // null: no fused kernel planned
 * ```
 */
export function fusedBackwardConfig(plan: DepthwisePlan, s: DepthwiseShape): FftConfig | null {
  return plan.fused && fftFusedBackwardFits(s, plan.fused) ? plan.fused : null;
}

// ---------------------------------------------------------------- heuristics

/**
 * Heuristic forward tiling: whole rows of up to 64 outputs, 32 lanes sharing
 * a row block (small tiles on a software adapter).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { defaultForwardConfig } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 1, c: 2, h: 8, w: 8, kh: 3, kw: 3, ph: 1, pw: 1, ho: 8, wo: 8 };
 * console.log(defaultForwardConfig(s).bw % 4); // 0
 * ```
 */
export function defaultForwardConfig(s: DepthwiseShape): ForwardConfig {
  if (gpu().isFallback) {
    // Small unrolled bodies: llvmpipe's compile time grows with them.
    const tileW = Math.min(roundUp(s.wo, 4), 16);
    const tileH = Math.min(roundUp(s.ho, 2), 8);
    return {
      bw: 4,
      bh: 2,
      planes: 1,
      tileH,
      tileW,
      kc: s.kw <= 8 ? s.kw : 4,
      globalWeights: true,
    };
  }
  // From tuning SLaK-T's twelve shapes on an H200 (6 candidates each): 4-wide blocks won at every
  // size, 4 rows where the output has 24 rows or more and 2 below; 8×2 won only the 5×51 kernel
  // at 56² and is the next candidate.
  return fitForward(s, {
    bw: 4,
    bh: s.ho >= 24 ? 4 : 2,
    kc: s.kw <= 48 ? s.kw : 32,
  });
}

/**
 * A forward tiling with the given register block: tiles whole rows of up to
 * 8 blocks, `lanes` invocations per row block (planes fill the rest), up to
 * `threads` per workgroup; planes, then tile height, shrink until it fits.
 */
function fitForward(
  s: DepthwiseShape,
  { bw, bh, kc, lanes = 32, threads = 256, globalWeights }: {
    bw: number;
    bh: number;
    kc: number;
    lanes?: number;
    threads?: number;
    globalWeights?: boolean;
  },
): ForwardConfig {
  const tileW = Math.min(roundUp(s.wo, bw), bw * 8);
  const nx = tileW / bw;
  let planes = Math.max(1, Math.min(s.n, Math.floor(lanes / nx)));
  let tileH = Math.min(roundUp(s.ho, bh), bh * Math.max(1, Math.floor(threads / (nx * planes))));
  const cfg = (): ForwardConfig => ({
    bw,
    bh,
    planes,
    tileH,
    tileW,
    kc,
    ...(globalWeights ? { globalWeights } : {}),
  });
  while (!forwardFits(s, cfg()) && planes > 1) planes = Math.max(1, planes >> 1);
  while (!forwardFits(s, cfg()) && tileH > bh) tileH = Math.max(bh, roundUp(tileH >> 1, bh));
  return cfg();
}

/**
 * A filter tiling with the given tap block and step, its lanes, tap-row split
 * and band height adjusted until it fits (≤ 256 threads, workgroup memory).
 */
function fitFilter(
  s: DepthwiseShape,
  { tbh, tbw, u, lanes, planesPerGroup }: Pick<
    FilterConfig,
    "tbh" | "tbw" | "u" | "lanes" | "planesPerGroup"
  >,
): FilterConfig {
  tbh = Math.min(tbh, s.kh);
  const nkx = ceilDiv(s.kw, tbw);
  const nky = ceilDiv(s.kh, tbh);
  // Never more row lanes than rows, nor more threads than 256.
  lanes = Math.max(1, Math.min(lanes, 1 << Math.ceil(Math.log2(s.h)), Math.floor(256 / nkx)));
  let kySplit = Math.max(1, ceilDiv(nkx * lanes * nky, 256));
  while (kySplit > 1 && ceilDiv(nky, kySplit) * (kySplit - 1) >= nky) kySplit--;
  while (nkx * lanes * ceilDiv(nky, kySplit) > 256 && kySplit < nky) kySplit++;
  let bandRows = roundUp(Math.min(s.h, 64), lanes);
  const planes = Math.max(1, Math.min(s.n, planesPerGroup));
  const cfg = (): FilterConfig => ({
    tbh,
    tbw,
    u,
    lanes,
    planesPerGroup: planes,
    bandRows,
    kySplit,
  });
  while (!filterFits(s, cfg()) && bandRows > lanes) bandRows = roundUp(bandRows >> 1, lanes);
  return cfg();
}

/**
 * Heuristic filter-gradient tiling.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { defaultFilterConfig } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 1, c: 2, h: 8, w: 8, kh: 3, kw: 3, ph: 1, pw: 1, ho: 8, wo: 8 };
 * console.log(defaultFilterConfig(s).tbw % 4); // 0
 * ```
 */
export function defaultFilterConfig(s: DepthwiseShape): FilterConfig {
  if (gpu().isFallback) {
    // Small unrolled bodies: llvmpipe's compile time grows with them.
    return fitFilter(s, { tbh: 2, tbw: 4, u: 4, lanes: 1, planesPerGroup: 4 });
  }
  // From tuning SLaK-T's twelve shapes on an H200 (6 candidates each): tap blocks 2 rows high
  // for kernels no taller than wide at 24 output rows or more (4 below), 8 high for tall kernels
  // at 48 rows or more (4 below); 16-wide tap blocks only for wide kernels at 24 rows or more;
  // 16 planes per group where 4-row tap blocks meet 14–28 rows, else 8.
  const tall = s.kh > s.kw;
  const tbh = tall ? (s.ho >= 48 ? 8 : 4) : (s.ho >= 24 ? 2 : 4);
  const tbw = s.kw > 8 && s.ho >= 24 ? 16 : s.kw > 4 ? 8 : 4;
  return fitFilter(s, {
    tbh,
    tbw,
    u: s.wo >= 8 ? 8 : 4,
    lanes: Math.max(1, Math.floor(32 / ceilDiv(s.kw, tbw))),
    planesPerGroup: tbh === 4 && s.ho >= 14 && s.ho <= 28 ? 16 : 8,
  });
}
// ---------------------------------------------------------------- candidates and plan jobs

/** Direct candidates that a software adapter compiles in seconds: the heuristic and one variation. */
function softwareForward(s: DepthwiseShape): ForwardConfig[] {
  const d = defaultForwardConfig(s);
  return distinctCandidates(
    [d, { ...d, globalWeights: !d.globalWeights }].filter((c) => forwardFits(s, c)),
  );
}

function softwareFilter(s: DepthwiseShape): FilterConfig[] {
  const d = defaultFilterConfig(s);
  const other = fitFilter(s, { ...d, planesPerGroup: Math.max(1, d.planesPerGroup >> 1) });
  return distinctCandidates([d, other].filter((c) => filterFits(s, c)));
}

/** Forward/input-gradient candidates: the heuristic first, then variations of one knob each. */
function forwardCandidates(s: DepthwiseShape, { software, max }: CandidateOptions): ConvConfig[] {
  if (software) return softwareForward(s);
  const d = defaultForwardConfig(s);
  const base = { bw: d.bw, bh: d.bh, kc: d.kc };
  const other = d.bw === 8 ? 4 : 8;
  // The next best of the H200 tuning first, so that a run trying 3 candidates tries them.
  const variants = [
    { bw: other, bh: 2 },
    { bh: d.bh === 4 ? 2 : 4 },
    { bw: other },
    { bh: 8 },
    { globalWeights: true },
    { lanes: 64 },
    { threads: 128 },
    { bw: other, bh: 8 },
    { lanes: 16 },
    { bh: 8, globalWeights: true },
    ...(s.kw > 48 ? [{ kc: 48 }, { kc: 24 }] : []),
  ];
  const out = [d, ...variants.map((v) => fitForward(s, { ...base, ...v }))];
  const direct = distinctCandidates(out.filter((c) => forwardFits(s, c))).slice(0, max ?? 8);
  return [...direct, ...fftCandidates(s)];
}

/** Filter-gradient candidates: the heuristic first, then variations of one knob each. */
function filterCandidates(
  s: DepthwiseShape,
  { software, max }: CandidateOptions,
): WeightGradConfig[] {
  if (software) return softwareFilter(s);
  const d = defaultFilterConfig(s);
  const base = { tbh: d.tbh, tbw: d.tbw, u: d.u, lanes: d.lanes, planesPerGroup: d.planesPerGroup };
  const otherTbw = d.tbw === 16 ? 8 : 16;
  // The knobs that decided the H200 tuning first (tap-block height, planes per group, tap-block
  // width), so that a run trying 3 candidates tries them.
  const variants: Partial<typeof base>[] = [
    { tbh: d.tbh === 2 ? 4 : d.tbh === 8 ? 4 : 2 },
    { planesPerGroup: d.planesPerGroup === 16 ? 8 : 16 },
    { tbw: otherTbw, lanes: Math.max(1, Math.floor(32 / ceilDiv(s.kw, otherTbw))) },
    { tbh: 8 },
    { u: 16 },
    { lanes: Math.max(1, d.lanes >> 1) },
    { lanes: d.lanes * 2 },
    { planesPerGroup: 4 },
    { tbh: 8, u: 16 },
  ];
  const out = [d, ...variants.map((v) => fitFilter(s, { ...base, ...v }))];
  const direct = distinctCandidates(out.filter((c) => filterFits(s, c))).slice(0, max ?? 8);
  return [...direct, ...fftCandidates(s)];
}

/** Random inputs of one shape: x, w and gy, disposed together. */
function benchInputs(s: DepthwiseShape) {
  const x = randomNormal([s.n, s.c, s.h, s.w], { seed: 1 });
  const w = randomNormal([s.c, 1, s.kh, s.kw], { seed: 2 });
  const gy = randomNormal([s.n, s.c, s.ho, s.wo], { seed: 3 });
  return { x, w, gy, dispose: () => [x, w, gy].forEach((t) => t.dispose()) };
}

const geometry = (s: DepthwiseShape) => ({ ...s, stride: 1 });

function forwardJob(s: DepthwiseShape): PlanJob<ConvConfig> {
  return {
    work: depthwiseWork(s),
    candidates: (o) => forwardCandidates(s, o),
    bench: () => {
      const t = benchInputs(s);
      return {
        run: (c) => [depthwiseForwardFast(t.x, t.w, null, s, c)],
        reference: () => [plainDepthwiseForward(t.x, t.w, null, geometry(s))],
        dispose: t.dispose,
      };
    },
  };
}

function backwardInputJob(s: DepthwiseShape): PlanJob<ConvConfig> {
  const ts = transposedShape(s);
  return {
    work: depthwiseWork(s),
    candidates: (o) => {
      // "Same" padding of an odd kernel: the input gradient is the forward kernel on the same
      // shape, so the forward's plan serves (checked, not timed).
      const key = depthwiseShapeKey(s);
      const fwd = planner().planOf(planKey("depthwise.forward", key));
      if (depthwiseShapeKey(ts) === key && isConv(fwd)) return [fwd];
      return forwardCandidates(ts, o);
    },
    bench: () => {
      const t = benchInputs(s);
      return {
        run: (c) => [depthwiseBackwardInputFast(t.gy, t.w, s, c)],
        reference: () => [plainDepthwiseBackwardInput(t.gy, t.w, geometry(s))],
        dispose: t.dispose,
      };
    },
  };
}

function filterJob(s: DepthwiseShape): PlanJob<WeightGradConfig> {
  return {
    work: depthwiseWork(s),
    candidates: (o) => filterCandidates(s, o),
    bench: () => {
      const t = benchInputs(s);
      return {
        run: (c) => [depthwiseBackwardFilterFast(t.gy, t.x, s, c)],
        reference: () => [plainDepthwiseBackwardFilter(t.gy, t.x, geometry(s))],
        dispose: t.dispose,
      };
    },
  };
}

/**
 * Both gradients from one FFT kernel against the two planned kernels,
 * whichever algorithms those are: a fused kernel can win even where neither
 * FFT gradient alone does. Planned after the two gradients' own keys.
 */
function fuseJob(s: DepthwiseShape): PlanJob<FuseChoice> {
  return {
    work: depthwiseWork(s),
    candidates: ({ software }) => [
      { fft: null },
      ...(software ? [] : fftCandidates(s).filter((c) => fftFusedBackwardFits(s, c)))
        .map((fft) => ({ fft })),
    ],
    bench: () => {
      const t = benchInputs(s);
      return {
        run: ({ fft }) => {
          if (fft) return fftDepthwiseBackward(t.gy, t.x, t.w, s, fft);
          const plan = depthwisePlan(s, 1);
          const g = geometry(s);
          return [
            plan?.backwardInput
              ? depthwiseBackwardInputFast(t.gy, t.w, s, plan.backwardInput)
              : plainDepthwiseBackwardInput(t.gy, t.w, g),
            plan?.filter
              ? depthwiseBackwardFilterFast(t.gy, t.x, s, plan.filter)
              : plainDepthwiseBackwardFilter(t.gy, t.x, g),
          ];
        },
        reference: () => [
          plainDepthwiseBackwardInput(t.gy, t.w, geometry(s)),
          plainDepthwiseBackwardFilter(t.gy, t.x, geometry(s)),
        ],
        dispose: t.dispose,
      };
    },
  };
}
