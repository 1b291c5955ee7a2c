/**
 * Normalisation ops with their backward: batch norm over N·H·W per channel
 * (training statistics with in-place running-buffer updates, or the running
 * statistics in eval mode) and layer norm over the channels at each position
 * (channels-last as `nn.LayerNorm(C)`, channels-first as ConvNeXt's
 * `LayerNorm(data_format="channels_first")`).
 *
 * Every form views its input as `[outer, C, inner]` (NCHW is `[N, C, H·W]`,
 * channels-last is `[rows, C, 1]`), so one set of kernels serves all of
 * them: batch norm reduces over `(outer, inner)` for each channel, layer norm
 * over `C` for each position.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { batchNorm2d, layerNormChannelsFirst } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 3, 4, 4], { seed: 1 });
 * const [w, b] = [Tensor.ones([3]), Tensor.zeros([3])];
 * const [mean, variance] = [Tensor.zeros([3]), Tensor.ones([3])];
 * const y = batchNorm2d(x, w, b, mean, variance, { training: true });
 * console.log(await layerNormChannelsFirst(y, w, b).read());
 * ```
 * @module
 */
import { record } from "./autograd.ts";
import { gpu } from "./gpu.ts";
import { assertShape, elementwiseKernel, flatMain, launch, memoize, storage } from "./kernel.ts";
import {
  laneSum,
  pixelLanes,
  pixelLanesDecl,
  pixelLanesGrid,
  pixelLanesMain,
} from "./pixel_lanes.ts";
import { globalGradSums, globalMoments, type StatsReducer } from "./sync_stats.ts";
import { f32, numel, Tensor } from "./tensor.ts";

export type { StatsReducer };

// ---------------------------------------------------------------- layout

/** A tensor viewed as `[outer, channels, inner]`, row-major. */
interface Layout {
  outer: number;
  channels: number;
  inner: number;
}

/** Positions: the `outer · inner` places that each hold one value per channel. */
function positions(l: Layout): number {
  return l.outer * l.inner;
}

/** WGSL: the channel of flat element index `i`. */
function channelOf(l: Layout, i: string): string {
  return l.inner === 1 ? `(${i} % ${l.channels}u)` : `((${i} / ${l.inner}u) % ${l.channels}u)`;
}

/** WGSL: the position of flat element index `i`. */
function positionOf(l: Layout, i: string): string {
  return l.inner === 1
    ? `(${i} / ${l.channels}u)`
    : `((${i} / ${l.channels * l.inner}u) * ${l.inner}u + ${i} % ${l.inner}u)`;
}

/** WGSL: the flat index of channel 0 at position `p`; channel `c` lies `c · inner` further. */
function positionBase(l: Layout, p: string): string {
  return l.inner === 1
    ? `${p} * ${l.channels}u`
    : `(${p} / ${l.inner}u) * ${l.channels * l.inner}u + ${p} % ${l.inner}u`;
}

/** Whether mean/rstd hold one value per channel (batch norm) or per position (layer norm). */
type StatsPer = "channel" | "position";

function statsIndex(l: Layout, per: StatsPer, i: string): string {
  return per === "channel" ? channelOf(l, i) : positionOf(l, i);
}

// ---------------------------------------------------------------- per-channel reductions

/** Threads per reduction workgroup: llvmpipe compiles 64-wide workgroup arrays ~4× faster than 256-wide. */
const RWG = 64;

/**
 * WGSL: workgroup-wide sum of a vec2 (two reductions for the price of one
 * set of barriers). Every invocation gets the total; the closing barrier lets
 * the caller reduce again at once.
 */
const REDUCE2 = `var<workgroup> part: array<vec2f, ${RWG}>;
fn reduce2(lid: u32, v: vec2f) -> vec2f {
  part[lid] = v;
  workgroupBarrier();
  for (var s = ${RWG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { part[lid] += part[lid + s]; }
    workgroupBarrier();
  }
  let total = part[0];
  workgroupBarrier();
  return total;
}`;

/** WGSL `main` of a one-workgroup-per-channel kernel, with `c` and `lid` bound. */
function perChannelMain(l: Layout): string {
  return `${REDUCE2}
@compute @workgroup_size(${RWG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3u) {
  let c = wid.x + wid.y * nwg.x;
  if (c >= ${l.channels}u) { return; }`;
}

