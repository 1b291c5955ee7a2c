import assert from "node:assert/strict";
import {
  areaRatios,
  calibrateBatchNorm,
  calibrateLayerScale,
  ErfAccumulator,
  erfSettings,
  layerScaleBlocks,
  normalizeErf,
} from "../analysis/erf.ts";
import { parseNpy, serializeNpy } from "../analysis/npy.ts";
import { Conv2d, type Value } from "../models/layers.ts";
import { type Classifier, Module, type Param, seedInit } from "../models/module.ts";
import { Tensor } from "../ops/tensor.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("areaRatios: hand-made matrices with known answers", () => {
  // 11×11, uniform 3×3 block at the centre (1 each) plus a ring of 5×5 (value 1 each on its border).
  const h = 11, w = 11;
  const m = new Float64Array(h * w);
  for (let y = 3; y <= 7; y++) for (let x = 3; x <= 7; x++) m[y * w + x] = 1; // 25 ones in the 5×5
  // Centre 3×3 holds 9/25 = 36%, the 5×5 holds 100%.
  const r = areaRatios(m, h, w, [0.2, 0.3, 0.36, 0.5, 0.99]);
  assert.deepEqual(r.map((x) => x.side), [3, 3, 5, 5, 5]);
  assert.ok(Math.abs(r[0].ratio - 9 / 121) < 1e-15);
  assert.ok(Math.abs(r[3].ratio - 25 / 121) < 1e-15);
  // A point mass: every threshold is met by the smallest square (i starts at 1: side 3).
  const p = new Float64Array(9 * 9);
  p[4 * 9 + 4] = 5;
  assert.deepEqual(areaRatios(p, 9, 9).map((x) => x.side), [3, 3, 3, 3]);
  // Uniform 8×8 (even size, centre at 4): square i covers (2i+1)² of 64 cells; 99% is never met below h/2 → whole.
  const u = new Float64Array(64).fill(1);
  const ru = areaRatios(u, 8, 8, [0.1, 0.5, 0.99]);
  assert.deepEqual(ru.map((x) => x.side), [3, 7, 8]);
  assert.equal(ru[2].ratio, 1);
});

Deno.test("normalizeErf: log10(A+1) scaled by the maximum, or linear", () => {
  const n = normalizeErf([0, 9, 99]);
  assert.deepEqual([...n], [0, 0.5, 1]);
  assert.deepEqual([...normalizeErf([0, 9, 99], "linear")], [0, 9 / 99, 1]);
});

Deno.test("ERF transform: linear r(t) is scale-free, the official log is not", () => {
  // A Gaussian blob (σ = 5) on 41×41, at two scales of A (random inits differ by ~1e4 in scale).
  const h = 41;
  const blob = Float64Array.from(
    { length: h * h },
    (_, i) => Math.exp(-((Math.floor(i / h) - 20) ** 2 + ((i % h) - 20) ** 2) / 50),
  );
  const sides = (a: Float64Array, t: "log" | "linear") =>
    areaRatios(normalizeErf(a, t), h, h, [0.2, 0.5]).map((r) => r.side);
  const big = blob.map((v) => v * 1e4);
  assert.deepEqual(sides(blob, "linear"), sides(big, "linear"));
  const [small, large] = [sides(blob.map((v) => v * 1e-3), "log"), sides(big, "log")];
  assert.deepEqual(small, sides(blob, "linear"), "log10(A+1) ≈ A/ln10 for A ≪ 1");
  assert.ok(
    large[0] > small[0] && large[1] > small[1],
    `log widens a large A: ${large} vs ${small}`,
  );
});

Deno.test("erfSettings: random weights calibrate LayerScale and analyse A linearly; checkpoints as the papers", () => {
  assert.deepEqual(erfSettings({ weights: false }), {
    layerScale: "calibrate",
    transform: "linear",
  });
  assert.deepEqual(erfSettings({ weights: true }), { layerScale: "checkpoint", transform: "log" });
  assert.deepEqual(erfSettings({ weights: false, layerScale: "1e-6", transform: "log" }), {
    layerScale: 1e-6,
    transform: "log",
  });
  assert.throws(() => erfSettings({ weights: true, layerScale: "1" }), /--layer-scale: applies/);
  assert.throws(() => erfSettings({ weights: false, layerScale: "0" }), /--layer-scale: expected/);
  assert.throws(() => erfSettings({ weights: false, layerScale: "" }), /--layer-scale: expected/);
  assert.throws(() => erfSettings({ weights: false, transform: "sqrt" }), /--transform: expected/);
});

