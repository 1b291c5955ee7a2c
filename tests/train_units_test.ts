import assert from "node:assert/strict";
import { cosineSchedule } from "../train/schedule.ts";
import { normaliseArgs, parseTrainArgs } from "../train/main.ts";
import {
  checkpointExists,
  loadCheckpoint,
  saveCheckpoint,
  type TrainState,
} from "../train/checkpoint.ts";
import { formatDuration } from "../train/progress.ts";

Deno.test("cosine schedule: linear warm-up to the peak, cosine to the floor, per step", () => {
  const lr = cosineSchedule({ base: 1, final: 0.1, epochs: 3, stepsPerEpoch: 10, warmupEpochs: 1 });
  assert.equal(lr(0), 0);
  assert.ok(Math.abs(lr(9) - 1) < 1e-12, "peak on the last warm-up step (np.linspace)");
  assert.equal(lr(10), 1);
  assert.ok(Math.abs(lr(20) - (0.1 + 0.45 * (1 + Math.cos(Math.PI / 2)))) < 1e-12);
  assert.ok(lr(29) > 0.1 && lr(29) < 0.11);
  assert.equal(lr(1000), lr(29));
  const steps = cosineSchedule({
    base: 2,
    final: 0,
    epochs: 1,
    stepsPerEpoch: 100,
    warmupEpochs: 5,
    warmupSteps: 3,
  });
  assert.equal(steps(2), 2);
});

Deno.test("CLI: official snake_case flags and multi-value --kernel_size are understood", () => {
  assert.deepEqual(
    normaliseArgs([
      "--kernel_size",
      "51",
      "49",
      "47",
      "13",
      "5",
      "--model_ema",
      "true",
      "--epochs",
      "2",
    ]),
    [
      "--kernel-size=51,49,47,13,5",
      "--model-ema",
      "--epochs",
      "2",
    ],
  );
  const cfg = parseTrainArgs([
    "--kernel_size",
    "51",
    "49",
    "47",
    "13",
    "5",
    "--smoothing",
    "0.2",
    "--epochs",
    "2",
  ], true);
  assert.ok(cfg !== "help");
  assert.deepEqual(cfg.kernelSize, [51, 49, 47, 13, 5]);
  assert.equal(cfg.labelSmoothing, 0.2);
  assert.equal(cfg.epochs, 2);
  assert.equal(cfg.model, "slak_cpu", "software adapter → cpu preset");
  const onGpu = parseTrainArgs([], false) as { model: string; widthFactor: number; epochs: number };
  assert.deepEqual(
    [onGpu.model, onGpu.widthFactor, onGpu.epochs],
    ["slak_cpu", 2, 12],
    "real GPU → gpu preset",
  );
  // On/off flags turn off too, so a preset's `true` can be overridden.
  assert.equal((parseTrainArgs([], true) as { keyColours: boolean }).keyColours, true);
  for (const off of [["--no-key-colours"], ["--key_colours", "false"], ["--key-colours=false"]]) {
    const c = parseTrainArgs(off, true);
    assert.ok(c !== "help");
    assert.equal(c.keyColours, false, off.join(" "));
  }
  // Kernel tuning (cudnn.benchmark's role) is on unless switched off.
  const tuned = parseTrainArgs([], false);
  const untuned = parseTrainArgs(["--no-tune-kernels"], false);
  assert.ok(tuned !== "help" && untuned !== "help");
  assert.deepEqual([tuned.tuneKernels !== false, untuned.tuneKernels], [true, false]);
  // The plan cache is on unless switched off; --retune plans again.
  const cache = parseTrainArgs(["--no-plan-cache", "--retune"], false);
  assert.ok(cache !== "help");
  assert.deepEqual([tuned.planCache !== false, cache.planCache, cache.retune], [true, false, true]);
  // Planning is unbounded unless --tune-budget-s bounds it.
  const bounded = parseTrainArgs(["--tune-budget-s", "30"], false);
  assert.ok(bounded !== "help");
  assert.deepEqual([tuned.tuneBudgetS, bounded.tuneBudgetS], [undefined, 30]);
  const ema = parseTrainArgs(["--model_ema", "true", "--distractors", "2"], true);
  assert.ok(ema !== "help");
  assert.deepEqual([ema.modelEma, ema.distractors], [true, 2]);
});

