/**
 * torchvision ResNet: parameter and FLOP counts against torchvision and the
 * papers, torchvision's state-dict keys and init, and the tiny preset's
 * forward and backward on the GPU.
 */
import assert from "node:assert/strict";
import { backward } from "../ops/autograd.ts";
import { mul, sum } from "../ops/elementwise.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { Meta, traceFlops } from "../models/layers.ts";
import { seedInit } from "../models/module.ts";
import { GlobalAvgPool, type ResNet, resnet, RESNET_PRESETS } from "../models/resnet.ts";
import { checkClassifierStep, randomArray, setup } from "./harness.ts";

/** MACs at 224² by recorded kind; the pool as fvcore counts it even where layers.ts cannot record it. */
function macsByKind(model: ResNet): Record<string, number> {
  const by: Record<string, number> = { conv: 0, linear: 0, bn: 0, pool: 0 };
  for (const r of traceFlops(() => model.forward(new Meta([1, 3, 224, 224])))) {
    by[r.kind] = (by[r.kind] ?? 0) + r.macs;
  }
  return by;
}

Deno.test("ResNet params and FLOPs match torchvision and the papers", () => {
  // torchvision's counts (conv + fc MACs, its docs' "GFLOPS") and the paper's rounded numbers.
  const cases = [
    { name: "resnet50", params: 25_557_032, tvGmacs: 4.09, paperM: 26, paperG: 4.1 },
    { name: "resnet101", params: 44_549_160, tvGmacs: 7.8, paperM: 45, paperG: 7.9 },
    { name: "resnet152", params: 60_192_808, tvGmacs: 11.51 },
  ] as const;
  for (const c of cases) {
    const m = resnet(RESNET_PRESETS[c.name]);
    const params = m.numParams();
    const by = macsByKind(m);
    const convFc = by.conv + by.linear;
    // fvcore, eval mode (BatchNorm 2·numel) — this project's rule — and fvcore on a model left
    // in training mode (BatchNorm 5·numel, fvcore's norm_flop_counter).
    const evalMacs = convFc + by.bn + by.pool;
    const trainMacs = convFc + 2.5 * by.bn + by.pool;
    console.log(
      `${c.name}: params ${params} | MACs conv ${by.conv} fc ${by.linear} bn(eval) ${by.bn} pool ${by.pool}` +
        ` | conv+fc ${(convFc / 1e9).toFixed(4)}G, fvcore eval ${(evalMacs / 1e9).toFixed(4)}G,` +
        ` fvcore train-mode BN ${(trainMacs / 1e9).toFixed(4)}G`,
    );
    assert.equal(params, c.params);
    assert.equal((convFc / 1e9).toFixed(2), c.tvGmacs.toFixed(2));
    if ("paperM" in c) assert.equal(Math.round(params / 1e6), c.paperM);
    if (c.name === "resnet50") {
      assert.equal((evalMacs / 1e9).toFixed(1), "4.1");
      assert.equal((trainMacs / 1e9).toFixed(1), "4.1");
    }
    if (c.name === "resnet101") {
      // The paper's 7.9G is fvcore with BatchNorm counted in training mode; eval mode gives 7.8.
      assert.equal((evalMacs / 1e9).toFixed(1), "7.8");
      assert.equal((trainMacs / 1e9).toFixed(1), "7.9");
    }
  }
});

Deno.test("GlobalAvgPool: shape, and fvcore's adaptive_avg_pool2d count when recordable", () => {
  const pool = new GlobalAvgPool();
  let out: Meta | undefined;
  const records = traceFlops(() => (out = pool.forward(new Meta([2, 5, 3, 7]))));
  assert.deepEqual(out!.shape, [2, 5]);
  assert.deepEqual(records.map((r) => [r.kind, r.macs]), [["pool", 2 * 5 * 3 * 7]]);
});

