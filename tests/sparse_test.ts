/**
 * Dynamic sparsity on tiny parameter sets: layer densities (uniform, ERK,
 * SNIP) against hand-computed examples, masks that keep pruned weights and
 * their AdamW moments at zero, prune-and-grow that holds every density
 * exactly, and ShiftwiseConv's filter pruning with masks shared between
 * branches.
 */
import assert from "node:assert/strict";
import { Module, type Param } from "../models/module.ts";
import type { Value } from "../models/value.ts";
import { AdamW } from "../ops/optim.ts";
import { backward } from "../ops/autograd.ts";
import { add, mul, sum } from "../ops/elementwise.ts";
import { Rng, scope, Tensor } from "../ops/tensor.ts";
import {
  dropDenseLayers,
  erkDensities,
  kthLargestNonNegative,
  maskedParams,
  snipDensities,
  uniformLayerDensities,
} from "../sparse/density.ts";
import { randomMask, snipScores } from "../sparse/masks.ts";
import { DynamicSparsity, pruneAndGrow, pruneRateAt, sparseLayout } from "../sparse/prune_grow.ts";
import { setup } from "./harness.ts";

await setup();

/** Parameters under official-style keys: a stem, two SW branches of one block, a pwconv, a head. */
class Tiny extends Module {
  readonly ps: Param[];
  constructor() {
    super();
    const n = (std: number, seed: number) => ({ kind: "normal" as const, std, seed });
    this.ps = [
      this.param("downsample_layers.0.0.weight", [4, 3, 2, 2], n(1, 1)),
      this.param("downsample_layers.0.0.bias", [4], { kind: "zeros" }),
      this.param("stages.0.0.large_kernel.LoRAs.0.weight", [8, 1, 3, 3], n(1, 2)),
      this.param("stages.0.0.large_kernel.LoRAs.1.weight", [8, 1, 3, 3], n(1, 3)),
      this.param("stages.0.0.pwconv1.weight", [16, 4], n(1, 4)),
      this.param("head.weight", [5, 4], n(1, 5)),
    ];
  }
  /** None: the losses here read the parameters directly. */
  forward<V extends Value>(_x: V): V {
    throw new Error("Tiny has no forward");
  }
}

/** Σ w·c over every parameter, with fixed random c: gradients are c (constant, non-zero). */
function lossOf(m: Module, seed = 9): Tensor {
  let total: Tensor | null = null;
  let i = 0;
  for (const [, p] of m.namedParameters()) {
    const c = Tensor.randn(p.shape, { seed: seed + i++ });
    const s = sum(mul(p.tensor, c));
    total = total ? add(total, s) : s;
  }
  return total!;
}
async function trainSteps(m: Module, opt: AdamW, sparse: DynamicSparsity, from: number, n: number) {
  const reports = [];
  for (let s = from + 1; s <= from + n; s++) {
    scope(() => backward(lossOf(m, 100 + s)));
    opt.step();
    sparse.afterStep(opt);
    if (sparse.isUpdateStep(s)) reports.push(await sparse.update(s, opt));
    opt.zeroGrad();
  }
  return reports;
}

