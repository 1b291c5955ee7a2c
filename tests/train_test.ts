/**
 * Trainer behaviour on tiny runs (procedural data, 32² images): resuming is
 * bit-for-bit, a non-finite loss stops the run without losing the last good
 * checkpoint, and bad input is a one-line error.
 */
import assert from "node:assert/strict";
import { train } from "../train/trainer.ts";
import { planTrainingKernels } from "../train/kernel_plans.ts";
import { buildModel, presetConfig, type TrainConfig } from "../train/config.ts";
import { loadSafetensorsFile } from "../models/safetensors.ts";
import { noGrad } from "../ops/autograd.ts";
import { planner, type SavedPlans } from "../ops/planner.ts";
import { Tensor } from "../ops/tensor.ts";
import { relError, setup } from "./harness.ts";

await setup();

function tiny(out: string, extra: Partial<TrainConfig> = {}): TrainConfig {
  return {
    ...presetConfig("cpu"),
    model: "slak_cpu",
    out,
    epochs: 2,
    batchSize: 8,
    updateFreq: 2,
    inputSize: 32,
    trainSize: 32,
    valSize: 16,
    numClasses: 4,
    warmupEpochs: 1,
    dropPath: 0.1,
    mixup: 0.8,
    cutmix: 1.0,
    labelSmoothing: 0.1,
    modelEma: true,
    modelEmaDecay: 0.9,
    logEvery: 2,
    ...extra,
  };
}

/** Run `fn` with console output silenced (kept in `lines` when given). */
async function quiet<T>(fn: () => Promise<T>, lines?: string[]): Promise<T> {
  const log = console.log, err = console.error;
  const keep = (...a: unknown[]) => lines?.push(a.join(" "));
  console.log = keep;
  console.error = keep;
  try {
    return await fn();
  } finally {
    console.log = log;
    console.error = err;
  }
}

async function assertSameCheckpoints(a: string, b: string) {
  for (const file of ["model.safetensors", "ema.safetensors", "optimizer.safetensors"]) {
    const wa = await loadSafetensorsFile(`${a}/checkpoint-last/${file}`);
    const wb = await loadSafetensorsFile(`${b}/checkpoint-last/${file}`);
    assert.deepEqual([...wa.keys()], [...wb.keys()]);
    for (const [k, v] of wa) {
      const w = wb.get(k)!;
      let max = 0;
      for (let i = 0; i < v.data.length; i++) max = Math.max(max, Math.abs(v.data[i] - w.data[i]));
      assert.ok(max <= 1e-6, `${file} ${k}: max difference ${max}`);
    }
  }
}

