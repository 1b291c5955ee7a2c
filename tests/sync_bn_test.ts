/**
 * Synchronised batch norm (`batchNorm2d` with a stats reducer): two replicas
 * simulated in one process, each with half of a batch, normalise, update
 * their running statistics and back-propagate exactly as batch norm over the
 * whole batch does (checked against the CPU reference and its finite
 * differences); without the reducer the halves do not.
 */
import assert from "node:assert/strict";
import { backward } from "../ops/autograd.ts";
import { batchNorm2d, type StatsReducer } from "../ops/norm.ts";
import type { StatsSum } from "../ops/sync_stats.ts";
import { scope, Tensor } from "../ops/tensor.ts";
import { checkOp, randomArray, relError, setup } from "./harness.ts";
import { batchNorm2dRef, batchNormRunningRef } from "./reference.ts";
import { BatchNorm2d } from "../models/layers.ts";
import { presetConfig } from "../train/config.ts";
import { parseTrainArgs } from "../train/main.ts";
import { singleProcess } from "../train/parallel.ts";
import { setupModel, setupTraining } from "../train/setup.ts";

await setup();

// Each half: N = 2, C = 3, H·W = 15 (odd sizes; 30 values per channel and replica).
const HALF = [2, 3, 3, 5];
const FULL = [4, 3, 3, 5];
const C = 3;
const EPS = 1e-5;
const MOMENTUM = 0.1;

/**
 * Two replicas in one process. A host step cannot wait for the other
 * replica's step (one queue runs them one after the other), so the exchange
 * goes in rounds: a replica's k-th reduction adds what the other replica sent
 * at its k-th reduction in the previous round. The forward sums are right
 * from round 2 on, the backward sums (which depend on the forward's) from
 * round 3 on.
 */
class PairedReducers {
  #sent: Float64Array[][] = [[], []];
  #previous: Float64Array[][] = [[], []];
  #calls = [0, 0];

  of(rank: number): StatsReducer {
    return (): StatsSum => {
      const k = this.#calls[rank]++;
      return (v) => {
        this.#sent[rank][k] = v.slice();
        const other = this.#previous[1 - rank][k];
        if (other) { for (let i = 0; i < v.length; i++) v[i] += other[i]; }
        return Promise.resolve();
      };
    };
  }

  nextRound(): number[] {
    const calls = this.#calls;
    this.#previous = this.#sent;
    this.#sent = [[], []];
    this.#calls = [0, 0];
    return calls;
  }
}

interface Outputs {
  y: Float32Array;
  gx: Float32Array;
  gw: Float32Array;
  gb: Float32Array;
  runningMean: Float32Array;
  runningVar: Float32Array;
}

/** One replica's training step on its half: forward, backward of Σ gy·y, and what it changed. */
function step(
  x: Float64Array,
  gy: Float64Array,
  w: Float64Array,
  b: Float64Array,
  rm: Float64Array,
  rv: Float64Array,
  reducer?: StatsReducer,
): Promise<Outputs> {
  return scope(async () => {
    const [tx, tw, tb] = [x, w, b].map((v, i) => {
      const t = Tensor.from(Float32Array.from(v), i === 0 ? HALF : [C]);
      t.requiresGrad = true;
      return t;
    });
    const [trm, trv] = [rm, rv].map((v) => Tensor.from(Float32Array.from(v)));
    const y = batchNorm2d(tx, tw, tb, trm, trv, {
      training: true,
      momentum: MOMENTUM,
      eps: EPS,
      reducer,
    });
    backward(y, Tensor.from(Float32Array.from(gy), HALF));
    return {
      y: await y.read(),
      gx: await tx.grad!.read(),
      gw: await tw.grad!.read(),
      gb: await tb.grad!.read(),
      runningMean: await trm.read(),
      runningVar: await trv.read(),
    };
  });
}

/** Central differences of Σ gy · batchNorm2dRef over the whole batch, for every value of `inputs[k]`. */
function numericGrad(inputs: Float64Array[], gy: Float64Array, k: number): Float64Array {
  const f = ([x, w, b]: Float64Array[]) => batchNorm2dRef(x, w, b, FULL, EPS);
  const h = 1e-4;
  return inputs[k].map((_, j) => {
    const plus = inputs.map((v) => v.slice());
    const minus = inputs.map((v) => v.slice());
    plus[k][j] += h;
    minus[k][j] -= h;
    const [fp, fm] = [f(plus), f(minus)];
    let s = 0;
    for (let i = 0; i < gy.length; i++) s += gy[i] * (fp[i] - fm[i]);
    return s / (2 * h);
  });
}

const cat = (a: Iterable<number>, b: Iterable<number>) => Float64Array.from([...a, ...b]);

