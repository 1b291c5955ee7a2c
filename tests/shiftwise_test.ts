import assert from "node:assert/strict";
import { backward, clearTape } from "../ops/autograd.ts";
import { sum } from "../ops/elementwise.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { Meta, traceFlops } from "../models/layers.ts";
import { seedInit } from "../models/module.ts";
import {
  ghostSplit,
  officialShiftPlan,
  type ShiftWise,
  shiftwise,
  SHIFTWISE_PRESETS,
  ShiftWiseConv,
} from "../models/shiftwise.ts";
import { randomArray, relError, setup } from "./harness.ts";

/** fvcore's MACs by kind: every recorded op but the hand-written channels-first LayerNorm. */
function fvcoreMacs(model: ShiftWise, res = 224): { total: number; pool: number } {
  const records = traceFlops(() => model.forward(new Meta([1, 3, res, res])))
    .filter((r) => r.kind !== "ln_manual");
  const total = records.reduce((a, r) => a + r.macs, 0);
  const pool = records.filter((r) => r.kind === "pool").reduce((a, r) => a + r.macs, 0);
  return { total, pool };
}

Deno.test("params and FLOPs of SW-tiny and SW-small vs the paper (Table 3)", () => {
  // The paper reports the deployed model: the N_path = 2 convs merged into one.
  const paper = { sw_tiny: [31, 5.0], sw_small: [56, 9.4] } as const;
  for (const name of ["sw_tiny", "sw_small"] as const) {
    const train = shiftwise(SHIFTWISE_PRESETS[name]);
    const deployed = shiftwise({ ...SHIFTWISE_PRESETS[name], merged: true });
    const p = deployed.numParams();
    const { total: g, pool } = fvcoreMacs(deployed);
    console.log(
      `${name}: deployed ${p} params, ${g} MACs (SE pooling ${pool} of them) | training form ${train.numParams()} params, ${
        fvcoreMacs(train).total
      } MACs | paper ${paper[name][0]}M ${paper[name][1]}G`,
    );
    assert.equal(Math.round(p / 1e6), paper[name][0]);
    assert.equal(Math.round(g / 1e8) / 10, paper[name][1]);
  }
  // Exact values, so that a change in the architecture shows.
  const tiny = shiftwise({ ...SHIFTWISE_PRESETS.sw_tiny, merged: true });
  const small = shiftwise({ ...SHIFTWISE_PRESETS.sw_small, merged: true });
  assert.equal(shiftwise(SHIFTWISE_PRESETS.sw_tiny).numParams(), 31790260);
  assert.equal(tiny.numParams(), 31002670);
  assert.deepEqual(fvcoreMacs(tiny), { total: 5046414708, pool: 2352000 });
  assert.equal(small.numParams(), 55990108);
  assert.deepEqual(fvcoreMacs(small), { total: 9367837542, pool: 3499776 });
});

Deno.test("state-dict keys are the official ones", () => {
  const m = shiftwise(SHIFTWISE_PRESETS.sw_tiny);
  const shapes = new Map([...m.namedEntries()].map(([k, p]) => [k, p.shape]));
  const want: [string, number[]][] = [
    ["downsample_layers.0.0.weight", [40, 3, 3, 3]],
    ["downsample_layers.0.1.weight", [40]],
    ["downsample_layers.0.3.weight", [80, 40, 3, 3]],
    ["downsample_layers.0.4.bias", [80]],
    ["downsample_layers.3.0.weight", [640, 320, 3, 3]],
    ["downsample_layers.3.1.weight", [640]],
    ["stages.0.0.gamma", [80]],
    ["stages.0.0.large_kernel.LoRAs.0.weight", [60 * 17, 1, 3, 3]],
    ["stages.0.0.large_kernel.LoRAs.1.weight", [60 * 17, 1, 3, 3]],
    ["stages.0.0.large_kernel.bn_lora1.running_var", [60]],
    ["stages.0.0.large_kernel.bn_lora2.weight", [60]],
    ["stages.0.0.large_kernel.bn_small.num_batches_tracked", []],
    ["stages.2.17.large_kernel.LoRAs.1.weight", [246 * 16, 1, 3, 3]],
    ["stages.3.2.large_kernel.LoRAs.0.weight", [492 * 5, 1, 3, 3]],
    ["stages.1.2.norm.running_mean", [160]],
    ["stages.1.2.se.down.weight", [40, 160, 1, 1]],
    ["stages.1.2.se.up.bias", [160]],
    ["stages.1.2.pwconv1.1.weight", [640, 160]],
    ["stages.1.2.act.1.gamma", [1, 1, 1, 640]],
    ["stages.1.2.act.1.beta", [1, 1, 1, 640]],
    ["stages.1.2.pwconv2.0.weight", [160, 640]],
    ["stages.1.2.pwconv2.2.running_var", [160]],
    ["norm.weight", [640]],
    ["head.weight", [1000, 640]],
    ["head.bias", [1000]],
  ];
  for (const [k, s] of want) assert.deepEqual(shapes.get(k), s, k);
  assert.ok(!shapes.has("stages.1.2.pwconv2.0.bias"), "pwconv2 has no bias");
  assert.ok(![...shapes.keys()].some((k) => /loras|ghost|\.rep|pad_hv|idx_/.test(k)));
  // Per block: gamma, 2 LoRAs, 3·5 BN, 5 norm, 4 se, 2 pwconv1, 2 GRN, 1 + 5 pwconv2.
  assert.equal(shapes.size, 20 + 27 * 37 + 4);
  const merged = shiftwise({ ...SHIFTWISE_PRESETS.sw_tiny, merged: true });
  const mk = [...merged.namedEntries()].map(([k]) => k).filter((k) =>
    k.startsWith("stages.0.0.large_kernel.")
  );
  assert.equal(mk.at(-1), "stages.0.0.large_kernel.LoRA.weight");
  assert.ok(!mk.some((k) => k.includes("LoRAs")));
});