Deno.test(".npy: NumPy-written float32/float64 fixtures read exactly; our files round-trip", async () => {
  const want = Array.from({ length: 12 }, (_, i) => i / 8 - 0.5);
  for (const name of ["erf_f64.npy", "erf_f32.npy"]) {
    const a = parseNpy(await Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url)), name);
    assert.deepEqual(a.shape, [3, 4]);
    assert.deepEqual([...a.data], want);
    const again = parseNpy(serializeNpy(a.data, a.shape, a.dtype === "<f4" ? "<f4" : "<f8"));
    assert.deepEqual([...again.data], want);
    assert.equal(again.dtype, a.dtype);
  }
  assert.throws(() => parseNpy(new Uint8Array(20), "x.npy"), /x.npy: not a .npy file/);
  const ours = serializeNpy([1.5, -2], [2]);
  assert.equal((ours.length - 0) % 64, 16 % 64); // header padded to 64 bytes, then 2 float64
});

class OneConv extends Module implements Classifier {
  conv: Conv2d;
  constructor(k: number) {
    super();
    this.conv = this.child(
      "conv",
      new Conv2d(3, 3, k, { groups: 3, bias: false, weightInit: { kind: "const", value: 0.5 } }),
    );
  }
  forwardFeatures<V extends Value>(x: V): V {
    return this.conv.forward(x);
  }
  forward<V extends Value>(x: V): V {
    return this.forwardFeatures(x);
  }
}

Deno.test("ERF of a single depthwise k×k conv is exactly the k×k square", async () => {
  for (const k of [3, 7]) {
    const model = new OneConv(k);
    const acc = new ErfAccumulator(15, 15);
    const x = Tensor.rand([2, 3, 15, 15], { seed: k, low: 0.1, high: 1 });
    acc.add(model, x);
    const m = await acc.mean();
    const r = Math.floor(k / 2);
    for (let y = 0; y < 15; y++) {
      for (let xx = 0; xx < 15; xx++) {
        const inside = Math.abs(y - 7) <= r && Math.abs(xx - 7) <= r;
        assert.equal(m[y * 15 + xx] > 0, inside, `k=${k} at (${y},${xx}): ${m[y * 15 + xx]}`);
      }
    }
    // Each of the 2 images contributes 3 channels × 0.5 per tap; the mean over images is 1.5.
    assert.ok(Math.abs(m[7 * 15 + 7] - 1.5) < 1e-6);
    assert.ok(model.conv.weight.tensor.requiresGrad, "parameters unfrozen afterwards");
    x.dispose();
    acc.dispose();
    model.dispose();
  }
});

Deno.test("calibrateBatchNorm: running statistics become the calibration images' (cumulative average)", async () => {
  const { createModel } = await import("../models/registry.ts");
  const { BatchNorm2d } = await import("../models/layers.ts");
  const { noGrad } = await import("../ops/autograd.ts");
  const model = createModel("resnet_cpu") as unknown as Module & {
    conv1: Conv2d;
    bn1: InstanceType<typeof BatchNorm2d>;
  };
  const batches = [1, 2].map((seed) => Tensor.randn([2, 3, 32, 32], { seed, mean: seed - 1 }));
  await calibrateBatchNorm(model as never, batches);
  assert.equal(model.training, false);
  assert.equal(model.bn1.momentum, 0.1, "momentum restored");
  // bn1's mean = the average over both batches of conv1's per-channel means.
  const c = model.bn1.channels;
  const want = new Float64Array(c);
  for (const x of batches) {
    const y = await noGrad(() => model.conv1.forward(x)).read();
    const plane = y.length / (2 * c);
    for (let n = 0; n < 2; n++) {
      for (let ch = 0; ch < c; ch++) {
        for (let i = 0; i < plane; i++) want[ch] += y[(n * c + ch) * plane + i] / (2 * plane * 2);
      }
    }
  }
  const got = await model.bn1.runningMean.tensor.read();
  for (let ch = 0; ch < c; ch++) {
    assert.ok(Math.abs(got[ch] - want[ch]) < 1e-4 * (1 + Math.abs(want[ch])), `channel ${ch}`);
  }
  const vars = await model.bn1.runningVar.tensor.read();
  assert.ok(vars.some((v) => Math.abs(v - 1) > 1e-3), "running_var left at its init");
  batches.forEach((t) => t.dispose());
  model.dispose();
});

