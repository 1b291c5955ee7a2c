/**
 * Depthwise convolution through 2-D FFTs in workgroup memory: forward, input
 * gradient and filter gradient of a stride-1 depthwise convolution, for large
 * kernels (13×13 … 31×31) where the direct kernels of `depthwise_direct.ts`
 * spend `KH·KW` FMAs per output and an F×F transform costs `O(log F)`.
 *
 * **Overlap-save tiles.** An output tile of `(F−KH+1)×(F−KW+1)` needs an
 * F×F input window. The circular correlation of that window with the
 * zero-padded filter equals the linear one on the tile (no index wraps), so
 * `tile = IFFT(conj(FFT(w)) · FFT(window))`. A 32×32 image with a 31×31
 * filter is one 64×64 tile; 64×64 images are four.
 *
 * **Two planes per transform.** Every signal here is real, so a workgroup
 * puts one plane in the real part and the next plane of the same channel in
 * the imaginary part. The filter spectrum multiplies both (it is one complex
 * number per frequency) and the inverse transform returns the two results as
 * its real and imaginary parts. The filter gradient accumulates
 * `conj(FFT(gy pair)) · FFT(x pair)` over planes and tiles; the real part of
 * its inverse is the sum of both planes' correlations (the cross terms land
 * in the imaginary part).
 *
 * **No bit reversal.** The forward transform is a decimation-in-frequency
 * FFT, which leaves the spectrum in digit-reversed order. Products are taken
 * element by element in that order, and the inverse transform runs the
 * forward's stages backwards (decimation in time), which returns natural
 * order. Nothing ever needs the permutation.
 *
 * Each pass gives every invocation radix-8/4 butterflies on whole rows or
 * whole columns of the F×(F+1) workgroup array. The odd row stride keeps
 * both row and column passes free of bank conflicts. Rows that are all zero
 * (forward) or not wanted (inverse) are skipped, and the last forward stage,
 * the product with the spectrum and the first inverse stage run together in
 * registers.
 *
 * **Both gradients in one kernel** ({@linkcode fftDepthwiseBackward}): per
 * tile, the gy tile's spectrum serves the filter gradient and, times the
 * flipped filter's spectrum, gives the tile's whole contribution to the
 * input gradient (overlap-add), which each invocation adds to its own gx
 * pixels in registers: three transforms per tile instead of four. The
 * autotuner decides per shape whether that beats the separate kernels.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { fftDepthwiseForward } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 2, c: 1, h: 6, w: 6, kh: 3, kw: 3, ph: 1, pw: 1, ho: 6, wo: 6 };
 * const y = fftDepthwiseForward(Tensor.ones([2, 1, 6, 6]), Tensor.ones([1, 1, 3, 3]), null, s,
 *   { fft: 8, pairs: 1 });
 * console.log(Math.round((await y.read())[7])); // 9
 * ```
 * @module
 */
import { type DepthwiseShape, transposedShape, workgroupMemoryLimit } from "./depthwise_shape.ts";
import { gpu } from "./gpu.ts";
import { ceilDiv, launch, memoize, storage } from "./kernel.ts";
import { Tensor } from "./tensor.ts";

/** The FFT path's tiling: transform size F (a power of two) and plane pairs per workgroup. */
export interface FftConfig {
  /** Transform size F: tiles are (F−KH+1)×(F−KW+1) outputs. */
  fft: number;
  /** Plane pairs one workgroup handles (the forward keeps the filter spectrum in registers across them). */
  pairs: number;
}

/**
 * Whether a depthwise tiling is an {@linkcode FftConfig} (not a direct tile config).
 *
 * @example
 * ```ts
 * import { isFftConfig } from "./depthwise_fft.ts";
 * console.log(isFftConfig({ fft: 64, pairs: 2 }), isFftConfig({ bw: 4 })); // true false
 * ```
 */
export function isFftConfig(c: unknown): c is FftConfig {
  return typeof c === "object" && c !== null && "fft" in c;
}

/** Workgroups along the batch: groups of `cfg.pairs` plane pairs. */
const pairGroups = (s: DepthwiseShape, cfg: FftConfig): number =>
  ceilDiv(ceilDiv(s.n, 2), cfg.pairs);

/** Radices of the stages of an F-point transform: eights, then fours (no radix-2 tail). */
function radices(f: number): number[] {
  const out: number[] = [];
  let rem = f;
  while (rem > 1) {
    const r = rem % 8 === 0 && rem !== 16 ? 8 : rem % 4 === 0 ? 4 : 2;
    out.push(r);
    rem /= r;
  }
  return out;
}

interface Layout {
  f: number;
  /** Row stride of the workgroup array (complex elements). */
  stride: number;
  threads: number;
  /** Elements per invocation in element-wise phases. */
  per: number;
  th: number;
  tw: number;
  tilesY: number;
  tilesX: number;
}

function layout(s: DepthwiseShape, f: number): Layout {
  const threads = Math.min(256, (f * f) / 4);
  const th = f - s.kh + 1;
  const tw = f - s.kw + 1;
  return {
    f,
    stride: f + 1,
    threads,
    per: (f * f) / threads,
    th,
    tw,
    tilesY: ceilDiv(s.ho, th),
    tilesX: ceilDiv(s.wo, tw),
  };
}

