/**
 * Weights load strictly: every key on both sides, shapes equal (rank
 * included). Partial loading happens only when asked for and lists what it
 * left out; the released trained form of large kernels reaches a merged
 * model only through the explicit mapping, which keeps the outputs.
 */
import assert from "node:assert/strict";
import { Module } from "../models/module.ts";
import { createModel } from "../models/registry.ts";
import { saveSafetensorsFile, type Weights } from "../models/safetensors.ts";
import { mergeLargeKernelWeights } from "../models/weight_mapping.ts";
import { moduleWeights } from "../train/checkpoint.ts";
import { loadModelWeights } from "../train/weights.ts";
import { noGrad } from "../ops/autograd.ts";
import { Tensor } from "../ops/tensor.ts";
import { randomArray, relError, setup } from "./harness.ts";

class Pair extends Module {
  a = this.param("a", [1, 4], { kind: "zeros" });
  b = this.param("b", [2], { kind: "zeros" });
  forward<V>(x: V): V {
    return x;
  }
}

const f32 = (shape: number[], seed = 0) => ({
  shape,
  data: Float32Array.from(randomArray(shape.reduce((x, y) => x * y, 1), seed)),
});

Deno.test("loadStateDict: a tensor of another rank with the same element count is refused", () => {
  const m = new Pair();
  for (const shape of [[4], [4, 1], [1, 1, 4], [2, 2]]) {
    assert.throws(
      () => m.loadStateDict(new Map([["a", f32(shape)], ["b", f32([2])]])),
      (e: Error) =>
        e.message === `shape mismatch for a: checkpoint has [${shape}], model has [1,4]`,
    );
  }
  // Values that do not fill their declared shape are refused too.
  assert.throws(
    () =>
      m.loadStateDict(
        new Map([["a", { shape: [1, 4], data: new Float32Array(3) }], ["b", f32([2])]]),
      ),
    /a holds 3 values, its shape \[1,4\] needs 4/,
  );
  assert.throws(() => m.loadStateDict(new Map([["a", f32([1, 4])]])), /missing keys: b/);
  assert.throws(
    () => m.loadStateDict(new Map([["a", f32([1, 4])], ["b", f32([2])], ["c", f32([1])]])),
    /unexpected keys: c/,
  );
});

Deno.test("loadModelWeights: strict by default, partial only when asked, and then it lists the keys", async () => {
  await setup();
  const dir = await Deno.makeTempDir();
  const file = `${dir}/w.safetensors`;
  await saveSafetensorsFile(file, new Map([["a", f32([1, 4], 1)], ["zz", f32([3])]]));
  await assert.rejects(
    () => loadModelWeights(new Pair(), file, { flag: "--weights" }),
    (e: Error) => {
      assert.match(e.message, /^--weights: .*w\.safetensors: state dict does not match/);
      assert.match(e.message, /missing keys: b; unexpected keys: zz/);
      return true;
    },
  );
  const lines: string[] = [];
  const m = new Pair();
  const r = await loadModelWeights(m, file, { partial: true, report: (l) => lines.push(l) });
  assert.deepEqual([r.missing, r.unexpected], [["b"], ["zz"]]);
  assert.match(lines.join("\n"), /1 missing keys: b\n.*1 unexpected keys: zz/);
  assert.deepEqual([...await m.a.tensor.read()], [...f32([1, 4], 1).data]);
  m.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("mergeLargeKernelWeights: SLaK's trained branches load into a merged model with the same outputs", async () => {
  await setup();
  const args = { numClasses: 3 };
  const trained = createModel("slak_cpu", args);
  // BatchNorm statistics and affines away from their init, so the folding is exercised.
  const w: Weights = await moduleWeights(trained);
  let seed = 10;
  for (const [k, v] of w) {
    if (/\.bn\.(weight|bias|running_mean)$/.test(k)) w.set(k, f32(v.shape, seed++));
    if (/\.bn\.running_var$/.test(k)) {
      w.set(k, {
        shape: v.shape,
        data: Float32Array.from(randomArray(v.data.length, seed++, 0.5, 2)),
      });
    }
  }
  trained.loadStateDict(w);
  const merged = mergeLargeKernelWeights(w);
  assert.ok(![...merged.keys()].some((k) => /LoRA|small_conv/.test(k)));
  const deployed = createModel("slak_cpu", { ...args, mode: "merged" });
  // Strict: the mapped keys are exactly the merged model's.
  deployed.loadStateDict(merged);
  // The trained form does not load into the merged model without the mapping.
  const fresh = createModel("slak_cpu", { ...args, mode: "merged" });
  assert.throws(() => fresh.loadStateDict(w), /missing keys: .*lkb_reparam/);
  const x = Tensor.from(Float32Array.from(randomArray(2 * 3 * 32 * 32, 3)), [2, 3, 32, 32]);
  const [a, b] = await noGrad(() =>
    Promise.all([trained.eval().forward(x).read(), deployed.eval().forward(x).read()])
  );
  assert.ok(relError(b, a) < 1e-4, `merged vs branches: ${relError(b, a)}`);
  for (const m of [trained, deployed, fresh]) m.dispose();
});

Deno.test("scripts/erf.ts --weights: foreign weights are refused in one line with a non-zero exit", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/foreign.safetensors`;
  await saveSafetensorsFile(file, new Map([["encoder.weight", f32([2, 2])]]));
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "scripts/erf.ts",
      "--model",
      "convnext_cpu",
      "--weights",
      file,
      "--out",
      dir,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { MESA_SHADER_CACHE_DISABLE: "true", NO_COLOR: "1" },
  }).output();
  const lines = new TextDecoder().decode(r.stderr).split("\n").filter((l) =>
    l.startsWith("error: --")
  );
  assert.equal(r.code, 1);
  assert.equal(lines.length, 1);
  assert.match(
    lines[0],
    /^error: --weights: .*foreign\.safetensors: state dict does not match the model \(missing keys: .*; unexpected keys: encoder\.weight\)$/,
  );
  await Deno.remove(dir, { recursive: true });
});
