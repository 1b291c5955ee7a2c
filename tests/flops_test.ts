/**
 * FLOPs/params counting (no GPU): exact counts on a hand-computable model,
 * sparse-aware counting, the model registry, the paper rows that must agree
 * at the paper's rounding, and the scaling figure's claim.
 */
import assert from "node:assert/strict";
import { countModel, defaultStageOf, maskedParams, uniformDensities } from "../analysis/flops.ts";
import {
  BatchNorm2d,
  Conv2d,
  LayerNorm,
  Linear,
  meanHW,
  Sequential,
  type Value,
} from "../models/layers.ts";
import { Module, ModuleList } from "../models/module.ts";
import { createModel, MODEL_NAMES, modelInfo } from "../models/registry.ts";
import { slak, SLAK_PRESETS } from "../models/slak.ts";
import { computeRows } from "../scripts/model_table.ts";
import { checkClaim, scalingRows } from "../scripts/scaling_flops.ts";

/** stem: conv 3→4 (3×3) + BN; stage 0: depthwise 5×5 stride 2 + channels-first LN; head: LN + linear 4→2. */
class Tiny extends Module {
  stem = this.child("stem", new Sequential(new Conv2d(3, 4, 3), new BatchNorm2d(4)));
  stages = this.child(
    "stages",
    new ModuleList([
      new Sequential(new Conv2d(4, 4, 5, { stride: 2, groups: 4 }), new LayerNorm(4, 1e-6, true)),
    ]),
  );
  norm = this.child("norm", new LayerNorm(4));
  head = this.child("head", new Linear(4, 2));
  forward<V extends Value>(x: V): V {
    const y = this.stages.items[0].forward(this.stem.forward(x));
    return this.head.forward(this.norm.forward(meanHW(y)));
  }
}

// By hand, input [2, 3, 8, 8]:
//   conv 3→4 3×3 pad 1: out 2·4·8·8 = 512 elements × 27 = 13824 MACs, params 108 + 4
//   BN: 2 × 512 = 1024, params 8
//   depthwise 5×5 s2 pad 2: out 2·4·4·4 = 128 × 25 = 3200, params 100 + 4
//   channels-first LN (ln_manual, not counted by fvcore): 5 × 128 = 640, params 8
//   mean over H, W: 0; LN over 4 features of [2, 4]: 5 × 8 = 40, params 8
//   linear 4→2: out 4 × 4 = 16, params 8 + 2
const CONV = 13824, BN = 1024, DW = 3200, LNM = 640, LN = 40, FC = 16;

Deno.test("countModel: exact MACs and params of a hand-computed model (fvcore rules)", () => {
  const c = countModel(new Tiny(), [2, 3, 8, 8]);
  assert.equal(c.macs, CONV + BN + DW + LN + FC);
  assert.equal(c.denseMacs, c.macs);
  assert.equal(c.params, 112 + 8 + 104 + 8 + 8 + 10);
  assert.equal(c.denseParams, c.params);
  assert.equal(c.weightNonzeros, 108 + 100 + 8);
  assert.deepEqual(c.byKind, { conv: CONV + DW, bn: BN, ln: LN, linear: FC });
  assert.deepEqual(c.skipped, { ln_manual: LNM });
  assert.deepEqual(
    c.layers.map((l) => [l.name, l.kind, l.macs, l.params]),
    [
      ["stem.0", "conv", CONV, 112],
      ["stem.1", "bn", BN, 8],
      ["stages.0.0", "conv", DW, 104],
      ["stages.0.1", "ln_manual", 0, 8],
      ["norm", "ln", LN, 8],
      ["head", "linear", FC, 10],
    ],
  );
  assert.deepEqual(
    c.byStage.map((s) => [s.stage, s.params, s.macs]),
    [["stem", 120, CONV + BN], ["stage0", 112, DW], ["head", 18, LN + FC]],
  );
  // Kind filters: everything recorded, or only convolutions.
  assert.equal(countModel(new Tiny(), [2, 3, 8, 8], { excludeKinds: [] }).macs, c.macs + LNM);
  assert.equal(countModel(new Tiny(), [2, 3, 8, 8], { includeKinds: ["conv"] }).macs, CONV + DW);
  // A number is a square RGB input of batch 1: half the MACs of batch 2.
  assert.equal(countModel(new Tiny(), 8).macs, c.macs / 2);
});

