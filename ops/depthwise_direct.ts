/**
 * The direct (tiled) depthwise kernels at stride 1, for any KH×KW, any
 * padding, kernels larger than the image and rectangular 51×5 / 5×51:
 * forward, input gradient and filter gradient, and the `…Fast` entry points
 * that run them or the FFT kernels of `depthwise_fft.ts` under a config.
 * Which config a shape runs is the planner's choice (`depthwise_plan.ts`).
 *
 * How they get fast:
 *
 * - **Forward** (and the **input gradient**, the same kernel on `gy` with
 *   the filter flipped and the padding mirrored): a workgroup owns an output
 *   tile of `planes` channel planes of one channel. It stages the input rows
 *   of the tile (plus the halo, zero columns materialised so no tap tests a
 *   bound) and the channel's filter in workgroup memory. Each invocation keeps
 *   a `bh×bw` block of outputs in registers and walks the input rows: one row
 *   segment of `bw + KW − 1` values, loaded as vec4s, serves all `bh` output
 *   rows and all `KW` taps (`bh·bw·KW` FMAs), while the filter rows come as
 *   vec4 broadcasts (every lane of a warp reads the same address). Rows in the
 *   zero padding are skipped, not multiplied.
 * - **Filter gradient**: a reduction over `N·Ho·Wo` per tap. An invocation
 *   owns a `tbh×tbw` block of taps; the workgroup loops over a group of planes
 *   and row bands of each, staging the input band and the matching `gy` rows,
 *   and each invocation walks input rows (`lanes` invocations split the rows):
 *   one input segment serves `tbh` `gy` rows and `tbw` taps. Partial sums go
 *   across lanes in workgroup memory, then across plane groups in a second
 *   pass (WGSL has no float atomics).
 *
 * Every loop that touches a register is unrolled by the generator with the
 * shapes and tile sizes baked in, so the accumulators are plain scalars.
 * Tile sizes are parameters ({@linkcode ForwardConfig},
 * {@linkcode FilterConfig}): small ones keep llvmpipe's compile times short,
 * large ones feed a GPU.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseForwardFast } from "./depthwise_direct.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6 };
 * const cfg = { bw: 4, bh: 2, planes: 1, tileH: 4, tileW: 8, kc: 3 };
 * const y = depthwiseForwardFast(Tensor.ones([1, 1, 6, 6]), Tensor.ones([1, 1, 3, 3]), null, s, cfg);
 * console.log((await y.read())[7]); // 9
 * ```
 * @module
 */
import {
  type FftConfig,
  fftDepthwiseBackwardFilter,
  fftDepthwiseBackwardInput,
  fftDepthwiseForward,
  isFftConfig,
} from "./depthwise_fft.ts";
import {
  type DepthwiseShape,
  transposedShape,
  workgroupMemoryLimit as sharedLimit,
} from "./depthwise_shape.ts";
import { gpu } from "./gpu.ts";
import { ceilDiv, launch, memoize, storage } from "./kernel.ts";
import { grid1d, Tensor } from "./tensor.ts";

// ---------------------------------------------------------------- shapes and configs

export type { DepthwiseShape };

/**
 * Tiling of the forward / input-gradient kernel. Threads per workgroup:
 * `(tileW/bw)·planes·(tileH/bh)`.
 */
export interface ForwardConfig {
  /** Output columns per invocation (a multiple of 4). */
  bw: number;
  /** Output rows per invocation. */
  bh: number;
  /** Channel planes (batch items of one channel) per workgroup. */
  planes: number;
  /** Output tile height (a multiple of bh) and width (a multiple of bw). */
  tileH: number;
  tileW: number;
  /** Taps per unrolled chunk of a filter row: KW for one chunk, else a multiple of 4. */
  kc: number;
  /**
   * Read the filter straight from its storage buffer (uniform loads) instead of
   * staging it in workgroup memory: less workgroup memory (llvmpipe compiles
   * large workgroup arrays slowly; huge filters fit), more load instructions.
   */
  globalWeights?: boolean;
}