Deno.test("ERK and SNIP densities match hand-computed examples", () => {
  // ERK: raw (Σshape/Πshape): a 8/16 = 0.5, b 4/4 = 1, c 20/64 = 0.3125.
  const shapes = new Map([["a", [4, 4]], ["b", [2, 2]], ["c", [16, 4]]]);
  // density 0.5: ε = 0.5·84 / (0.5·16 + 1·4 + 0.3125·64) = 42/32 = 1.3125 → b would be 1.3125 > 1:
  // b dense; rhs = 0.5·80 − 0.5·4 = 38, divisor 8 + 20 = 28, ε = 38/28.
  const erk = erkDensities(shapes, 0.5);
  assert.equal(erk.get("b"), 1);
  assert.ok(Math.abs(erk.get("a")! - 0.5 * 38 / 28) < 1e-12);
  assert.ok(Math.abs(erk.get("c")! - 0.3125 * 38 / 28) < 1e-12);
  const kept = 16 * erk.get("a")! + 4 + 64 * erk.get("c")!;
  assert.ok(Math.abs(kept - 0.5 * 84) < 1e-9);
  // power 0 gives every layer the same density.
  assert.deepEqual([...erkDensities(shapes, 0.25, 0).values()], [0.25, 0.25, 0.25]);
  // SNIP: 8 scores, keep int(8·0.5) = 4 → threshold = 4th largest = 0.5; strictly above it counts.
  const scores = new Map([
    ["a", Float32Array.of(0.9, 0.1, 0.5, 0.2)],
    ["b", Float32Array.of(0.7, 0.6)],
    ["c", Float32Array.of(0.05, 0.3)],
  ]);
  assert.deepEqual(snipDensities(scores, 0.5), new Map([["a", 0.25], ["b", 1], ["c", 0]]));
  assert.deepEqual(dropDenseLayers(snipDensities(scores, 0.5)), new Map([["a", 0.25], ["c", 0]]));
  assert.deepEqual(uniformLayerDensities(shapes, 0.3).get("c"), 0.3);
  assert.throws(() => erkDensities(shapes, 0), /density 0 is not in \(0, 1\]/);
});

Deno.test("SNIP's threshold (radix select) is the k-th largest, as sorting gives it", () => {
  const rng = new Rng(7);
  for (let trial = 0; trial < 60; trial++) {
    const n = 1 + rng.int(500);
    // Uniform values, heavy ties with zeros, tiny magnitudes (one high-bits bucket), huge spread.
    const draw = [
      () => rng.uniform(),
      () => rng.int(4),
      () => (rng.uniform() < 0.3 ? 0 : 1e-30 * (1 + rng.uniform())),
      () => Math.exp(40 * (rng.uniform() - 0.5)),
    ][trial % 4];
    const values = Float32Array.from({ length: n }, draw);
    const sorted = Float32Array.from(values).sort();
    for (const k of [1, n, 1 + rng.int(n)]) {
      assert.equal(kthLargestNonNegative(values, k), sorted[n - k], `trial ${trial}, k=${k}`);
    }
  }
  assert.throws(() => kthLargestNonNegative(Float32Array.of(1, 2), 3), /k=3 is not in 1\.\.2/);
});

Deno.test("masked parameters and layouts follow the official selection", () => {
  const m = new Tiny();
  assert.deepEqual(maskedParams(m).map(([k]) => k), [
    "downsample_layers.0.0.weight",
    "stages.0.0.large_kernel.LoRAs.0.weight",
    "stages.0.0.large_kernel.LoRAs.1.weight",
    "stages.0.0.pwconv1.weight",
    "head.weight",
  ]);
  const rep = sparseLayout(m, "rep_coarse", false);
  assert.deepEqual(rep.keys, [
    "stages.0.0.large_kernel.LoRAs.0.weight",
    "stages.0.0.large_kernel.LoRAs.1.weight",
    "stages.0.0.pwconv1.weight",
  ]);
  assert.deepEqual(rep.groups, [[
    "stages.0.0.large_kernel.LoRAs.0.weight",
    "stages.0.0.large_kernel.LoRAs.1.weight",
  ]]);
  assert.equal(rep.granularity("stages.0.0.large_kernel.LoRAs.1.weight"), "filter");
  assert.equal(rep.granularity("stages.0.0.pwconv1.weight"), "weight");
  assert.equal(sparseLayout(m, "rep_coarse", true).keys.length, 2);
  assert.deepEqual(sparseLayout(m, "coarse", false).keys.length, 4); // no downsampling
});

