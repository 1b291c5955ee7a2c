/**
 * Crash safety of checkpoints: a process saving checkpoints in a loop is
 * killed (SIGKILL) at 20 seeded random moments; after each kill, resuming
 * either reads the last complete checkpoint (or the one being written, when
 * the kill came after it was complete) with every file from the same save,
 * or fails with a one-line error naming the damaged file.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../train/checkpoint.ts";
import { Rng } from "../ops/tensor.ts";

const KILLS = 20;

async function killDuringSaves(dir: string, seed: number, delayMs: number): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("./checkpoint_writer.ts", import.meta.url).pathname,
      dir,
      `${seed}`,
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let lastSaved = 0;
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const readSaves = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += value;
      for (const m of buffered.matchAll(/saved (\d+)\n/g)) lastSaved = Number(m[1]);
    }
  })();
  // Wait for the first complete save (the process has started), then kill at the random moment.
  while (lastSaved === 0) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, delayMs));
  child.kill("SIGKILL");
  await child.status;
  await readSaves;
  return lastSaved;
}

Deno.test(`checkpoints: ${KILLS} SIGKILLs during saves never lose the last complete checkpoint`, async () => {
  const root = await Deno.makeTempDir();
  const rng = new Rng(2026);
  const outcomes = { resumed: 0, newer: 0 };
  for (let i = 0; i < KILLS; i++) {
    const dir = `${root}/run${i}/checkpoint-last`;
    await Deno.mkdir(`${root}/run${i}`);
    const lastSaved = await killDuringSaves(dir, i, Math.floor(rng.uniform() * 300));
    let ck;
    try {
      ck = await loadCheckpoint(dir);
    } catch (e) {
      // Not expected with atomic saves, but the contract allows it when the message names a file.
      const msg = (e as Error).message;
      assert.ok(!msg.includes("\n"), msg);
      assert.match(msg, /\/(state\.json|\w+\.safetensors)\b/, msg);
      continue;
    }
    const epoch = ck.state.epoch;
    // The last save reported complete, or the next one if the kill came just after it finished.
    assert.ok(
      epoch === lastSaved || epoch === lastSaved + 1,
      `kill ${i}: epoch ${epoch}, last saved ${lastSaved}`,
    );
    if (epoch === lastSaved) outcomes.resumed++;
    else outcomes.newer++;
    // Every file of the folder is from the same save.
    for (const v of [ck.model.get("w")!, ck.ema!.get("w")!]) {
      assert.ok(v.data.every((x) => x === epoch));
    }
    for (const b of ck.optimizer.buffers[0]) assert.ok(b.every((x) => x === epoch));
    assert.equal(ck.optimizer.step, epoch * 4);
    assert.equal(ck.state.history.length, epoch);
  }
  console.log(
    `crash safety: ${outcomes.resumed} resumed the last reported save, ${outcomes.newer} a save completed just before the kill`,
  );
  await Deno.remove(root, { recursive: true });
});

Deno.test("checkpoints: a save cut short while only dir.old is complete keeps dir.old", async () => {
  const { saveCheckpoint, setCheckpointWriteHook } = await import("../train/checkpoint.ts");
  const dir = `${await Deno.makeTempDir()}/checkpoint-last`;
  const parts = (epoch: number) => ({
    state: {
      version: 1 as const,
      model: "m",
      modelArgs: {},
      epoch,
      batchInEpoch: 0,
      step: epoch,
      bestTop1: 1,
      partial: { lossSum: 0, samples: 0 },
      config: {},
      history: Array.from({ length: epoch }, () => ({ top1: 1 })),
      optimizerStep: epoch,
      savedAt: "",
    },
    model: new Map([["w", { shape: [1], data: new Float32Array([epoch]) }]]),
    ema: null,
    optimizer: { step: epoch, buffers: [[new Float32Array([epoch])]] },
  });
  await saveCheckpoint(dir, parts(1));
  // A crash between the two renames of an earlier save: only dir.old is complete.
  await Deno.rename(dir, `${dir}.old`);
  for (const point of ["before-swap", "swapped-out"]) {
    setCheckpointWriteHook((p) =>
      p === point ? Promise.reject(new Error("crash")) : Promise.resolve()
    );
    await assert.rejects(() => saveCheckpoint(dir, parts(2)), /crash/);
    setCheckpointWriteHook(null);
    assert.equal((await loadCheckpoint(dir)).state.epoch, 1, point);
  }
  await saveCheckpoint(dir, parts(2));
  assert.equal((await loadCheckpoint(dir)).state.epoch, 2);
  await Deno.remove(dir.replace(/\/checkpoint-last$/, ""), { recursive: true });
});