function perChannelGrid(channels: number): number[] {
  const max = 65535;
  return channels <= max ? [channels, 1] : [max, Math.ceil(channels / max)];
}

/**
 * Positions one workgroup of a per-channel reduction covers, at most. One
 * workgroup per channel left an H100 nearly idle on SLaK-T's first stage
 * (124 channels of 200,704 positions: 124 workgroups of 64 invocations): its
 * batch statistics and affine gradient sums took 20 % of the training
 * step's GPU time. Above this many positions a channel is cut into chunks,
 * one workgroup each, and a second kernel combines the chunks.
 */
const CHUNK_POSITIONS = 4096;
/** The most chunks per channel (the combining kernel loops over them). */
const MAX_CHUNKS = 256;
let chunkPositions = CHUNK_POSITIONS;

/**
 * Set how many positions a workgroup of a per-channel reduction covers
 * (default 4096): tests cut small tensors into chunks with it. Returns the
 * previous value.
 *
 * @example
 * ```ts
 * import { setNormChunkPositions } from "./norm.ts";
 * const before = setNormChunkPositions(64);
 * setNormChunkPositions(before);
 * console.log(before); // 4096
 * ```
 */
export function setNormChunkPositions(n: number): number {
  if (!(Number.isInteger(n) && n >= 1)) {
    throw new Error(`setNormChunkPositions: expected an integer ≥ 1, got ${n}`);
  }
  const before = chunkPositions;
  chunkPositions = n;
  return before;
}

/** How a channel's positions are cut: `chunks` chunks of `size` (the last may be shorter, never empty). */
interface Chunking {
  chunks: number;
  size: number;
}

function chunking(l: Layout): Chunking {
  const n = positions(l);
  const wanted = Math.max(1, Math.min(MAX_CHUNKS, Math.ceil(n / chunkPositions)));
  const size = Math.ceil(n / wanted);
  return { chunks: Math.ceil(n / size), size };
}

/** WGSL `main` of a one-workgroup-per-chunk kernel: chunk `j` of channel `c`, positions [p0, p1). */
function perChunkMain(l: Layout, k: Chunking): string {
  return `${REDUCE2}
@compute @workgroup_size(${RWG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let c = wid.y + wid.z * 65535u;
  if (c >= ${l.channels}u) { return; }
  let j = wid.x;
  let p0 = j * ${k.size}u;
  let p1 = min(p0 + ${k.size}u, ${positions(l)}u);`;
}

function perChunkGrid(channels: number, chunks: number): number[] {
  return [chunks, Math.min(channels, 65535), Math.ceil(channels / 65535)];
}

/**
 * Batch statistics per channel over `(outer, inner)`: mean and 1/√(biased
 * var + eps), two-pass for accuracy. Updates `runningMean`/`runningVar` in
 * place as PyTorch does, with the unbiased variance for the latter.
 */
function batchStats(
  x: Tensor,
  l: Layout,
  eps: number,
  momentum: number,
  runningMean: Tensor,
  runningVar: Tensor,
): [Tensor, Tensor] {
  const mean = Tensor.empty([l.channels]);
  const rstd = Tensor.empty([l.channels]);
  const k = chunking(l);
  if (k.chunks === 1) {
    const code = batchStatsSource(l, eps, momentum);
    launch(code, [x, mean, rstd, runningMean, runningVar], perChannelGrid(l.channels));
    return [mean, rstd];
  }
  const part = chunkMoments(x, l, k);
  const code = combinedStatsSource(l, k, eps, momentum);
  launch(code, [part, mean, rstd, runningMean, runningVar], l.channels);
  part.dispose();
  return [mean, rstd];
}

/**
 * WGSL statements of a per-channel workgroup (`perChannelMain`) that leave
 * channel `c`'s mean in `m` and its centred sum of squares in `sq`, two-pass
 * (the mean first, then squares of the deviations: no cancellation).
 */
function channelMoments(l: Layout, from = "0u", to = `${positions(l)}u`): string {
  const element = `x[${positionBase(l, "p")} + c * ${l.inner}u]`;
  return `  var s = 0.0;
  for (var p = ${from} + lid; p < ${to}; p += ${RWG}u) { s += ${element}; }
  let m = reduce2(lid, vec2f(s, 0.0)).x / f32(${to} - ${from});
  var q = 0.0;
  for (var p = ${from} + lid; p < ${to}; p += ${RWG}u) {
    let d = ${element} - m;
    q += d * d;
  }
  let sq = reduce2(lid, vec2f(q, 0.0)).x;`;
}

