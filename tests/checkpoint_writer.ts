/**
 * Child process of the crash-safety test: saves checkpoints of epoch 1, 2, 3, …
 * into the folder given as the first argument, for ever, each holding its
 * epoch in every value (weights, moments, masks, state), and prints "saved N"
 * once checkpoint N is complete. The seed (second argument) sets random
 * pauses at the save's most fragile points, so that a kill lands there often.
 */
import { saveCheckpoint, setCheckpointWriteHook, type TrainState } from "../train/checkpoint.ts";
import { Rng } from "../ops/tensor.ts";

const [dir, seedArg] = Deno.args;
const rng = new Rng(Number(seedArg));
setCheckpointWriteHook(async () => {
  await new Promise((r) => setTimeout(r, Math.floor(rng.uniform() * 30)));
});
const filled = (n: number, v: number) => new Float32Array(n).fill(v);
const out = Deno.stdout;
for (let epoch = 1;; epoch++) {
  const state: TrainState = {
    version: 1,
    model: "slak_cpu",
    modelArgs: {},
    epoch,
    batchInEpoch: 0,
    step: epoch * 4,
    bestTop1: 50,
    partial: { lossSum: 0, samples: 0 },
    config: {},
    history: Array.from({ length: epoch }, (_, i) => ({ epoch: i + 1, top1: 50 })),
    optimizerStep: epoch * 4,
    savedAt: new Date().toISOString(),
  };
  // ~2 MB per file: long enough writes that a random kill often lands inside one.
  const n = 1 << 19;
  await saveCheckpoint(dir, {
    state,
    model: new Map([["w", { shape: [n], data: filled(n, epoch) }]]),
    ema: new Map([["w", { shape: [n], data: filled(n, epoch) }]]),
    optimizer: { step: epoch * 4, buffers: [[filled(n, epoch), filled(n, epoch)]] },
    masks: new Map([["w", { shape: [4], data: filled(4, 1) }]]),
  });
  await out.write(new TextEncoder().encode(`saved ${epoch}\n`));
}
