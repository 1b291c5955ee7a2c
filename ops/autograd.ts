/**
 * Reverse-mode autograd on a tape.
 *
 * A differentiable op whose inputs need a gradient calls {@linkcode record}
 * with the tensors its backward needs. The tape is in creation order, which is
 * already a topological order, so {@linkcode backward} walks it in reverse,
 * hands each node the gradient of its output, accumulates what it returns,
 * and releases the node's saved tensors at once. Leaf tensors with
 * `requiresGrad` receive `.grad` (accumulated across calls until cleared).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { backward } from "./autograd.ts";
 * import { mul, sum } from "./elementwise.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2, 3]);
 * w.requiresGrad = true;
 * backward(sum(mul(w, w)));
 * console.log(await w.grad!.read()); // Float32Array [2, 4, 6]
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { flatIndex, type GradNode, grid1d, keep, scope, type Storage, Tensor } from "./tensor.ts";

/** Computes the gradients of a node's inputs from the gradient of its output. */
export type BackwardFn = (gradOut: Tensor, saved: Tensor[]) => (Tensor | null)[];

class Node implements GradNode {
  static nextId = 1;
  readonly id = Node.nextId++;
  constructor(
    readonly name: string,
    readonly inputs: Tensor[],
    readonly output: Tensor,
    readonly saved: Tensor[],
    readonly backward: BackwardFn,
  ) {}
  release(): void {
    for (const t of this.saved) t.dispose();
    this.saved.length = 0;
    if (this.output.node === this) this.output.node = null;
  }
}

let tape: Node[] = [];
/** Off while `backward` runs. */
let enabled = true;
/**
 * `noGrad` calls in progress, those awaiting a promise included: recording resumes when the
 * last one ends, whatever order they end in (a saved flag, restored by each, would stay off
 * when two overlapping calls end in the order they began).
 */
let paused = 0;

/** Whether ops record now: not in `backward`, not in a `noGrad`. */
function recording(): boolean {
  return enabled && paused === 0;
}

/**
 * Whether `t` takes part in differentiation (a leaf that wants a grad, or an op output on the tape).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { needsGrad } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * console.log(needsGrad(w)); // false
 * w.requiresGrad = true;
 * console.log(needsGrad(w)); // true
 * ```
 */
export function needsGrad(t: Tensor): boolean {
  return t.requiresGrad || t.node !== null;
}

/**
 * Whether ops record right now (false inside {@linkcode noGrad}).
 *
 * @example
 * ```ts
 * import { isRecording, noGrad } from "./autograd.ts";
 * console.log(isRecording(), noGrad(() => isRecording())); // true false
 * ```
 */
export function isRecording(): boolean {
  return recording();
}

/**
 * Whether an op on `inputs` would be recorded now (see {@linkcode record}):
 * recording is on and an input needs a gradient. Ops with a faster
 * forward that keeps nothing for a backward take it when this is false.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { noGrad, willRecord } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.zeros([2]);
 * w.requiresGrad = true;
 * console.log(willRecord([w]), noGrad(() => willRecord([w]))); // true false
 * ```
 */
export function willRecord(inputs: readonly Tensor[]): boolean {
  return recording() && inputs.some(needsGrad);
}

/**
 * Record `output = op(inputs)` on the tape if any input needs a gradient.
 * `save` lists tensors the backward reads; they are kept alive (by reference,
 * not copied) until the node has run. `backward` returns one gradient per
 * input (null where the input needs none); each must have the input's shape.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { scale, sum } from "./elementwise.ts";
 * import { backward, noGrad, record } from "./autograd.ts";
 * await initGpu();
 * // y = 3x, with its backward: dx = 3·dy.
 * function triple(x: Tensor): Tensor {
 *   const y = noGrad(() => scale(x, 3)); // the forward itself is not recorded
 *   record("triple", [x], y, [], (g) => [scale(g, 3)]);
 *   return y;
 * }
 * const x = Tensor.from([1, 2]);
 * x.requiresGrad = true;
 * backward(sum(triple(x)));
 * console.log(await x.grad!.read()); // Float32Array [3, 3]
 * ```
 */
export function record(
  name: string,
  inputs: Tensor[],
  output: Tensor,
  save: Tensor[],
  backward: BackwardFn,
): void {
  if (!willRecord(inputs)) return;
  const node = new Node(name, inputs, output, save.map((t) => t.ref()), backward);
  output.node = node;
  tape.push(node);
}