/**
 * Each chunk's mean and centred sum of squares, two-pass as
 * {@linkcode channelMoments}: `[C, chunks, 2]`.
 */
function chunkMoments(x: Tensor, l: Layout, k: Chunking): Tensor {
  const out = Tensor.empty([l.channels, k.chunks, 2]);
  launch(chunkMomentsSource(l, k), [x, out], perChunkGrid(l.channels, k.chunks));
  return out;
}

const chunkMomentsSource = memoize((l: Layout, k: Chunking) =>
  `${storage("x", "out!")}
${perChunkMain(l, k)}
${channelMoments(l, "p0", "p1")}
  if (lid == 0u) {
    out[(c * ${k.chunks}u + j) * 2u] = m;
    out[(c * ${k.chunks}u + j) * 2u + 1u] = sq;
  }
}`
);

/**
 * WGSL statements, one invocation per channel `c`, that combine the chunks'
 * moments in `chunk` (Chan et al.'s pairwise update: no cancellation) into
 * the channel's mean `m` and centred sum of squares `sq`.
 */
function combinedMoments(l: Layout, k: Chunking): string {
  return `  var m = 0.0;
  var sq = 0.0;
  var count = 0.0;
  for (var j = 0u; j < ${k.chunks}u; j++) {
    let nj = f32(min(${k.size}u, ${positions(l)}u - j * ${k.size}u));
    let mj = chunk[(c * ${k.chunks}u + j) * 2u];
    let total = count + nj;
    let d = mj - m;
    m += d * nj / total;
    sq += chunk[(c * ${k.chunks}u + j) * 2u + 1u] + d * d * count * nj / total;
    count = total;
  }`;
}

/**
 * The kernel of {@linkcode batchStats}; this and the other batch-norm
 * generators are cached, since a step launches each once per layer, every
 * step, and building the source cost more CPU than recording the dispatch.
 */
const batchStatsSource = memoize((l: Layout, eps: number, momentum: number) =>
  `${storage("x", "mean!", "rstd!", "runMean!", "runVar!")}
${perChannelMain(l)}
${channelMoments(l)}
  if (lid == 0u) {
${finishStats(l, eps, momentum)}
  }
}`
);

/** The batch statistics from the chunks' moments, one invocation per channel. */
const combinedStatsSource = memoize((
  l: Layout,
  k: Chunking,
  eps: number,
  momentum: number,
) =>
  `${storage("chunk", "mean!", "rstd!", "runMean!", "runVar!")}
${flatMain(l.channels)}
  let c = i;
${combinedMoments(l, k)}
${finishStats(l, eps, momentum)}
}`
);

/** WGSL: channel `c`'s mean, 1/√(biased var + eps) and running buffers from `m` and `sq`. */
function finishStats(l: Layout, eps: number, momentum: number): string {
  const n = positions(l);
  return `    mean[c] = m;
    rstd[c] = 1.0 / sqrt(sq / ${f32(n)} + ${f32(eps)});
    runMean[c] = ${f32(1 - momentum)} * runMean[c] + ${f32(momentum)} * m;
    runVar[c] = ${f32(1 - momentum)} * runVar[c] + ${f32(momentum)} * (sq / ${f32(n - 1)});`;
}

/**
 * This replica's share of synchronised batch statistics: per channel the
 * mean and the centred sum of squares `M2` over `(outer, inner)`, two-pass
 * as {@linkcode batchStats}, into one tensor `[mean (C), M2 (C)]`.
 */
function localMoments(x: Tensor, l: Layout): Tensor {
  const out = Tensor.empty([2 * l.channels]);
  const code = `${storage("x", "out!")}
${perChannelMain(l)}
${channelMoments(l)}
  if (lid == 0u) {
    out[c] = m;
    out[${l.channels}u + c] = sq;
  }
}`;
  launch(code, [x, out], perChannelGrid(l.channels));
  return out;
}

/**
 * Synchronised batch statistics: this replica's moments, summed over the
 * replicas by a host step through `reduce`, give the global mean and
 * 1/√(var + eps); the running statistics move towards the global mean and
 * unbiased variance, so they are equal on every replica.
 */