Deno.test("synchronised batchNorm2d: two half batches equal one batch norm over the whole batch", async () => {
  const n = FULL.reduce((a, c) => a * c, 1);
  // The halves differ in mean and spread, so their own statistics are far from the whole's.
  const x = cat(randomArray(n / 2, 1, -1, 3), randomArray(n / 2, 2, -4, 0));
  const gy = randomArray(n, 3);
  const w = randomArray(C, 4, 0.5, 1.5);
  const b = randomArray(C, 5);
  const rm = randomArray(C, 6);
  const rv = randomArray(C, 7, 0.5, 2);
  const half = (v: Float64Array, r: number) => v.subarray((r * n) / 2, ((r + 1) * n) / 2);

  const paired = new PairedReducers();
  let outs: Outputs[] = [];
  for (let round = 0; round < 3; round++) {
    outs = [];
    for (const r of [0, 1]) {
      outs.push(await step(half(x, r), half(gy, r), w, b, rm, rv, paired.of(r)));
    }
    // One reduction in the forward pass and one in the backward pass, in that order.
    assert.deepEqual(paired.nextRound(), [2, 2]);
  }

  const y = batchNorm2dRef(x, w, b, FULL, EPS);
  const running = batchNormRunningRef(x, FULL, rm, rv, MOMENTUM);
  const errors = {
    y: relError(cat(outs[0].y, outs[1].y), y),
    gx: relError(cat(outs[0].gx, outs[1].gx), numericGrad([x, w, b], gy, 0)),
    // Weight and bias gradients stay each replica's own (the gradient all-reduce sums them).
    gw: relError(outs[0].gw.map((g, c) => g + outs[1].gw[c]), numericGrad([x, w, b], gy, 1)),
    gb: relError(outs[0].gb.map((g, c) => g + outs[1].gb[c]), numericGrad([x, w, b], gy, 2)),
    runningMean: relError(outs[0].runningMean, running.runningMean),
    runningVar: relError(outs[0].runningVar, running.runningVar),
  };
  console.log(
    `op-error batchNorm2d[sync] ${
      Object.entries(errors).map(([k, e]) => `${k}=${e.toExponential(2)}`).join(" ")
    }`,
  );
  for (const [k, e] of Object.entries(errors)) {
    assert.ok(e <= (k.startsWith("g") ? 1e-3 : 1e-5), `${k}: error ${e}`);
  }
  // Every replica ends with the same running statistics, bit for bit.
  assert.deepEqual(outs[1].runningMean, outs[0].runningMean);
  assert.deepEqual(outs[1].runningVar, outs[0].runningVar);

  // Per-replica batch norm (no reducer) on the same halves is something else.
  const own = [
    await step(half(x, 0), half(gy, 0), w, b, rm, rv),
    await step(half(x, 1), half(gy, 1), w, b, rm, rv),
  ];
  assert.ok(relError(cat(own[0].y, own[1].y), y) > 0.1, "per-replica statistics differ");
  assert.ok(relError(own[0].runningMean, running.runningMean) > 1e-2);
});

Deno.test("synchronised batchNorm2d in a world of one: forward and grads against CPU finite differences", async () => {
  const shape = [2, 3, 5, 9];
  let calls = 0;
  const alone: StatsReducer = () => {
    calls++;
    return () => Promise.resolve();
  };
  await checkOp({
    name: "batchNorm2d[sync, world 1]",
    inputs: [
      { shape, low: -2, high: 3 },
      { shape: [3], low: 0.5, high: 1.5 },
      { shape: [3] },
      { shape: [3], grad: false },
      { shape: [3], low: 0.5, high: 2, grad: false },
    ],
    gpu: (x, w, b, rm, rv) => batchNorm2d(x, w, b, rm, rv, { training: true, reducer: alone }),
    cpu: (x, w, b) => batchNorm2dRef(x, w, b, shape, 1e-5),
  });
  assert.equal(calls, 2, "one reduction forward, one backward");
});

Deno.test("synchronised batchNorm2d: eval mode uses the running statistics and reduces nothing", async () => {
  let calls = 0;
  const counting: StatsReducer = () => {
    calls++;
    return () => Promise.resolve();
  };
  await scope(async () => {
    const x = Tensor.randn(HALF, { seed: 3 });
    const [w, b, rm, rv] = [
      Tensor.ones([C]),
      Tensor.zeros([C]),
      Tensor.zeros([C]),
      Tensor.ones([C]),
    ];
    const y = batchNorm2d(x, w, b, rm, rv, { training: false, reducer: counting });
    assert.ok(relError(await y.read(), (await x.read()).map((v) => v / Math.sqrt(1 + EPS))) < 1e-6);
  });
  assert.equal(calls, 0);
});

Deno.test("--sync-bn: parsed, refused for a model without BatchNorm, and a no-op in one process", async () => {
  const cfg = parseTrainArgs(["--sync-bn", "--model", "resnet_cpu"], true);
  assert.ok(cfg !== "help" && cfg.syncBn === true);
  const plain = parseTrainArgs([], true);
  assert.ok(plain !== "help" && !plain.syncBn, "per-rank BatchNorm is the default");
  const out = await Deno.makeTempDir({ prefix: "lk_syncbn_" });
  try {
    const base = {
      ...presetConfig("cpu"),
      inputSize: 32,
      trainSize: 8,
      valSize: 4,
      batchSize: 4,
      epochs: 1,
    };
    await assert.rejects(
      () => setupModel({ ...base, model: "convnext_cpu", syncBn: true, out }, singleProcess()),
      /^Error: --sync-bn: model convnext_cpu has no BatchNorm layer to synchronise$/,
    );
    // One process: accepted, and every BatchNorm keeps normalising its own batch.
    const run = await setupModel(
      { ...base, model: "resnet_cpu", syncBn: true, out },
      singleProcess(),
    );
    await setupTraining(run);
    const bns = [...run.model.namedModules()].filter(([, m]) => m instanceof BatchNorm2d);
    assert.ok(bns.length > 0);
    for (const [, m] of bns) assert.equal((m as BatchNorm2d).statsReducer, null);
    // Under a world that offers a reducer, every BatchNorm gets it.
    const reducer: StatsReducer = () => () => Promise.resolve();
    const world = { ...singleProcess(), world: 2, statsReducer: () => reducer };
    const two = await setupModel({ ...base, model: "resnet_cpu", syncBn: true, out }, world);
    await setupTraining(two);
    for (const [, m] of two.model.namedModules()) {
      if (m instanceof BatchNorm2d) assert.equal(m.statsReducer, reducer);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