Deno.test("countModel: sparse weights count their non-zeros and scale their layer's MACs", () => {
  const m = new Tiny();
  const c = countModel(m, [2, 3, 8, 8], {
    densities: new Map([["stem.0.weight", 0.5], ["head.weight", 0.25]]),
  });
  assert.equal(c.params, 250 - 54 - 6);
  assert.equal(c.denseParams, 250);
  assert.equal(c.weightNonzeros, 54 + 100 + 2);
  assert.equal(c.macs, CONV / 2 + BN + DW + LN + FC / 4);
  assert.equal(c.denseMacs, CONV + BN + DW + LN + FC);
  assert.deepEqual(c.byStage[0], {
    stage: "stem",
    params: 120 - 54,
    denseParams: 120,
    macs: CONV / 2 + BN,
    denseMacs: CONV + BN,
  });
  assert.equal(c.layers[0].density, 0.5);
  // Non-zeros are rounded (density × size), and MACs scale by the rounded fraction: 108/3 = 36.
  const third = countModel(m, [2, 3, 8, 8], {
    densities: (key) => (key === "stem.0.weight" ? 1 / 3 : undefined),
  });
  assert.equal(third.params, 250 - 72);
  assert.equal(third.macs, CONV * 36 / 108 + BN + DW + LN + FC);
  assert.throws(
    () => countModel(m, 8, { densities: new Map([["stem.9.weight", 0.5]]) }),
    /lacks: stem\.9\.weight/,
  );
  assert.throws(() => countModel(m, 8, { densities: new Map([["head.weight", 1.5]]) }), /\[0, 1\]/);
});

Deno.test("uniformDensities: SLaK's masked tensors (2-D/4-D; only_L: large_kernel.LoRA)", () => {
  assert.deepEqual(
    maskedParams(new Tiny()).map(([k]) => k),
    ["stem.0.weight", "stages.0.0.weight", "head.weight"],
  );
  const s = slak(SLAK_PRESETS.slak_cpu);
  const all = uniformDensities(s, 0.6);
  const onlyL = uniformDensities(s, 0.6, "only_L");
  assert.ok(all.has("downsample_layers.0.0.weight") && all.has("head.weight"));
  assert.ok(!all.has("head.bias") && !all.has("stages.0.0.gamma"));
  assert.ok(all.has("stages.0.0.large_kernel.small_conv.conv.weight"));
  assert.deepEqual(
    [...onlyL.keys()].sort(),
    [...s.namedParameters()].map(([k]) => k).filter((k) => /large_kernel\.LoRA.\.conv/.test(k))
      .sort(),
  );
  assert.equal(onlyL.size, 8); // LoRA1 and LoRA2 of 4 blocks
  assert.equal(uniformDensities(s, 0.995).size, 0); // the official code drops masks of density ≥ 0.99
  // SLaK-T at 40 % sparsity: SLaK's count (non-zeros of conv/linear weights) is the paper's 30M.
  const t = slak(SLAK_PRESETS.slak_tiny);
  const c = countModel(t, 224, { densities: uniformDensities(t, 0.6) });
  assert.equal(Math.round(c.weightNonzeros / 1e6), 30);
  assert.equal(c.denseParams, 50703838); // `number of params` printed by the official main.py
});

Deno.test("defaultStageOf: ConvNeXt, RepLKNet and ResNet names", () => {
  assert.equal(defaultStageOf("downsample_layers.0.1"), "stem");
  assert.equal(defaultStageOf("downsample_layers.2.1"), "stage2");
  assert.equal(defaultStageOf("stages.3.0.large_kernel.LoRA1.conv"), "stage3");
  assert.equal(defaultStageOf("transitions.0.0"), "stage1");
  assert.equal(defaultStageOf("layer1.0.conv1"), "stage0");
  assert.equal(defaultStageOf("conv1"), "stem");
  assert.equal(defaultStageOf("fc"), "head");
});