/** A ConvNeXt's stages, for checking block by block. */
type ConvNeXtLike = Classifier & {
  downsampleLayers: { items: { forward(x: Tensor): Tensor }[] };
  stages: { items: { layers: (Module & { forward(x: Tensor): Tensor; gamma: Param })[] }[] };
};

Deno.test("calibrateLayerScale: every ConvNeXt/SLaK residual branch gets unit RMS per channel", async () => {
  const { createModel } = await import("../models/registry.ts");
  const { concat } = await import("../ops/shape.ts");
  const { noGrad } = await import("../ops/autograd.ts");
  const { scope } = await import("../ops/tensor.ts");
  const { mul, sub, sumAxes } = await import("../ops/elementwise.ts");
  assert.equal(layerScaleBlocks(createModel("resnet_cpu")).length, 0);
  for (const name of ["convnext_cpu", "slak_cpu"]) {
    seedInit(3);
    const model = createModel(name, { layerScaleInit: 1 }) as unknown as ConvNeXtLike;
    const batches = [1, 2].map((seed) => Tensor.randn([1, 3, 64, 64], { seed }));
    await calibrateBatchNorm(model, batches);
    assert.equal(await calibrateLayerScale(model, batches), 4);
    // Walk the network with the calibrated gammas: each block's x + gamma ⊙ branch(x) has
    // branch part of RMS 1 per channel, on the calibration images together.
    let x = concat(batches, 0);
    for (let s = 0; s < 4; s++) {
      x = noGrad(() => model.downsampleLayers.items[s].forward(x));
      for (const block of model.stages.items[s].layers) {
        assert.ok(!Object.hasOwn(block, "forward"), "forward restored");
        const ms = await noGrad(() =>
          scope(() => {
            const d = sub(block.forward(x), x);
            return sumAxes(mul(d, d), [0, 2, 3]);
          })
        ).read();
        const count = x.size / x.shape[1];
        for (const [c, v] of ms.entries()) {
          assert.ok(Math.abs(Math.sqrt(v / count) - 1) < 2e-3, `${name} stage ${s} ch ${c}: ${v}`);
        }
        const g = await block.gamma.tensor.read();
        assert.ok(g.some((v) => Math.abs(v - 1) > 0.1), "gammas moved from 1");
        x = noGrad(() => block.forward(x));
      }
    }
    batches.forEach((t) => t.dispose());
    model.dispose();
  }
});

Deno.test("random ConvNeXt ERF: LayerScale 1e-6 shows only the stem's patch; calibrated, the 7×7 blocks widen it", async () => {
  const { createModel } = await import("../models/registry.ts");
  const size = 96; // last map 3×3: its centre sees rows/cols 32–63 through stem + downsampling
  const x = Tensor.randn([1, 3, size, size], { seed: 5 });
  const erf = async (layerScale: number | "calibrate") => {
    seedInit(0);
    const model = createModel("convnext_cpu", {
      layerScaleInit: layerScale === "calibrate" ? 1 : layerScale,
    });
    if (layerScale === "calibrate") await calibrateLayerScale(model, [x]);
    const acc = new ErfAccumulator(size, size);
    acc.add(model, x);
    const m = await acc.mean();
    acc.dispose();
    model.dispose();
    let inside = 0, total = 0;
    for (let y = 0; y < size; y++) {
      for (let xx = 0; xx < size; xx++) {
        total += m[y * size + xx];
        if (y >= 32 && y < 64 && xx >= 32 && xx < 64) inside += m[y * size + xx];
      }
    }
    const r = areaRatios(normalizeErf(m, "linear"), size, size, [0.2, 0.5]);
    return { outside: 1 - inside / total, r: r.map((q) => q.ratio) };
  };
  const tiny = await erf(1e-6);
  const calibrated = await erf("calibrate");
  assert.ok(tiny.outside < 1e-3, `1e-6: ${tiny.outside} of the ERF outside the stem's patch`);
  assert.ok(calibrated.outside > 0.1, `calibrated: only ${calibrated.outside} outside the patch`);
  assert.ok(
    calibrated.r[0] > tiny.r[0] && calibrated.r[1] > tiny.r[1],
    `r(20%), r(50%): ${calibrated.r} vs ${tiny.r}`,
  );
  x.dispose();
});
