/**
 * Host steps in the command stream, and the ordered list of queue work that
 * waits behind them.
 *
 * A host step reads some buffers back to the CPU, calls a function on their
 * values (which may wait, e.g. on an MPI all-reduce) and writes its results
 * into other buffers, in the middle of work that is still being recorded:
 * recording stays synchronous, so the step cannot run when it is recorded.
 * From a host step on, everything that would touch the queue (a submit, a
 * write, destroying a buffer that submitted work uses) is appended to an
 * ordered list instead, and the list is drained in the background, in
 * order: submit, map the host step's reads, call its function, write its
 * results, submit the next part, … The queue therefore sees exactly the
 * order in which the work was recorded, as if each host step had run when it
 * was recorded. Once the list is empty, work goes to the queue directly again.
 *
 * `ops/gpu.ts` owns one {@linkcode QueueOrder}; ops use it through
 * `Gpu.hostStep` and the other methods there.
 *
 * @example
 * ```ts
 * import { gpu, initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2, 3]);
 * const y = Tensor.empty([3]);
 * // Recorded now, run when the GPU has x: y = 2·x, computed on the CPU.
 * gpu().hostStep([x], [y], ([v]) => [v.map((a) => 2 * a)]);
 * console.log(await y.read()); // Float32Array [2, 4, 6]
 * ```
 * @module
 */
import type { GpuErrorWatch } from "./gpu_errors.ts";

/**
 * The CPU side of a host step: gets the values of its reads (one array per
 * buffer read) and returns the values of its writes (one array per buffer
 * written, each exactly as long as that buffer's tensor).
 */
export type HostStepFn = (
  data: Float32Array[],
) => Float32Array[] | Promise<Float32Array[]>;

/** A buffer and the number of f32 values of it that a host step reads or writes (a `Tensor` is one). */
export interface HostBuffer {
  readonly buffer: GPUBuffer;
  readonly size: number;
}

/** One piece of queue work, in recording order. */
type Entry =
  | { kind: "submit"; commands: GPUCommandBuffer; describe: () => string }
  | { kind: "destroy"; buffers: GPUBuffer[] }
  | { kind: "write"; buffer: GPUBuffer; offset: number; data: Uint8Array<ArrayBuffer> }
  | { kind: "host"; staging: GPUBuffer; reads: number[]; writes: HostBuffer[]; fn: HostStepFn }
  | { kind: "mark"; resolve: () => void; reject: (e: unknown) => void };

/**
 * The queue work recorded behind pending host steps, drained in order; see
 * the module doc. While it is `active`, the owner must hand every submit,
 * write and buffer destruction to it instead of the queue.
 *
 * @example
 * ```ts
 * import { initGpu, gpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * await initGpu();
 * const x = Tensor.from([1, 2]);
 * gpu().hostStep([x], [x], ([v]) => [v.map((a) => a + 1)]);
 * console.log(gpu().hostStepsPending); // true: recorded, not yet run
 * await gpu().sync();
 * console.log(gpu().hostStepsPending, await x.read()); // false Float32Array [2, 3]
 * ```
 */
export class QueueOrder {
  readonly #device: GPUDevice;
  readonly #errors: GpuErrorWatch;
  #entries: Entry[] = [];
  #draining: Promise<void> | null = null;
  #failure: unknown = null;
  /** Host steps run so far (tests and statistics). */
  hostSteps = 0;

  constructor(device: GPUDevice, errors: GpuErrorWatch) {
    this.#device = device;
    this.#errors = errors;
  }

  /** True while queue work waits behind a host step: it must be appended here, not submitted. */
  get active(): boolean {
    return this.#draining !== null;
  }

  /** True while draining, or when a failed drain has not been reported by {@linkcode settle} yet. */
  get unsettled(): boolean {
    return this.#draining !== null || this.#failure !== null;
  }

  /** Append a submit of `commands` (finished at record time); `describe` names it if it fails. */
  submit(commands: GPUCommandBuffer, describe: () => string): void {
    this.#entries.push({ kind: "submit", commands, describe });
  }

  /** Destroy `buffers` once everything appended before is submitted. */
  destroy(buffers: GPUBuffer[]): void {
    if (buffers.length) this.#entries.push({ kind: "destroy", buffers });
  }

  /** `queue.writeBuffer` in its place in the order (`data` is copied now). */
  write(buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    this.#entries.push({ kind: "write", buffer, offset, data: bytes });
  }

  /**
   * Append a host step whose reads were copied into `staging` (one after the
   * other, `reads[i]` values each) by the work appended before it, and start
   * draining.
   */
  host(staging: GPUBuffer, reads: number[], writes: HostBuffer[], fn: HostStepFn): void {
    this.#entries.push({ kind: "host", staging, reads, writes, fn });
    this.#draining ??= this.#drain();
  }

  /** Resolves once everything appended so far is on the queue (rejects if the drain failed). */
  submitted(): Promise<void> {
    if (!this.active) return Promise.resolve();
    return new Promise((resolve, reject) => this.#entries.push({ kind: "mark", resolve, reject }));
  }

  /**
   * Wait until every host step has run and all the work behind them is on
   * the queue; throws (once) what made the drain fail.
   */
  async settle(): Promise<void> {
    while (this.#draining) await this.#draining;
    if (this.#failure !== null) {
      const e = this.#failure;
      this.#failure = null;
      throw e;
    }
  }

  async #drain(): Promise<void> {
    // Never synchronous, so `#draining` is set before the drain can end.
    await Promise.resolve();
    try {
      for (let e = this.#entries.shift(); e; e = this.#entries.shift()) await this.#run(e);
    } catch (err) {
      this.#failure = err;
      // What waited behind the failure never runs: marks learn why, buffers are freed.
      for (const e of this.#entries.splice(0)) {
        if (e.kind === "mark") e.reject(err);
        else if (e.kind === "destroy") e.buffers.forEach((b) => b.destroy());
        else if (e.kind === "host") e.staging.destroy();
      }
    } finally {
      this.#draining = null;
    }
  }

  async #run(e: Entry): Promise<void> {
    const queue = this.#device.queue;
    switch (e.kind) {
      case "submit":
        this.#errors.scoped(() => queue.submit([e.commands]), e.describe);
        return;
      case "destroy":
        for (const b of e.buffers) b.destroy();
        return;
      case "write":
        queue.writeBuffer(e.buffer, e.offset, e.data);
        return;
      case "mark":
        e.resolve();
        return;
      case "host":
        await this.#runHost(e);
        return;
    }
  }

  async #runHost(e: Extract<Entry, { kind: "host" }>): Promise<void> {
    let all: Float32Array;
    try {
      await e.staging.mapAsync(GPUMapMode.READ);
      all = new Float32Array(e.staging.getMappedRange().slice(0));
      e.staging.unmap();
    } finally {
      e.staging.destroy();
    }
    let at = 0;
    const data = e.reads.map((n) => all.subarray(at, at += n));
    const out = await e.fn(data);
    if (out.length !== e.writes.length) {
      throw new Error(`a host step returned ${out.length} arrays for ${e.writes.length} writes`);
    }
    out.forEach((values, i) => {
      const w = e.writes[i];
      if (values.length !== w.size) {
        throw new Error(
          `a host step returned ${values.length} values for write ${i} of ${w.size} values`,
        );
      }
      this.#device.queue.writeBuffer(w.buffer, 0, values as Float32Array<ArrayBuffer>);
    });
    this.hostSteps++;
  }
}