function syncedBatchStats(
  x: Tensor,
  l: Layout,
  eps: number,
  momentum: number,
  runningMean: Tensor,
  runningVar: Tensor,
  reduce: StatsReducer,
): [Tensor, Tensor] {
  const local = localMoments(x, l);
  const mean = Tensor.empty([l.channels]);
  const rstd = Tensor.empty([l.channels]);
  const unbiased = Tensor.empty([l.channels]);
  const sum = reduce();
  const n = positions(l);
  gpu().hostStep(
    [local],
    [mean, rstd, unbiased],
    ([v]) => globalMoments(v, l.channels, n, eps, sum),
  );
  local.dispose();
  const code = `${storage("mean", "unbiased", "runMean!", "runVar!")}
${flatMain(l.channels)}
  runMean[i] = ${f32(1 - momentum)} * runMean[i] + ${f32(momentum)} * mean[i];
  runVar[i] = ${f32(1 - momentum)} * runVar[i] + ${f32(momentum)} * unbiased[i];
}`;
  launch(code, [mean, unbiased, runningMean, runningVar], l.channels);
  unbiased.dispose();
  return [mean, rstd];
}

/** Eval-mode statistics: a snapshot of the running mean and 1/√(running var + eps). */
function runningStats(runningMean: Tensor, runningVar: Tensor, eps: number): [Tensor, Tensor] {
  const c = runningMean.size;
  const mean = Tensor.empty([c]);
  const rstd = Tensor.empty([c]);
  const code = `${storage("rm", "rv", "mean!", "rstd!")}
${flatMain(c)}
  mean[i] = rm[i];
  rstd[i] = 1.0 / sqrt(rv[i] + ${f32(eps)});
}`;
  launch(code, [runningMean, runningVar, mean, rstd], c);
  return [mean, rstd];
}

/**
 * Per-channel sums over `(outer, inner)` of `g · x̂` and `g`: the weight and
 * bias gradients of every form, and the two sums the batch-norm input
 * gradient needs.
 */
function affineGradSums(
  g: Tensor,
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  l: Layout,
  per: StatsPer,
): [Tensor, Tensor] {
  const gw = Tensor.empty([l.channels]);
  const gb = Tensor.empty([l.channels]);
  const k = chunking(l);
  if (k.chunks === 1) {
    launch(affineGradSumsSource(l, per), [g, x, mean, rstd, gw, gb], perChannelGrid(l.channels));
    return [gw, gb];
  }
  const part = Tensor.empty([l.channels, k.chunks, 2]);
  launch(
    chunkGradSumsSource(l, per, k),
    [g, x, mean, rstd, part],
    perChunkGrid(l.channels, k.chunks),
  );
  launch(sumChunksSource(l.channels, k.chunks), [part, gw, gb], l.channels);
  part.dispose();
  return [gw, gb];
}

/** The kernel of {@linkcode affineGradSums} (cached as {@linkcode batchStatsSource}). */
const affineGradSumsSource = memoize((l: Layout, per: StatsPer) =>
  `${storage("g", "x", "mean", "rstd", "gw!", "gb!")}
${perChannelMain(l)}
${gradSumsLoop(l, per, "0u", `${positions(l)}u`)}
  if (lid == 0u) {
    gw[c] = total.x;
    gb[c] = total.y;
  }
}`
);

/** WGSL: `total` = (Σ g·x̂, Σ g) of channel `c` over positions [from, to), workgroup-wide. */
function gradSumsLoop(l: Layout, per: StatsPer, from: string, to: string): string {
  const s = per === "channel" ? "c" : "p";
  return `  var acc = vec2f(0.0);
  for (var p = ${from} + lid; p < ${to}; p += ${RWG}u) {
    let e = ${positionBase(l, "p")} + c * ${l.inner}u;
    let gv = g[e];
    acc += vec2f(gv * (x[e] - mean[${s}]) * rstd[${s}], gv);
  }
  let total = reduce2(lid, acc);`;
}

