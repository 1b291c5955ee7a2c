import assert from "node:assert/strict";
import { gpu } from "../ops/gpu.ts";
import { Tensor } from "../ops/tensor.ts";
import { AdamW, decayGroups, SGD } from "../ops/optim.ts";
import { randomArray, relError, setup } from "./harness.ts";

await setup();

/** PyTorch's SGD with momentum, dampening 0. */
function sgdRef(
  p: Float64Array,
  grads: Float64Array[],
  lr: number,
  mu: number,
  wd: number,
  nesterov: boolean,
) {
  const buf = new Float64Array(p.length);
  grads.forEach((g, t) => {
    for (let i = 0; i < p.length; i++) {
      const d = g[i] + wd * p[i];
      buf[i] = t === 0 ? d : mu * buf[i] + d;
      p[i] -= lr * (nesterov ? d + mu * buf[i] : buf[i]);
    }
  });
  return p;
}

async function runSteps(
  make: (p: Tensor) => AdamW | SGD,
  p0: Float64Array,
  grads: Float64Array[],
  lrs: number[],
) {
  const p = Tensor.from(Float32Array.from(p0), [p0.length]);
  p.requiresGrad = true;
  const opt = make(p);
  grads.forEach((g, t) => {
    opt.lr = lrs[t];
    p.grad = Tensor.from(Float32Array.from(g), [g.length]);
    opt.step();
    opt.zeroGrad();
  });
  const out = await p.read();
  return { out, opt, p };
}

Deno.test("AdamW matches PyTorch's update over 5 steps with a changing lr", async () => {
  const p0 = randomArray(37, 1);
  const grads = [0, 1, 2, 3, 4].map((s) => randomArray(37, 10 + s));
  const { out, opt, p } = await runSteps(
    (p) => new AdamW([p], { lr: 1e-2, weightDecay: 0.05 }),
    p0,
    grads,
    [
      1e-2,
      1e-2,
      5e-3,
      5e-3,
      1e-3,
    ],
  );
  const err = relError(out, adamwRef(p0.slice(), grads, [1e-2, 1e-2, 5e-3, 5e-3, 1e-3], 0.05));
  console.log(`op-error adamw forward=${err.toExponential(2)} grads=-`);
  assert.ok(err < 1e-5, `AdamW error ${err}`);
  const state = await opt.stateDict();
  assert.equal(state.step, 5);
  assert.equal(state.buffers[0].length, 2);
  p.dispose();
  opt.dispose();
});

/** PyTorch's AdamW (single-tensor path) in float64, with a learning rate per step. */
function adamwRef(p: Float64Array, grads: Float64Array[], lrs: number[], wd: number) {
  const b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const m = new Float64Array(p.length);
  const v = new Float64Array(p.length);
  grads.forEach((g, t) => {
    const lr = lrs[t];
    const bc1 = 1 - b1 ** (t + 1);
    const bc2 = 1 - b2 ** (t + 1);
    for (let i = 0; i < p.length; i++) {
      p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      p[i] -= (lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps);
    }
  });
  return p;
}

Deno.test("AdamW state round-trips: 3 steps + reload + 2 steps equals 5 steps", async () => {
  const p0 = randomArray(9, 2);
  const grads = [0, 1, 2, 3, 4].map((s) => randomArray(9, 20 + s));
  const lr = [1e-2, 1e-2, 1e-2, 1e-2, 1e-2];
  const full = await runSteps((p) => new AdamW([p], { lr: 1e-2 }), p0, grads, lr);
  const first = await runSteps((p) => new AdamW([p], { lr: 1e-2 }), p0, grads.slice(0, 3), lr);
  const state = await first.opt.stateDict();
  const resumed = await runSteps(
    (p) => {
      const o = new AdamW([p], { lr: 1e-2 });
      o.loadStateDict(state);
      return o;
    },
    Float64Array.from(first.out),
    grads.slice(3),
    lr,
  );
  assert.deepEqual(resumed.out, full.out);
  for (const r of [full, first, resumed]) {
    r.p.dispose();
    r.opt.dispose();
  }
});

