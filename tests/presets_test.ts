/**
 * Every model preset of the registry builds with its real widths and depths
 * and runs a forward pass on a tiny input (the smallest the five stride-2
 * stages allow, 32²), giving finite logits of the right shape.
 */
import assert from "node:assert/strict";
import { createModel, MODEL_NAMES } from "../models/registry.ts";
import { noGrad } from "../ops/autograd.ts";
import { poolStats, scope, Tensor } from "../ops/tensor.ts";
import { seedInit } from "../models/module.ts";
import { setup } from "./harness.ts";

await setup();

for (const name of MODEL_NAMES) {
  Deno.test(`preset ${name}: builds and runs a forward pass at 32²`, async () => {
    const before = poolStats().liveTensors;
    seedInit(1);
    const model = createModel(name, { numClasses: 7 });
    model.eval();
    const x = Tensor.randn([1, 3, 32, 32], { seed: 2 });
    const logits = await noGrad(() => scope(async () => await model.forward(x).read()));
    assert.equal(logits.length, 7);
    assert.ok(logits.every(Number.isFinite), `${name}: non-finite logits ${logits}`);
    x.dispose();
    model.dispose();
    assert.equal(poolStats().liveTensors, before, `${name}: tensors left alive`);
  });
}
