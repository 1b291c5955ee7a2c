/**
 * f32 tensors on pooled GPU buffers, deterministic memory, seeded random init.
 *
 * A tensor is a shape plus a reference-counted {@linkcode Storage}; reshape
 * shares the storage, every other op makes a new one. Memory is freed
 * deterministically with `dispose()` or {@linkcode scope}; freed buffers go
 * back to a pool by size class so a training step allocates nothing new.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor, scope } from "./tensor.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3, 4], [2, 2]);
 * const y = scope(() => x.view([4]));
 * console.log(await y.read()); // Float32Array [1, 2, 3, 4]
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { callerSite, GpuOpError } from "./gpu_errors.ts";
import {
  BufferPool,
  checkPoolPolicy,
  type PoolPolicy,
  type PoolTrace,
  sizeClass,
} from "./buffer_pool.ts";

export { type PoolPolicy, type PoolTrace, sizeClass };

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

const pool = new BufferPool<GPUBuffer>({
  create(size, describe) {
    const max = gpu().limits.maxBufferSize;
    if (size > max) {
      throw new GpuOpError(
        `${callerSite()}: ${describe()} needs ${size} bytes, above this device's maxBufferSize ${max}`,
      );
    }
    return gpu().createBuffer({ size, usage: USAGE }, describe);
  },
  // Destroying a buffer still referenced by unsubmitted work is an error: they go after it.
  destroy: (buffer) => gpu().destroyAfterSubmit(buffer),
  // Submitting destroys them at once; until then they still hold device memory.
  flush: () => gpu().flush(),
  // Behind pending host steps a destruction waits its turn in the ordered queue (queue_order.ts).
  destroysNow: () => !gpu().hostStepsPending,
});

/** The allocations recorded since {@linkcode startPoolTrace}, or null when not recording. */
let trace: PoolTrace | null = null;
let tracedStorages = 0;

/**
 * Record every tensor storage acquired and released from now on (see
 * {@linkcode PoolTrace}), until {@linkcode stopPoolTrace}. Storages that
 * already exist are not in the trace.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { startPoolTrace, stopPoolTrace, Tensor } from "./tensor.ts";
 * await initGpu();
 * startPoolTrace();
 * Tensor.zeros([256]).dispose();
 * console.log(stopPoolTrace()); // [1024, -1]
 * ```
 */
export function startPoolTrace(): void {
  trace = [];
  tracedStorages = 0;
}

/**
 * Events recorded so far by {@linkcode startPoolTrace} (0 when not recording).
 *
 * @example
 * ```ts
 * import { peekTraceLength } from "./tensor.ts";
 * console.log(peekTraceLength()); // 0
 * ```
 */
export function peekTraceLength(): number {
  return trace?.length ?? 0;
}

/**
 * Stop recording and return the trace of {@linkcode startPoolTrace}.
 *
 * @example
 * ```ts
 * import { stopPoolTrace } from "./tensor.ts";
 * console.log(stopPoolTrace()); // [] when nothing was recorded
 * ```
 */
export function stopPoolTrace(): PoolTrace {
  const t = trace ?? [];
  trace = null;
  return t;
}

/** What {@linkcode poolStats} reports. */
export interface PoolStats {
  /** Bytes of every pooled buffer not yet destroyed (in use or free). */
  allocatedBytes: number;
  /** Bytes of the free (reusable) buffers. */
  freeBytes: number;
  buffers: number;
  liveTensors: number;
  /** Bytes of the live tensors' storages, as their shapes ask (no size-class rounding). */
  liveBytes: number;
  /** The most `liveBytes` and `allocatedBytes` since the last {@linkcode resetPoolPeaks}. */
  peakLiveBytes: number;
  peakAllocatedBytes: number;
  /** Buffers created and destroyed so far (a steady training step creates none). */
  created: number;
  destroyed: number;
}

