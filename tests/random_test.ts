import assert from "node:assert/strict";
import { randomNormal, randomNormalAt } from "../ops/random.ts";
import { poolStats } from "../ops/tensor.ts";
import { setup } from "./harness.ts";

await setup();

Deno.test("randomNormal matches the CPU reference element by element", async () => {
  // Past one row of workgroups' worth of a 1-D grid, and an odd size.
  for (const [n, seed] of [[1, 0], [1000, 7], [70_001, -3]]) {
    const y = randomNormal([n], { seed, mean: 0.5, std: 2 });
    const got = await y.read();
    y.dispose();
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const want = 0.5 + 2 * randomNormalAt(seed, i);
      worst = Math.max(worst, Math.abs(got[i] - want) / Math.max(1, Math.abs(want)));
    }
    assert.ok(worst < 1e-4, `n=${n} seed=${seed}: worst relative difference ${worst}`);
  }
});

Deno.test("randomNormal: standard normal moments, and seeds give different values", async () => {
  const n = 200_000;
  const [a, b] = await Promise.all([1, 2].map((seed) => randomNormal([n], { seed }).read()));
  let sum = 0;
  let sq = 0;
  let beyond3 = 0;
  let same = 0;
  for (let i = 0; i < n; i++) {
    sum += a[i];
    sq += a[i] * a[i];
    if (Math.abs(a[i]) > 3) beyond3++;
    if (a[i] === b[i]) same++;
  }
  const mean = sum / n;
  const variance = sq / n - mean * mean;
  assert.ok(Math.abs(mean) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.02, `variance ${variance}`);
  // P(|z| > 3) = 0.27%: 540 expected.
  assert.ok(beyond3 > 400 && beyond3 < 700, `${beyond3} values beyond 3σ`);
  assert.ok(same < 10, `${same} equal values across seeds`);
});

Deno.test("randomNormal: empty shape, and bad seeds are refused", async () => {
  assert.deepEqual((await randomNormal([0, 3]).read()).length, 0);
  const live = poolStats().liveTensors;
  assert.throws(() => randomNormal([4], { seed: 0.5 }), /seed 0.5 is not an integer/);
  assert.equal(poolStats().liveTensors, live, "a refused call left a tensor behind");
});
