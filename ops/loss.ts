/**
 * Classification loss and accuracy: softmax cross-entropy with hard labels
 * (optionally label-smoothed, as `nn.CrossEntropyLoss(label_smoothing=ε)`)
 * or soft targets (mixup/cutmix, as timm's `SoftTargetCrossEntropy`), and
 * top-k hit counts that stay on the GPU until the caller reads them.
 *
 * Each row of logits is handled by one workgroup: a max reduction, then
 * reductions of `Σ exp(x − max)`, `Σ t·x` and `Σ t`, so the log-softmax never
 * exponentiates a large number. A second pass, one invocation, averages the
 * row losses (N is a batch, small).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { accuracyCounts, softmaxCrossEntropy } from "./loss.ts";
 * await initGpu();
 * const logits = Tensor.from([2, 0, 0, 0, 3, 1], [2, 3]);
 * console.log(await softmaxCrossEntropy(logits, [0, 2]).item());
 * console.log(await accuracyCounts(logits, [0, 2], [1, 2]).read()); // Float32Array [1, 2]
 * ```
 * @module
 */
import { isRecording, needsGrad, record } from "./autograd.ts";
import { assertShape, elementwiseKernel, launch, storage } from "./kernel.ts";
import { f32, Tensor } from "./tensor.ts";

/** Options of {@linkcode softmaxCrossEntropy}. */
export interface CrossEntropyOptions {
  /** ε: hard labels become `(1 − ε)·onehot + ε/K` (ignored for soft targets). */
  labelSmoothing?: number;
}

/** Class labels, one per row, in `[0, K)`. */
export type Labels = Int32Array | readonly number[];

/** Upload labels as an f32 tensor (exact below 2^24), after checking them on the CPU. */
function labelTensor(labels: Labels, rows: number, classes: number, what: string): Tensor {
  if (labels.length !== rows) throw new Error(`${what}: ${labels.length} labels for ${rows} rows`);
  const data = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    const c = labels[i];
    if (!Number.isInteger(c) || c < 0 || c >= classes) {
      throw new Error(`${what}: label ${c} at row ${i} is not a class in [0, ${classes})`);
    }
    data[i] = c;
  }
  return Tensor.from(data, [rows]);
}

/** Workgroup grid with one workgroup per row (2-D beyond 65535 rows). */
function rowGrid(rows: number): number[] {
  const max = 65535;
  return rows <= max ? [rows, 1] : [max, Math.ceil(rows / max)];
}

/** Threads per row of the row kernels (rows are at most a few thousand classes). */
const ROW_WG = 64;

/**
 * WGSL: workgroup-wide max and sum of one f32 per invocation; every
 * invocation gets the result. The scratch array packs 4 values per vec4:
 * llvmpipe's compile time grows with the element count of workgroup arrays.
 */
const ROW_REDUCE = `var<workgroup> red: array<vec4f, ${ROW_WG / 4}>;
fn reduceMax(lid: u32, v: f32) -> f32 {
  red[lid / 4u][lid % 4u] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 8}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return max(max(r.x, r.y), max(r.z, r.w));
}
fn reduceSum(lid: u32, v: f32) -> f32 {
  red[lid / 4u][lid % 4u] = v;
  workgroupBarrier();
  for (var s = ${ROW_WG / 8}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return (r.x + r.y) + (r.z + r.w);
}`;

/**
 * WGSL: the target weight of class `k` in row `row` (flat offset `base`):
 * read from the soft targets, or the smoothed one-hot of the row's label.
 */
function targetWeight(hard: boolean, classes: number, smoothing: number): string {
  if (!hard) return "t[base + k]";
  const off = f32(smoothing / classes);
  return `select(${off}, ${f32(1 - smoothing + smoothing / classes)}, k == u32(t[row]))`;
}

/**
 * Mean softmax cross-entropy of `logits` `[N, K]`, shape `[1]`.
 *
 * `target` is either class labels (`Int32Array` or `number[]`, one per row:
 * PyTorch's `CrossEntropyLoss`, with `opts.labelSmoothing` ε giving the
 * target `(1 − ε)·onehot + ε/K`) or a soft-target tensor `[N, K]` (timm's
 * `SoftTargetCrossEntropy`: mean over rows of `−Σ t·log_softmax(x)`; rows
 * need not sum to one). Only `logits` receives a gradient:
 * `(softmax(x)·Σt − t) / N`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { softmaxCrossEntropy } from "./loss.ts";
 * await initGpu();
 * const logits = Tensor.from([0, 0], [1, 2]);
 * console.log(await softmaxCrossEntropy(logits, [1], { labelSmoothing: 0.1 }).item()); // ln 2
 * const soft = Tensor.from([0.3, 0.7], [1, 2]);
 * console.log(await softmaxCrossEntropy(logits, soft).item()); // ln 2
 * ```
 */