/**
 * Bytes held by the pool: `allocatedBytes` (all buffers) and `freeBytes`
 * (reusable), the live tensor bytes, and the peaks of both since
 * {@linkcode resetPoolPeaks}.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { poolStats, Tensor } from "./tensor.ts";
 * await initGpu();
 * Tensor.zeros([1024]).dispose();
 * const { allocatedBytes, freeBytes, peakLiveBytes } = poolStats();
 * console.log(allocatedBytes >= 4096, freeBytes >= 4096, peakLiveBytes >= 4096); // true true true
 * ```
 */
export function poolStats(): PoolStats {
  return {
    allocatedBytes: pool.allocatedBytes,
    freeBytes: pool.freeBytes,
    buffers: pool.buffers,
    liveTensors,
    liveBytes: pool.liveBytes,
    peakLiveBytes: pool.peakLiveBytes,
    peakAllocatedBytes: pool.peakAllocatedBytes,
    created: pool.created,
    destroyed: pool.destroyed,
  };
}

/**
 * Start the peaks of {@linkcode poolStats} over from the current values (per
 * phase of a step: forward, backward, optimiser).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { poolStats, resetPoolPeaks, Tensor } from "./tensor.ts";
 * await initGpu();
 * Tensor.zeros([4096]).dispose();
 * resetPoolPeaks();
 * console.log(poolStats().peakLiveBytes === poolStats().liveBytes); // true
 * ```
 */
export function resetPoolPeaks(): void {
  pool.resetPeaks();
}

/**
 * Set how the pool reuses and returns buffers ({@linkcode PoolPolicy}; the
 * defaults are `DEFAULT_POOL_POLICY` of `buffer_pool.ts`). `{ fitSlack: 1,
 * reclaim: false }` only ever reuses a buffer of the same size class. Returns
 * the policy it replaces.
 *
 * @example
 * ```ts
 * import { configurePool } from "./tensor.ts";
 * const before = configurePool({ fitSlack: 1, reclaim: false });
 * configurePool(before);
 * console.log(before); // { fitSlack: 1.25, reclaim: true, headroom: 0.2, smallBytes: 1048576 }
 * ```
 */
export function configurePool(policy: Partial<PoolPolicy>): PoolPolicy {
  const before = pool.policy;
  pool.policy = checkPoolPolicy({ ...before, ...policy });
  return before;
}

/**
 * Return free pooled buffers to the driver.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { poolStats, Tensor, trimPool } from "./tensor.ts";
 * await initGpu();
 * Tensor.zeros([1024]).dispose();
 * trimPool();
 * console.log(poolStats().freeBytes); // 0
 * ```
 */
export function trimPool(): void {
  pool.trim();
}

/**
 * A reference-counted pooled buffer holding `size` f32 values.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * await initGpu();
 * const x = Tensor.zeros([2, 3]);
 * const v = x.view([6]); // a second handle on the same Storage
 * console.log(v.storage === x.storage, x.storage.size); // true 6
 * ```
 */
export class Storage {
  readonly buffer: GPUBuffer;
  readonly size: number;
  refs = 1;
  /** Its number in the pool trace being recorded, if any. */
  readonly #traced: number;
  /** `shape` only names the tensor if allocating fails. */
  constructor(size: number, shape: readonly number[] = [size]) {
    this.size = size;
    this.buffer = pool.acquire(size * 4, () => `a tensor [${shape.join(", ")}]`);
    pool.live(size * 4);
    this.#traced = trace ? tracedStorages++ : -1;
    trace?.push(size * 4);
  }
  release(): void {
    if (--this.refs > 0) return;
    pool.live(-this.size * 4);
    pool.release(this.buffer);
    if (trace && this.#traced >= 0) trace.push(-1 - this.#traced);
  }
}

// ---------------------------------------------------------------- scopes

let liveTensors = 0;
const scopes: Set<Tensor>[] = [];

/** Values that {@linkcode scope} keeps: a tensor, or arrays/objects holding tensors. */
// deno-lint-ignore no-explicit-any
type Kept = any;

function collect(value: Kept, into: Set<Tensor>, depth = 0): void {
  if (depth > 4 || value === null || typeof value !== "object") return;
  if (value instanceof Tensor) into.add(value);
  else if (Array.isArray(value)) { for (const v of value) collect(v, into, depth + 1); }
  else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, into, depth + 1);
  }
}