/**
 * Whether the FFT path can run shape `s` with config `c`: F a power of two
 * from 4 up, covering the filter, with its workgroup array within the
 * adapter's workgroup memory and the filter gradient's partial spectra within
 * one storage buffer.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fftFits } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 2, c: 4, h: 32, w: 32, kh: 31, kw: 31, ph: 15, pw: 15, ho: 32, wo: 32 };
 * console.log(fftFits(s, { fft: 64, pairs: 2 }), fftFits(s, { fft: 16, pairs: 2 })); // true false
 * ```
 */
export function fftFits(s: DepthwiseShape, c: FftConfig): boolean {
  const f = c.fft;
  if (!Number.isInteger(f) || f < 4 || (f & (f - 1)) !== 0) return false;
  if (!Number.isInteger(c.pairs) || c.pairs < 1) return false;
  if (f < s.kh || f < s.kw || s.ph >= s.kh || s.pw >= s.kw) return false;
  const bytes = 8 * (f * (f + 1) + f);
  const limits = gpu().limits;
  // The filter gradient's partial spectra: one F×F complex plane per channel and pair group.
  const partBytes = pairGroups(s, c) * s.c * f * f * 8;
  return bytes <= workgroupMemoryLimit() &&
    layout(s, f).threads <= limits.maxComputeInvocationsPerWorkgroup &&
    partBytes <= Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
}

/** Taps (KH·KW) from which {@linkcode fftCandidates} offers the FFT path. */
export const FFT_MIN_TAPS = 256;

/**
 * FFT tilings worth timing for a shape (kernels of at least
 * {@linkcode FFT_MIN_TAPS} taps): F = 32 and 64 where they fit, with
 * tiles of at least 8 output rows and columns (or the whole output) and at
 * most 16 tiles per plane (smaller tiles spend the transform on halo), 2 or 4
 * plane pairs per workgroup (1 was never faster on the H100); none on a
 * software adapter.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fftCandidates } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 64, c: 384, h: 32, w: 32, kh: 31, kw: 31, ph: 15, pw: 15, ho: 32, wo: 32 };
 * console.log(fftCandidates(s).map((c) => c.fft)); // [64, 64] on a GPU, [] on llvmpipe
 * ```
 */
export function fftCandidates(s: DepthwiseShape): FftConfig[] {
  const out: FftConfig[] = [];
  // A software adapter compiles the F ≥ 32 transforms for minutes (tests force small F instead).
  if (gpu().isFallback) return out;
  // Below ~16×16 taps the direct kernels win (H100, R=32: K=13 direct 7.5 ms, FFT 11.6 ms per
  // 24-layer stack; K=31 direct 30.3 ms, FFT 22.3 ms), so the tuner does not spend time on them.
  if (s.kh * s.kw < FFT_MIN_TAPS) return out;
  for (const fft of [64, 32]) {
    const L = layout(s, fft);
    if (L.th < Math.min(s.ho, 8) || L.tw < Math.min(s.wo, 8)) continue;
    if (L.tilesX * L.tilesY > 16) continue;
    for (const pairs of [2, 4]) {
      const c = { fft, pairs };
      if (fftFits(s, c)) out.push(c);
    }
  }
  return out;
}

// ---------------------------------------------------------------- WGSL generation

/** A literal that WGSL parses as f32 at full precision. */
const lit = (v: number) => {
  const t = Math.abs(v) < 1e-15 ? "0.0" : v.toPrecision(17);
  return t.includes(".") || t.includes("e") ? t : `${t}.0`;
};

/**
 * Statements of an in-register r-point DFT (radix-2 decimation in time,
 * constant twiddles folded) of the vec2 values named `inp`; returns the
 * names of the outputs in natural order.
 */
function smallDft(
  inp: string[],
  inverse: boolean,
  e: (line: string) => void,
  fresh: () => string,
): string[] {
  const n = inp.length;
  if (n === 1) return inp;
  const even = smallDft(inp.filter((_, i) => i % 2 === 0), inverse, e, fresh);
  const odd = smallDft(inp.filter((_, i) => i % 2 === 1), inverse, e, fresh);
  const out: string[] = new Array(n);
  for (let k = 0; k < n / 2; k++) {
    let t = odd[k];
    if (k > 0) {
      const ang = (inverse ? 2 : -2) * Math.PI * k / n;
      const c = Math.cos(ang);
      const sn = Math.sin(ang);
      t = fresh();
      if (Math.abs(c) < 1e-12) {
        // ±i: a swap and a sign.
        e(
          sn > 0
            ? `let ${t} = vec2(-${odd[k]}.y, ${odd[k]}.x);`
            : `let ${t} = vec2(${odd[k]}.y, -${odd[k]}.x);`,
        );
      } else {
        e(`let ${t} = vec2(${odd[k]}.x * ${lit(c)} - ${odd[k]}.y * ${lit(sn)}, ${odd[k]}.x * ${
          lit(sn)
        } + ${odd[k]}.y * ${lit(c)});`);
      }
    }
    const a = fresh();
    const b = fresh();
    e(`let ${a} = ${even[k]} + ${t};`);
    e(`let ${b} = ${even[k]} - ${t};`);
    out[k] = a;
    out[k + n / 2] = b;
  }
  return out;
}

