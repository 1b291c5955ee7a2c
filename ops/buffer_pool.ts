/**
 * The tensor pool's bookkeeping: free buffers by size class, which free
 * buffer a request takes, when free buffers go back to the driver, and the
 * bytes it holds. It knows buffers only by their size, through a
 * {@linkcode PoolBackend}: `tensor.ts` gives it GPU buffers, and
 * {@linkcode replayTrace} gives it plain objects to replay a recorded
 * sequence of allocations under another policy without a GPU.
 *
 * Every buffer not yet destroyed counts in `allocatedBytes`, free or in use:
 * that is what the device holds.
 *
 * @example
 * ```ts
 * import { BufferPool, plainBackend } from "./buffer_pool.ts";
 * const pool = new BufferPool(plainBackend());
 * const a = pool.acquire(4096);
 * pool.release(a);
 * const b = pool.acquire(4000); // the same size class: reused
 * console.log(a === b, pool.allocatedBytes); // true 4096
 * ```
 * @module
 */

/**
 * Size classes: multiples of 256 bytes, and above 16 KiB powers of two split
 * in 64 steps, so rounding wastes at most 1/64 of a large buffer (coarser
 * classes strand memory in their rounding: quarters cost ConvNeXt-T 9%).
 * Nearby sizes still share buffers through the pool's `fitSlack`.
 *
 * @example
 * ```ts
 * import { sizeClass } from "./buffer_pool.ts";
 * console.log(sizeClass(100), sizeClass(5000), sizeClass(77_070_336)); // 256 5120 77594624
 * ```
 */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 4) * 4);
  const p = 2 ** Math.floor(Math.log2(b));
  const step = Math.max(256, p / 64);
  return Math.ceil(b / step) * step;
}

/** A buffer as the pool sees it. */
export interface PooledBuffer {
  readonly size: number;
}

/** Where the pool's buffers come from and go to. */
export interface PoolBackend<B extends PooledBuffer> {
  /** A new buffer of exactly `size` bytes (a size class); `describe` names what it is for. */
  create(size: number, describe: () => string): B;
  /** Give `buffer` back (the work recorded so far may still use it). */
  destroy(buffer: B): void;
  /** Called after a batch of `destroy`s: until the work is submitted they still hold memory. */
  flush(): void;
  /**
   * Whether a `destroy` followed by `flush` returns the memory now (default true). When it
   * would only be queued, the pool does not reclaim: it would count memory as returned that the
   * device still holds.
   */
  destroysNow?(): boolean;
}

/**
 * A backend of plain `{ size }` objects (simulation and tests).
 *
 * @example
 * ```ts
 * import { plainBackend } from "./buffer_pool.ts";
 * console.log(plainBackend().create(512, () => "").size); // 512
 * ```
 */
export function plainBackend(): PoolBackend<PooledBuffer> {
  return { create: (size) => ({ size }), destroy: () => {}, flush: () => {} };
}

/**
 * How the pool reuses and returns buffers. `fitSlack`: a request may take a
 * free buffer of a larger size class up to this factor of its own class (1:
 * only its exact class). `reclaim`: before the pool would hold more than
 * `1 + headroom` times the most bytes ever in use at once, free buffers
 * (least recently released first) go back to the driver, so that buffers of
 * sizes no longer asked for are not stranded beside new ones (a headroom
 * spares a training step most of the buffers it would otherwise destroy and
 * create again every step). `smallBytes`: buffers below this size are
 * never reclaimed and may take a free buffer up to {@linkcode SMALL_FIT_SLACK}
 * times their size: they cost little memory, and recreating them would cost
 * time every step.
 */
export interface PoolPolicy {
  fitSlack: number;
  reclaim: boolean;
  headroom: number;
  smallBytes: number;
}

/** How much larger a free buffer a request under `smallBytes` may take. */
export const SMALL_FIT_SLACK = 4;

/**
 * The policy the tensor pool starts with. The headroom is 0.2 because at
 * 0.1 a SLaK-T training step (batch 64, 224²) destroyed and recreated 14
 * large buffers every step, and on the H100 buffer creation and destruction
 * were 60% of the CPU time of recording a step; at 0.2 it recreates none,
 * and the pool holds 1.12× the live peak (8.0 GiB).
 *
 * @example
 * ```ts
 * import { DEFAULT_POOL_POLICY } from "./buffer_pool.ts";
 * console.log(DEFAULT_POOL_POLICY); // { fitSlack: 1.25, reclaim: true, headroom: 0.2, smallBytes: 1048576 }
 * ```
 */