function closeScope(frame: Set<Tensor>, result: Kept): void {
  const keep = new Set<Tensor>();
  collect(result, keep);
  const outer = scopes.at(-1);
  for (const t of frame) {
    if (keep.has(t)) outer?.add(t);
    else t.dispose();
  }
}

/**
 * Run `fn` and dispose every tensor created inside it except those it returns
 * (directly, or inside arrays and plain objects) and those marked with
 * {@linkcode keep}. Returned tensors move to the enclosing scope. An async
 * `fn` is awaited before disposal.
 */
export function scope<T>(fn: () => T): T {
  const frame = new Set<Tensor>();
  scopes.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    closeScope(frame, undefined);
    throw e;
  }
  if (result instanceof Promise) {
    // Tensors created after an await still land in this frame while it is on top.
    return result.then(
      (r) => {
        scopes.splice(scopes.lastIndexOf(frame), 1);
        closeScope(frame, r);
        return r;
      },
      (e) => {
        scopes.splice(scopes.lastIndexOf(frame), 1);
        closeScope(frame, undefined);
        throw e;
      },
    ) as T;
  }
  scopes.pop();
  closeScope(frame, result);
  return result;
}

/**
 * Remove tensors from every open scope so they outlive it (parameters, state).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { keep, scope, Tensor } from "./tensor.ts";
 * await initGpu();
 * const kept = scope(() => {
 *   Tensor.zeros([4]); // freed when the scope ends
 *   return keep(Tensor.ones([4])); // survives it (as would the returned value alone)
 * });
 * console.log(await kept.read()); // Float32Array [1, 1, 1, 1]
 * ```
 */
export function keep<T extends Tensor | Tensor[]>(t: T): T {
  for (const x of Array.isArray(t) ? t : [t]) for (const s of scopes) s.delete(x);
  return t;
}

// ---------------------------------------------------------------- tensor

/**
 * Number of elements of a shape.
 *
 * @example
 * ```ts
 * import { numel } from "./tensor.ts";
 * console.log(numel([2, 3, 4]), numel([])); // 24 1
 * ```
 */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

let nextId = 1;

/** Autograd bookkeeping attached to a tensor (see `autograd.ts`). */
export interface GradNode {
  readonly id: number;
}

