/**
 * Every model preset of the registry builds with its real widths and depths
 * and runs a forward pass on a tiny input (the smallest the five stride-2
 * stages allow, 32²), giving finite logits of the right shape.
 *
 * Weight matrices and kernels are filled on the GPU with hashed uniform
 * noise at a fan-in scale (±√(3/fan_in)) rather than by the presets' CPU
 * initialisers: those draw ~1.2 billion normals for these 19 models, about a
 * minute and a half of a 2-core CI machine, and are tested elsewhere
 * (tests/e2e_test.ts, the tiny presets' tests). Vectors (norms, biases,
 * LayerScale) keep their own init. Products run on the simple kernels:
 * from a cold shader cache the file took 4m46s with the tiled ones, 2m50s
 * with these (llvmpipe, 2 cores).
 */
import assert from "node:assert/strict";
import { createModel, MODEL_NAMES } from "../models/registry.ts";
import { noGrad } from "../ops/autograd.ts";
import { setGemmImpl } from "../ops/gemm_plan.ts";
import { launch, uniforms } from "../ops/kernel.ts";
import { grid1d, poolStats, scope, Tensor } from "../ops/tensor.ts";
import { seedInit } from "../models/module.ts";
import { setup } from "./harness.ts";

await setup();
// The simple product kernels compile several times faster on llvmpipe than the tiled ones (which
// gemm_test.ts checks against them), and every preset's widths are new shapes to compile.
setGemmImpl("simple");

const NOISE = uniforms(1, { n: ["u32", 0], seed: ["u32", 0], scale: ["f32", 0] }).decl;

/** A tensor of `shape` holding hashed uniform noise in ±scale (one kernel for every size). */
function gpuNoise(shape: readonly number[], seed: number, scale: number): Tensor {
  const t = Tensor.empty(shape);
  const { data } = uniforms(1, { n: ["u32", t.size], seed: ["u32", seed], scale: ["f32", scale] });
  launch(
    `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
${NOISE}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * 256u);
  if (i >= P.n) { return; }
  var h = i * 747796405u + P.seed * 2891336453u + 1u;
  h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
  h = (h >> 22u) ^ h;
  y[i] = (f32(h) / 4294967296.0 * 2.0 - 1.0) * P.scale;
}`,
    [t],
    grid1d(t.size),
    data,
  );
  return t;
}

for (const name of MODEL_NAMES) {
  Deno.test(`preset ${name}: builds and runs a forward pass at 32²`, async () => {
    const before = poolStats().liveTensors;
    seedInit(1);
    const model = createModel(name, { numClasses: 7 });
    model.eval();
    let seed = 0;
    for (const [, p] of model.namedEntries()) {
      if (p.shape.length < 2) continue;
      p.set(gpuNoise(p.shape, ++seed, Math.sqrt(3 / (p.size / p.shape[0]))));
    }
    const x = Tensor.randn([1, 3, 32, 32], { seed: 2 });
    const logits = await noGrad(() => scope(async () => await model.forward(x).read()));
    assert.equal(logits.length, 7);
    assert.ok(logits.every(Number.isFinite), `${name}: non-finite logits ${logits}`);
    assert.ok(new Set(logits).size > 1, `${name}: constant logits ${logits}`);
    x.dispose();
    model.dispose();
    assert.equal(poolStats().liveTensors, before, `${name}: tensors left alive`);
  });
}