export const DEFAULT_POOL_POLICY: Readonly<PoolPolicy> = Object.freeze({
  fitSlack: 1.25,
  reclaim: true,
  headroom: 0.2,
  smallBytes: 2 ** 20,
});

/**
 * `policy` checked: a one-line error naming the field otherwise.
 *
 * @example
 * ```ts
 * import { checkPoolPolicy } from "./buffer_pool.ts";
 * console.log(checkPoolPolicy({ fitSlack: 1, reclaim: false, headroom: 0, smallBytes: 0 }).fitSlack); // 1
 * ```
 */
export function checkPoolPolicy(policy: PoolPolicy): PoolPolicy {
  if (!Number.isFinite(policy.fitSlack) || policy.fitSlack < 1) {
    throw new Error(`pool policy: fitSlack must be a finite number ≥ 1, got ${policy.fitSlack}`);
  }
  if (!Number.isFinite(policy.headroom) || policy.headroom < 0) {
    throw new Error(`pool policy: headroom must be a finite number ≥ 0, got ${policy.headroom}`);
  }
  if (!Number.isFinite(policy.smallBytes) || policy.smallBytes < 0) {
    throw new Error(
      `pool policy: smallBytes must be a finite number ≥ 0, got ${policy.smallBytes}`,
    );
  }
  return {
    fitSlack: policy.fitSlack,
    reclaim: Boolean(policy.reclaim),
    headroom: policy.headroom,
    smallBytes: policy.smallBytes,
  };
}

/** Free buffers by size class, with the bytes held and their peaks. See the module doc. */
export class BufferPool<B extends PooledBuffer> {
  #free = new Map<number, B[]>();
  /** Size classes that have free buffers, ascending (best-fit search). */
  #classes: number[] = [];
  /**
   * The free buffers in the order they were released, oldest first
   * (reclaiming takes the oldest first): a buffer leaves the set when taken,
   * so its insertion order is its release order.
   */
  #released = new Set<B>();
  /** Each buffer's number, in order of creation (see `#take`). */
  #numbers = new WeakMap<B, number>();
  policy: PoolPolicy;
  /** Bytes of every buffer not yet destroyed (free or in use). */
  allocatedBytes = 0;
  freeBytes = 0;
  buffers = 0;
  /** The most bytes in use at once (allocated, not free): reclaiming keeps the pool at it. */
  peakInUseBytes = 0;
  /** Bytes of the live tensors' storages (as asked for, before rounding to a size class). */
  liveBytes = 0;
  peakLiveBytes = 0;
  peakAllocatedBytes = 0;
  created = 0;
  destroyed = 0;

  constructor(readonly backend: PoolBackend<B>, policy: PoolPolicy = DEFAULT_POOL_POLICY) {
    this.policy = checkPoolPolicy(policy);
  }

  /** A buffer of at least `bytes`; `describe` names what it is for if creating it fails. */
  acquire(bytes: number, describe: () => string = () => `${bytes} bytes`): B {
    const size = sizeClass(bytes);
    const hit = this.#take(size) ?? this.#takeLarger(size);
    if (hit) return hit;
    const inUse = this.allocatedBytes - this.freeBytes + size;
    this.peakInUseBytes = Math.max(this.peakInUseBytes, inUse);
    if (this.policy.reclaim) {
      this.#reclaim(this.allocatedBytes + size - this.peakInUseBytes * (1 + this.policy.headroom));
    }
    const buffer = this.backend.create(size, describe);
    this.#numbers.set(buffer, this.created);
    this.allocatedBytes += size;
    this.peakAllocatedBytes = Math.max(this.peakAllocatedBytes, this.allocatedBytes);
    this.buffers++;
    this.created++;
    return buffer;
  }

  /** Put `buffer` back among the free ones. */
  release(buffer: B): void {
    const size = buffer.size;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    if (list.length === 0) this.#classes.splice(this.#classIndex(size), 0, size);
    list.push(buffer);
    this.#released.add(buffer);
    this.freeBytes += size;
  }