/** An f32 tensor on the GPU, contiguous, row-major. */
export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly size: number;
  readonly storage: Storage;
  /** Leaf tensors with `requiresGrad` receive `.grad` from `backward`. */
  requiresGrad = false;
  grad: Tensor | null = null;
  /** Set by autograd when an op recorded this tensor as its output. */
  node: GradNode | null = null;
  /** Optional name (parameters). */
  name = "";
  #disposed = false;

  constructor(shape: readonly number[], storage?: Storage, tracked = true) {
    this.shape = [...shape];
    this.size = numel(shape);
    if (storage) {
      if (storage.size !== this.size) {
        throw new Error(`storage of ${storage.size} values cannot hold shape [${shape}]`);
      }
      storage.refs++;
      this.storage = storage;
    } else {
      this.storage = new Storage(this.size, this.shape);
    }
    liveTensors++;
    if (tracked) scopes.at(-1)?.add(this);
  }

  /** An uninitialised tensor (contents are whatever the pooled buffer held). */
  static empty(shape: readonly number[]): Tensor {
    return new Tensor(shape);
  }

  /** A tensor holding `data` (copied in recording order). */
  static from(data: ArrayLike<number>, shape?: readonly number[]): Tensor {
    const s = shape ?? [data.length];
    if (numel(s) !== data.length) {
      throw new Error(`${data.length} values do not fill shape [${s}]`);
    }
    const t = new Tensor(s);
    const arr = data instanceof Float32Array ? data : Float32Array.from(data);
    gpu().upload(t.buffer, arr);
    return t;
  }

  /** A tensor filled with `value`. */
  static full(shape: readonly number[], value: number): Tensor {
    const t = new Tensor(shape);
    fill(t, value);
    return t;
  }

  static zeros(shape: readonly number[]): Tensor {
    return Tensor.full(shape, 0);
  }

  static ones(shape: readonly number[]): Tensor {
    return Tensor.full(shape, 1);
  }

  /** Seeded N(mean, std²) values. */
  static randn(shape: readonly number[], { seed = 0, mean = 0, std = 1 } = {}): Tensor {
    const rng = new Rng(seed);
    const a = new Float32Array(numel(shape));
    for (let i = 0; i < a.length; i++) a[i] = mean + std * rng.normal();
    return Tensor.from(a, shape);
  }

  /** Seeded U[low, high) values. */
  static rand(shape: readonly number[], { seed = 0, low = 0, high = 1 } = {}): Tensor {
    const rng = new Rng(seed);
    const a = new Float32Array(numel(shape));
    for (let i = 0; i < a.length; i++) a[i] = low + (high - low) * rng.uniform();
    return Tensor.from(a, shape);
  }

  /**
   * Seeded truncated normal as `timm.trunc_normal_`: N(mean, std²) redrawn
   * outside [a, b] (absolute bounds, default ±2).
   */
  static truncNormal(
    shape: readonly number[],
    { seed = 0, mean = 0, std = 1, a = -2, b = 2 } = {},
  ): Tensor {
    const rng = new Rng(seed);
    const out = new Float32Array(numel(shape));
    for (let i = 0; i < out.length; i++) {
      let v: number;
      do v = mean + std * rng.normal(); while (v < a || v > b);
      out[i] = v;
    }
    return Tensor.from(out, shape);
  }

  get buffer(): GPUBuffer {
    if (this.#disposed) throw new Error(`tensor #${this.id} [${this.shape}] used after dispose()`);
    return this.storage.buffer;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Copy the values back to the CPU (a sync point: flushes the queue). */
  async read(): Promise<Float32Array> {
    return new Float32Array(await gpu().readBytes(this.buffer, this.size * 4));
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) {
      throw new Error(`item() needs one element, tensor has shape [${this.shape}]`);
    }
    return (await this.read())[0];
  }

  /**
   * A view with another shape sharing this storage (free). One dimension may
   * be -1. Gradients flow through (see `autograd.ts`'s `reshape`).
   */
  view(shape: readonly number[]): Tensor {
    return new Tensor(resolveShape(shape, this.size), this.storage);
  }

  /** Another handle to the same storage, outside every scope (autograd's saved tensors). */
  ref(): Tensor {
    return new Tensor(this.shape, this.storage, false);
  }

  /** Release this handle's storage reference. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    liveTensors--;
    this.storage.release();
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
  }
}

/**
 * Resolve a shape with at most one -1 against a size.
 *
 * @example
 * ```ts
 * import { resolveShape } from "./tensor.ts";
 * console.log(resolveShape([2, -1], 12)); // [2, 6]
 * ```
 */
export function resolveShape(shape: readonly number[], size: number): number[] {
  const out = [...shape];
  const hole = out.indexOf(-1);
  if (hole >= 0) {
    const rest = numel(out.filter((_, i) => i !== hole));
    out[hole] = rest === 0 ? 0 : size / rest;
  }
  if (numel(out) !== size || !out.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`cannot view ${size} values as shape [${shape}]`);
  }
  return out;
}

// ---------------------------------------------------------------- fill kernel

const WG = 256;

/**
 * Workgroup grid for `n` invocations of `WG` threads, 2-D when needed.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { grid1d } from "./tensor.ts";
 * await initGpu();
 * console.log(grid1d(1000)); // [4, 1]
 * ```
 */
export function grid1d(n: number, wg = WG): [number, number] {
  const groups = Math.ceil(n / wg);
  const max = gpu().limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}

/**
 * WGSL snippet: the flat invocation index for a {@linkcode grid1d} grid of `wg`-wide groups.
 *
 * @example
 * ```ts
 * import { flatIndex } from "./tensor.ts";
 * console.log(flatIndex(64)); // gid.x + gid.y * (nwg.x * 64u)
 * ```
 */
