/**
 * Test harness: run a GPU op against a plain CPU reference (float64) on
 * seeded random inputs, then check its backward against central finite
 * differences of the CPU reference. Prints one `op-error` line per check so
 * the measured errors can be collected from the test log.
 */
import assert from "node:assert/strict";
import { initGpu } from "../ops/gpu.ts";
import { Rng, scope, Tensor } from "../ops/tensor.ts";
import { backward, clearTape } from "../ops/autograd.ts";
import { mul, sum } from "../ops/elementwise.ts";
import type { Classifier } from "../models/module.ts";

/** Initialise the GPU once per test file. */
export async function setup(): Promise<void> {
  await initGpu();
}

/** Seeded values in [low, high). */
export function randomArray(n: number, seed: number, low = -1, high = 1): Float64Array {
  const rng = new Rng(seed);
  const a = new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = low + (high - low) * rng.uniform();
  return a;
}

/** max |a − b| / max(max |b|, 1e-3): error relative to the reference's scale. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, `length ${a.length} vs reference ${b.length}`);
  let num = 0;
  let den = 1e-3;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= num)) num = Number.isNaN(d) ? Infinity : d;
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** One input of an op under test. */
export interface InputSpec {
  shape: number[];
  /** Explicit values; seeded uniform in [low, high) otherwise. */
  data?: ArrayLike<number>;
  low?: number;
  high?: number;
  /** Check the gradient of this input (default true). */
  grad?: boolean;
}

/** What {@linkcode checkOp} measured. */
export interface OpErrors {
  forward: number;
  grads: number[];
}

/**
 * Check `gpuFn` against `cpuFn` forward, and (unless `backward: false`) every
 * input's gradient against central differences of `cpuFn` with a seeded
 * random upstream gradient.
 */
export async function checkOp(opts: {
  name: string;
  inputs: InputSpec[];
  gpu: (...xs: Tensor[]) => Tensor;
  cpu: (...xs: Float64Array[]) => ArrayLike<number>;
  forwardTol?: number;
  gradTol?: number;
  eps?: number;
  backward?: boolean;
  seed?: number;
}): Promise<OpErrors> {
  const seed = opts.seed ?? 1;
  const values = opts.inputs.map((s, k) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    return s.data
      ? Float64Array.from(s.data)
      : randomArray(n, seed * 100 + k, s.low ?? -1, s.high ?? 1);
  });
  const want = Float64Array.from(opts.cpu(...values.map((v) => v.slice())));
  const doGrad = opts.backward !== false;
  const result = await scope(async () => {
    const tensors = values.map((v, k) => {
      const t = Tensor.from(Float32Array.from(v), opts.inputs[k].shape);
      t.requiresGrad = doGrad && opts.inputs[k].grad !== false;
      return t;
    });
    const y = opts.gpu(...tensors);
    const got = await y.read();
    const errors: OpErrors = { forward: relError(got, want), grads: [] };
    if (!doGrad) {
      clearTape();
      return errors;
    }
    const gy = randomArray(want.length, seed * 100 + 99);
    backward(y, Tensor.from(Float32Array.from(gy), y.shape));
    const eps = opts.eps ?? 1e-4;
    for (let k = 0; k < values.length; k++) {
      if (opts.inputs[k].grad === false) continue;
      const t = tensors[k];
      assert.ok(t.grad, `${opts.name}: input ${k} received no gradient`);
      const got = await t.grad!.read();
      const num = new Float64Array(values[k].length);
      for (let j = 0; j < num.length; j++) {
        const plus = values.map((v) => v.slice());
        const minus = values.map((v) => v.slice());
        plus[k][j] += eps;
        minus[k][j] -= eps;
        const fp = opts.cpu(...plus);
        const fm = opts.cpu(...minus);
        let s = 0;
        for (let i = 0; i < gy.length; i++) s += gy[i] * (fp[i] - fm[i]);
        num[j] = s / (2 * eps);
      }
      errors.grads.push(relError(got, num));
    }
    return errors;
  });
  console.log(
    `op-error ${opts.name} forward=${result.forward.toExponential(2)} grads=${
      result.grads.map((e) => e.toExponential(2)).join(",") || "-"
    }`,
  );
  const ftol = opts.forwardTol ?? 1e-4;
  const gtol = opts.gradTol ?? 1e-3;
  assert.ok(result.forward <= ftol, `${opts.name}: forward error ${result.forward} > ${ftol}`);
  result.grads.forEach((e, k) =>
    assert.ok(e <= gtol, `${opts.name}: grad ${k} error ${e} > ${gtol}`)
  );
  return result;
}