/** Each chunk's (Σ g·x̂, Σ g): `[C, chunks, 2]`. */
const chunkGradSumsSource = memoize((
  l: Layout,
  per: StatsPer,
  k: Chunking,
) =>
  `${storage("g", "x", "mean", "rstd", "chunk!")}
${perChunkMain(l, k)}
${gradSumsLoop(l, per, "p0", "p1")}
  if (lid == 0u) {
    chunk[(c * ${k.chunks}u + j) * 2u] = total.x;
    chunk[(c * ${k.chunks}u + j) * 2u + 1u] = total.y;
  }
}`
);

/** The chunks' sums added per channel, one invocation each. */
const sumChunksSource = memoize((channels: number, chunks: number) =>
  `${storage("chunk", "gw!", "gb!")}
${flatMain(channels)}
  var total = vec2f(0.0);
  for (var j = 0u; j < ${chunks}u; j++) {
    total += vec2f(chunk[(i * ${chunks}u + j) * 2u], chunk[(i * ${chunks}u + j) * 2u + 1u]);
  }
  gw[i] = total.x;
  gb[i] = total.y;
}`
);

// ---------------------------------------------------------------- per-position kernels

/**
 * Layer-norm statistics per position over the `C` channels: mean and 1/√(biased var + eps),
 * two-pass, with several lanes per position where positions are few (`ops/pixel_lanes.ts`).
 */
function positionStats(x: Tensor, l: Layout, eps: number): [Tensor, Tensor] {
  const n = positions(l);
  const lanes = pixelLanes(n, l.channels);
  const mean = Tensor.empty([n]);
  const rstd = Tensor.empty([n]);
  const at = `x[xb + k * ${l.inner}u]`;
  const code = `${storage("x", "mean!", "rstd!")}
${pixelLanesDecl("f32")}
${pixelLanesMain(n, lanes, positionBase(l, "i"))}
  ${laneSum("s", "f32", at, l.channels, lanes)}
  let m = sAll / ${f32(l.channels)};
  ${laneSum("q", "f32", `(${at} - m) * (${at} - m)`, l.channels, lanes)}
  if (live && lane == 0u) {
    mean[i] = m;
    rstd[i] = 1.0 / sqrt(qAll / ${f32(l.channels)} + ${f32(eps)});
  }
}`;
  launch(code, [x, mean, rstd], pixelLanesGrid(n, lanes));
  return [mean, rstd];
}

/**
 * Layer-norm input gradient per position: rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂)) with
 * ĝ = g · w over the channels, several lanes per position where positions are few. `x` and
 * `gx` are laid out as `l`, `g` as `gl` (the same positions and channels).
 */
function layerNormInputGrad(
  g: Tensor,
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
  l: Layout,
  gl: Layout = l,
): Tensor {
  const gx = Tensor.empty(x.shape);
  const n = positions(l);
  const lanes = pixelLanes(n, l.channels);
  const e = `(xb + k * ${l.inner}u)`;
  const gAt = gl === l ? e : `(${positionBase(gl, "i")} + k * ${gl.inner}u)`;
  const gh = `(g[${gAt}] * w[k])`;
  const xhat = `((x[${e}] - m) * r)`;
  const code = `${storage("g", "x", "mean", "rstd", "w", "gx!")}
${pixelLanesDecl("vec2f")}
${pixelLanesMain(n, lanes, positionBase(l, "i"))}
  let m = mean[min(i, ${Math.max(n - 1, 0)}u)];
  let r = rstd[min(i, ${Math.max(n - 1, 0)}u)];
  ${laneSum("acc", "vec2f", `vec2f(${gh}, ${gh} * ${xhat})`, l.channels, lanes)}
  let avg = accAll / ${f32(l.channels)};
  if (live) {
    for (var k = lane; k < ${l.channels}u; k += ${lanes}u) {
      gx[${e}] = r * (${gh} - avg.x - ${xhat} * avg.y);
    }
  }
}`;
  launch(code, [g, x, mean, rstd, weight, gx], pixelLanesGrid(n, lanes));
  return gx;
}

// ---------------------------------------------------------------- element-wise kernels

/** y = (x − mean) · rstd · w[c] + b[c], with the statistics per channel or per position. */
function normalizeAffine(
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
  bias: Tensor,
  l: Layout,
  per: StatsPer,
): Tensor {
  const y = Tensor.empty(x.shape);
  launch(normalizeAffineSource(x.size, l, per), [x, mean, rstd, weight, bias, y], x.size);
  return y;
}

