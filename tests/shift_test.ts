import assert from "node:assert/strict";
import { addShift, grn, selectChannels, ShiftPlan, type ShiftPlanSpec } from "../ops/shift.ts";
import { Rng, Tensor } from "../ops/tensor.ts";
import { officialShiftPlan } from "../models/shiftwise.ts";
import { checkOp, setup } from "./harness.ts";
import { addShiftRef, grnRef, selectChannelsRef } from "./reference.ts";

await setup();

const MAPS = ["horizontal", "vertical", "identity"] as const;

/** A plan with seeded shifts in ±reach (past the borders on purpose) and identity picks. */
function randomPlan(
  channels: number,
  nk: number,
  groups: number,
  extraPad: number,
  reach: number,
  seed: number,
): ShiftPlanSpec {
  const rng = new Rng(seed);
  const shifts = () =>
    Array.from({ length: channels * nk * groups }, () => rng.int(2 * reach + 1) - reach);
  const padH = shifts();
  const padV = shifts();
  const identity = Array.from(
    { length: channels * groups },
    (_, k) => Math.floor(k / groups) * nk + rng.int(nk),
  );
  return { channels, nk, groups, extraPad, padH, padV, identity };
}

async function checkPlan(name: string, spec: ShiftPlanSpec, shape: number[]) {
  const plan = new ShiftPlan(spec);
  try {
    for (const map of MAPS) {
      await checkOp({
        name: `addShift.${map} ${name}`,
        inputs: [{ shape }],
        gpu: (x) => addShift(x, plan, map),
        cpu: (x) => addShiftRef(x, shape, spec, map),
      });
    }
  } finally {
    plan.dispose();
  }
}

Deno.test("addShift: the documented example", async () => {
  const x = Tensor.from(Array.from({ length: 24 }, (_, i) => i), [1, 2, 3, 4]);
  const plan = new ShiftPlan({
    channels: 1,
    nk: 2,
    groups: 1,
    extraPad: 1,
    padH: [1, -1],
    padV: [0, -1],
    identity: [1],
  });
  assert.deepEqual([...await addShift(x, plan, "horizontal").read()], [17, 22]);
  assert.deepEqual([...await addShift(x, plan, "vertical").read()], [18, 20]);
  assert.deepEqual([...await addShift(x, plan, "identity").read()], [17, 18]);
  plan.dispose();
  x.dispose();
});

Deno.test("addShift against the scatter reference and finite differences", async () => {
  // nk = 2, two groups, shifts past both borders, odd sizes, batch 2.
  await checkPlan("C3·nk2·G2", randomPlan(3, 2, 2, 1, 9, 7), [2, 6, 7, 9]);
  // The official M = 13 plan (nk = 5; checked against PyTorch in shiftwise_test.ts), non-square.
  await checkPlan("official M13", officialShiftPlan(13, 3, 6, 2), [1, 30, 9, 11]);
  // A 5×5 small kernel (extraPad 2), nk = 3, three groups.
  await checkPlan("C2·nk3·G3·e2", randomPlan(2, 3, 3, 2, 7, 11), [2, 6, 8, 10]);
});

Deno.test("ShiftPlan rejects bad tables and addShift bad inputs", () => {
  const spec = randomPlan(2, 3, 1, 1, 3, 1);
  assert.throws(() => new ShiftPlan({ ...spec, padH: Array.from(spec.padH).slice(1) }), /padH/);
  assert.throws(() => new ShiftPlan({ ...spec, identity: [0, 1] }), /identity\[1\] = 1/);
  assert.throws(
    () => new ShiftPlan({ ...spec, padV: Array.from(spec.padV).fill(0.5) }),
    /integers/,
  );
  const plan = new ShiftPlan(spec);
  const x = Tensor.zeros([1, 5, 4, 4]);
  assert.throws(() => addShift(x, plan, "horizontal"), /6 \(2·3\)/);
  x.dispose();
});

Deno.test("selectChannels against CPU", async () => {
  const shape = [2, 5, 3, 1];
  const indices = [3, 0, 4];
  await checkOp({
    name: "selectChannels",
    inputs: [{ shape }],
    gpu: (x) => selectChannels(x, indices),
    cpu: (x) => selectChannelsRef(x, shape, indices),
  });
  assert.throws(() => selectChannels(Tensor.zeros(shape), [1, 1]), /distinct/);
});

Deno.test("grn against CPU", async () => {
  const shape = [2, 3, 2, 5];
  await checkOp({
    name: "grn",
    inputs: [{ shape }, { shape: [1, 1, 1, 5] }, { shape: [1, 1, 1, 5] }],
    gpu: (x, g, b) => grn(x, g, b),
    cpu: (x, g, b) => grnRef(x, shape, g, b),
  });
});