/** Tiling of the filter-gradient kernel. */
export interface FilterConfig {
  /** Taps per invocation: tbh rows × tbw columns (tbw a multiple of 4). */
  tbh: number;
  tbw: number;
  /** Output columns per unrolled step (a multiple of 4). */
  u: number;
  /** Invocations that split the input rows of a band between them. */
  lanes: number;
  /** Planes (batch items) one workgroup sums over; partial sums per group. */
  planesPerGroup: number;
  /** Input rows staged per band (a multiple of lanes). */
  bandRows: number;
  /** Workgroups that split the tap rows of a channel between them. */
  kySplit: number;
}

/** A forward / input-gradient tiling: direct tiles or FFT tiles. */
export type ConvConfig = ForwardConfig | FftConfig;
/** A filter-gradient tiling: direct or FFT. */
export type WeightGradConfig = FilterConfig | FftConfig;

// ---------------------------------------------------------------- small helpers

const COMP = ["x", "y", "z", "w"];
/** WGSL name of scalar m of a register row held as vec4s named `${name}${k}`. */
const lane = (name: string, m: number) => `${name}${m >> 2}.${COMP[m & 3]}`;

/**
 * Extra vec4 slots per row / plane that minimise shared-memory bank conflicts
 * of 16-byte loads: a quarter-warp (8 lanes × 16 B) is served at once when
 * its distinct addresses fall in distinct 16-byte bank groups.
 */
function bestPad(
  addr: (lane: number, rowStride: number, planeStride: number) => number,
  rowBase: number,
  planeBase: (rowStride: number) => number,
): [number, number] {
  let best: [number, number] = [0, 0];
  let bestCost = Infinity;
  for (let pr = 0; pr < 8; pr++) {
    const rs = rowBase + pr;
    for (let pp = 0; pp < 8; pp++) {
      const ps = planeBase(rs) + pp;
      let cost = 0;
      for (let q = 0; q < 64; q += 8) {
        const byGroup = new Map<number, Set<number>>();
        for (let l = q; l < q + 8; l++) {
          const a = addr(l, rs, ps);
          const g = ((a % 8) + 8) % 8;
          if (!byGroup.has(g)) byGroup.set(g, new Set());
          byGroup.get(g)!.add(a);
        }
        cost += Math.max(...[...byGroup.values()].map((s) => s.size));
      }
      if (cost < bestCost - 1e-9) {
        bestCost = cost;
        best = [pr, pp];
      }
    }
  }
  return best;
}

// ---------------------------------------------------------------- forward kernel

/** Everything the forward generator derives from a shape and a config. */
interface ForwardLayout {
  nx: number;
  ny: number;
  threads: number;
  nCh: number;
  kc: number;
  /** vec4s per input segment and per filter-row chunk. */
  nv: number;
  nw: number;
  /** Filter row stride (vec4). */
  wsv: number;
  /** Staged rows per plane (upper bound), row stride and plane stride (vec4). */
  rows: number;
  twv: number;
  rsv: number;
  psv: number;
  tilesX: number;
  tilesY: number;
  sharedBytes: number;
}

const forwardLayout = memoize(forwardLayoutOf);
function forwardLayoutOf(s: DepthwiseShape, cfg: ForwardConfig): ForwardLayout {
  const { bw, bh, planes, tileH, tileW } = cfg;
  const nx = tileW / bw;
  const ny = tileH / bh;
  const nCh = cfg.kc >= s.kw ? 1 : ceilDiv(s.kw, cfg.kc);
  const kc = nCh === 1 ? s.kw : cfg.kc;
  const nv = ceilDiv(bw + kc - 1, 4);
  const nw = ceilDiv(kc, 4);
  const wsv = nCh * nw;
  const rows = Math.max(1, Math.min(s.h, tileH + s.kh - 1));
  const widthF = (nx - 1) * bw + (nCh - 1) * kc + 4 * nv;
  const twv = ceilDiv(widthF, 4);
  const threads = nx * planes * ny;
  // Lanes: q (column block) fastest, then plane, then row block.
  const [pr, pp] = bestPad(
    (l, rs, ps) => {
      const q = l % nx;
      const p = Math.floor(l / nx) % planes;
      const yb = Math.floor(l / (nx * planes));
      return p * ps + yb * bh * rs + q * (bw / 4);
    },
    twv,
    (rs) => rows * rs,
  );
  const rsv = twv + pr;
  const psv = rows * rsv + pp;
  const sharedBytes = 16 * (planes * psv + (cfg.globalWeights ? 1 : s.kh * wsv));
  return {
    nx,
    ny,
    threads,
    nCh,
    kc,
    nv,
    nw,
    wsv,
    rows,
    twv,
    rsv,
    psv,
    tilesX: ceilDiv(s.wo, tileW),
    tilesY: ceilDiv(s.ho, tileH),
    sharedBytes,
  };
}