/** The kernel of {@linkcode normalizeAffine} (cached as {@linkcode batchStatsSource}). */
const normalizeAffineSource = memoize((size: number, l: Layout, per: StatsPer) => {
  const body = `let s = ${statsIndex(l, per, "i")};
  let c = ${channelOf(l, "i")};
  y[i] = (x[i] - mean[s]) * rstd[s] * w[c] + b[c];`;
  return elementwiseKernel(size, ["x", "mean", "rstd", "w", "b"], body);
});

/**
 * Batch-norm input gradient. Training: w·rstd · (g − Σg/n − x̂ · Σg·x̂/n),
 * the statistics depending on every input of the channel (`sumGx`, `sumG`
 * are those per-channel sums). Eval: the statistics are constants, so only
 * the per-channel scale w·rstd remains.
 */
function batchNormInputGrad(
  g: Tensor,
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
  sumGx: Tensor,
  sumG: Tensor,
  l: Layout,
  training: boolean,
): Tensor {
  const gx = Tensor.empty(x.shape);
  const code = batchNormInputGradSource(x.size, l, training);
  if (!training) {
    launch(code, [g, weight, rstd, gx], x.size);
    return gx;
  }
  launch(code, [g, x, mean, rstd, weight, sumGx, sumG, gx], x.size);
  return gx;
}

/** The kernel of {@linkcode batchNormInputGrad} (cached as {@linkcode batchStatsSource}). */
const batchNormInputGradSource = memoize((size: number, l: Layout, training: boolean) => {
  const c = channelOf(l, "i");
  if (!training) {
    const body = `let c = ${c};\n  y[i] = g[i] * w[c] * rstd[c];`;
    return elementwiseKernel(size, ["g", "w", "rstd"], body);
  }
  const inv = f32(1 / positions(l));
  const body = `let c = ${c};
  let r = rstd[c];
  let xh = (x[i] - mean[c]) * r;
  y[i] = w[c] * r * (g[i] - sg[c] * ${inv} - xh * sgx[c] * ${inv});`;
  return elementwiseKernel(size, ["g", "x", "mean", "rstd", "w", "sgx", "sg"], body);
});

/**
 * Synchronised batch-norm input gradient: as {@linkcode batchNormInputGrad}
 * in training, with the sums and the count over every replica, read from
 * `red` = `[Σg·x̂ (C), Σg (C), 1/N]`, which a host step filled.
 */
function syncedBatchNormInputGrad(
  g: Tensor,
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
  red: Tensor,
  l: Layout,
): Tensor {
  const gx = Tensor.empty(x.shape);
  const body = `let c = ${channelOf(l, "i")};
  let r = rstd[c];
  let inv = red[${2 * l.channels}u];
  let xh = (x[i] - mean[c]) * r;
  y[i] = w[c] * r * (g[i] - red[${l.channels}u + c] * inv - xh * red[c] * inv);`;
  launch(
    elementwiseKernel(x.size, ["g", "x", "mean", "rstd", "w", "red"], body),
    [g, x, mean, rstd, weight, red, gx],
    x.size,
  );
  return gx;
}

// ---------------------------------------------------------------- batch norm

/** Options of {@linkcode batchNorm2d}. */
export interface BatchNormOptions {
  /** Batch statistics (and running-buffer updates) when true, running statistics when false. */
  training: boolean;
  /** Weight of the new batch statistic in the running average (PyTorch's default 0.1). */
  momentum?: number;
  /** Added to the variance before the square root (default 1e-5). */
  eps?: number;
  /**
   * Synchronised batch norm (training only): the batch statistics and the
   * backward sums of every replica of a data-parallel run, summed by this
   * reducer, as `torch.nn.SyncBatchNorm`. Without it each replica
   * normalises its own batch.
   */
  reducer?: StatsReducer;
}