/**
 * Run `fn` on seeded inputs of `shapes` (input k from seed + k, values in
 * [-1, 1), every input requiring a gradient), back-propagate a seeded
 * upstream gradient (seed + 99), and return the output followed by every
 * input's gradient: what two implementations of one op are compared on.
 */
export function forwardAndGrads(
  shapes: readonly number[][],
  fn: (...xs: Tensor[]) => Tensor,
  seed: number,
): Promise<Float32Array[]> {
  return scope(async () => {
    const xs = shapes.map((s, i) => {
      const n = s.reduce((a, b) => a * b, 1);
      const t = Tensor.from(Float32Array.from(randomArray(n, seed + i)), s);
      t.requiresGrad = true;
      return t;
    });
    const y = fn(...xs);
    backward(y, Tensor.from(Float32Array.from(randomArray(y.size, seed + 99)), y.shape));
    const out = [await y.read()];
    for (const [i, x] of xs.entries()) {
      assert.ok(x.grad, `input ${i} received no gradient`);
      out.push(await x.grad.read());
    }
    return out;
  });
}

/**
 * One training-shaped pass of a tiny classifier on a seeded [2, 3, 32, 32]
 * batch (x from `seed`, the upstream gradient of the logits from seed + 1):
 * checks the logits' and the feature map's shapes, that both and every
 * parameter's gradient are finite, and prints the time. The gradients stay
 * on the parameters for the caller's own checks.
 */
export async function checkClassifierStep(
  name: string,
  model: Classifier,
  expect: { classes: number; features: number[] },
  seed: number,
): Promise<void> {
  const x = Tensor.from(Float32Array.from(randomArray(2 * 3 * 32 * 32, seed)), [2, 3, 32, 32]);
  const gy = Tensor.from(
    Float32Array.from(randomArray(2 * expect.classes, seed + 1)),
    [2, expect.classes],
  );
  const started = performance.now();
  const { logits, features } = await scope(async () => {
    const logits = model.forward(x);
    const features = model.forwardFeatures(x);
    assert.deepEqual(logits.shape, [2, expect.classes]);
    assert.deepEqual(features.shape, expect.features);
    const got = { logits: await logits.read(), features: await features.read() };
    backward(sum(mul(logits, gy)));
    return got;
  });
  assert.ok(logits.every(Number.isFinite) && features.every(Number.isFinite));
  for (const [k, p] of model.namedParameters()) {
    const g = p.tensor.grad;
    assert.ok(g, `${k} has no gradient`);
    assert.ok((await g.read()).every(Number.isFinite), `${k}: non-finite gradient`);
  }
  console.log(
    `${name}: forward + features + backward at [2,3,32,32] in ${
      (performance.now() - started).toFixed(0)
    } ms (incl. kernel compiles)`,
  );
  x.dispose();
  gy.dispose();
}

/**
 * Assert that `got[i]` matches `want[i]` within `tol` ({@linkcode relError})
 * for every output, the first being the forward value and the rest
 * gradients; prints one `op-error NAME forward=… grads=…` line.
 */
export function assertSameOutputs(
  name: string,
  got: readonly ArrayLike<number>[],
  want: readonly ArrayLike<number>[],
  tol: number,
): void {
  assert.equal(got.length, want.length, `${name}: ${got.length} outputs vs ${want.length}`);
  const errs = got.map((g, i) => relError(g, want[i]));
  console.log(
    `op-error ${name} forward=${errs[0].toExponential(2)} grads=${
      errs.slice(1).map((e) => e.toExponential(2)).join(",") || "-"
    }`,
  );
  errs.forEach((e, i) =>
    assert.ok(e <= tol, `${name}: ${i === 0 ? "forward" : `grad ${i - 1}`} error ${e} > ${tol}`)
  );
}

/** Run `f` with `console.warn` captured: its value or error, and the warnings it printed. */
export async function captureWarnings<T>(
  f: () => Promise<T>,
): Promise<{ value?: T; error?: Error; warnings: string[] }> {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => warnings.push(args.join(" "));
  try {
    return { value: await f(), warnings };
  } catch (e) {
    return { error: e as Error, warnings };
  } finally {
    console.warn = original;
  }
}