Deno.test("CLI: bad values give one-line errors naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--epochs", "0"], /^--epochs: expected an integer in \[1, 100000\], got "0"$/],
    [["--epochs", "-3"], /^--epochs: expected an integer in \[1, 100000\], got "-3"$/],
    [["--epochs", "2.5"], /^--epochs: expected an integer/],
    [["--input-size", "1e9"], /^--input-size: expected an integer in \[32, 2048\], got "1e9"$/],
    [["--lr", "abc"], /^--lr: expected a number in \(0, 10\]/],
    [["--lr", "NaN"], /^--lr: expected a number/],
    [["--seed", "0x10"], /^--seed: expected an integer/],
    [["--drop-path", "1.5"], /^--drop-path: expected a number in \[0, 1\)/],
    [["--growth", "sideways"], /^--growth: expected one of random, gradient, got "sideways"$/],
    [["--epochs", "2", "--epochs", "3"], /^--epochs: given more than once/],
    [["--smoothing", "0.1", "--label-smoothing", "0.2"], /^--label-smoothing: given more/],
    [["--epochs"], /^--epochs: expected a value/],
    [["stray"], /^unexpected argument "stray"/],
    [["--data", "d", "--num-classes", "3"], /^--num-classes describes the built-in procedural/],
    [["--model-ema-decay", "0.9"], /^--model-ema-decay applies to the weight average/],
    [["--min-lr", "1"], /^--min-lr 1 is above the peak learning rate/],
    [["--resume", "a", "--auto-resume"], /^--resume and --auto-resume conflict/],
    [["--kernel-size", "51", "49", "47", "13", "4"], /^--kernel-size: expected odd kernels/],
    [["--preset", "toString"], /^--preset: unknown preset "toString"/],
    [["--key-colours=maybe"], /^--key-colours: expected true or false/],
    [["--strict-data"], /^--strict-data applies to image folders/],
    [["--retune", "--no-tune-kernels"], /^--retune plans the kernels again/],
    [["--tune-budget-s", "5", "--no-tune-kernels"], /^--tune-budget-s bounds the kernel planning/],
    [["--tune-budget-s", "-1"], /^--tune-budget-s/],
    [["--tune-budget-s", "soon"], /^--tune-budget-s/],
    [["--model", "nope"], /^--model: unknown model "nope" \(expected one of .*slak_tiny/],
    [["--kernel-size", "51", "49"], /^--kernel-size: expected 5 integers, got 2/],
    [["--preset", "zzz"], /^--preset: unknown preset "zzz"/],
    [["--frobnicate"], /^--frobnicate: unknown flag \(see --help\)$/],
    [["--eval-only"], /^--eval-only needs --resume/],
  ];
  for (const [args, re] of cases) {
    assert.throws(() => parseTrainArgs(args, true), (e: Error) => {
      assert.match(e.message, re);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  }
});

function state(epoch: number): TrainState {
  return {
    version: 1,
    model: "m",
    modelArgs: {},
    epoch,
    batchInEpoch: 0,
    step: epoch * 10,
    bestTop1: 1,
    partial: { lossSum: 0, samples: 0 },
    config: {},
    // One row per completed epoch, as the trainer writes (the loader checks it).
    history: Array.from({ length: epoch }, (_, i) => ({ epoch: i + 1 })),
    optimizerStep: epoch * 10,
    savedAt: "",
  };
}

Deno.test("checkpoints: written whole or not at all, the previous one survives an interrupted save", async () => {
  const dir = await Deno.makeTempDir();
  const ck = `${dir}/checkpoint-last`;
  const weights = new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]);
  const optimizer = { step: 10, buffers: [[new Float32Array([3, 4]), new Float32Array([5, 6])]] };
  assert.equal(await checkpointExists(ck), false);
  await saveCheckpoint(ck, { state: state(1), model: weights, ema: null, optimizer });
  const a = await loadCheckpoint(ck);
  assert.equal(a.state.epoch, 1);
  assert.deepEqual([...a.model.get("w")!.data], [1, 2]);
  assert.deepEqual(a.optimizer.buffers[0].map((b) => [...b]), [[3, 4], [5, 6]]);
  // A save that died after moving the old folder aside: the .old copy is found.
  await Deno.rename(ck, `${ck}.old`);
  await Deno.mkdir(`${ck}.tmp-999`);
  assert.equal((await loadCheckpoint(ck)).state.epoch, 1);
  await Deno.rename(`${ck}.old`, ck);
  // Overwriting leaves no temporary or .old folder behind.
  await saveCheckpoint(ck, { state: state(2), model: weights, ema: weights, optimizer });
  assert.equal((await loadCheckpoint(ck)).state.epoch, 2);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  assert.deepEqual(names, ["checkpoint-last", "checkpoint-last.tmp-999"]);
  await assert.rejects(
    () => loadCheckpoint(`${dir}/nothing`),
    /--resume: no checkpoint at .*nothing/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("progress: durations", () => {
  assert.equal(formatDuration(65), "1:05");
  assert.equal(formatDuration(3725), "1:02:05");
  assert.equal(formatDuration(Infinity), "--:--");
});