Deno.test("resume: 2 epochs equal 1 epoch + resume 1, and an interrupt mid-epoch + resume (weights, EMA, optimiser, log)", async () => {
  const dir = await Deno.makeTempDir();
  const full = await quiet(() => train(tiny(`${dir}/full`)));
  // Stopped after epoch 1 (as by Ctrl-C between epochs), then resumed.
  const stop = new AbortController();
  const first = await quiet(() =>
    train(tiny(`${dir}/half`), { signal: stop.signal, onEpochEnd: () => stop.abort() })
  );
  assert.ok(first.interrupted);
  assert.equal(first.history.length, 1);
  const resumed = await quiet(() =>
    train(tiny(`${dir}/half`, { resume: `${dir}/half/checkpoint-last` }))
  );
  await assertSameCheckpoints(`${dir}/full`, `${dir}/half`);
  // Stopped inside epoch 1, after its first optimiser step (2 micro-batches), then auto-resumed.
  const mid = new AbortController();
  mid.abort();
  const cut = await quiet(() => train(tiny(`${dir}/mid`), { signal: mid.signal }));
  assert.ok(cut.interrupted);
  assert.equal(cut.history.length, 0);
  await quiet(() => train(tiny(`${dir}/mid`, { autoResume: true })));
  await assertSameCheckpoints(`${dir}/full`, `${dir}/mid`);
  {
    const a = await loadSafetensorsFile(`${dir}/full/checkpoint-last/model.safetensors`);
    const b = await loadSafetensorsFile(`${dir}/half/checkpoint-last/model.safetensors`);
    assert.deepEqual([...a.keys()], [...b.keys()]);
    assert.equal(a.size, b.size);
  }
  assert.equal(full.history.length, 2);
  assert.equal(resumed.history.length, 2);
  assert.equal(resumed.history[1].train_loss, full.history[1].train_loss);
  assert.equal(resumed.history[1].top1, full.history[1].top1);
  const csv = await Deno.readTextFile(`${dir}/full/log.csv`);
  assert.match(
    csv.split("\n")[0],
    /^epoch,step,lr,train_loss,val_loss,top1,top5,ema_top1,ema_top5/,
  );
  const png = await Deno.readFile(`${dir}/full/curves.png`);
  assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a non-finite loss stops the run with a clear message and writes no bad checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(
    () =>
      quiet(() =>
        train(
          tiny(dir, { epochs: 1, lr: 1e38, warmupEpochs: 0, mixup: 0, cutmix: 0, modelEma: false }),
        )
      ),
    /loss became (NaN|Infinity|-Infinity) at epoch 1.*last good checkpoint/,
  );
  await assert.rejects(() => Deno.stat(`${dir}/checkpoint-last/state.json`));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("bad input: one-line errors naming the file or flag", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(
    () => quiet(() => train(tiny(dir, { data: `${dir}/missing` }))),
    (e: Error) => {
      assert.match(e.message, /missing/);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    },
  );
  // A failed run leaves no lock behind.
  await assert.rejects(() => Deno.stat(`${dir}/train.lock`), Deno.errors.NotFound);
  // A folder that a live process trains into is refused; a lock whose process is gone (a pid above
  // Linux's largest) is taken over, and released at the end.
  await Deno.mkdir(`${dir}/held`);
  await Deno.writeTextFile(`${dir}/held/train.lock`, `${Deno.pid}\n`);
  await assert.rejects(
    () => quiet(() => train(tiny(`${dir}/held`))),
    new RegExp(`--out: .*held is in use by another training run \\(pid ${Deno.pid}, `),
  );
  await Deno.mkdir(`${dir}/a`);
  await Deno.writeTextFile(`${dir}/a/train.lock`, "4194305\n");
  // A checkpoint of another model is refused.
  await quiet(() => train(tiny(`${dir}/a`, { epochs: 1, mixup: 0, cutmix: 0, modelEma: false })));
  await assert.rejects(() => Deno.stat(`${dir}/a/train.lock`), Deno.errors.NotFound);
  await assert.rejects(
    () =>
      quiet(() =>
        train(tiny(`${dir}/b`, { model: "convnext_cpu", resume: `${dir}/a/checkpoint-last` }))
      ),
    /--resume: .*checkpoint of slak_cpu .*not of convnext_cpu/,
  );
  await assert.rejects(
    () => quiet(() => train(tiny(`${dir}/c`, { resume: `${dir}/nothing.safetensors` }))),
    /weights file .*nothing.safetensors does not exist/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("sparse resume: masks, densities and weights equal an uninterrupted sparse run", async () => {
  const dir = await Deno.makeTempDir();
  const cfg = (out: string, extra: Partial<TrainConfig> = {}) =>
    tiny(out, {
      sparse: true,
      sparsity: 0.4,
      sparseInit: "snip",
      pruneRate: 0.5,
      growth: "random",
      updateFrequency: 1,
      ...extra,
    });
  await quiet(() => train(cfg(`${dir}/full`)));
  const stop = new AbortController();
  await quiet(() =>
    train(cfg(`${dir}/half`), { signal: stop.signal, onEpochEnd: () => stop.abort() })
  );
  await quiet(() => train(cfg(`${dir}/half`, { resume: `${dir}/half/checkpoint-last` })));
  await assertSameCheckpoints(`${dir}/full`, `${dir}/half`);
  const ma = await loadSafetensorsFile(`${dir}/full/checkpoint-last/masks.safetensors`);
  const mb = await loadSafetensorsFile(`${dir}/half/checkpoint-last/masks.safetensors`);
  assert.ok(ma.size > 0);
  assert.deepEqual([...ma.keys()], [...mb.keys()]);
  for (const [k, v] of ma) assert.deepEqual(v.data, mb.get(k)!.data, k);
  // Every update held each layer's non-zeros at its initial count; masked weights are zero.
  const csv = (await Deno.readTextFile(`${dir}/full/sparsity.csv`)).trim().split("\n");
  assert.equal(csv[0], "step,update,prune_rate,layer,nonzeros,units,density,removed");
  const rows = csv.slice(1).map((r) => r.split(","));
  const steps = new Set(rows.map((r) => r[0]));
  assert.deepEqual([...steps], ["1", "2", "3", "4"]);
  const first = new Map<string, string>();
  for (const r of rows) {
    if (!first.has(r[3])) first.set(r[3], r[4]);
    assert.equal(r[4], first.get(r[3]), `layer ${r[3]} at step ${r[0]}`);
  }
  assert.equal(
    await Deno.readTextFile(`${dir}/half/sparsity.csv`),
    await Deno.readTextFile(`${dir}/full/sparsity.csv`),
  );
  const w = await loadSafetensorsFile(`${dir}/full/checkpoint-last/model.safetensors`);
  const state = JSON.parse(await Deno.readTextFile(`${dir}/full/checkpoint-last/state.json`));
  for (const [k, m] of ma) {
    const data = w.get(k)!.data;
    const unit = data.length / m.data.length;
    let nz = 0;
    for (let u = 0; u < m.data.length; u++) {
      nz += m.data[u];
      if (!m.data[u]) {
        for (let j = 0; j < unit; j++) assert.ok(data[u * unit + j] === 0, `${k}[${u}]`);
      }
    }
    assert.equal(nz, Number(first.get(k)));
    assert.equal(state.sparse.densities[k], nz / m.data.length);
  }
  // A sparse checkpoint cannot be resumed dense (one-line error).
  await assert.rejects(
    () => quiet(() => train(tiny(`${dir}/x`, { resume: `${dir}/full/checkpoint-last` }))),
    /holds a sparse run .*add --sparse/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("kernel plans: planning a training pass leaves the model as it was", async () => {
  const cfg = tiny("out/test_plan_model", { model: "convnext_cpu" });
  const { model } = buildModel(cfg, 4);
  const x = Tensor.randn([2, 3, 32, 32], { seed: 5 });
  model.eval();
  const before = await noGrad(() => model.forward(x)).read();
  try {
    const r = await quiet(() =>
      planTrainingKernels(model, [2, 3, 32, 32], {
        software: true,
        cache: false,
        retune: true,
        ops: ["depthwise.forward"], // none on llvmpipe ("auto" runs the plain kernels): fast
      })
    );
    assert.ok(r.keys.some((k) => k.startsWith("gemm|")), "the step ran no matrix product");
    assert.ok(model.parameters().every((p) => p.grad === null), "gradients left behind");
    assert.equal(model.training, true);
    model.eval();
    // Same weights, maybe other tiles: equal up to the rounding of a different summation order.
    const after = await noGrad(() => model.forward(x)).read();
    assert.ok(relError(after, before) < 1e-5, `forward changed: ${relError(after, before)}`);
    // A budget of 0 s plans nothing and leaves every matrix product to the next run.
    const lines: string[] = [];
    const bounded = await quiet(
      () =>
        planTrainingKernels(model, [2, 3, 32, 32], {
          software: true,
          cache: false,
          retune: true,
          ops: ["gemm"],
          budgetMs: 0,
        }),
      lines,
    );
    assert.equal(bounded.planned.length, 0);
    const gemmKeys = bounded.keys.filter((k) => k.startsWith("gemm|"));
    assert.deepEqual([...bounded.deferred ?? []].sort(), gemmKeys.sort());
    assert.ok(
      lines.some((l) => /left to the next run by --tune-budget-s/.test(l)),
      lines.join("\n"),
    );
  } finally {
    x.dispose();
    planner().clear();
  }
});

Deno.test("kernel plans: a sparse SLaK run plans its sparse kernels, and its resume restores them untimed", async () => {
  const dir = await Deno.makeTempDir();
  const cfg = (extra: Partial<TrainConfig> = {}) =>
    tiny(`${dir}/run`, {
      epochs: 1,
      trainSize: 16,
      valSize: 8,
      modelEma: false,
      sparse: true,
      sparsity: 0.4,
      sparseInit: "uniform",
      planCache: false,
      planSoftware: true,
      ...extra,
    });
  const p = planner();
  p.clear();
  try {
    const t0 = p.timings;
    await quiet(() => train(cfg()));
    assert.ok(p.timings > t0, "the first run timed no candidate");
    const state = JSON.parse(await Deno.readTextFile(`${dir}/run/checkpoint-last/state.json`));
    const saved = state.plans as SavedPlans;
    const ops = new Set(saved.plans.map((s) => s.key.split("|")[0]));
    for (const op of ["sparse.forward", "sparse.backwardInput", "sparse.filter", "sparse.path"]) {
      assert.ok(ops.has(op), `no ${op} plan in the checkpoint: ${[...ops]}`);
    }
    // A fresh process has no plans: resuming restores the checkpoint's and times nothing.
    p.clear();
    const t1 = p.timings;
    await quiet(() => train(cfg({ epochs: 2, resume: `${dir}/run/checkpoint-last` })));
    assert.equal(p.timings, t1, "the resumed run timed candidates again");
    for (const s of saved.plans) assert.deepEqual(p.planOf(s.key), s.choice, s.key);
  } finally {
    p.clear();
    await Deno.remove(dir, { recursive: true });
  }
});