/** WGSL constant table of the F twiddles e^{−2πij/F}, computed in double precision. */
function twiddleTable(f: number): string {
  const vals: string[] = [];
  for (let j = 0; j < f; j++) {
    const a = -2 * Math.PI * j / f;
    vals.push(`vec2<f32>(${lit(Math.cos(a))}, ${lit(Math.sin(a))})`);
  }
  return `const TWIDDLES = array<vec2<f32>, ${f}>(${vals.join(", ")});`;
}

/**
 * The opening every FFT kernel shares: bindings, the twiddle table, the
 * workgroup array, the complex products, `main` with `c` (the channel) taken
 * from `channel`, and the twiddles copied into workgroup memory.
 */
function kernelHead(
  L: Layout,
  e: (line: string) => void,
  bindings: string[],
  channel: "wid.x" | "wid.y",
): void {
  e(storage(...bindings));
  e(`${twiddleTable(L.f)}
var<workgroup> z: array<vec2<f32>, ${L.f * L.stride}>;
var<workgroup> tw: array<vec2<f32>, ${L.f}>;
fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  return vec2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
fn cmulConj(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  return vec2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
}`);
  e(`@compute @workgroup_size(${L.threads})`);
  e(`fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {`);
  e(`  let c = ${channel};`);
  e(`  for (var i = tid; i < ${L.f}u; i += ${L.threads}u) { tw[i] = TWIDDLES[i]; }`);
}

/**
 * Statements of a whole 2-D transform of the workgroup array (barriers
 * included): forward = decimation in frequency, rows then columns; inverse =
 * the same stages in reverse with conjugate twiddles, unnormalised. `rows`
 * (u32 expressions) limits the row passes to rows [lo, hi): the only
 * non-zero rows of a forward input, the only wanted rows of an inverse output.
 */
function transform2d(
  L: Layout,
  inverse: boolean,
  e: (line: string) => void,
  rows?: { lo: string; hi: string },
): void {
  const f = L.f;
  const rs = radices(f);
  // The stages of one dimension: block size N, radix r, stride M = N / r.
  const stages: { n: number; r: number; m: number }[] = [];
  let n = f;
  for (const r of rs) {
    stages.push({ n, r, m: n / r });
    n /= r;
  }
  const passes: { dim: "row" | "col"; st: { n: number; r: number; m: number } }[] = [];
  for (const dim of ["row", "col"] as const) for (const st of stages) passes.push({ dim, st });
  // The last column stage (stride 1, no twiddles) is left to middleStage, which works on its
  // outputs in registers: the forward ends before it and the inverse starts after it.
  passes.pop();
  if (inverse) passes.reverse();
  let id = 0;
  const fresh = () => `t${id++}`;
  for (const { dim, st } of passes) {
    // The line (row or column) index varies fastest across invocations: with the odd
    // row stride, both orientations touch distinct banks.
    e(`  {`);
    if (dim === "row" && rows) {
      // Only rows [lo, hi) matter: the others are zero (forward) or not wanted (inverse).
      // it / nl by a multiply and a shift (exact for it < 4096, nl ≤ 128), not a division per item.
      e(`  let lo = ${rows.lo};`);
      e(`  let nl = max(${rows.hi}, lo) - lo;`);
      e(`  let mg = (1048576u + nl - 1u) / max(nl, 1u);`);
      e(`  for (var it = tid; it < nl * ${f / st.r}u; it += ${L.threads}u) {`);
      e(`    let j = (it * mg) >> 20u;`);
      e(`    let line = lo + it - j * nl;`);
    } else {
      e(`  for (var it = tid; it < ${(f * f) / st.r}u; it += ${L.threads}u) {`);
      e(`    let line = it % ${f}u;`);
      e(`    let j = it / ${f}u;`);
    }
    e(`    let n1 = j % ${st.m}u;`);
    e(`    let base = (j / ${st.m}u) * ${st.n}u + n1;`);
    const addr = (k: number) =>
      dim === "row"
        ? `line * ${L.stride}u + base + ${k * st.m}u`
        : `(base + ${k * st.m}u) * ${L.stride}u + line`;
    const body: string[] = [];
    const b = (line: string) => body.push(`    ${line}`);
    const names = Array.from({ length: st.r }, (_, k) => `v${k}`);
    for (let k = 0; k < st.r; k++) b(`${inverse ? "var" : "let"} v${k} = z[${addr(k)}];`);
    // Twiddle e^{∓2πi·n1·k/N}: entry n1·k·(F/N) of the table (mod F).
    const twiddle = (k: number) => `tw[(n1 * ${k * (f / st.n)}u) & ${f - 1}u]`;
    if (inverse) {
      if (st.m > 1) { for (let k = 1; k < st.r; k++) b(`v${k} = cmulConj(v${k}, ${twiddle(k)});`); }
      const out = smallDft(names, true, b, fresh);
      for (let k = 0; k < st.r; k++) b(`z[${addr(k)}] = ${out[k]};`);
    } else {
      const out = smallDft(names, false, b, fresh);
      for (let k = 0; k < st.r; k++) {
        b(`z[${addr(k)}] = ${k > 0 && st.m > 1 ? `cmul(${out[k]}, ${twiddle(k)})` : out[k]};`);
      }
    }
    for (const line of body) e(`  ${line}`);
    e(`  }`);
    e(`  }`);
    e(`  workgroupBarrier();`);
  }
}