export function flatIndex(wg = WG): string {
  return `gid.x + gid.y * (nwg.x * ${wg}u)`;
}

/**
 * Fill a tensor with a constant in recording order.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { fill, Tensor } from "./tensor.ts";
 * await initGpu();
 * const t = Tensor.empty([3]);
 * fill(t, 7);
 * console.log(await t.read()); // Float32Array [7, 7, 7]
 * ```
 */
export function fill(t: Tensor, value: number): void {
  const code = `
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex()};
  if (i >= ${t.size}u) { return; }
  y[i] = ${f32(value)};
}`;
  gpu().dispatch(code, [t.buffer], grid1d(t.size));
}

/**
 * Copy `src`'s values into `dst` (same number of elements) in recording
 * order: after every dispatch recorded so far, before every later one.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { copyInto, Tensor } from "./tensor.ts";
 * await initGpu();
 * const dst = Tensor.zeros([3]);
 * copyInto(Tensor.from([1, 2, 3]), dst);
 * console.log(await dst.read()); // Float32Array [1, 2, 3]
 * ```
 */
export function copyInto(src: Tensor, dst: Tensor): void {
  if (src.size !== dst.size) {
    throw new Error(`copyInto: source of ${src.size} values, destination of ${dst.size}`);
  }
  if (src.size > 0) {
    gpu().encoderForCopy().copyBufferToBuffer(src.buffer, 0, dst.buffer, 0, src.size * 4);
  }
}

/**
 * A number as a WGSL f32 literal (exact for f32 values; inf/nan as bitcasts).
 *
 * @example
 * ```ts
 * import { f32 } from "./tensor.ts";
 * console.log(f32(1), f32(0.1), f32(Infinity)); // f32(1.00000000) f32(0.100000001) bitcast<f32>(0x7f800000u)
 * ```
 */
export function f32(v: number): string {
  if (Number.isNaN(v)) return "bitcast<f32>(0x7fc00000u)";
  if (v === Infinity) return "bitcast<f32>(0x7f800000u)";
  if (v === -Infinity) return "bitcast<f32>(0xff800000u)";
  const s = Math.fround(v).toPrecision(9);
  return s.includes(".") || s.includes("e") ? `f32(${s})` : `f32(${s}.0)`;
}

// ---------------------------------------------------------------- RNG

/**
 * A 32-bit mix of integers: one seed per (run seed, step, layer, purpose …),
 * so that every random draw of a run follows from the run's seed alone.
 *
 * @example
 * ```ts
 * import { mixSeeds, Rng } from "./tensor.ts";
 * const rng = new Rng(mixSeeds(0, 17, 2)); // run seed 0, step 17, purpose 2
 * console.log(mixSeeds(0, 17, 2), mixSeeds(0, 2, 17)); // 2816245767 561468361 (order matters)
 * ```
 */
export function mixSeeds(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h >>> 0;
}

/**
 * A small seeded generator (SplitMix32 mixing, Box–Muller normals):
 * reproducible across platforms, so the same seed gives the same weights.
 *
 * @example
 * ```ts
 * import { Rng } from "./tensor.ts";
 * const a = new Rng(42);
 * const b = new Rng(42);
 * console.log(a.uniform() === b.uniform(), a.int(10) === b.int(10)); // true true
 * ```
 */
export class Rng {
  #s: number;
  #spare: number | null = null;
  constructor(seed = 0) {
    this.#s = (seed >>> 0) ^ 0x9e3779b9;
  }
  /** Next 32-bit unsigned integer. */
  nextU32(): number {
    let z = (this.#s = (this.#s + 0x9e3779b9) >>> 0);
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** Uniform in [0, 1). */
  uniform(): number {
    return this.nextU32() / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }
  /** Standard normal. */
  normal(): number {
    if (this.#spare !== null) {
      const s = this.#spare;
      this.#spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** The generator's state, to save in checkpoints. */
  get state(): [number, number | null] {
    return [this.#s, this.#spare];
  }
  set state([s, spare]: [number, number | null]) {
    this.#s = s >>> 0;
    this.#spare = spare;
  }
}