Deno.test("SGD with momentum (plain and Nesterov, with weight decay) matches PyTorch", async () => {
  for (const nesterov of [false, true]) {
    const p0 = randomArray(13, 3);
    const grads = [0, 1, 2].map((s) => randomArray(13, 30 + s));
    const r = await runSteps(
      (p) => new SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 1e-4, nesterov }),
      p0,
      grads,
      [0.1, 0.1, 0.1],
    );
    const err = relError(r.out, sgdRef(p0.slice(), grads, 0.1, 0.9, 1e-4, nesterov));
    console.log(
      `op-error sgd${nesterov ? "-nesterov" : ""} forward=${err.toExponential(2)} grads=-`,
    );
    assert.ok(err < 1e-6, `SGD error ${err}`);
    r.p.dispose();
    r.opt.dispose();
  }
});

Deno.test("decayGroups: norms, biases and 1-D tensors get no weight decay", () => {
  const w = Tensor.zeros([4, 4]);
  const b = Tensor.zeros([4]);
  const cb = Tensor.zeros([4, 1, 1]);
  const groups = decayGroups([["conv.weight", w], ["norm.weight", b], ["conv.bias", cb]], 0.05);
  assert.deepEqual(groups[0].params, [w]);
  assert.deepEqual(groups[1].params, [b, cb]);
  assert.equal(groups[1].weightDecay, 0);
  [w, b, cb].forEach((t) => t.dispose());
});

Deno.test("AdamW updates many parameters per dispatch, bit for bit as one at a time", async () => {
  const sizes = [5, 300, 1, 4096, 77, 256, 257, 1000, 3, 9, 12, 70000, 8];
  const make = () =>
    sizes.map((n, j) => {
      const t = Tensor.from(Float32Array.from(randomArray(n, 10 + j)));
      t.requiresGrad = true;
      return t;
    });
  const together = make();
  const apart = make();
  const groups = [{ params: together.slice(0, 9), weightDecay: 0.05 }, {
    params: together.slice(9),
    weightDecay: 0,
  }];
  const opt = new AdamW(groups, { lr: 1e-2 });
  const single = apart.map((p, j) => new AdamW([p], { lr: 1e-2, weightDecay: j < 9 ? 0.05 : 0 }));
  const g = gpu();
  let dispatches = 0;
  const dispatch = g.dispatch;
  g.dispatch = (...args) => {
    dispatches++;
    return dispatch.apply(g, args);
  };
  try {
    for (let t = 0; t < 3; t++) {
      sizes.forEach((n, j) => {
        const grad = Float32Array.from(randomArray(n, 100 * t + j));
        together[j].grad = Tensor.from(grad);
        apart[j].grad = Tensor.from(grad);
      });
      opt.lr = single.reduce((lr, o) => (o.lr = lr), 1e-2 * (t + 1));
      dispatches = 0;
      opt.step();
      // Two groups of at most 8 parameters (fewer where the device has fewer storage bindings);
      // the first step also zeroes the moments.
      const per = Math.min(8, Math.floor(g.limits.maxStorageBuffersPerShaderStage / 4));
      if (t > 0) assert.equal(dispatches, Math.ceil(9 / per) + Math.ceil(4 / per));
      single.forEach((o) => o.step());
      opt.zeroGrad();
      single.forEach((o) => o.zeroGrad());
    }
  } finally {
    g.dispatch = dispatch;
  }
  for (let j = 0; j < sizes.length; j++) {
    assert.deepEqual(await together[j].read(), await apart[j].read(), `parameter ${j}`);
  }
  opt.dispose();
  single.forEach((o) => o.dispose());
  [...together, ...apart].forEach((p) => p.dispose());
});
