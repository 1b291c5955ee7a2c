/**
 * GPU errors reported where they happen. WebGPU reports a failed pipeline,
 * an allocation that ran out of memory or an invalid submit asynchronously,
 * through error scopes. {@linkcode GpuErrorWatch} wraps each call that can
 * fail in scopes, remembers which op made it (the first caller outside the
 * runtime, captured once per pipeline or allocation, so the hot path stays
 * cheap) and what it was for (a tensor's shape, a kernel's workgroups), and
 * throws the first failure as one line at the next sync point. A lost device
 * is thrown there too, as {@linkcode GpuDeviceLostError}.
 *
 * @example
 * ```ts
 * import { callerSite } from "./gpu_errors.ts";
 * console.log(callerSite()); // e.g. "<anonymous> (ops/gpu_errors.ts:4)" from a doc test
 * ```
 * @module
 */

/**
 * A GPU call that failed (compile, allocation, submit): names the op and its shape.
 *
 * @example
 * ```ts
 * import { initGpu, gpu } from "./gpu.ts";
 * import { GpuOpError } from "./gpu_errors.ts";
 * await initGpu();
 * try {
 *   await gpu().sync();
 * } catch (e) {
 *   if (e instanceof GpuOpError) console.log(e.message); // e.g. "WebGPU validation error in …"
 * }
 * ```
 */
export class GpuOpError extends Error {
  override name = "GpuOpError";
}

/**
 * The GPU device was lost (driver reset, removed GPU, destroyed device).
 *
 * @example
 * ```ts
 * import { GpuDeviceLostError } from "./gpu_errors.ts";
 * const e = new GpuDeviceLostError("the GPU device was lost (destroyed): no message");
 * console.log(e.name, e instanceof Error); // GpuDeviceLostError true
 * ```
 */
export class GpuDeviceLostError extends Error {
  override name = "GpuDeviceLostError";
}

/** Runtime files whose frames are skipped when naming the op that made a GPU call. */
const RUNTIME = /\/ops\/(gpu|gpu_errors|tensor|kernel)\.ts:/;

/**
 * The first caller outside the GPU runtime, as `function (path:line)` with
 * the path from the repository's top folder: the op that made the call.
 */
export function callerSite(): string {
  const frames = (new Error().stack ?? "").split("\n").slice(1);
  for (const f of frames) {
    if (RUNTIME.test(f)) continue;
    const m = /at (?:async )?(?:(\S+) \()?(?:file:\/\/)?([^()]*?):(\d+):\d+\)?$/.exec(f.trim());
    if (!m) continue;
    const file = m[2].replace(/^.*?\/((?:ops|models|train|sparse|analysis|scripts|tests)\/)/, "$1");
    return `${m[1] ?? "<anonymous>"} (${file}:${m[3]})`;
  }
  return "an unknown op";
}

function firstLine(s: string): string {
  return s.split("\n").find((l) => l.trim())?.trim() ?? s;
}

/**
 * Scopes around fallible GPU calls, checked at sync points; see the module doc.
 *
 * @example
 * ```ts
 * import { initGpu, gpu } from "./gpu.ts";
 * import { GpuErrorWatch, GpuOpError } from "./gpu_errors.ts";
 * await initGpu();
 * const watch = new GpuErrorWatch(gpu().device);
 * // MAP_READ goes only with COPY_DST: this buffer is invalid, and the failure waits for check().
 * watch.scoped(
 *   () => gpu().device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE }),
 *   () => "a deliberately invalid buffer",
 * );
 * try {
 *   await watch.check();
 * } catch (e) {
 *   console.log(e instanceof GpuOpError); // true
 *   console.log((e as Error).message); // WebGPU validation error in a deliberately invalid buffer: …
 * }
 * ```
 */
export class GpuErrorWatch {
  #device: GPUDevice;
  #pending: Promise<string | null>[] = [];
  #uncaptured: string | null = null;
  #lost: GPUDeviceLostInfo | null = null;

  constructor(device: GPUDevice) {
    this.#device = device;
    device.addEventListener?.("uncapturederror", (e) => {
      const msg = firstLine((e as GPUUncapturedErrorEvent).error.message);
      this.#uncaptured ??= `WebGPU error outside any scope: ${msg}`;
    });
    device.lost?.then((info) => {
      this.#lost = info;
    });
  }

  /**
   * Run `call` (which makes one fallible GPU call) inside out-of-memory,
   * validation and internal error scopes; a failure is reported at the next
   * {@linkcode check} as `what()` (evaluated only then) and the message.
   */
  scoped<T>(call: () => T, what: () => string): T {
    return this.#inScopes(call, (caught) => {
      this.#pending.push(
        caught.then(
          (errors) => {
            const e = errors.find((x) => x);
            if (!e) return null;
            const kind = e instanceof GPUOutOfMemoryError
              ? "out-of-memory"
              : e instanceof GPUValidationError
              ? "validation"
              : "internal";
            return `WebGPU ${kind} error in ${what()}: ${firstLine(e.message)}`;
          },
          () => null, // popErrorScope rejects only on a lost device, reported below
        ),
      );
      // Long runs without a sync (benchmarks) fold the pending checks into one, keeping the first.
      if (this.#pending.length > 1024) {
        const all = this.#pending;
        this.#pending = [Promise.all(all).then((ms) => ms.find((m) => m) ?? null)];
      }
    });
  }

  /**
   * Run `call` inside out-of-memory, validation and internal error scopes
   * whose failure is not reported: `onError` is called instead, once the
   * scopes are popped. For work that is redone, and reported, elsewhere.
   */
  quietly<T>(call: () => T, onError: () => void): T {
    return this.#inScopes(call, (caught) => {
      caught.then(
        (errors) => errors.some((e) => e) && onError(),
        () => {}, // a lost device is reported at the next check
      );
    });
  }

  /** `call` inside the three error scopes; `popped` gets what they caught. */
  #inScopes<T>(call: () => T, popped: (caught: Promise<(GPUError | null)[]>) => void): T {
    const d = this.#device;
    d.pushErrorScope("out-of-memory");
    d.pushErrorScope("validation");
    d.pushErrorScope("internal");
    try {
      return call();
    } finally {
      popped(Promise.all([d.popErrorScope(), d.popErrorScope(), d.popErrorScope()]));
    }
  }

  /** Whether the device has been lost (known once the `lost` promise settled). */
  get lost(): boolean {
    return this.#lost !== null;
  }

  /** Throw the device loss or the first failed call since the last check, as one line. */
  async check(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    const messages = await Promise.all(pending);
    this.throwIfLost();
    const first = messages.find((m) => m) ?? this.#uncaptured;
    this.#uncaptured = null;
    if (first) throw new GpuOpError(first);
  }

  /** Throw {@linkcode GpuDeviceLostError} when the device is gone. */
  throwIfLost(): void {
    const info = this.#lost;
    if (!info) return;
    throw new GpuDeviceLostError(
      `the GPU device was lost (${info.reason ?? "unknown"}): ${
        firstLine(info.message || "no message")
      }`,
    );
  }
}