/**
 * Run `fn` with recording turned off (evaluation, optimiser steps). When
 * `fn` returns a promise, recording stays off until it settles, and
 * overlapping calls turn it back on only once all of them have ended.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { mul } from "./elementwise.ts";
 * import { noGrad, tapeLength } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * w.requiresGrad = true;
 * const y = noGrad(() => mul(w, w));
 * console.log(y.node === null, tapeLength()); // true 0
 * ```
 */
export function noGrad<T>(fn: () => T): T {
  paused++;
  let r: T;
  try {
    r = fn();
  } catch (e) {
    paused--;
    throw e;
  }
  if (r instanceof Promise) return r.finally(() => paused--) as T;
  paused--;
  return r;
}

/**
 * Number of nodes on the tape (tests use it to prove the tape is emptied).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { mul, sum } from "./elementwise.ts";
 * import { backward, tapeLength } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * w.requiresGrad = true;
 * const loss = sum(mul(w, w));
 * console.log(tapeLength() > 0); // true: the product and the sum are recorded
 * backward(loss);
 * console.log(tapeLength()); // 0
 * ```
 */
export function tapeLength(): number {
  return tape.length;
}

/**
 * Bytes that the tape keeps alive for backward: the distinct storages of every
 * recorded node's saved tensors (a storage saved by several nodes counts once),
 * but for the storages of `except` (e.g. the parameters, which live anyway).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { mul } from "./elementwise.ts";
 * import { clearTape, savedBytes } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2, 3, 4]);
 * w.requiresGrad = true;
 * mul(w, w); // saves w twice: one storage
 * console.log(savedBytes(), savedBytes([w])); // 16 0
 * clearTape();
 * ```
 */
export function savedBytes(except: Iterable<Tensor> = []): number {
  const seen = new Set<Storage>([...except].map((t) => t.storage));
  let bytes = 0;
  for (const node of tape) {
    for (const t of node.saved) {
      if (seen.has(t.storage)) continue;
      seen.add(t.storage);
      bytes += t.storage.size * 4;
    }
  }
  return bytes;
}

/**
 * Drop every recorded node and release what it saved (e.g. after a forward without backward).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { mul } from "./elementwise.ts";
 * import { clearTape, tapeLength } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * w.requiresGrad = true;
 * mul(w, w); // recorded, never differentiated
 * clearTape();
 * console.log(tapeLength()); // 0
 * ```
 */
export function clearTape(): void {
  for (const n of tape) n.release();
  tape = [];
}

/**
 * `acc += g` on the GPU, in place.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { accumulate } from "./autograd.ts";
 * await initGpu();
 * const acc = Tensor.from([1, 2]);
 * accumulate(acc, Tensor.from([10, 20]));
 * console.log(await acc.read()); // Float32Array [11, 22]
 * ```
 */
export function accumulate(acc: Tensor, g: Tensor): void {
  if (acc.size !== g.size) {
    throw new Error(`gradient of shape [${g.shape}] for tensor [${acc.shape}]`);
  }
  gpu().dispatch(accumulateSource(acc.size), [acc.buffer, g.buffer], grid1d(acc.size));
}

/** The kernel of {@linkcode accumulate} over `n` values, built once per size. */
function accumulateSource(n: number): string {
  let code = accumulateSources.get(n);
  if (code === undefined) {
    code = `
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex()};
  if (i >= ${n}u) { return; }
  a[i] = a[i] + g[i];
}`;
    accumulateSources.set(n, code);
  }
  return code;
}

const accumulateSources = new Map<number, string>();

/** Options of {@linkcode backward}. */
export interface BackwardOptions {
  /** The seed gradient of `loss` (ones by default). */
  gradOut?: Tensor;
  /**
   * Called once per leaf with `requiresGrad` as soon as its `.grad` is final
   * for this pass: after the earliest tape node that reads it has run. The
   * reverse walk goes on afterwards, so the hook may record work (a copy of
   * the gradient) that the GPU runs while the rest of the backward is still
   * being recorded. Leaves this pass never reaches are not reported.
   */
  onGradReady?: (leaf: Tensor) => void;
}

/**
 * Back-propagate from `loss` (any shape; the seed gradient is `gradOut` or
 * ones), accumulate into `.grad` of leaves with `requiresGrad`, and empty the
 * tape. Leaf gradients outlive any enclosing {@linkcode scope}. The second
 * argument is the seed gradient itself or {@linkcode BackwardOptions}.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { backward } from "./autograd.ts";
 * import { mul, sum } from "./elementwise.ts";
 * await initGpu();
 * const a = Tensor.from([1, 2]);
 * const b = Tensor.from([3, 4]);
 * a.requiresGrad = b.requiresGrad = true;
 * const ready: Tensor[] = [];
 * backward(sum(mul(a, mul(b, b))), { onGradReady: (t) => ready.push(t) });
 * console.log(ready[0] === a); // true: a is read by the later node, so it is final first
 * ```
 */
