import assert from "node:assert/strict";
import { copyVec4 } from "../ops/ceiling.ts";
import { Tensor } from "../ops/tensor.ts";
import { gpu } from "../ops/gpu.ts";
import { timeInterleaved, warmUp, WARMUP_MAX_FACTOR } from "../ops/timing.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("warmUp: runs past a ramp, stops when the times settle, and is bounded", async () => {
  // 4 MiB copies: long enough that a chunk's time is the copies', not the submit's.
  const x = Tensor.zeros([1 << 20]);
  const y = Tensor.zeros([1 << 20]);
  try {
    // Work that halves call by call (as a GPU whose clock ramps up) until it is one copy.
    let calls = 0;
    const ramp = () => {
      const copies = Math.max(1, 64 >> calls++);
      for (let i = 0; i < copies; i++) copyVec4(x, y);
    };
    // The ramp (~64 copies in all) ends well inside the cap of 8 × minMs.
    const minMs = 50;
    const t0 = performance.now();
    const times = await warmUp(ramp, minMs);
    assert.ok(performance.now() - t0 >= minMs, "ended before the minimum");
    // Calls 0–5 (64 down to 2 copies) each cost about twice the next: none of them looks settled.
    assert.ok(calls >= 6, `stopped on the ramp after ${calls} calls: ${times.join(", ")}`);
    const n = times.length;
    const settled = n >= 2 && times[n - 1] >= 0.98 * times[n - 2];
    const busy = times.reduce((s, t) => s + t, 0);
    assert.ok(settled || busy >= minMs, `ended unsettled: ${times.join(", ")}`);

    // Times that never settle (slow, fast, slow, ...) still end, near the cap.
    let flips = 0;
    const unsteady = () => {
      for (let i = 0; i < (flips++ % 2 ? 1 : 16); i++) copyVec4(x, y);
    };
    const wild = await warmUp(unsteady, 1);
    assert.ok(wild.length >= 1, "no chunk timed");
    const chunkMax = Math.max(...wild);
    assert.ok(
      wild.reduce((s, t) => s + t, 0) <= WARMUP_MAX_FACTOR * 1 + 1024 * chunkMax,
      `ran on: ${wild.length} chunks`,
    );
  } finally {
    x.dispose();
    y.dispose();
  }
});

Deno.test("timeInterleaved: each recording timed in turn, one read-back per batch, light and heavy told apart", async (t) => {
  const x = Tensor.zeros([1 << 20]);
  const y = Tensor.zeros([1 << 20]);
  try {
    const calls = [0, 0];
    const light = () => {
      calls[0]++;
      copyVec4(x, y);
    };
    const heavy = () => {
      calls[1]++;
      for (let i = 0; i < 8; i++) copyVec4(x, y);
    };
    const g = gpu();
    const readBytes = g.readBytes;
    let reads = 0;
    g.readBytes = (...a) => (reads++, readBytes.apply(g, a));
    let timed;
    // Called once, after the first batch is submitted: its runs are recorded, and it is read
    // back after.
    const whileRunning: [number, number][] = [];
    try {
      timed = await timeInterleaved([light, heavy], {
        runs: 3,
        minMs: 0,
        whileRunning: () => void whileRunning.push([calls[0], reads]),
      });
    } finally {
      g.readBytes = readBytes;
    }
    if (!gpu().features.has("timestamp-query")) {
      assert.equal(timed, null, "no timestamps: the caller times each recording on its own");
      return;
    }
    await t.step("the results", () => {
      assert.ok(timed, "timestamps that this adapter offers were not credible");
      assert.deepEqual(timed.reps, [1, 1]);
      assert.equal(timed.ms.length, 2);
      assert.ok(timed.ms[0] > 0, `light ${timed.ms[0]}`);
      assert.ok(timed.ms[1] > 3 * timed.ms[0], `heavy ${timed.ms[1]} vs light ${timed.ms[0]}`);
      // A probe, then 3 rounds (again, at most twice, while the rounds speed up).
      for (const n of calls) assert.ok([4, 7, 10].includes(n), `ran ${calls}`);
      assert.equal(calls[0], calls[1]);
      assert.equal(reads, 1 + (calls[0] - 1) / 3, "one read-back for the probe and one per batch");
      assert.deepEqual(
        whileRunning,
        [[4, 2]],
        "after the probe and the first batch were submitted",
      );
    });
    // With minMs, each recording repeats until a run lasts about that long; a warm-up comes first.
    calls.fill(0);
    const slow = await timeInterleaved([light, heavy], {
      runs: 1,
      minMs: 5 * timed!.ms[1],
      warmupMs: 1,
    });
    assert.ok(slow);
    assert.ok(slow.reps[0] > slow.reps[1] && slow.reps[1] >= 2, `reps ${slow.reps}`);
    assert.equal(calls[0], 1 + 2 * slow.reps[0], "probe, one warm-up round and one timed round");
    assert.deepEqual(await timeInterleaved([]), null);
  } finally {
    x.dispose();
    y.dispose();
  }
});