Deno.test("registry: every preset builds and runs on shapes; errors name the valid choices", () => {
  for (const name of MODEL_NAMES) {
    const info = modelInfo(name);
    assert.equal(info.name, name);
    const c = countModel(createModel(name), info.inputSize);
    assert.ok(c.params > 0 && c.macs > 0, name);
  }
  for (const n of ["convnext_tiny", "slak_tiny", "replknet_31b", "resnet50", "sw_tiny"]) {
    assert.ok(MODEL_NAMES.includes(n), `${n} is a preset`);
    assert.equal(modelInfo(n).inputSize, 224);
  }
  assert.throws(() => createModel("slak_huge"), /unknown model "slak_huge" \(valid: .*slak_tiny/);
  assert.throws(
    () => createModel("slak_tiny", { kernel: [3] } as never),
    /override "kernel" is unknown/,
  );
  assert.throws(
    () => createModel("slak_tiny", { kernels: [51, 49, 47] }),
    /4 or 5 positive integers/,
  );
  assert.throws(
    () => createModel("convnext_tiny", { kernels: [7, 7, 7, 7, 5] }),
    /no parallel small kernel/,
  );
  assert.throws(() => createModel("convnext_tiny", { mode: "full" }), /slak_\* models only/);
  assert.throws(() => createModel("slak_tiny", { dropPath: 1.5 }), /dropPath/);
  // Official `--kernel_size 61 59 57 13 5`, width and classes.
  const m = createModel("slak_tiny", {
    kernels: [61, 59, 57, 13, 5],
    widthFactor: 1,
    numClasses: 10,
  });
  const keys = new Map([...m.namedParameters()].map(([k, p]) => [k, p.shape]));
  assert.deepEqual(keys.get("stages.0.0.large_kernel.LoRA1.conv.weight"), [96, 1, 61, 5]);
  assert.deepEqual(keys.get("head.weight"), [10, 768]);
  // Other families: RepLKNet-3 has no parallel 5×5; merged kernels; inapplicable overrides are errors.
  const keysOf = (m: { namedParameters(): Iterable<[string, unknown]> }) =>
    [...m.namedParameters()].map(([k]) => k);
  const r3 = keysOf(createModel("replknet_31b", { kernels: [3, 3, 3, 3] }));
  assert.ok(r3.includes("stages.0.blocks.0.large_kernel.lkb_origin.conv.weight"));
  assert.ok(!r3.some((k) => k.includes("small_conv")));
  assert.ok(
    keysOf(createModel("replknet_cpu", { mode: "merged" })).includes(
      "stages.0.blocks.0.large_kernel.lkb_reparam.weight",
    ),
  );
  assert.throws(
    () => createModel("replknet_31b", { kernels: [31, 29, 27, 3], smallKernel: 5 }),
    /larger than a stage kernel/,
  );
  assert.throws(
    () => createModel("resnet50", { kernels: [7, 7, 7, 7] }),
    /does not apply to ResNet/,
  );
  assert.throws(() => createModel("sw_tiny", { mode: "full" }), /only "merged"/);
  // ResNet and RepLKNet ignore LayerScale (the trainer passes it for every model).
  assert.equal(
    createModel("resnet_cpu", { layerScaleInit: 1e-6 }).numParams(),
    createModel("resnet_cpu").numParams(),
  );
  // ConvNeXt's own `7 7 7 7 100` run means no small kernel: plain ConvNeXt-T.
  assert.equal(createModel("convnext_tiny", { kernels: [7, 7, 7, 7, 100] }).numParams(), 28589128);
});

Deno.test("model table: rows that agree with the papers at their rounding", () => {
  const rows = computeRows();
  assert.deepEqual(rows.missing, []);
  const get = (table: string, model: string) => {
    const r = rows.find((r) => r.table === table && r.model === model);
    assert.ok(r, `${table} / ${model}`);
    return r;
  };
  const mustMatch: [string, string][] = [
    ["SLaK Table 1", "ConvNeXt-T 7-7-7-7"],
    ["SLaK Table 1", "ConvNeXt-T RepLKNet recipe 31-29-27-13 (merged)"],
    ["SLaK Table 1", "ConvNeXt-T RepLKNet recipe 51-49-47-13 (merged)"],
    ["SLaK Table 1", "ConvNeXt-T RepLKNet recipe 61-59-57-13 (merged)"],
    ["SLaK Table 2", "ConvNeXt-T decomposed 31-29-27-13"],
    ["SLaK Table 2", "ConvNeXt-T decomposed 51-49-47-13"],
    ["SLaK Table 2", "ConvNeXt-T decomposed 61-59-57-13"],
    ["SLaK Table 3", "ConvNeXt-T"],
    ["SLaK Table 3", "ConvNeXt-S"],
    ["SLaK Table 3", "ConvNeXt-B"],
    ["SLaK Table 3", "ResNet-50"],
    ["RepLKNet Table 5", "RepLKNet 3-3-3-3"],
    ["RepLKNet Table 5", "RepLKNet 7-7-7-7"],
    ["RepLKNet Table 5", "RepLKNet 13-13-13-13"],
    ["RepLKNet Table 5", "RepLKNet 25-25-25-13"],
    ["RepLKNet Table 6", "RepLKNet-31B @384"],
    ["RepLKNet Table 6", "RepLKNet-31L @384"],
    ["RepLKNet Table 6", "RepLKNet-XL @320"],
    ["ShiftwiseConv Table 3", "SW-tiny (merged)"],
    ["ShiftwiseConv Table 3", "SW-small (merged)"],
  ];
  for (const [t, m] of mustMatch) {
    assert.equal(get(t, m).match, "yes", `${t} / ${m}: ${get(t, m).note}`);
  }
  // ConvNeXt-T 29M / 4.5G exactly as timm/fvcore count it.
  assert.equal(get("SLaK Table 3", "ConvNeXt-T").params_M, 28.59);
  assert.equal(get("SLaK Table 3", "ConvNeXt-T").gflops, 4.47);
  // Every sparse row's params agree (SLaK's non-zero count). Uniform densities give more FLOPs
  // than the paper's SNIP ones; the note's implied MAC-weighted density is recomputed here from
  // the row's own columns (uniform: FLOPs = dense − (1 − d)·masked, so masked = (dense − FLOPs)/s).
  for (const r of rows.filter((r) => r.sparsity > 0)) {
    const what = `${r.table} / ${r.model}`;
    assert.equal(Math.round(r.params_M).toString(), r.paper_params_M, what);
    assert.ok(r.gflops > Number(r.paper_gflops) && r.gflops < r.dense_gflops, what);
    const masked = (r.dense_gflops - r.gflops) / r.sparsity;
    const implied = (Number(r.paper_gflops) - (r.dense_gflops - masked)) / masked;
    const quoted = Number(r.note.match(/implies a MAC-weighted density of ([\d.]+)/)?.[1]);
    assert.ok(
      Math.abs(quoted - implied) < 0.01,
      `${what}: note says ${quoted}, expected ${implied}`,
    );
    assert.ok(implied < 1 - r.sparsity, what);
  }
  assert.equal(get("SLaK Table 3", "SLaK-T").params_M, 30.35);
  // The dense rows that disagree with their paper, each for a reason its note states.
  const denseMismatches = rows.filter((r) => r.match === "no" && r.sparsity === 0);
  assert.deepEqual(denseMismatches.map((r) => `${r.table} / ${r.model}`), [
    "SLaK Table 1 / ConvNeXt-T naive 31-29-27-13",
    "SLaK Table 1 / ConvNeXt-T naive 51-49-47-13",
    "SLaK Table 1 / ConvNeXt-T naive 61-59-57-13",
    "SLaK Table 3 / ResNet-101",
    "SLaK Table 3 / RepLKNet-31B",
    "RepLKNet Table 5 / RepLKNet 31-29-27-13",
    "RepLKNet Table 6 / RepLKNet-31B @224",
  ]);
  // Where a note names another count as "the paper's" value, that count rounds to the paper's.
  for (const r of denseMismatches) {
    const other = r.note.match(/([\d.]+)G(?:, the paper's naive value|, the paper's value)/)?.[1];
    if (other === undefined) continue;
    const decimals = r.paper_gflops.split(".")[1]?.length ?? 0;
    assert.equal(Number(other).toFixed(decimals), r.paper_gflops, r.model);
  }
  assert.match(get("SLaK Table 3", "ResNet-101").note, /7\.88G, the paper's value/);
});

Deno.test("scaling (SLaK Fig. 4): SLaK at k=151 costs less than the full kernel at k=51", () => {
  const rows = scalingRows([7, 51, 151]);
  const claim = checkClaim(rows);
  assert.ok(claim.ok, claim.text);
  // k = 7: the naive recipe is plain ConvNeXt-T.
  assert.equal(rows[0].convnext_params_M, 28.589128);
  assert.ok(rows[2].slak_gflops < rows[1].convnext_gflops);
  assert.ok(rows[2].slak_params_M < rows[1].convnext_params_M);
});