export function backward(loss: Tensor, options?: Tensor | BackwardOptions): void {
  const { gradOut, onGradReady } = options instanceof Tensor ? { gradOut: options } : options ?? {};
  const nodes = tape;
  tape = [];
  const prev = enabled;
  enabled = false;
  try {
    const grads = new Map<number, Tensor>();
    const seed = gradOut ? gradOut.ref() : keep(Tensor.ones(loss.shape));
    if (!loss.node) {
      if (loss.requiresGrad) {
        deliverLeaf(loss, seed);
        onGradReady?.(loss);
      } else seed.dispose();
      for (const n of nodes) n.release();
      return;
    }
    const readyAt = onGradReady ? leavesFinalAt(nodes) : null;
    grads.set(loss.id, seed);
    for (let i = nodes.length - 1; i >= 0; i--) {
      runNode(nodes[i], grads);
      for (const leaf of readyAt?.get(i) ?? []) if (leaf.grad) onGradReady!(leaf);
    }
    // Gradients that reached tensors with no node (e.g. views of detached tensors).
    for (const g of grads.values()) g.dispose();
  } finally {
    enabled = prev;
    for (const n of nodes) n.release();
  }
}

/** For each tape index, the leaves (wanting a grad) whose earliest reader is that node. */
function leavesFinalAt(nodes: Node[]): Map<number, Tensor[]> {
  const first = new Map<Tensor, number>();
  nodes.forEach((node, i) => {
    for (const t of node.inputs) {
      if (t.requiresGrad && !t.node && !first.has(t)) first.set(t, i);
    }
  });
  const at = new Map<number, Tensor[]>();
  for (const [leaf, i] of first) {
    const list = at.get(i);
    if (list) list.push(leaf);
    else at.set(i, [leaf]);
  }
  return at;
}

/** Run one node's backward and route its input gradients (accumulated or delivered). */
function runNode(node: Node, grads: Map<number, Tensor>): void {
  const g = grads.get(node.output.id);
  if (!g) {
    node.release();
    return;
  }
  grads.delete(node.output.id);
  // Temporaries of the backward computation die here; the returned grads live on.
  const inputGrads = scope(() => node.backward(g, node.saved));
  node.release();
  g.dispose();
  node.inputs.forEach((input, k) => {
    const gi = inputGrads[k];
    if (!gi) return;
    if (!needsGrad(input)) {
      gi.dispose();
      return;
    }
    if (gi.size !== input.size) {
      throw new Error(
        `${node.name}: gradient [${gi.shape}] does not match input [${input.shape}]`,
      );
    }
    if (!input.node) {
      deliverLeaf(input, gi);
      return;
    }
    const prevG = grads.get(input.id);
    if (prevG) {
      accumulate(prevG, gi);
      gi.dispose();
    } else {
      grads.set(input.id, gi);
    }
  });
}

function deliverLeaf(leaf: Tensor, g: Tensor): void {
  keep(g);
  if (!leaf.requiresGrad) {
    g.dispose();
    return;
  }
  if (leaf.grad) {
    accumulate(leaf.grad, g);
    g.dispose();
  } else {
    leaf.grad = g.shape.length === leaf.shape.length && g.shape.every((d, i) => d === leaf.shape[i])
      ? g
      : reshaped(g, leaf.shape);
  }
}

function reshaped(g: Tensor, shape: readonly number[]): Tensor {
  const v = keep(g.view(shape));
  g.dispose();
  return v;
}

/**
 * A view of `x` with another shape (one dimension may be -1), sharing its
 * storage; gradients flow back through it.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { mul, sum } from "./elementwise.ts";
 * import { backward, reshape } from "./autograd.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2, 3, 4], [2, 2]);
 * w.requiresGrad = true;
 * const flat = reshape(w, [-1]);
 * console.log(flat.shape); // [4]
 * backward(sum(mul(flat, flat)));
 * console.log(w.grad!.shape, await w.grad!.read()); // [2, 2] Float32Array [2, 4, 6, 8]
 * ```
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const y = x.view(shape);
  record("reshape", [x], y, [], (g) => [g.view(x.shape)]);
  return y;
}