export function softmaxCrossEntropy(
  logits: Tensor,
  target: Labels | Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  if (logits.rank !== 2) {
    throw new Error(`softmaxCrossEntropy: logits must be [N, K], got [${logits.shape}]`);
  }
  const [rows, classes] = logits.shape;
  const hard = !(target instanceof Tensor);
  const smoothing = hard ? opts.labelSmoothing ?? 0 : 0;
  if (!(smoothing >= 0 && smoothing <= 1)) {
    throw new Error(`softmaxCrossEntropy: labelSmoothing ${smoothing} is not in [0, 1]`);
  }
  let t: Tensor;
  if (hard) t = labelTensor(target, rows, classes, "softmaxCrossEntropy");
  else {
    assertShape("softmaxCrossEntropy soft target", target.shape, logits.shape);
    t = target;
  }
  const weight = targetWeight(hard, classes, smoothing);
  // Per row: (loss, log Σ exp, Σ t); the backward needs the last two.
  const stats = Tensor.empty([rows, 3]);
  const rowCode = `${storage("x", "t", "stats!")}
${ROW_REDUCE}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= ${rows}u) { return; }
  let base = row * ${classes}u;
  var m = ${f32(-Infinity)};
  for (var k = lid; k < ${classes}u; k += ${ROW_WG}u) { m = max(m, x[base + k]); }
  m = reduceMax(lid, m);
  var sumExp = 0.0;
  var dotTx = 0.0;
  var sumT = 0.0;
  for (var k = lid; k < ${classes}u; k += ${ROW_WG}u) {
    let v = x[base + k];
    let tk = ${weight};
    sumExp += exp(v - m);
    dotTx += tk * v;
    sumT += tk;
  }
  let lse = m + log(reduceSum(lid, sumExp));
  dotTx = reduceSum(lid, dotTx);
  ${hard ? "let tsum = 1.0;" : "let tsum = reduceSum(lid, sumT);"}
  if (lid == 0u) {
    stats[row * 3u] = lse * tsum - dotTx;
    stats[row * 3u + 1u] = lse;
    stats[row * 3u + 2u] = tsum;
  }
}`;
  launch(rowCode, [logits, t, stats], rowGrid(rows));
  const loss = Tensor.empty([1]);
  const meanCode = `${storage("stats", "y!")}
@compute @workgroup_size(1)
fn main() {
  var acc = 0.0;
  for (var r = 0u; r < ${rows}u; r++) { acc += stats[r * 3u]; }
  y[0] = acc / ${f32(rows)};
}`;
  launch(meanCode, [stats, loss], [1]);
  if (isRecording() && needsGrad(logits)) {
    const inputs = hard ? [logits] : [logits, target as Tensor];
    record("softmaxCrossEntropy", inputs, loss, [logits, t, stats], (g, [sx, st, ss]) => {
      const gx = Tensor.empty(sx.shape);
      const body = `let row = i / ${classes}u;
  let k = i % ${classes}u;
  let base = row * ${classes}u;
  let tk = ${weight};
  let p = exp(x[i] - stats[row * 3u + 1u]);
  y[i] = g[0] * ${f32(1 / rows)} * (p * stats[row * 3u + 2u] - tk);`;
      launch(
        elementwiseKernel(gx.size, ["g", "x", "t", "stats"], body),
        [g, sx, st, ss, gx],
        gx.size,
      );
      return hard ? [gx] : [gx, null];
    });
  }
  stats.dispose();
  if (hard) t.dispose();
  return loss;
}

/**
 * Top-k hit counts: for each `k` of `ks`, the number of rows of `logits`
 * `[N, K]` whose label is among the `k` largest logits, as a GPU tensor
 * `[ks.length]` (read it at log time; nothing is read back here).
 *
 * Ties count pessimistically: a row's rank is the number of other classes
 * whose logit is `>=` the label's, so a label tied with the k-th largest
 * logit is a miss (and a NaN label logit always misses). PyTorch's `topk`
 * picks among ties in an unspecified order, so it can only count more hits.
 * Not differentiable.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { accuracyCounts } from "./loss.ts";
 * await initGpu();
 * const logits = Tensor.from([0.1, 0.5, 0.4, 0.9, 0.2, 0.3], [2, 3]);
 * console.log(await accuracyCounts(logits, [2, 1]).read()); // Float32Array [0, 2]
 * ```
 */
export function accuracyCounts(
  logits: Tensor,
  labels: Labels,
  ks: readonly number[] = [1, 5],
): Tensor {
  if (logits.rank !== 2) {
    throw new Error(`accuracyCounts: logits must be [N, K], got [${logits.shape}]`);
  }
  const [rows, classes] = logits.shape;
  if (ks.length < 1 || ks.length > 64 || !ks.every((k) => Number.isInteger(k) && k >= 1)) {
    throw new Error(`accuracyCounts: ks [${ks}] must be 1 to 64 positive integers`);
  }
  const t = labelTensor(labels, rows, classes, "accuracyCounts");
  const ranks = Tensor.empty([rows]);
  const rankCode = `${storage("x", "t", "rank!")}
${ROW_REDUCE}
@compute @workgroup_size(${ROW_WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= ${rows}u) { return; }
  let base = row * ${classes}u;
  let label = u32(t[row]);
  let labelLogit = x[base + label];
  var above = 0.0;
  for (var k = lid; k < ${classes}u; k += ${ROW_WG}u) {
    if (k != label && x[base + k] >= labelLogit) { above += 1.0; }
  }
  above = reduceSum(lid, above);
  if (lid == 0u) {
    // A NaN compares false with everything; rank it last.
    rank[row] = select(above, ${f32(classes)}, labelLogit != labelLogit);
  }
}`;
  launch(rankCode, [logits, t, ranks], rowGrid(rows));
  const counts = Tensor.empty([ks.length]);
  const countCode = `${storage("rank", "y!")}
@compute @workgroup_size(${ks.length})
fn main(@builtin(local_invocation_index) j: u32) {
  let k = ${
    ks.length === 1
      ? f32(ks[0])
      : `array<f32, ${ks.length}>(${ks.map((k) => f32(k)).join(", ")})[j]`
  };
  var hits = 0.0;
  for (var r = 0u; r < ${rows}u; r++) { hits += select(0.0, 1.0, rank[r] < k); }
  y[j] = hits;
}`;
  launch(countCode, [ranks, counts], [1]);
  t.dispose();
  ranks.dispose();
  return counts;
}