Deno.test("pruneAndGrow and the cosine prune rate", () => {
  const mask = Uint8Array.of(1, 1, 1, 1, 0, 0, 0, 0, 1, 1);
  const mag = Float64Array.of(5, 1, 4, 2, 0, 0, 0, 0, 3, 6);
  const r = pruneAndGrow(mask, mag, null, 0.3, new Rng(3)); // ceil(0.3·6) = 2: drop 1 and 3
  assert.equal(r.removed, 2);
  assert.equal(r.grown, 2);
  assert.equal(r.mask.reduce((a, b) => a + b, 0), 6);
  for (const i of [0, 2, 8, 9]) assert.equal(r.mask[i], 1);
  const grad = Float64Array.of(0, 9, 0, 0, 1, 7, 8, 2, 0, 0);
  const g = pruneAndGrow(mask, mag, grad, 0.3, new Rng(3));
  assert.deepEqual([...g.mask], [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]); // regrow largest |g|: 1 (9), 6 (8)
  assert.equal(pruneRateAt(0, 0.5, 100), 0.5);
  assert.ok(Math.abs(pruneRateAt(50, 0.5, 100) - (0.005 + 0.495 / 2)) < 1e-12);
  assert.equal(pruneRateAt(100, 0.5, 100), 0.005);
  assert.equal(randomMask(37, 0.4, 1).reduce((a, b) => a + b, 0), 15);
});

Deno.test("masks: masked weights and AdamW moments stay zero; prune-and-grow holds every density exactly", async () => {
  const m = new Tiny();
  const named = [...m.namedParameters()].map(([, p]) => p.tensor);
  const opt = new AdamW(named, { lr: 0.05, weightDecay: 0.05 });
  const sparse = await DynamicSparsity.create(m, {
    sparsity: 0.4,
    init: "uniform",
    pruneRate: 0.5,
    updateFrequency: 2,
    totalSteps: 20,
    seed: 1,
  });
  const target = new Map(
    [...sparse.masking.layers].map(([k, l]) => [k, Math.round(0.6 * l.units)]),
  );
  assert.equal(target.size, 5);
  const initial = sparse.masking.masks();
  const reports = await trainSteps(m, opt, sparse, 0, 8);
  assert.equal(reports.length, 4);
  for (const rep of reports) {
    for (const l of rep.layers) {
      assert.equal(l.nonzeros, target.get(l.key), `${l.key} at step ${rep.step}`);
      assert.equal(l.removed, l.grown);
      assert.ok(l.removed > 0);
    }
  }
  let changed = 0;
  for (const [key, layer] of sparse.masking.layers) {
    assert.equal(sparse.masking.nonzeros(key), target.get(key));
    if (layer.mask.some((v, i) => v !== initial.get(key)![i])) changed++;
    const w = await layer.param.tensor.read();
    const [m1, m2] = await Promise.all(opt.moments(layer.param.tensor).map((t) => t.read()));
    for (let i = 0; i < w.length; i++) {
      if (!layer.mask[i]) {
        assert.ok(w[i] === 0, `${key}[${i}] should be pruned, is ${w[i]}`);
        assert.ok(m1[i] === 0);
        assert.ok(m2[i] === 0);
      }
    }
  }
  assert.equal(changed, 5, "every layer's mask moved");
  // An update right after a step: regrown weights are exactly zero, with zero moments.
  scope(() => backward(lossOf(m, 500)));
  opt.step();
  sparse.afterStep(opt);
  const before = sparse.masking.masks();
  await sparse.update(10, opt);
  opt.zeroGrad();
  for (const [key, layer] of sparse.masking.layers) {
    const w = await layer.param.tensor.read();
    const [m1] = await Promise.all(opt.moments(layer.param.tensor).map((t) => t.read()));
    for (let i = 0; i < w.length; i++) {
      if (layer.mask[i] && !before.get(key)![i]) {
        assert.ok(w[i] === 0);
        assert.ok(m1[i] === 0);
      }
    }
  }
  sparse.dispose();
  opt.dispose();
});