// PyTorch 2.11 (torch.manual_seed(123); randperm/randint as the official code calls them),
// printed on the device machine: group-major tables as the official code stacks them.
// deno-fmt-ignore
const TORCH_M13 = {
  padH: [[1, -2, 4, -5, -8, 4, -8, -2, 1, -5, -2, -8, -5, 1, 4, -8, 4, 1, -2, -5, 1, -8, -5, -2, 4, 4, 1, -8, -2, -5], [-8, -5, -2, 1, 4, 4, 1, -2, -8, -5, -5, -8, -2, 4, 1, -2, 4, -8, 1, -5, -5, -8, 1, -2, 4, -2, -8, -5, 4, 1]],
  padV: [[1, -2, -8, 4, -5, -8, -5, -2, 1, 4, -8, 1, -2, 4, -5, 4, -2, 1, -8, -5, -8, -5, -2, 1, 4, -8, 4, -2, 1, -5], [-5, -8, 4, -2, 1, -5, 1, -8, -2, 4, 1, -5, -2, 4, -8, -5, 4, -8, -2, 1, 1, -8, -2, 4, -5, 1, -2, -8, 4, -5]],
  identity: [[4, 8, 10, 15, 22, 28], [1, 5, 11, 19, 20, 28]],
};
// deno-fmt-ignore
const TORCH_M51 = {
  padH0: [14, 17, 2, -7, 11, -16, -22, 8, -13, -25, -19, -4, -10, -1, 20, 23, 5, -13, -22, -1, 14, -25, 11, 5, -19, -4, 8, -16, -10, 23, -7, 2, 17, 20, -10, -4, 8, 14, 20, -19, -25, 23, 5, -22, -16, 17, 2, -1, 11, -13, -7, 14, -7, 8, -19, -1, -25, 23, 20, 5, 2, 11, -13, -10, -4, -16, 17, -22],
  padV3: [-22, -4, -16, -13, 11, -25, -7, 8, -10, 14, 23, -1, -19, 17, 2, 20, 5, 17, -25, -13, 14, 8, -22, -10, -16, -4, 11, -1, 5, -19, -7, 23, 20, 2, -13, 14, -7, 11, 23, -22, -19, -4, 17, 20, 5, -10, 2, -16, -1, 8, -25, -16, -1, -7, -4, 23, 14, -22, -13, 2, -19, -10, 20, -25, 5, 17, 8, 11],
  identity: [[15, 33, 49, 52], [1, 28, 39, 54], [7, 22, 48, 57], [9, 32, 45, 63]],
};

Deno.test("ghost channels and shift tables reproduce NumPy's and PyTorch's draws", () => {
  // np.random.seed(123); sorted(np.random.choice(C, C − repN, replace=False)), NumPy 2.4.
  const numpy: [number, number[]][] = [
    [8, [0, 1]],
    [16, [0, 4, 7, 10]],
    [24, [5, 8, 15, 18, 20, 21]],
    [32, [5, 7, 8, 12, 21, 26, 27, 31]],
    [80, [4, 8, 9, 23, 29, 31, 37, 43, 44, 53, 58, 59, 62, 64, 69, 72, 75, 77, 78, 79]],
  ];
  for (const [c, ghost] of numpy) {
    const split = ghostSplit(c, 0.23);
    assert.deepEqual(split.ghost, ghost, `C = ${c}`);
    assert.equal(split.rep.length + ghost.length, c);
  }
  assert.equal(ghostSplit(640, 0.23).rep.length, 492);
  assert.equal(ghostSplit(768, 0.23).rep.length, 590);
  const col = (a: ArrayLike<number>, groups: number, g: number) =>
    Array.from(a).filter((_, k) => k % groups === g);
  const m13 = officialShiftPlan(13, 3, 6, 2);
  for (let g = 0; g < 2; g++) {
    assert.deepEqual(col(m13.padH, 2, g), TORCH_M13.padH[g]);
    assert.deepEqual(col(m13.padV, 2, g), TORCH_M13.padV[g]);
    assert.deepEqual(col(m13.identity, 2, g), TORCH_M13.identity[g]);
  }
  const m51 = officialShiftPlan(51, 3, 4, 4);
  assert.equal(m51.nk, 17);
  assert.equal(m51.extraPad, 1);
  assert.deepEqual(col(m51.padH, 4, 0), TORCH_M51.padH0);
  assert.deepEqual(col(m51.padV, 4, 3), TORCH_M51.padV3);
  for (let g = 0; g < 4; g++) assert.deepEqual(col(m51.identity, 4, g), TORCH_M51.identity[g]);
  // The 17 shifts of one channel are 23, 20, …, −25: 3×3 windows tiling columns −25…25.
  assert.deepEqual(
    col(m51.padH, 4, 0).slice(0, 17).sort((a, b) => b - a),
    Array.from({ length: 17 }, (_, i) => 23 - 3 * i),
  );
});