/**
 * The stage between a forward and an inverse transform: the last column
 * stage (radix r, stride 1, no twiddles), unrolled over the `q` items of an
 * invocation. Item q owns the spectrum entries at workgroup-array rows
 * `base + k` of column `line`, that is elements `elem(k)` of the row-major
 * F×F spectrum. With `load`, the stage reads the workgroup array and hands
 * `body` the names of its r outputs; without, `body` gets null (it reads its
 * own inputs). If `body` returns r names, the first inverse stage runs on them
 * and stores them back. Ends with a barrier.
 */
function middleStage(
  L: Layout,
  e: (line: string) => void,
  load: boolean,
  body: (q: number, v: string[] | null, elem: (k: number) => string) => string[] | void,
): void {
  const f = L.f;
  const { items, r, total } = middleCount(L);
  let id = 0;
  const fresh = () => `m${id++}`;
  for (let q = 0; q < items; q++) {
    e(`  {`);
    e(`    let it = tid + ${q * L.threads}u;`);
    const guard = (q + 1) * L.threads > total;
    if (guard) e(`    if (it < ${total}u) {`);
    e(`    let line = it % ${f}u;`);
    e(`    let base = (it / ${f}u) * ${r}u;`);
    const addr = (k: number) => `(base + ${k}u) * ${L.stride}u + line`;
    const elem = (k: number) => `(base + ${k}u) * ${f}u + line`;
    const b = (line: string) => e(`    ${line}`);
    let v: string[] | null = null;
    if (load) {
      const names = Array.from({ length: r }, (_, k) => `v${k}`);
      for (let k = 0; k < r; k++) b(`let v${k} = z[${addr(k)}];`);
      v = smallDft(names, false, b, fresh);
    }
    const back = body(q, v, elem);
    if (back) {
      const out = smallDft(back, true, b, fresh);
      for (let k = 0; k < r; k++) b(`z[${addr(k)}] = ${out[k]};`);
    }
    if (guard) e(`    }`);
    e(`  }`);
  }
  e(`  workgroupBarrier();`);
}

/** Registers per invocation that middleStage hands out: items × radix. */
function middleCount(L: Layout): { items: number; r: number; total: number } {
  const rs = radices(L.f);
  const r = rs[rs.length - 1];
  const total = (L.f * L.f) / r;
  return { items: ceilDiv(total, L.threads), r, total };
}

/**
 * Statements loading an F×F window of a plane pair: element (u, v) is
 * `src[plane n0 / n0+1, row oy0 + u, col ox0 + v]` when that is inside the
 * h×w image (and u < limU, v < limV), else zero.
 */
function loadPair(
  L: Layout,
  e: (line: string) => void,
  { src, n, c, h, w, oy0, ox0, limU, limV }: {
    src: string;
    n: number;
    c: number;
    h: number;
    w: number;
    oy0: string;
    ox0: string;
    limU?: number;
    limV?: number;
  },
): void {
  const f = L.f;
  e(`  for (var k = 0u; k < ${L.per}u; k++) {`);
  e(`    let el = tid + k * ${L.threads}u;`);
  e(`    let u = el / ${f}u;`);
  e(`    let v = el % ${f}u;`);
  e(`    let iy = ${oy0} + i32(u);`);
  e(`    let ix = ${ox0} + i32(v);`);
  let inside = `iy >= 0 && iy < ${h} && ix >= 0 && ix < ${w}`;
  if (limU !== undefined && limU < f) inside += ` && u < ${limU}u`;
  if (limV !== undefined && limV < f) inside += ` && v < ${limV}u`;
  e(`    var val = vec2<f32>(0.0);`);
  e(`    if (${inside}) {`);
  e(`      let at = (n0 * ${c}u + c) * ${h * w}u + u32(iy) * ${w}u + u32(ix);`);
  e(`      val.x = ${src}[at];`);
  e(`      if (n0 + 1u < ${n}u) { val.y = ${src}[at + ${c * h * w}u]; }`);
  e(`    }`);
  e(`    z[u * ${L.stride}u + v] = val;`);
  e(`  }`);
}

/**
 * Rows of a window starting at image row `oy − pt` that fall inside an image
 * of `h` rows; constants when one tile spans the plane's height (oy = 0), so
 * the row passes divide by a constant.
 */
const windowRows = (L: Layout, pt: number, h: number) =>
  L.tilesY === 1 ? { lo: `${Math.min(pt, L.f)}u`, hi: `${Math.min(h + pt, L.f)}u` } : {
    lo: `u32(clamp(${pt} - oy, 0, ${L.f}))`,
    hi: `u32(clamp(${h + pt} - oy, 0, ${L.f}))`,
  };