Deno.test("filter pruning (rep_coarse): whole filters, shared between branches at each sync", async () => {
  const m = new Tiny();
  const opt = new AdamW(m.parameters(), { lr: 0.05 });
  const sparse = await DynamicSparsity.create(m, {
    sparsity: 0.5,
    init: "uniform",
    type: "rep_coarse",
    onlyL: true,
    pruneRate: 0.3,
    updateFrequency: 1,
    maskSync: 2,
    totalSteps: 10,
    seed: 4,
  });
  const [k0, k1] = sparse.layout.groups[0];
  assert.deepEqual([...sparse.masking.layers.keys()], [k0, k1]);
  assert.deepEqual(sparse.masking.layer(k0).mask, sparse.masking.layer(k1).mask);
  const reports = await trainSteps(m, opt, sparse, 0, 4);
  assert.deepEqual(reports.map((r) => r.synced), [false, true, false, true]);
  // After a synced update both branches hold the same mask, chosen by Σ|w| summed over branches.
  assert.deepEqual(sparse.masking.layer(k0).mask, sparse.masking.layer(k1).mask);
  for (const key of [k0, k1]) {
    const l = sparse.masking.layer(key);
    assert.equal(sparse.masking.nonzeros(key), 4);
    const w = await l.param.tensor.read();
    for (let f = 0; f < 8; f++) {
      const taps = w.subarray(f * 9, f * 9 + 9);
      if (!l.mask[f]) assert.ok(taps.every((v) => v === 0), `${key} filter ${f} is pruned whole`);
      else assert.ok(taps.some((v) => v !== 0) || reports.length > 0);
    }
  }
  sparse.dispose();
  opt.dispose();
});

Deno.test("SNIP scores |w·g| on the GPU give the official densities; buffers and grads untouched", async () => {
  const m = new Tiny();
  const keys = maskedParams(m).map(([k]) => k);
  const scores = await snipScores(m, keys, [() => lossOf(m, 9)]);
  for (const [, p] of m.namedParameters()) assert.equal(p.tensor.grad, null);
  // Gradient of Σ w·c is c: |w·c| computed on the CPU.
  let j = 0;
  for (const [k, p] of m.namedParameters()) {
    const c = await scope(() => Tensor.randn(p.shape, { seed: 9 + j++ })).read();
    if (!scores.has(k)) continue;
    const w = await p.tensor.read();
    const s = scores.get(k)!;
    for (let i = 0; i < w.length; i++) assert.ok(Math.abs(s[i] - Math.abs(w[i] * c[i])) < 1e-5);
  }
  const sparse = await DynamicSparsity.create(m, {
    sparsity: 0.4,
    init: "snip",
    pruneRate: 0.3,
    updateFrequency: 10,
    totalSteps: 10,
  }, [() => lossOf(m, 9)]);
  const want = dropDenseLayers(snipDensities(scores, 0.6));
  for (const [k, d] of want) {
    const l = sparse.masking.layer(k);
    assert.equal(sparse.masking.nonzeros(k), Math.round(d * l.units));
  }
  assert.equal(sparse.masking.layers.size, want.size);
  sparse.dispose();
});

Deno.test("FLOPs from actual masks; SLaK Table 7 params at the paper's rounding", async () => {
  const { countModel, maskDensities } = await import("../analysis/flops.ts");
  const { slak, SLAK_PRESETS } = await import("../models/slak.ts");
  const { layerScaleSnipDensities, uniformDensities } = await import("../sparse/density.ts");
  const { table7Rows } = await import("../scripts/sparsity_width.ts");
  const m = slak(SLAK_PRESETS.slak_cpu);
  const sparse = await DynamicSparsity.create(m, {
    sparsity: 0.4,
    init: "uniform",
    pruneRate: 0.3,
    updateFrequency: 1,
    totalSteps: 1,
  });
  const fromMasks = countModel(m, 32, { densities: maskDensities(sparse.masking.masks()) });
  const live = countModel(m, 32, { densities: sparse.densities() });
  const planned = countModel(m, 32, { densities: uniformDensities(m, 0.6) });
  let nz = 0;
  for (const k of sparse.masking.layers.keys()) nz += sparse.masking.nonzeros(k);
  assert.equal(fromMasks.weightNonzeros, live.weightNonzeros);
  let dense = 0;
  for (const [k, p] of m.namedParameters()) {
    if ((p.shape.length === 2 || p.shape.length === 4) && !sparse.masking.layers.has(k)) {
      dense += p.size;
    }
  }
  assert.equal(fromMasks.weightNonzeros, dense + nz);
  assert.ok(Math.abs(fromMasks.macs - planned.macs) / planned.macs < 1e-3);
  sparse.dispose();
  // LayerScale-SNIP plan: only block weights masked, global budget kept.
  const ls = layerScaleSnipDensities(m, 0.6);
  assert.ok([...ls.keys()].every((k) => k.startsWith("stages.")));
  const rows = table7Rows();
  assert.deepEqual(rows.map((r) => r.params_match), ["yes", "yes", "yes", "yes", "yes"]);
  assert.deepEqual(rows.map((r) => Math.round(r.params_M)), [29, 30, 30, 32, 32]);
});