function forwardValid(cfg: ForwardConfig): boolean {
  return cfg.bw > 0 && cfg.bw % 4 === 0 && cfg.bh > 0 && cfg.planes > 0 &&
    cfg.tileW % cfg.bw === 0 && cfg.tileH % cfg.bh === 0 && cfg.tileW > 0 && cfg.tileH > 0 &&
    cfg.kc > 0;
}

/**
 * True when `cfg` is a well-formed forward tiling whose workgroup fits the
 * adapter's limits (invocations, workgroup memory) on shape `s`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { forwardFits } from "./depthwise_direct.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6 };
 * console.log(forwardFits(s, { bw: 4, bh: 2, planes: 1, tileH: 4, tileW: 8, kc: 3 })); // true
 * ```
 */
export function forwardFits(s: DepthwiseShape, cfg: ForwardConfig): boolean {
  if (!forwardValid(cfg)) return false;
  if (cfg.kc < s.kw && cfg.kc % 4 !== 0) return false;
  const L = forwardLayout(s, cfg);
  return L.threads <= Math.min(256, gpu().limits.maxComputeInvocationsPerWorkgroup) &&
    L.sharedBytes <= sharedLimit();
}

const forwardKernel = memoize(forwardKernelSource);
/**
 * WGSL of the forward tile kernel: y = corr(x, w) (+ bias) with top/left
 * padding (ph, pw), or with `flip` the correlation with the filter rotated by
 * 180° (the input gradient).
 */