  /** Count `bytes` of tensor storage coming (positive) or going (negative). */
  live(bytes: number): void {
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakLiveBytes) this.peakLiveBytes = this.liveBytes;
  }

  /** Start both peaks over from the current values. */
  resetPeaks(): void {
    this.peakLiveBytes = this.liveBytes;
    this.peakAllocatedBytes = this.allocatedBytes;
  }

  /** Destroy every free buffer (memory returns to the driver). */
  trim(): void {
    for (const list of this.#free.values()) for (const b of list) this.#destroy(b);
    this.#free.clear();
    this.#classes = [];
    this.#released.clear();
    this.freeBytes = 0;
    this.peakInUseBytes = this.allocatedBytes;
    this.backend.flush();
  }

  /** First index of `#classes` whose class is at least `size`. */
  #classIndex(size: number): number {
    let lo = 0;
    let hi = this.#classes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#classes[mid] < size) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * The class's lowest-numbered free buffer (numbers in order of creation):
   * which buffer a tensor gets then depends only on which are free, not on
   * the order they were freed in, so a training step that allocates as the
   * one before gets the same buffers and the recorder's cached bind groups
   * serve it again (the last one freed would hand them out permuted).
   */
  #take(size: number): B | undefined {
    const list = this.#free.get(size);
    if (!list?.length) return undefined;
    let best = 0;
    for (let i = 1; i < list.length; i++) {
      if (this.#number(list[i]) < this.#number(list[best])) best = i;
    }
    const hit = list[best];
    list[best] = list[list.length - 1];
    list.pop();
    if (list!.length === 0) this.#classes.splice(this.#classIndex(size), 1);
    this.#released.delete(hit);
    this.freeBytes -= size;
    return hit;
  }

  /** A buffer's number; one released without being created here sorts last. */
  #number(buffer: B): number {
    return this.#numbers.get(buffer) ?? Infinity;
  }

  /** The smallest free buffer above `size` within the slack. */
  #takeLarger(size: number): B | undefined {
    const larger = this.#classes[this.#classIndex(size)];
    const slack = size < this.policy.smallBytes ? SMALL_FIT_SLACK : this.policy.fitSlack;
    if (larger === undefined || larger > size * slack) return undefined;
    return this.#take(larger);
  }

  /** Destroy free buffers, least recently released first, until `bytes` are returned. */
  #reclaim(bytes: number): void {
    if (bytes <= 0 || this.freeBytes === 0 || this.backend.destroysNow?.() === false) return;
    let returned = 0;
    for (const buffer of this.#released) {
      if (returned >= bytes) break;
      if (buffer.size < this.policy.smallBytes) continue;
      const list = this.#free.get(buffer.size)!;
      list.splice(list.indexOf(buffer), 1);
      if (list.length === 0) this.#classes.splice(this.#classIndex(buffer.size), 1);
      this.#released.delete(buffer);
      this.freeBytes -= buffer.size;
      returned += buffer.size;
      this.#destroy(buffer);
    }
    this.backend.flush();
  }

  #destroy(buffer: B): void {
    this.allocatedBytes -= buffer.size;
    this.buffers--;
    this.destroyed++;
    this.backend.destroy(buffer);
  }
}

/**
 * A recorded sequence of tensor allocations: `bytes[i] >= 0` acquires
 * storage number `i` of that many bytes, `-1 - j` releases storage `j`.
 */
export type PoolTrace = number[];

/** What {@linkcode replayTrace} reports (bytes). */
export interface ReplayResult {
  peakLiveBytes: number;
  peakAllocatedBytes: number;
  /** Buffers created from event `from` on (a steady step creates none). */
  created: number;
}

/**
 * Replay `trace` through a pool with `policy` and report its peaks from event
 * index `from` on (e.g. where the last of several identical steps starts).
 *
 * @example
 * ```ts
 * import { replayTrace } from "./buffer_pool.ts";
 * // Two steps alternating 8 KiB and 12 KiB temporaries: exact classes strand one of each.
 * const trace = [8192, -1, 12288, -2, 8192, -3, 12288, -4];
 * const exact = { fitSlack: 1, reclaim: false, headroom: 0, smallBytes: 0 };
 * console.log(replayTrace(trace, 4, exact).peakAllocatedBytes); // 20480
 * console.log(replayTrace(trace, 4, { ...exact, fitSlack: 1.5, reclaim: true }).peakAllocatedBytes); // 12288
 * ```
 */
export function replayTrace(trace: PoolTrace, from: number, policy: PoolPolicy): ReplayResult {
  const pool = new BufferPool(plainBackend(), policy);
  const held = new Map<number, PooledBuffer>();
  const sizes: number[] = [];
  let createdBefore = 0;
  trace.forEach((e, i) => {
    if (i === from) {
      pool.resetPeaks();
      createdBefore = pool.created;
    }
    if (e >= 0) {
      held.set(sizes.length, pool.acquire(e));
      sizes.push(e);
      pool.live(e);
      return;
    }
    const id = -1 - e;
    const b = held.get(id);
    if (!b) throw new Error(`replayTrace: storage ${id} released twice or never acquired`);
    held.delete(id);
    pool.live(-sizes[id]);
    pool.release(b);
  });
  return {
    peakLiveBytes: pool.peakLiveBytes,
    peakAllocatedBytes: pool.peakAllocatedBytes,
    created: pool.created - createdBefore,
  };
}