/** Rows [0, hi) of the tile at oy in an output of `ho` rows (constants for one tile). */
const tileRows = (L: Layout, ho: number) => ({
  lo: "0u",
  hi: L.tilesY === 1 ? `${Math.min(ho, L.th)}u` : `u32(clamp(${ho} - oy, 0, ${L.th}))`,
});

// ---------------------------------------------------------------- kernels

const spectrumKernel = memoize(spectrumKernelSource);
/** Filter → conj(FFT(zero-padded filter)) / F², per channel, in the transform's order. */
function spectrumKernelSource(s: DepthwiseShape, L: Layout, flip: boolean): string {
  const { kh: KH, kw: KW } = s;
  const f = L.f;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  kernelHead(L, e, ["w", "spec:vec2<f32>!"], "wid.x");
  e(`  for (var k = 0u; k < ${L.per}u; k++) {`);
  e(`    let el = tid + k * ${L.threads}u;`);
  e(`    let u = el / ${f}u;`);
  e(`    let v = el % ${f}u;`);
  e(`    var val = vec2<f32>(0.0);`);
  const tap = flip ? `(${KH - 1}u - u) * ${KW}u + ${KW - 1}u - v` : `u * ${KW}u + v`;
  e(`    if (u < ${KH}u && v < ${KW}u) { val.x = w[c * ${KH * KW}u + ${tap}]; }`);
  e(`    z[u * ${L.stride}u + v] = val;`);
  e(`  }`);
  e(`  workgroupBarrier();`);
  transform2d(L, false, e, { lo: "0u", hi: `${KH}u` });
  middleStage(L, e, true, (_q, v, elem) => {
    v!.forEach((name, k) => {
      e(`    spec[c * ${f * f}u + ${elem(k)}] = vec2(1.0, -1.0) * ${name} * ${lit(1 / (f * f))};`);
    });
  });
  e(`}`);
  return out.join("\n");
}

const convKernel = memoize(convKernelSource);
/**
 * The overlap-save convolution of shape `s` with a precomputed spectrum:
 * workgroup = (tile, channel, group of plane pairs).
 */
function convKernelSource(s: DepthwiseShape, L: Layout, cfg: FftConfig, bias: boolean): string {
  const { n: N, c: C, h: HIN, w: WIN, ph: PT, pw: PL, ho: HO, wo: WO } = s;
  const f = L.f;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  const bindings = bias ? ["x", "spec:vec2<f32>", "b", "y!"] : ["x", "spec:vec2<f32>", "y!"];
  kernelHead(L, e, bindings, "wid.y");
  e(`  let oy = i32(wid.x / ${L.tilesX}u) * ${L.th};`);
  e(`  let ox = i32(wid.x % ${L.tilesX}u) * ${L.tw};`);
  // The filter spectrum at the entries this invocation's middle-stage items produce.
  const M = middleCount(L);
  for (let q = 0; q < M.items; q++) {
    const it = `min(tid + ${q * L.threads}u, ${M.total - 1}u)`;
    for (let k = 0; k < M.r; k++) {
      e(`  let s${q}_${k} = spec[c * ${
        f * f
      }u + ((${it} / ${f}u) * ${M.r}u + ${k}u) * ${f}u + ${it} % ${f}u];`);
    }
  }
  e(`  for (var pp = 0u; pp < ${cfg.pairs}u; pp++) {`);
  e(`  let n0 = (wid.z * ${cfg.pairs}u + pp) * 2u;`);
  e(`  if (n0 >= ${N}u) { break; }`);
  e(`  workgroupBarrier();`);
  loadPair(L, e, { src: "x", n: N, c: C, h: HIN, w: WIN, oy0: `oy - ${PT}`, ox0: `ox - ${PL}` });
  e(`  workgroupBarrier();`);
  transform2d(L, false, e, windowRows(L, PT, HIN));
  middleStage(L, e, true, (q, v) => {
    return v!.map((name, k) => {
      e(`    let p${k} = cmul(${name}, s${q}_${k});`);
      return `p${k}`;
    });
  });
  transform2d(L, true, e, tileRows(L, HO));
  const init = bias ? " + b[c]" : "";
  e(`  for (var k = 0u; k < ${L.per}u; k++) {`);
  e(`    let el = tid + k * ${L.threads}u;`);
  e(`    let u = el / ${f}u;`);
  e(`    let v = el % ${f}u;`);
  e(`    let oyy = oy + i32(u);`);
  e(`    let oxx = ox + i32(v);`);
  e(`    if (u < ${L.th}u && v < ${L.tw}u && oyy < ${HO} && oxx < ${WO}) {`);
  e(`      let r = z[u * ${L.stride}u + v];`);
  e(`      let at = (n0 * ${C}u + c) * ${HO * WO}u + u32(oyy) * ${WO}u + u32(oxx);`);
  e(`      y[at] = r.x${init};`);
  e(`      if (n0 + 1u < ${N}u) { y[at + ${C * HO * WO}u] = r.y${init}; }`);
  e(`    }`);
  e(`  }`);
  e(`  }`);
  e(`}`);
  return out.join("\n");
}