Deno.test("ResNet state-dict keys, shapes and init follow torchvision", () => {
  const m = resnet(RESNET_PRESETS.resnet50);
  const entries = new Map(m.namedEntries());
  // torchvision's resnet50().state_dict() has 320 entries (53 convs, 53 BNs × 5, fc weight and bias).
  assert.equal(entries.size, 320);
  const shapes: Record<string, number[]> = {
    "conv1.weight": [64, 3, 7, 7],
    "bn1.weight": [64],
    "bn1.running_var": [64],
    "bn1.num_batches_tracked": [],
    "layer1.0.conv1.weight": [64, 64, 1, 1],
    "layer1.0.downsample.0.weight": [256, 64, 1, 1],
    "layer1.0.downsample.1.running_mean": [256],
    "layer2.0.conv2.weight": [128, 128, 3, 3],
    "layer3.5.bn3.bias": [1024],
    "layer4.2.conv3.weight": [2048, 512, 1, 1],
    "fc.weight": [1000, 2048],
    "fc.bias": [1000],
  };
  for (const [k, s] of Object.entries(shapes)) {
    assert.ok(entries.has(k), `missing ${k}`);
    assert.deepEqual(entries.get(k)!.shape, s, k);
  }
  assert.ok(
    !entries.has("conv1.bias") && !entries.has("layer1.0.conv2.bias"),
    "convs have no bias",
  );
  assert.ok(!entries.has("layer1.1.downsample.0.weight"), "only first blocks downsample");
  // v1.5: the stride sits on the 3×3 conv (and the downsample's 1×1), not on conv1.
  const block = m.stages[1].layers[0] as unknown as Record<string, { stride: number }>;
  assert.equal(block.conv1.stride, 1);
  assert.equal(block.conv2.stride, 2);
  // Init: kaiming_normal(fan_out, relu), BN 1/0, fc PyTorch's default U(±1/√fan_in).
  assert.deepEqual(entries.get("conv1.weight")!.init, {
    kind: "normal",
    std: Math.sqrt(2 / (64 * 7 * 7)),
  });
  assert.deepEqual(entries.get("layer2.0.conv2.weight")!.init, {
    kind: "normal",
    std: Math.sqrt(2 / (128 * 9)),
  });
  assert.deepEqual(entries.get("layer1.0.bn3.weight")!.init, { kind: "ones" });
  assert.deepEqual(entries.get("layer1.0.bn3.bias")!.init, { kind: "zeros" });
  assert.deepEqual(entries.get("fc.weight")!.init, { kind: "uniform", bound: 1 / Math.sqrt(2048) });
  assert.deepEqual(entries.get("fc.bias")!.init, { kind: "uniform", bound: 1 / Math.sqrt(2048) });
  // zero_init_residual zeroes only each block's bn3 weight, keeping the key order.
  const z = resnet({ ...RESNET_PRESETS.resnet_cpu, zeroInitResidual: true });
  const zEntries = [...z.namedEntries()];
  const plainKeys = [...resnet(RESNET_PRESETS.resnet_cpu).namedEntries()].map(([k]) => k);
  assert.deepEqual(zEntries.map(([k]) => k), plainKeys);
  for (const [k, p] of zEntries) {
    if (/^layer\d\.\d+\.bn\d\.weight$/.test(k)) {
      assert.deepEqual(p.init, { kind: k.endsWith("bn3.weight") ? "zeros" : "ones" }, k);
    }
  }
});

Deno.test("resnet_cpu: forward and backward on the GPU", async () => {
  await setup();
  seedInit(3);
  const model = resnet({ ...RESNET_PRESETS.resnet_cpu, numClasses: 5 });
  await checkClassifierStep("resnet_cpu", model, { classes: 5, features: [2, 256, 1, 1] }, 5);
  const stem = await model.conv1.weight.tensor.grad!.read();
  assert.ok(stem.some((v) => v !== 0), "the gradient reaches the stem");
  model.dispose();
});

Deno.test("resnet_cpu (eval): parameter gradients match finite differences", async () => {
  await setup();
  seedInit(4);
  const model = resnet({ ...RESNET_PRESETS.resnet_cpu, numClasses: 3 }).eval();
  // Non-trivial running statistics, so eval BatchNorm is not the identity.
  for (const [k, p] of model.namedEntries()) {
    if (k.endsWith("running_mean") || k.endsWith("running_var")) {
      const lo = k.endsWith("running_var") ? 0.5 : -0.2;
      p.set(Tensor.from(Float32Array.from(randomArray(p.size, p.size, lo, lo + 1)), p.shape));
    }
  }
  const x = Tensor.from(Float32Array.from(randomArray(2 * 3 * 32 * 32, 8)), [2, 3, 32, 32]);
  const gy = Tensor.from(Float32Array.from(randomArray(2 * 3, 9)), [2, 3]);
  const loss = () => scope(() => sum(mul(model.forward(x), gy)));
  scope(() => backward(loss()));
  const params = new Map(model.namedParameters());
  let worst = 0;
  const keys = [
    "conv1.weight",
    "layer1.0.conv2.weight",
    "layer2.0.downsample.0.weight",
    "layer4.0.bn3.weight",
  ];
  for (const key of keys) {
    const p = params.get(key)!;
    const analytic = await p.tensor.grad!.read();
    const values = await p.tensor.read();
    const scale = Math.max(1e-3, ...analytic.map(Math.abs));
    // The largest entries: many are exactly 0 behind dead ReLUs at this tiny size.
    const top = [...analytic.keys()].sort((i, j) => Math.abs(analytic[j]) - Math.abs(analytic[i]));
    // Small eps: ReLU and max-pool kinks lie within ±1e-2 of some weights.
    const eps = 1e-3;
    for (const idx of top.slice(0, 2)) {
      const probe = async (delta: number) => {
        const v = values.slice();
        v[idx] += delta;
        p.set(Tensor.from(v, p.shape));
        return await loss().item();
      };
      const numeric = ((await probe(eps)) - (await probe(-eps))) / (2 * eps);
      p.set(Tensor.from(values, p.shape));
      const err = Math.abs(numeric - analytic[idx]) / scale;
      worst = Math.max(worst, err);
      assert.ok(err < 1e-2, `${key}[${idx}]: analytic ${analytic[idx]} vs numeric ${numeric}`);
    }
  }
  console.log(
    `op-error resnet_cpu param-grads-vs-finite-differences max=${worst.toExponential(2)}`,
  );
  x.dispose();
  gy.dispose();
  model.dispose();
});