Deno.test("--snip: measured SNIP layouts keep the global budget; natural-like batches are seeded", async () => {
  const { snipRows } = await import("../scripts/sparsity_width.ts");
  const { naturalLikeBatch } = await import("../train/data/natural.ts");
  const { createModel } = await import("../models/registry.ts");
  const { maskedParams } = await import("../sparse/density.ts");
  const batch = naturalLikeBatch(4, 32, 5);
  assert.deepEqual(naturalLikeBatch(4, 32, 5), batch);
  assert.notDeepEqual(naturalLikeBatch(4, 32, 6).x, batch.x);
  assert.equal(batch.x.length, 4 * 3 * 32 * 32);
  assert.ok(batch.labels.every((l) => l >= 0 && l < 1000));
  // Normalised [0, 1] pixels: inside (0 − mean)/std … (1 − mean)/std of every channel.
  assert.ok(batch.x.every((v) => v >= -2.2 && v <= 2.7));
  const setting = { sparsity: 0.4, width: 1.3, params: "-", gflops: "-" };
  const [row] = await snipRows(batch, "natural", {
    batchSize: 4,
    microBatch: 2,
    dropPath: 0,
    seed: 0,
    model: "slak_cpu",
    settings: [setting],
  });
  // The global top-k keeps int(0.6 · total) scores (fewer on ties at the threshold; a few more
  // where a layer at density ≥ 0.99 is left dense).
  const m = createModel("slak_cpu", { widthFactor: 1.3 });
  const total = maskedParams(m).reduce((a, [, p]) => a + p.size, 0);
  const kept = row.weight_nonzeros;
  assert.ok(Math.abs(kept - Math.floor(0.6 * total)) < 0.01 * total, `${kept} of ${total}`);
  const stages = String(row.stage_densities).split("/").map(Number);
  assert.equal(stages.length, 4);
  assert.ok([...stages, row.outside_density].every((d) => d >= 0 && d <= 1));
  assert.ok(row.mac_density > 0 && row.mac_density < 1);
  assert.equal(row.batch, 4);
  // Micro-batches must split the batch evenly.
  await assert.rejects(
    () => snipRows(batch, "natural", { batchSize: 4, microBatch: 3, dropPath: 0, seed: 0 }),
    /--snip-micro-batch: 3 does not divide the batch of 4/,
  );
});