await setup();

function finite(a: Float32Array): boolean {
  return a.every(Number.isFinite);
}

Deno.test("SW mixer: SW channels first, ghost channels after", async () => {
  seedInit(3);
  // The shapes of sw_cpu's first stage at a 32×32 input, so the kernels are shared with the next test.
  const mixer = new ShiftWiseConv(8, { bigKernel: 13, merged: true });
  mixer.eval();
  // Zero convs make the three maps 0 (eval BN with default stats): out = cat(x[rep], x[ghost]).
  mixer.lora!.weight.set(Tensor.zeros(mixer.lora!.weight.shape));
  const x = Float32Array.from(randomArray(2 * 8 * 8 * 8, 9));
  const y = await scope(() => mixer.forward(Tensor.from(x, [2, 8, 8, 8])).read());
  const order = [...mixer.rep, ...mixer.ghost];
  assert.deepEqual(mixer.ghost, [0, 1]);
  for (let n = 0; n < 2; n++) {
    order.forEach((ch, k) => {
      for (let p = 0; p < 64; p++) assert.equal(y[(n * 8 + k) * 64 + p], x[(n * 8 + ch) * 64 + p]);
    });
  }
  mixer.dispose();
});

Deno.test("sw_cpu: forward and backward on the GPU, then re-parameterisation", async () => {
  seedInit(1);
  const model = shiftwise({ ...SHIFTWISE_PRESETS.sw_cpu, numClasses: 10 });
  const x = Float32Array.from(randomArray(2 * 3 * 32 * 32, 5));
  const t0 = performance.now();
  await scope(async () => {
    const logits = model.forward(Tensor.from(x, [2, 3, 32, 32]));
    assert.deepEqual(logits.shape, [2, 10]);
    backward(sum(logits));
    const out = await logits.read();
    assert.ok(finite(out), "finite logits");
    for (
      const key of [
        "stages.0.0.large_kernel.LoRAs.1.weight",
        "downsample_layers.0.0.weight",
        "stages.3.0.act.1.beta",
        "head.weight",
      ]
    ) {
      const p = [...model.namedParameters()].find(([k]) => k === key)![1];
      const g = await p.tensor.grad!.read();
      assert.ok(finite(g) && g.some((v) => v !== 0), `${key}: finite, non-zero gradient`);
    }
    const feats = model.forwardFeatures(Tensor.from(x, [2, 3, 32, 32]));
    assert.deepEqual(feats.shape, [2, 32, 1, 1]);
    clearTape();
  });
  console.log(`sw_cpu forward+backward [2,3,32,32]: ${(performance.now() - t0).toFixed(0)} ms`);

  // Non-trivial BN statistics, GRN, LayerScale so the check can fail.
  let seed = 100;
  for (const [key, p] of model.namedEntries()) {
    const v = (lo: number, hi: number) =>
      p.set(Tensor.from(Float32Array.from(randomArray(p.size, seed++, lo, hi)), p.shape));
    if (key.endsWith("running_var")) v(0.5, 1.5);
    else if (key.endsWith("running_mean")) v(-0.2, 0.2);
    else if (/(bn_\w+|norm|pwconv2\.2)\.(weight|bias)$/.test(key)) v(0.5, 1.5);
    else if (/act\.1\.(gamma|beta)$/.test(key)) v(-0.3, 0.3);
    else if (/\.gamma$/.test(key)) v(0.5, 1);
  }
  model.eval();
  const before = await scope(() => model.forward(Tensor.from(x, [2, 3, 32, 32])).read());
  model.mergeBranches();
  assert.ok([...model.namedEntries()].some(([k]) => k === "stages.0.0.large_kernel.LoRA.weight"));
  const after = await scope(() => model.forward(Tensor.from(x, [2, 3, 32, 32])).read());
  const err = relError(after, before);
  console.log(`op-error sw_cpu mergeBranches eval logits rel=${err.toExponential(2)}`);
  assert.ok(err <= 1e-4, `merge changed outputs by ${err}`);
  model.dispose();
});
