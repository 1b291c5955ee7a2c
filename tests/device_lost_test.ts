/**
 * A GPU device lost in the middle of training stops the run with one line
 * naming the loss, and the last checkpoint stays as it was. In a file of its
 * own: the test destroys the process's device.
 */
import assert from "node:assert/strict";
import { train } from "../train/trainer.ts";
import { presetConfig } from "../train/config.ts";
import { loadCheckpoint } from "../train/checkpoint.ts";
import { gpu, GpuDeviceLostError } from "../ops/gpu.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("device lost during training: a one-line GpuDeviceLostError, the epoch-1 checkpoint intact", async () => {
  const dir = await Deno.makeTempDir();
  const cfg = {
    ...presetConfig("cpu"),
    out: dir,
    epochs: 3,
    batchSize: 8,
    inputSize: 32,
    trainSize: 16,
    valSize: 8,
    numClasses: 4,
    logEvery: 1,
  };
  const log = console.log, err = console.error;
  console.log = console.error = () => {};
  let files: Record<string, number> = {};
  try {
    await assert.rejects(
      () =>
        train(cfg, {
          onEpochEnd: (row) => {
            if (row.epoch !== 1) return;
            files = Object.fromEntries(
              [...Deno.readDirSync(`${dir}/checkpoint-last`)].map((e) => [
                e.name,
                Deno.statSync(`${dir}/checkpoint-last/${e.name}`).mtime!.getTime(),
              ]),
            );
            gpu().device.destroy();
          },
        }),
      (e: Error) => {
        assert.ok(e instanceof GpuDeviceLostError, `${e.name}: ${e.message}`);
        assert.ok(!e.message.includes("\n"), e.message);
        return true;
      },
    );
  } finally {
    console.log = log;
    console.error = err;
  }
  const ck = await loadCheckpoint(`${dir}/checkpoint-last`);
  assert.equal(ck.state.epoch, 1);
  for (const [name, mtime] of Object.entries(files)) {
    assert.equal(Deno.statSync(`${dir}/checkpoint-last/${name}`).mtime!.getTime(), mtime, name);
  }
  await Deno.remove(dir, { recursive: true });
});