const backwardKernel = memoize(backwardKernelSource);
/**
 * The filter gradient's partial spectra — workgroup = (channel, group of
 * plane pairs); Σ over its pairs and all tiles of conj(FFT(gy tile)) ·
 * FFT(x window) — and, `withInput`, the input gradient too: the gy tile's
 * spectrum times the flipped filter's, inverted, is that tile's whole
 * contribution to the input gradient (overlap-add: F rows and columns of gx
 * around the tile, the rows above it wrapped to the end). Every invocation
 * keeps its own gx pixels of the pair in registers and adds every tile's
 * contribution: three transforms per tile and pair instead of the four of
 * separate input- and filter-gradient kernels.
 */
function backwardKernelSource(
  s: DepthwiseShape,
  L: Layout,
  cfg: FftConfig,
  withInput: boolean,
): string {
  const { n: N, c: C, h: HIN, w: WIN, kh: KH, kw: KW, ph: PT, pw: PL, ho: HO, wo: WO } = s;
  const t = transposedShape(s);
  const f = L.f;
  const px = withInput ? ceilDiv(HIN * WIN, L.threads) : 0;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  const bindings = withInput
    ? ["gy", "x", "spec:vec2<f32>", "gx!", "part:vec2<f32>!"]
    : ["gy", "x", "part:vec2<f32>!"];
  kernelHead(L, e, bindings, "wid.x");
  const M = middleCount(L);
  // The filter spectrum is read in the middle stage (from cache), not held: the partial spectra,
  // the x spectrum and the gx pixels already take the registers.
  for (let q = 0; q < M.items; q++) {
    for (let k = 0; k < M.r; k++) e(`  var a${q}_${k} = vec2<f32>(0.0);`);
  }
  e(`  for (var pp = 0u; pp < ${cfg.pairs}u; pp++) {`);
  e(`  let n0 = (wid.y * ${cfg.pairs}u + pp) * 2u;`);
  e(`  if (n0 >= ${N}u) { break; }`);
  for (let j = 0; j < px; j++) e(`  var g${j} = vec2<f32>(0.0);`);
  e(`  for (var t = 0u; t < ${L.tilesX * L.tilesY}u; t++) {`);
  e(`  let oy = i32(t / ${L.tilesX}u) * ${L.th};`);
  e(`  let ox = i32(t % ${L.tilesX}u) * ${L.tw};`);
  e(`  workgroupBarrier();`);
  loadPair(L, e, { src: "x", n: N, c: C, h: HIN, w: WIN, oy0: `oy - ${PT}`, ox0: `ox - ${PL}` });
  e(`  workgroupBarrier();`);
  transform2d(L, false, e, windowRows(L, PT, HIN));
  for (let q = 0; q < M.items; q++) {
    for (let k = 0; k < M.r; k++) e(`  var x${q}_${k} = vec2<f32>(0.0);`);
  }
  middleStage(L, e, true, (q, v) => v!.forEach((name, k) => e(`    x${q}_${k} = ${name};`)));
  loadPair(L, e, {
    src: "gy",
    n: N,
    c: C,
    h: HO,
    w: WO,
    oy0: "oy",
    ox0: "ox",
    limU: L.th,
    limV: L.tw,
  });
  e(`  workgroupBarrier();`);
  transform2d(L, false, e, tileRows(L, HO));
  middleStage(L, e, true, (q, v, elem) => {
    v!.forEach((name, k) => e(`    a${q}_${k} += cmulConj(x${q}_${k}, ${name});`));
    if (!withInput) return;
    return v!.map((name, k) => {
      e(`    let p${k} = cmul(${name}, spec[c * ${f * f}u + ${elem(k)}]);`);
      return `p${k}`;
    });
  });
  if (withInput) {
    transform2d(L, true, e);
    // Entry m of the inverse (m < 0 wrapped to m + F) is gx row oy + PT' + m, m in [1 − KH, TH).
    for (let j = 0; j < px; j++) {
      const guard = (j + 1) * L.threads > HIN * WIN ? `el < ${HIN * WIN}u && ` : "";
      e(`  {`);
      e(`    let el = tid + ${j * L.threads}u;`);
      e(`    let my = i32(el / ${WIN}u) - oy - ${t.ph};`);
      e(`    let mx = i32(el % ${WIN}u) - ox - ${t.pw};`);
      e(`    if (${guard}my > ${-KH} && my < ${L.th} && mx > ${-KW} && mx < ${L.tw}) {`);
      e(`      g${j} += z[u32((my + ${f}) % ${f}) * ${L.stride}u + u32((mx + ${f}) % ${f})];`);
      e(`    }`);
      e(`  }`);
    }
  }
  e(`  }`);
  for (let j = 0; j < px; j++) {
    e(`  {`);
    e(`    let el = tid + ${j * L.threads}u;`);
    e(`    if (el < ${HIN * WIN}u) {`);
    e(`      let at = (n0 * ${C}u + c) * ${HIN * WIN}u + el;`);
    e(`      gx[at] = g${j}.x;`);
    e(`      if (n0 + 1u < ${N}u) { gx[at + ${C * HIN * WIN}u] = g${j}.y; }`);
    e(`    }`);
    e(`  }`);
  }
  e(`  }`);
  middleStage(L, e, false, (q, _v, elem) => {
    for (let k = 0; k < M.r; k++) {
      e(`    part[(wid.y * ${C}u + c) * ${f * f}u + ${elem(k)}] = a${q}_${k};`);
    }
  });
  e(`}`);
  return out.join("\n");
}