Deno.test("masked depthwise convs run the sparse taps path, with the dense result, and follow mask changes", async () => {
  const { slak, SLAK_PRESETS } = await import("../models/slak.ts");
  const { Conv2d } = await import("../models/layers.ts");
  const { Masking } = await import("../sparse/masks.ts");
  const { uniformDensities } = await import("../sparse/density.ts");
  const { seedInit } = await import("../models/module.ts");
  const { noGrad } = await import("../ops/autograd.ts");
  seedInit(3);
  const model = slak({ ...SLAK_PRESETS.slak_cpu, numClasses: 3 });
  model.eval();
  const masking = new Masking(model, uniformDensities(model, 0.4), { seed: 5 });
  masking.apply();
  const convs = [...model.namedModules()]
    .filter(([k, m]) => m instanceof Conv2d && m.isDepthwise && masking.layers.has(`${k}.weight`))
    .map(([k, m]) => [k, m as InstanceType<typeof Conv2d>] as const);
  assert.ok(convs.length >= 8, `masked depthwise convs: ${convs.length}`);
  for (const [k, c] of convs) {
    assert.ok(c.sparsePlan, `${k} has a sparse plan`);
    assert.ok(Math.abs(c.sparsePlan!.density - 0.4) < 0.02, `${k} plan density`);
  }
  const x = Tensor.randn([2, 3, 32, 32], { seed: 9 });
  const run = () => noGrad(() => scope(async () => await model.forward(x).read()));
  const sparse = await run();
  const plans = convs.map(([, c]) => c.sparsePlan);
  for (const [, c] of convs) c.sparsePlan = null;
  const dense = await run();
  convs.forEach(([, c], i) => (c.sparsePlan = plans[i]));
  for (let i = 0; i < dense.length; i++) {
    assert.ok(Math.abs(sparse[i] - dense[i]) <= 1e-4 * (1 + Math.abs(dense[i])), `logit ${i}`);
  }
  // A new mask reaches the plan.
  const [key0, conv0] = convs[0];
  const l = masking.layer(`${key0}.weight`);
  l.mask.fill(1);
  masking.upload(l.key);
  assert.equal(conv0.sparsePlan!.density, 1);
  x.dispose();
  masking.dispose();
  assert.equal(conv0.sparsePlan, null);
  model.dispose();
});

Deno.test("gradient growth sees the dense gradient of inactive depthwise taps; random growth runs the sparse kernels", async () => {
  const { slak, SLAK_PRESETS } = await import("../models/slak.ts");
  const { Conv2d } = await import("../models/layers.ts");
  const { softmaxCrossEntropy } = await import("../ops/loss.ts");
  const x = Tensor.randn([2, 3, 32, 32], { seed: 4 });
  for (const growth of ["gradient", "random"] as const) {
    const model = slak({ ...SLAK_PRESETS.slak_cpu, numClasses: 3 });
    const sparse = await DynamicSparsity.create(model, {
      sparsity: 0.6,
      init: "uniform",
      pruneRate: 0.3,
      growth,
      updateFrequency: 10,
      totalSteps: 100,
      seed: 2,
    });
    const convs = [...model.namedModules()].filter(([k, m]) =>
      m instanceof Conv2d && m.isDepthwise && sparse.masking.layers.has(`${k}.weight`)
    ) as [string, InstanceType<typeof Conv2d>][];
    assert.ok(convs.length > 0);
    const planned = convs.filter(([, c]) => c.sparsePlan !== null).length;
    assert.equal(
      planned,
      growth === "gradient" ? 0 : convs.length,
      `${growth}: convs on sparse kernels`,
    );
    scope(() => backward(softmaxCrossEntropy(model.forward(x), [0, 2])));
    // Gradients at the inactive taps of every masked depthwise conv: what gradient growth ranks.
    let inactive = 0;
    let nonzero = 0;
    for (const [k, c] of convs) {
      const mask = sparse.masking.layer(`${k}.weight`).mask;
      const g = await c.weight.tensor.grad!.read();
      for (let i = 0; i < g.length; i++) {
        if (mask[i]) continue;
        inactive++;
        if (g[i] !== 0) nonzero++;
      }
    }
    assert.ok(inactive > 0);
    // (Taps that reach only the zero padding of the small late-stage maps have no gradient.)
    if (growth === "gradient") assert.ok(nonzero > 0.25 * inactive, `${nonzero} of ${inactive}`);
    else assert.equal(nonzero, 0, "the sparse kernels compute active taps only");
    sparse.masking.dispose();
    model.dispose();
  }
  x.dispose();
});