/**
 * Batch normalisation of `x` [N, C, H, W] per channel, as `nn.BatchNorm2d(C)`.
 *
 * Training: normalises with the batch mean and biased batch variance over
 * N·H·W, and updates `runningMean`/`runningVar` in place on the GPU:
 * `running = (1 − momentum) · running + momentum · batchStat`, with the
 * unbiased variance (× n/(n−1)) for `runningVar`. That update is not
 * differentiated. Eval: normalises with the running statistics.
 * Gradients flow to `x`, `weight` and `bias`. With `opts.reducer`
 * (synchronised batch norm, training only) the statistics, the running
 * update and the input gradient's sums are those of every replica's batch
 * together, summed by host steps in the command stream (see sync_stats.ts).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { batchNorm2d } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 3, 4, 4], { seed: 1 });
 * const [w, b] = [Tensor.ones([3]), Tensor.zeros([3])];
 * const [mean, variance] = [Tensor.zeros([3]), Tensor.ones([3])];
 * batchNorm2d(x, w, b, mean, variance, { training: true });
 * console.log(await mean.read()); // 0.1 × the batch means
 * const y = batchNorm2d(x, w, b, mean, variance, { training: false });
 * console.log(y.shape); // [2, 3, 4, 4]
 * ```
 */
export function batchNorm2d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  runningMean: Tensor,
  runningVar: Tensor,
  opts: BatchNormOptions,
): Tensor {
  if (x.rank !== 4) {
    throw new Error(`batchNorm2d: expected x of shape [N, C, H, W], got [${x.shape}]`);
  }
  const [n, c, h, w] = x.shape;
  const params = { weight, bias, runningMean, runningVar };
  for (const [what, t] of Object.entries(params)) assertShape(`batchNorm2d ${what}`, t.shape, [c]);
  const l: Layout = { outer: n, channels: c, inner: h * w };
  const eps = opts.eps ?? 1e-5;
  const training = opts.training;
  if (training && positions(l) < 2) {
    throw new Error(
      `batchNorm2d: training needs more than 1 value per channel, got x [${x.shape}]`,
    );
  }
  const momentum = opts.momentum ?? 0.1;
  const reducer = training ? opts.reducer : undefined;
  const [mean, rstd] = !training
    ? runningStats(runningMean, runningVar, eps)
    : reducer
    ? syncedBatchStats(x, l, eps, momentum, runningMean, runningVar, reducer)
    : batchStats(x, l, eps, momentum, runningMean, runningVar);
  const y = normalizeAffine(x, mean, rstd, weight, bias, l, "channel");
  record("batchNorm2d", [x, weight, bias], y, [x, mean, rstd, weight], (g, [sx, sm, sr, sw]) => {
    // Σ g·x̂ and Σ g are the weight and bias gradients and also feed the input gradient.
    const [gw, gb] = affineGradSums(g, sx, sm, sr, l, "channel");
    if (!reducer) return [batchNormInputGrad(g, sx, sm, sr, sw, gw, gb, l, training), gw, gb];
    // As torch's SyncBatchNorm: the input gradient takes the sums over every replica; the
    // weight and bias gradients stay this replica's, summed by the gradient all-reduce.
    const red = Tensor.empty([2 * l.channels + 1]);
    const sum = reducer();
    const n = positions(l);
    gpu().hostStep([gw, gb], [red], ([a, b]) => globalGradSums(a, b, n, sum).then((v) => [v]));
    const gx = syncedBatchNormInputGrad(g, sx, sm, sr, sw, red, l);
    red.dispose();
    return [gx, gw, gb];
  });
  mean.dispose();
  rstd.dispose();
  return y;
}

// ---------------------------------------------------------------- layer norm

/** Options of {@linkcode layerNorm} and {@linkcode layerNormChannelsFirst}. */
export interface LayerNormOptions {
  /** Added to the variance before the square root (default 1e-6, ConvNeXt's). */
  eps?: number;
}

/** The layout of `x` [N, C, ...] normalised over C at each position (channels first). */
function channelsFirst(x: Tensor): Layout {
  return { outer: x.shape[0], channels: x.shape[1], inner: numel(x.shape.slice(2)) };
}

/**
 * The LayerNorm statistics of every pixel of an NCHW tensor `x` over its
 * channels: `mean` and `rstd = 1 / √(var + eps)`, one value per pixel
 * (`[N·H·W]`), two-pass (no cancellation), with several invocations per
 * pixel where pixels are few (see `ops/pixel_lanes.ts`): the kernel of
 * {@linkcode layerNormChannelsFirst}'s statistics, for ops that normalise
 * as they load (`ops/fused_layernorm.ts`).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { pixelStats } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 5], [1, 2, 1, 2]); // pixel 0: (1, 3), pixel 1: (2, 5)
 * const { mean, rstd } = pixelStats(x, 0);
 * console.log(await mean.read(), await rstd.read()); // Float32Array [2, 3.5] Float32Array [1, 0.6667]
 * ```
 */
