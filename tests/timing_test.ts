import assert from "node:assert/strict";
import { copyVec4 } from "../ops/ceiling.ts";
import { Tensor } from "../ops/tensor.ts";
import { warmUp, WARMUP_MAX_FACTOR } from "../ops/timing.ts";
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