function forwardKernelSource(
  s: DepthwiseShape,
  cfg: ForwardConfig,
  opts: { flip: boolean; bias: boolean },
): string {
  const L = forwardLayout(s, cfg);
  const { bw, bh, planes: P, tileH: TH, tileW: TW } = cfg;
  const { nx, nCh, kc, nv, nw, wsv, rows, twv, rsv, psv, threads: T } = L;
  const { n: N, c: C, h: HIN, w: WIN, kh: KH, kw: KW, ph: PT, pw: PL, ho: HO, wo: WO } = s;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  e(storage(...(opts.bias ? ["x", "w", "b", "y!"] : ["x", "w", "y!"])));
  e(`var<workgroup> xt: array<vec4<f32>, ${P * psv}>;`);
  const gw = cfg.globalWeights === true;
  if (!gw) e(`var<workgroup> wt: array<vec4<f32>, ${KH * wsv}>;`);
  e(`@compute @workgroup_size(${T})`);
  e(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {`);
  e(`  let c = wid.y;`);
  e(`  let n0 = wid.z * ${P}u;`);
  e(`  let oyT = i32((wid.x / ${L.tilesX}u) * ${TH}u);`);
  e(`  let oxT = i32((wid.x % ${L.tilesX}u) * ${TW}u);`);
  e(`  let iyT0 = max(0, oyT - ${PT});`);
  e(`  let nRows = min(${HIN}, oyT + ${TH - 1 - PT + KH}) - iyT0;`);
  // Stage the filter of channel c, rows padded to whole vec4s with zeros.
  const wIdx = (ky: string, kx: string) =>
    opts.flip ? `(${KH - 1}u - ${ky}) * ${KW}u + ${KW - 1}u - ${kx}` : `${ky} * ${KW}u + ${kx}`;
  if (!gw) {
    e(`  for (var i = tid; i < ${KH * wsv}u; i += ${T}u) {`);
    e(`    let ky = i / ${wsv}u;`);
    e(`    let kx0 = (i % ${wsv}u) * 4u;`);
    e(`    var v = vec4<f32>(0.0);`);
    for (let k = 0; k < 4; k++) {
      e(`    if (kx0 + ${k}u < ${KW}u) { v.${COMP[k]} = w[c * ${KH * KW}u + ${
        wIdx("ky", `(kx0 + ${k}u)`)
      }]; }`);
    }
    e(`    wt[i] = v;`);
    e(`  }`);
  }
  // Stage the input rows of P planes; columns outside the image are zeros.
  e(`  for (var i = tid; i < ${P * rows * twv}u; i += ${T}u) {`);
  e(`    let tv = i % ${twv}u;`);
  e(`    let rho = (i / ${twv}u) % ${rows}u;`);
  e(`    let p = i / ${rows * twv}u;`);
  e(`    if (i32(rho) < nRows && n0 + p < ${N}u) {`);
  e(`      let src = ((n0 + p) * ${C}u + c) * ${HIN * WIN}u + u32(iyT0 + i32(rho)) * ${WIN}u;`);
  e(`      let ix0 = oxT - ${PL} + i32(tv * 4u);`);
  e(`      var v = vec4<f32>(0.0);`);
  for (let k = 0; k < 4; k++) {
    e(`      if (ix0 + ${k} >= 0 && ix0 + ${k} < ${WIN}) { v.${
      COMP[k]
    } = x[src + u32(ix0 + ${k})]; }`);
  }
  e(`      xt[p * ${psv}u + rho * ${rsv}u + tv] = v;`);
  e(`    }`);
  e(`  }`);
  e(`  workgroupBarrier();`);
  // Each invocation: a bh×bw output block of plane p.
  e(`  let q = tid % ${nx}u;`);
  e(`  let p = (tid / ${nx}u) % ${P}u;`);
  e(`  let oy0 = oyT + i32((tid / ${nx * P}u) * ${bh}u);`);
  const init = opts.bias ? "b[c]" : "0.0";
  for (let b = 0; b < bh; b++) {
    for (let j = 0; j < bw; j++) e(`  var a${b}_${j} = ${init};`);
  }
  // Offsets s = input row − (oy0 − PT): output row oy0+b uses tap row s−b.
  e(`  let sLo = max(0, ${PT} - oy0);`);
  e(`  let sHi = min(${bh + KH - 1}, ${HIN + PT} - oy0);`);
  e(`  let xb = p * ${psv}u + q * ${bw / 4}u;`);
  e(`  for (var s = sLo; s < sHi; s++) {`);
  e(`    let r = xb + u32(oy0 - ${PT} + s - iyT0) * ${rsv}u;`);
  let ind = "    ";
  if (nCh > 1) {
    e(`    for (var ch = 0u; ch < ${nCh}u; ch++) {`);
    ind = "      ";
    e(`${ind}let rc = r + ch * ${kc / 4}u;`);
    e(`${ind}let wc = ch * ${nw}u;`);
  } else {
    e(`${ind}let rc = r;`);
    e(`${ind}let wc = 0u;`);
  }
  for (let v = 0; v < nv; v++) e(`${ind}let x${v} = xt[rc + ${v}u];`);
  for (let b = 0; b < bh; b++) {
    const cond = b === 0 ? `s < ${KH}` : `s >= ${b} && s < ${b + KH}`;
    e(`${ind}if (${cond}) {`);
    if (gw) {
      // Filter row s−b (flipped: row KH−1−(s−b), read backwards), chunk ch: taps past KW are 0.
      const row = opts.flip ? `${KH - 1}u - u32(s - ${b})` : `u32(s - ${b})`;
      e(`${ind}  let wr = c * ${KH * KW}u + (${row}) * ${KW}u;`);
      for (let k = 0; k < kc; k++) {
        const kx = nCh > 1 ? `ch * ${kc}u + ${k}u` : `${k}u`;
        const at = opts.flip ? `wr + ${KW - 1}u - (${kx})` : `wr + ${kx}`;
        e(
          nCh > 1
            ? `${ind}  let t${k} = select(0.0, w[${at}], ${kx} < ${KW}u);`
            : `${ind}  let t${k} = w[${at}];`,
        );
      }
    } else {
      e(`${ind}  let wr = u32(s - ${b}) * ${wsv}u + wc;`);
      for (let v = 0; v < nw; v++) e(`${ind}  let w${v} = wt[wr + ${v}u];`);
    }
    for (let k = 0; k < kc; k++) {
      const wk = gw ? `t${k}` : lane("w", k);
      for (let j = 0; j < bw; j++) {
        e(`${ind}  a${b}_${j} = fma(${wk}, ${lane("x", j + k)}, a${b}_${j});`);
      }
    }
    e(`${ind}}`);
  }
  if (nCh > 1) e(`    }`);
  e(`  }`);
  // Store the block.
  e(`  let n = n0 + p;`);
  e(`  if (n < ${N}u) {`);
  e(`    let yPlane = (n * ${C}u + c) * ${HO * WO}u;`);
  e(`    let ox0 = oxT + i32(q * ${bw}u);`);
  for (let b = 0; b < bh; b++) {
    e(`    if (oy0 + ${b} < ${HO}) {`);
    e(`      let yr = yPlane + u32(oy0 + ${b}) * ${WO}u;`);
    for (let j = 0; j < bw; j++) {
      e(`      if (ox0 + ${j} < ${WO}) { y[yr + u32(ox0 + ${j})] = a${b}_${j}; }`);
    }
    e(`    }`);
  }
  e(`  }`);
  e(`}`);
  return out.join("\n");
}

function launchForward(
  s: DepthwiseShape,
  cfg: ForwardConfig,
  flip: boolean,
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  y: Tensor,
): void {
  const L = forwardLayout(s, cfg);
  const code = forwardKernel(s, cfg, { flip, bias: bias !== null });
  launch(
    code,
    bias ? [x, w, bias, y] : [x, w, y],
    [L.tilesX * L.tilesY, s.c, ceilDiv(s.n, cfg.planes)],
    undefined,
    { name: flip ? "depthwise-backward-input" : "depthwise-forward", config: { shape: s, cfg } },
  );
}

/**
 * Forward of a stride-1 depthwise convolution with the tile kernel:
 * x [n, c, h, w], w [c, 1, kh, kw], optional bias [c] → y [n, c, ho, wo].
 * No autograd recording (`depthwiseConv2d` records).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseForwardFast } from "./depthwise_direct.ts";
 * import { defaultForwardConfig } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 1, c: 2, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6 };
 * const y = depthwiseForwardFast(Tensor.ones([1, 2, 6, 6]), Tensor.ones([2, 1, 3, 3]), null, s,
 *   defaultForwardConfig(s));
 * console.log((await y.read())[7]); // 9
 * ```
 */
export function depthwiseForwardFast(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  s: DepthwiseShape,
  cfg: ConvConfig,
): Tensor {
  if (isFftConfig(cfg)) return fftDepthwiseForward(x, w, bias, s, cfg);
  const y = Tensor.empty([s.n, s.c, s.ho, s.wo]);
  launchForward(s, cfg, false, x, w, bias, y);
  return y;
}

/**
 * Input gradient of a stride-1 depthwise convolution of shape `s`: the
 * forward tile kernel on `gy` [n, c, ho, wo] with the filter flipped and the
 * padding mirrored → gx [n, c, h, w]. `cfg` tiles the gx plane.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseBackwardInputFast } from "./depthwise_direct.ts";
 * import { defaultForwardConfig } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 5, w: 5, kh: 3, kw: 3, ph: 1, pw: 1, ho: 5, wo: 5 };
 * const gx = depthwiseBackwardInputFast(Tensor.ones([1, 1, 5, 5]), Tensor.ones([1, 1, 3, 3]), s,
 *   defaultForwardConfig(s));
 * console.log((await gx.read())[0]); // 4
 * ```
 */
export function depthwiseBackwardInputFast(
  gy: Tensor,
  w: Tensor,
  s: DepthwiseShape,
  cfg: ConvConfig,
): Tensor {
  if (isFftConfig(cfg)) return fftDepthwiseBackwardInput(gy, w, s, cfg);
  const gx = Tensor.empty([s.n, s.c, s.h, s.w]);
  launchForward(transposedShape(s), cfg, true, gy, w, null, gx);
  return gx;
}

// ---------------------------------------------------------------- filter-gradient kernel

interface FilterLayout {
  nkx: number;
  nky: number;
  /** Tap-row blocks per workgroup. */
  nkyW: number;
  threads: number;
  nCh: number;
  nvx: number;
  xrsv: number;
  gRows: number;
  grsv: number;
  nBands: number;
  groups: number;
  sharedBytes: number;
}

const filterLayout = memoize(filterLayoutOf);
function filterLayoutOf(s: DepthwiseShape, cfg: FilterConfig): FilterLayout {
  const { tbh, tbw, u, lanes, bandRows, planesPerGroup, kySplit } = cfg;
  const nkx = ceilDiv(s.kw, tbw);
  const nky = ceilDiv(s.kh, tbh);
  const nkyW = ceilDiv(nky, kySplit);
  const threads = nkx * lanes * nkyW;
  const nCh = ceilDiv(s.wo, u);
  const nvx = ceilDiv(u + tbw - 1, 4);
  const xwv = ceilDiv((nCh - 1) * u + (nkx - 1) * tbw + 4 * nvx, 4);
  const gwv = nCh * u / 4;
  const gRows = Math.max(1, Math.min(s.ho, bandRows + s.kh - 1));
  // Lanes: tap-column block fastest, then row lane (consecutive input rows).
  const [px] = bestPad((l, rs) => (Math.floor(l / nkx) % lanes) * rs + (l % nkx) * (tbw / 4), xwv, (
    rs,
  ) => rs);
  const [pg] = bestPad((l, rs) => (Math.floor(l / nkx) % lanes) * rs, gwv, (rs) => rs);
  const xrsv = xwv + px;
  const grsv = gwv + pg;
  // The lane reduction reuses the input tile when it is large enough.
  const redBytes = bandRows * (xwv + px) >= threads ? 0 : 16 * threads;
  return {
    nkx,
    nky,
    nkyW,
    threads,
    nCh,
    nvx,
    xrsv,
    gRows,
    grsv,
    nBands: ceilDiv(s.h, bandRows),
    groups: ceilDiv(s.n, planesPerGroup),
    sharedBytes: 16 * (bandRows * xrsv + gRows * grsv) + redBytes,
  };
}

/**
 * True when `cfg` is a well-formed filter-gradient tiling whose workgroup
 * fits the adapter's limits on shape `s`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { filterFits } from "./depthwise_direct.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6 };
 * const cfg = { tbh: 2, tbw: 4, u: 4, lanes: 1, planesPerGroup: 1, bandRows: 6, kySplit: 1 };
 * console.log(filterFits(s, cfg)); // true
 * ```
 */
export function filterFits(s: DepthwiseShape, cfg: FilterConfig): boolean {
  const ok = cfg.tbw > 0 && cfg.tbw % 4 === 0 && cfg.u > 0 && cfg.u % 4 === 0 && cfg.tbh > 0 &&
    cfg.lanes > 0 && cfg.bandRows > 0 && cfg.bandRows % cfg.lanes === 0 &&
    cfg.planesPerGroup > 0 && cfg.kySplit > 0;
  if (!ok) return false;
  const L = filterLayout(s, cfg);
  return L.threads <= Math.min(256, gpu().limits.maxComputeInvocationsPerWorkgroup) &&
    L.sharedBytes <= sharedLimit() && L.nkyW * (cfg.kySplit - 1) < L.nky;
}

const filterKernel = memoize(filterKernelSource);
/** WGSL of the filter-gradient partial sums: partial[g, c, ky, kx] over plane group g. */
function filterKernelSource(s: DepthwiseShape, cfg: FilterConfig, direct: boolean): string {
  const L = filterLayout(s, cfg);
  const { tbh, tbw, u, lanes, planesPerGroup: NPG, bandRows: BR } = cfg;
  const { nkx, nkyW, threads: T, nCh, nvx, xrsv, gRows, grsv, nBands } = L;
  const { n: N, c: C, h: HIN, w: WIN, kh: KH, kw: KW, ph: PT, pw: PL, ho: HO, wo: WO } = s;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  const xwv = xrsv; // staged width (padding columns are staged as zeros too)
  const gwv = nCh * u / 4;
  e(storage("gy", "x", "part!"));
  e(`var<workgroup> xt: array<vec4<f32>, ${BR * xrsv}>;`);
  e(`var<workgroup> gt: array<vec4<f32>, ${gRows * grsv}>;`);
  const red = BR * xrsv >= T ? "xt" : "red";
  if (red === "red") e(`var<workgroup> red: array<vec4<f32>, ${T}>;`);
  e(`@compute @workgroup_size(${T})`);
  e(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {`);
  e(`  let c = wid.y;`);
  e(`  let g = wid.x;`);
  e(`  let kxb = tid % ${nkx}u;`);
  e(`  let l = (tid / ${nkx}u) % ${lanes}u;`);
  e(`  let kyb = wid.z * ${nkyW}u + tid / ${nkx * lanes}u;`);
  e(`  let kx0 = kxb * ${tbw}u;`);
  e(`  let ky0 = i32(kyb * ${tbh}u);`);
  for (let t = 0; t < tbh; t++) {
    for (let j = 0; j < tbw; j++) e(`  var a${t}_${j} = 0.0;`);
  }
  e(`  for (var pi = 0u; pi < ${NPG}u; pi++) {`);
  e(`    let n = g * ${NPG}u + pi;`);
  e(`    if (n >= ${N}u) { break; }`);
  e(`    let plane = (n * ${C}u + c);`);
  e(`    for (var band = 0u; band < ${nBands}u; band++) {`);
  e(`      let iyA = i32(band * ${BR}u);`);
  e(`      let xRows = min(${HIN} - iyA, ${BR});`);
  e(`      let gyA = max(0, iyA + ${PT - KH + 1});`);
  e(`      let gRowsHere = min(${HO}, iyA + ${BR + PT}) - gyA;`);
  e(`      workgroupBarrier();`);
  // Stage x rows [iyA, iyA + xRows): tile column t is image column t − PL.
  e(`      for (var i = tid; i < ${BR * xwv}u; i += ${T}u) {`);
  e(`        let tv = i % ${xwv}u;`);
  e(`        let rho = i / ${xwv}u;`);
  e(`        var v = vec4<f32>(0.0);`);
  e(`        if (i32(rho) < xRows) {`);
  e(`          let src = plane * ${HIN * WIN}u + u32(iyA + i32(rho)) * ${WIN}u;`);
  e(`          let ix0 = i32(tv * 4u) - ${PL};`);
  for (let k = 0; k < 4; k++) {
    e(`          if (ix0 + ${k} >= 0 && ix0 + ${k} < ${WIN}) { v.${
      COMP[k]
    } = x[src + u32(ix0 + ${k})]; }`);
  }
  e(`        }`);
  e(`        xt[i] = v;`);
  e(`      }`);
  // Stage gy rows [gyA, gyA + gRowsHere), columns padded with zeros to whole steps of u.
  e(`      for (var i = tid; i < ${gRows * grsv}u; i += ${T}u) {`);
  e(`        let tv = i % ${grsv}u;`);
  e(`        let rho = i / ${grsv}u;`);
  e(`        var v = vec4<f32>(0.0);`);
  e(`        if (i32(rho) < gRowsHere && tv < ${gwv}u) {`);
  e(`          let src = plane * ${HO * WO}u + u32(gyA + i32(rho)) * ${WO}u;`);
  for (let k = 0; k < 4; k++) {
    e(`          if (tv * 4u + ${k}u < ${WO}u) { v.${COMP[k]} = gy[src + tv * 4u + ${k}u]; }`);
  }
  e(`        }`);
  e(`        gt[i] = v;`);
  e(`      }`);
  e(`      workgroupBarrier();`);
  e(`      for (var jr = l; i32(jr) < xRows; jr += ${lanes}u) {`);
  e(`        let iy = iyA + i32(jr);`);
  e(`        let xr = jr * ${xrsv}u + kx0 / 4u;`);
  e(`        for (var ch = 0u; ch < ${nCh}u; ch++) {`);
  e(`          let xc = xr + ch * ${u / 4}u;`);
  for (let v = 0; v < nvx; v++) e(`          let x${v} = xt[xc + ${v}u];`);
  for (let t = 0; t < tbh; t++) {
    e(`          {`);
    e(`            let ky = ky0 + ${t};`);
    e(`            let oy = iy + ${PT} - ky;`);
    e(`            if (ky < ${KH} && oy >= 0 && oy < ${HO}) {`);
    e(`              let gr = u32(oy - gyA) * ${grsv}u + ch * ${u / 4}u;`);
    for (let v = 0; v < u / 4; v++) e(`              let g${v} = gt[gr + ${v}u];`);
    for (let m = 0; m < u; m++) {
      for (let j = 0; j < tbw; j++) {
        e(`              a${t}_${j} = fma(${lane("g", m)}, ${lane("x", m + j)}, a${t}_${j});`);
      }
    }
    e(`            }`);
    e(`          }`);
  }
  e(`        }`);
  e(`      }`);
  e(`    }`);
  e(`  }`);
  // Sum over the row lanes, one row of taps (a vec4 of columns) at a time.
  const outIdx = direct ? `c * ${KH * KW}u` : `(g * ${C}u + c) * ${KH * KW}u`;
  for (let t = 0; t < tbh; t++) {
    for (let v = 0; v < tbw / 4; v++) {
      e(`  workgroupBarrier();`);
      e(
        `  ${red}[tid] = vec4<f32>(a${t}_${4 * v}, a${t}_${4 * v + 1}, a${t}_${4 * v + 2}, a${t}_${
          4 * v + 3
        });`,
      );
      e(`  workgroupBarrier();`);
      e(`  if (tid < ${nkx * nkyW}u) {`);
      e(`    let bx = tid % ${nkx}u;`);
      e(`    let by = tid / ${nkx}u;`);
      e(`    var sum = vec4<f32>(0.0);`);
      e(`    for (var li = 0u; li < ${lanes}u; li++) { sum += ${red}[bx + ${nkx}u * (li + ${lanes}u * by)]; }`);
      e(`    let ky = (wid.z * ${nkyW}u + by) * ${tbh}u + ${t}u;`);
      e(`    let kx = bx * ${tbw}u + ${4 * v}u;`);
      e(`    if (ky < ${KH}u) {`);
      for (let k = 0; k < 4; k++) {
        e(`      if (kx + ${k}u < ${KW}u) { part[${outIdx} + ky * ${KW}u + kx + ${k}u] = sum.${
          COMP[k]
        }; }`);
      }
      e(`    }`);
      e(`  }`);
    }
  }
  e(`}`);
  return out.join("\n");
}

/**
 * WGSL: gw[i] = Σ_g part[g, i] over `groups` partial filter gradients of
 * `count` taps, one invocation per tap (also used by the sparse kernels).
 *
 * @example
 * ```ts
 * import { sumGroupsKernel } from "./depthwise_direct.ts";
 * console.log(sumGroupsKernel(10, 4).includes("@compute")); // true
 * ```
 */
export function sumGroupsKernel(count: number, groups: number): string {
  return `${storage("part", "gw!")}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * 256u);
  if (i >= ${count}u) { return; }
  var acc = 0.0;
  for (var g = 0u; g < ${groups}u; g++) { acc += part[g * ${count}u + i]; }
  gw[i] = acc;
}`;
}

/**
 * Filter gradient of a stride-1 depthwise convolution of shape `s`:
 * gw[c, 0, ky, kx] = Σ_{n, oy, ox} gy[n, c, oy, ox] · x[n, c, oy + ky − ph, ox + kx − pw],
 * partial sums per plane group, then one pass summing the groups.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { depthwiseBackwardFilterFast } from "./depthwise_direct.ts";
 * import { defaultFilterConfig } from "./depthwise_plan.ts";
 * await initGpu();
 * const s = { n: 2, c: 1, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 4, wo: 4 };
 * const gw = depthwiseBackwardFilterFast(Tensor.ones([2, 1, 4, 4]), Tensor.ones([2, 1, 4, 4]), s,
 *   defaultFilterConfig(s));
 * console.log((await gw.read())[4]); // 32 (the centre tap sees every pixel of both planes)
 * ```
 */
export function depthwiseBackwardFilterFast(
  gy: Tensor,
  x: Tensor,
  s: DepthwiseShape,
  cfg: WeightGradConfig,
): Tensor {
  if (isFftConfig(cfg)) return fftDepthwiseBackwardFilter(gy, x, s, cfg);
  const L = filterLayout(s, cfg);
  const gw = Tensor.empty([s.c, 1, s.kh, s.kw]);
  const grid = [L.groups, s.c, cfg.kySplit];
  const kernel = { name: "depthwise-filter", config: { shape: s, cfg } };
  if (L.groups === 1) {
    launch(filterKernel(s, cfg, true), [gy, x, gw], grid, undefined, kernel);
    return gw;
  }
  const part = Tensor.empty([L.groups, s.c, s.kh, s.kw]);
  launch(filterKernel(s, cfg, false), [gy, x, part], grid, undefined, kernel);
  launch(sumGroupsKernel(gw.size, L.groups), [part, gw], grid1d(gw.size));
  part.dispose();
  return gw;
}