export function pixelStats(x: Tensor, eps: number): { mean: Tensor; rstd: Tensor } {
  const [mean, rstd] = positionStats(x, channelsFirst(x), eps);
  return { mean, rstd };
}

/**
 * The input gradient of a LayerNorm over the channels of an NCHW tensor `x`
 * (statistics `mean`, `rstd` per pixel, affine `weight`) whose output
 * gradient `g` is channels-last `[N, H, W, C]`, as ops that normalise and
 * permute in one go receive it (`layerNormToChannelsLastGrads` in
 * `ops/fused.ts`); the result is NCHW like `x`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { pixelInputGrad } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.from([1, 3], [1, 2, 1, 1]);
 * const g = Tensor.from([1, 1], [1, 1, 1, 2]); // the same gradient on both channels
 * const gx = pixelInputGrad(g, x, Tensor.from([2]), Tensor.from([1]), Tensor.ones([2]));
 * console.log(await gx.read()); // Float32Array [0, 0]
 * ```
 */
export function pixelInputGrad(
  g: Tensor,
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  weight: Tensor,
): Tensor {
  const l = channelsFirst(x);
  const channelsLast = { outer: positions(l), channels: l.channels, inner: 1 };
  return layerNormInputGrad(g, x, mean, rstd, weight, l, channelsLast);
}

function layerNormOf(
  name: string,
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  l: Layout,
  opts: LayerNormOptions,
): Tensor {
  assertShape(`${name} weight`, weight.shape, [l.channels]);
  assertShape(`${name} bias`, bias.shape, [l.channels]);
  const [mean, rstd] = positionStats(x, l, opts.eps ?? 1e-6);
  const y = normalizeAffine(x, mean, rstd, weight, bias, l, "position");
  record(name, [x, weight, bias], y, [x, mean, rstd, weight], (g, [sx, sm, sr, sw]) => {
    const [gw, gb] = affineGradSums(g, sx, sm, sr, l, "position");
    return [layerNormInputGrad(g, sx, sm, sr, sw, l), gw, gb];
  });
  mean.dispose();
  rstd.dispose();
  return y;
}

/**
 * Layer normalisation over the last dimension (channels-last), as
 * `nn.LayerNorm(C, eps)` on `[N, H, W, C]` or `[N, C]`: biased variance,
 * affine `weight`/`bias` [C]. Gradients flow to `x`, `weight` and `bias`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNorm } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 4, 0, 0], [2, 3]);
 * const y = layerNorm(x, Tensor.ones([3]), Tensor.zeros([3]));
 * console.log(await y.read()); // ≈ [-1.22, 0, 1.22, 1.41, -0.71, -0.71]
 * ```
 */
export function layerNorm(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  opts: LayerNormOptions = {},
): Tensor {
  if (x.rank < 1) throw new Error("layerNorm: x needs at least one dimension");
  const channels = x.shape[x.rank - 1];
  return layerNormOf("layerNorm", x, weight, bias, {
    outer: numel(x.shape.slice(0, -1)),
    channels,
    inner: 1,
  }, opts);
}

/**
 * Layer normalisation over the channels of `x` [N, C, H, W] at each pixel,
 * as ConvNeXt's `LayerNorm(C, eps, data_format="channels_first")`: biased
 * variance, affine `weight`/`bias` [C]. Gradients flow to `x`, `weight` and
 * `bias`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { layerNormChannelsFirst } from "./norm.ts";
 * await initGpu();
 * const x = Tensor.randn([2, 5, 3, 3], { seed: 1 });
 * const y = layerNormChannelsFirst(x, Tensor.ones([5]), Tensor.zeros([5]));
 * console.log(y.shape); // [2, 5, 3, 3]
 * ```
 */
export function layerNormChannelsFirst(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  opts: LayerNormOptions = {},
): Tensor {
  if (x.rank < 2) {
    throw new Error(`layerNormChannelsFirst: expected x of shape [N, C, ...], got [${x.shape}]`);
  }
  return layerNormOf("layerNormChannelsFirst", x, weight, bias, channelsFirst(x), opts);
}