const filterFinishKernel = memoize(filterFinishKernelSource);
/** Sum the partial spectra of a channel, invert, keep the real KH×KW corner / F². */
function filterFinishKernelSource(s: DepthwiseShape, L: Layout, groups: number): string {
  const { c: C, kh: KH, kw: KW } = s;
  const f = L.f;
  const out: string[] = [];
  const e = (line: string) => out.push(line);
  kernelHead(L, e, ["part:vec2<f32>", "gw!"], "wid.x");
  // Sum the groups' partial spectra, run the first inverse stage on them, store.
  middleStage(L, e, false, (_q, _v, elem) => {
    const r = middleCount(L).r;
    return Array.from({ length: r }, (_, k) => {
      e(`    var acc${k} = vec2<f32>(0.0);`);
      e(`    for (var g = 0u; g < ${groups}u; g++) {`);
      e(`      acc${k} += part[(g * ${C}u + c) * ${f * f}u + ${elem(k)}];`);
      e(`    }`);
      return `acc${k}`;
    });
  });
  transform2d(L, true, e, { lo: "0u", hi: `${KH}u` });
  e(`  for (var i = tid; i < ${KH * KW}u; i += ${L.threads}u) {`);
  e(`    gw[c * ${KH * KW}u + i] = z[(i / ${KW}u) * ${L.stride}u + i % ${KW}u].x * ${
    lit(1 / (f * f))
  };`);
  e(`  }`);
  e(`}`);
  return out.join("\n");
}

// ---------------------------------------------------------------- launches

function spectrum(s: DepthwiseShape, L: Layout, w: Tensor, flip: boolean): Tensor {
  const spec = Tensor.empty([s.c, L.f, L.f, 2]);
  launch(spectrumKernel(s, L, flip), [w, spec], [s.c, 1, 1]);
  return spec;
}

function checkConfig(s: DepthwiseShape, cfg: FftConfig): void {
  if (!fftFits(s, cfg)) {
    throw new Error(
      `depthwise FFT: config {fft: ${cfg.fft}, pairs: ${cfg.pairs}} does not fit kernel ${s.kh}×${s.kw}`,
    );
  }
}

function convolve(
  s: DepthwiseShape,
  cfg: FftConfig,
  x: Tensor,
  w: Tensor,
  flip: boolean,
  bias: Tensor | null,
): Tensor {
  checkConfig(s, cfg);
  const L = layout(s, cfg.fft);
  const spec = spectrum(s, L, w, flip);
  const y = Tensor.empty([s.n, s.c, s.ho, s.wo]);
  launch(
    convKernel(s, L, cfg, bias !== null),
    bias ? [x, spec, bias, y] : [x, spec, y],
    [L.tilesX * L.tilesY, s.c, pairGroups(s, cfg)],
    undefined,
    {
      name: flip ? "fft-depthwise-backward-input" : "fft-depthwise-forward",
      config: { shape: s, cfg },
    },
  );
  spec.dispose();
  return y;
}

/**
 * Forward of a stride-1 depthwise convolution through FFTs: x [n, c, h, w],
 * w [c, 1, kh, kw], optional bias [c] → y [n, c, ho, wo]. No autograd
 * recording (`depthwiseConv2d` records and picks this path when tuned).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { fftDepthwiseForward } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 5, w: 5, kh: 3, kw: 3, ph: 1, pw: 1, ho: 5, wo: 5 };
 * const y = fftDepthwiseForward(Tensor.ones([1, 1, 5, 5]), Tensor.ones([1, 1, 3, 3]), null, s,
 *   { fft: 8, pairs: 1 });
 * console.log(Math.round((await y.read())[0])); // 4
 * ```
 */
export function fftDepthwiseForward(
  x: Tensor,
  w: Tensor,
  bias: Tensor | null,
  s: DepthwiseShape,
  cfg: FftConfig,
): Tensor {
  return convolve(s, cfg, x, w, false, bias);
}

/**
 * Input gradient through FFTs: the forward on `gy` [n, c, ho, wo] with the
 * filter rotated by 180° and the padding mirrored → gx [n, c, h, w].
 * `cfg` tiles the gx plane.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { fftDepthwiseBackwardInput } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 1, c: 1, h: 5, w: 5, kh: 3, kw: 3, ph: 1, pw: 1, ho: 5, wo: 5 };
 * const gx = fftDepthwiseBackwardInput(Tensor.ones([1, 1, 5, 5]), Tensor.ones([1, 1, 3, 3]), s,
 *   { fft: 8, pairs: 1 });
 * console.log(Math.round((await gx.read())[0])); // 4
 * ```
 */
export function fftDepthwiseBackwardInput(
  gy: Tensor,
  w: Tensor,
  s: DepthwiseShape,
  cfg: FftConfig,
): Tensor {
  const t = transposedShape(s);
  return convolve(t, cfg, gy, w, true, null);
}

/**
 * Whether {@linkcode fftDepthwiseBackward} can compute both gradients of
 * shape `s` with config `c`: the FFT fits both convolutions and an input
 * plane has at most 16 pixels per invocation (64×64 for F = 32 and 64),
 * which the kernel keeps in registers while it adds the tiles' contributions.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fftFusedBackwardFits } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 2, c: 4, h: 32, w: 32, kh: 31, kw: 31, ph: 15, pw: 15, ho: 32, wo: 32 };
 * console.log(fftFusedBackwardFits(s, { fft: 64, pairs: 2 })); // true where F = 64 fits (a GPU)
 * ```
 */
export function fftFusedBackwardFits(s: DepthwiseShape, c: FftConfig): boolean {
  if (!fftFits(s, c) || !fftFits(transposedShape(s), c)) return false;
  return s.h * s.w <= FUSED_PIXELS_PER_INVOCATION * layout(s, c.fft).threads;
}

/** Input-gradient pixels of a plane pair each invocation of the fused backward keeps in registers. */
const FUSED_PIXELS_PER_INVOCATION = 16;

/**
 * Input and filter gradients at once through FFTs (see
 * {@linkcode fftFusedBackwardFits}): three transforms per tile and plane
 * pair instead of four. Returns [gx, gw].
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { fftDepthwiseBackward } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 2, c: 1, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 4, wo: 4 };
 * const [gx, gw] = fftDepthwiseBackward(Tensor.ones([2, 1, 4, 4]), Tensor.ones([2, 1, 4, 4]),
 *   Tensor.ones([1, 1, 3, 3]), s, { fft: 8, pairs: 1 });
 * console.log(Math.round((await gx.read())[0]), Math.round((await gw.read())[4])); // 4 32
 * ```
 */
export function fftDepthwiseBackward(
  gy: Tensor,
  x: Tensor,
  w: Tensor,
  s: DepthwiseShape,
  cfg: FftConfig,
): [Tensor, Tensor] {
  if (!fftFusedBackwardFits(s, cfg)) {
    throw new Error(
      `depthwise FFT: no fused backward with {fft: ${cfg.fft}} for ${s.kh}×${s.kw} on ${s.h}×${s.w}`,
    );
  }
  const gx = Tensor.empty([s.n, s.c, s.h, s.w]);
  return [gx, backward(s, cfg, gy, x, { w, gx })];
}

/**
 * Filter gradient through FFTs: gw[c, 0, ky, kx] = Σ_{n, oy, ox}
 * gy[n, c, oy, ox] · x[n, c, oy + ky − ph, ox + kx − pw]; partial spectra per
 * group of plane pairs, then one inverse transform per channel.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { fftDepthwiseBackwardFilter } from "./depthwise_fft.ts";
 * await initGpu();
 * const s = { n: 2, c: 1, h: 4, w: 4, kh: 3, kw: 3, ph: 1, pw: 1, ho: 4, wo: 4 };
 * const gw = fftDepthwiseBackwardFilter(Tensor.ones([2, 1, 4, 4]), Tensor.ones([2, 1, 4, 4]), s,
 *   { fft: 8, pairs: 1 });
 * console.log(Math.round((await gw.read())[4])); // 32
 * ```
 */
export function fftDepthwiseBackwardFilter(
  gy: Tensor,
  x: Tensor,
  s: DepthwiseShape,
  cfg: FftConfig,
): Tensor {
  checkConfig(s, cfg);
  return backward(s, cfg, gy, x, null);
}

/**
 * The filter gradient through partial spectra per pair group (then one
 * inverse per channel) and, with `input`, the input gradient into `input.gx`
 * from the same kernel; returns gw.
 */
function backward(
  s: DepthwiseShape,
  cfg: FftConfig,
  gy: Tensor,
  x: Tensor,
  input: { w: Tensor; gx: Tensor } | null,
): Tensor {
  const L = layout(s, cfg.fft);
  const groups = pairGroups(s, cfg);
  const part = Tensor.empty([groups, s.c, L.f, L.f, 2]);
  const kernel = { name: "fft-depthwise-backward", config: { shape: s, cfg } };
  if (input) {
    const spec = spectrum(s, L, input.w, true);
    const buffers = [gy, x, spec, input.gx, part];
    launch(backwardKernel(s, L, cfg, true), buffers, [s.c, groups, 1], undefined, kernel);
    spec.dispose();
  } else {
    launch(backwardKernel(s, L, cfg, false), [gy, x, part], [s.c, groups, 1], undefined, kernel);
  }
  const gw = Tensor.empty([s.c, 1, s.kh, s.kw]);
  launch(filterFinishKernel(s, L, groups), [part, gw], [s.c, 1, 1]);
  part.dispose();
  return gw;
}
