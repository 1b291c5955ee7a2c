/**
 * Data-parallel training over MPI: the {@linkcode Replicas} of a run started
 * by `mpirun -np N deno task train …`. Each rank is one process with its own
 * WebGPU device; ranks exchange only through MPI (Open MPI or MPICH, loaded
 * by `ops/mpi.ts`): rank 0's weights are broadcast at the start and checked
 * by checksum, gradients are summed in buckets during the backward pass
 * ({@linkcode BucketedGradientSync}), metrics are summed, and settings are
 * compared by hash. A process started without `mpirun` (or with one rank)
 * gets {@linkcode singleProcess} and never loads MPI.
 *
 * @example
 * ```ts
 * import { openReplicas } from "./distributed.ts";
 * const replicas = await openReplicas(); // without mpirun: a world of one
 * console.log(replicas.rank, replicas.world); // 0 1
 * ```
 * @module
 */
import type { Module } from "../models/module.ts";
import { launchedWorld, type Mpi, openMpi } from "../ops/mpi.ts";
import type { StatsReducer } from "../ops/norm.ts";
import { Tensor } from "../ops/tensor.ts";
import { BucketedGradientSync, type CommStep } from "./grad_sync.ts";
import { type GradientSync, type Replicas, singleProcess } from "./parallel.ts";

/**
 * An error every rank saw at once (a disagreement): each prints it, none needs to abort the others.
 *
 * @example
 * ```ts
 * import { RanksDisagreeError } from "./distributed.ts";
 * // Only other errors need the other ranks stopped: they may be waiting in a collective.
 * const mustAbort = (e: unknown, world: number) => world > 1 && !(e instanceof RanksDisagreeError);
 * console.log(mustAbort(new RanksDisagreeError("ranks disagree on the flags"), 2)); // false
 * console.log(mustAbort(new Error("out of memory"), 2)); // true
 * ```
 */
export class RanksDisagreeError extends Error {
  override name = "RanksDisagreeError";
}

/** The replicas of an MPI job. */
export interface MpiReplicas extends Replicas {
  /** The library in use, e.g. "libmpi.so.40 (Open MPI)". */
  readonly library: string;
  /** Leave MPI at the end of the run. */
  finalize(): void;
}

/**
 * The replicas of this process: an MPI world when `mpirun` started it with
 * more than one rank, else {@linkcode singleProcess} (MPI is not loaded).
 * Under `mpirun`, each rank first picks its GPU by local rank
 * ({@linkcode selectGpuByLocalRank}); call this before `initGpu`.
 * Throws `MpiUnavailableError` (one line: the library and the package to
 * install) when libmpi cannot be loaded.
 *
 * @example
 * ```ts
 * import { openReplicas } from "./distributed.ts";
 * console.log((await openReplicas()).isMain); // true
 * ```
 */
export function openReplicas(
  env: Record<string, string | undefined> = Deno.env.toObject(),
): Promise<Replicas> {
  const launched = launchedWorld(env);
  if (!launched || launched.size <= 1) return Promise.resolve(singleProcess());
  selectGpuByLocalRank(launched.localRank, env);
  return Promise.resolve(mpiReplicas(openMpi()));
}

/**
 * SHA-256 of some bytes, in hex (weights, masks and flags are compared by it).
 *
 * @example
 * ```ts
 * import { hashBytes } from "./distributed.ts";
 * console.log(await hashBytes(new TextEncoder().encode("abc")));
 * // ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
 * console.log((await hashBytes(new Float32Array([1, 2]))).length); // 64
 * ```
 */
export async function hashBytes(bytes: ArrayBufferView): Promise<string> {
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const digest = await crypto.subtle.digest("SHA-256", view.slice());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bytes of a hash as compared across ranks (SHA-256 in hex is 64). */
const HASH_BYTES = 64;

/**
 * Replicas over an initialised MPI world; {@linkcode openReplicas} is the
 * usual way in.
 *
 * @example
 * ```ts ignore
 * import { openMpi } from "../ops/mpi.ts";
 * import { mpiReplicas } from "./distributed.ts";
 * const replicas = mpiReplicas(openMpi()); // under mpirun
 * await replicas.agree("flags", "abc");
 * ```
 */
export function mpiReplicas(mpi: Mpi): MpiReplicas {
  // Every collective goes through the order, or a reserved batch-norm sum could be overtaken.
  const ordered = orderedCollectives(mpi);
  const commSteps: CommStep[] = [];
  const staging: GPUBuffer[] = [];
  // Synchronised batch norm's all-reduces since the last gradient sum: [start, end] of each.
  const bnSpans: [number, number][] = [];
  const agree = async (what: string, hash: string) => {
    const mine = new TextEncoder().encode(hash.padEnd(HASH_BYTES).slice(0, HASH_BYTES));
    const root = mine.slice();
    await ordered.broadcast(root, 0);
    const differs = root.some((b, i) => b !== mine[i]);
    const count = new Float64Array([differs ? 1 : 0]);
    await ordered.allreduceSum(count);
    if (count[0] > 0) {
      const text = (b: Uint8Array) => new TextDecoder().decode(b).trim().slice(0, 16);
      throw new RanksDisagreeError(
        `ranks disagree on ${what}: ${count[0]} of ${mpi.size} ranks differ from rank 0 ` +
          `(rank ${mpi.rank}: ${text(mine)}…` + (mpi.rank ? `, rank 0: ${text(root)}…)` : ")"),
      );
    }
  };
  return {
    rank: mpi.rank,
    world: mpi.size,
    isMain: mpi.rank === 0,
    library: mpi.library,
    takeCommSteps: () => commSteps.splice(0),
    async syncModel(model: Module): Promise<void> {
      const entries = [...model.namedEntries()];
      const flat = new Float32Array(entries.reduce((a, [, p]) => a + p.size, 0));
      let at = 0;
      for (const [, p] of entries) {
        flat.set(await p.tensor.read(), at);
        at += p.size;
      }
      await ordered.broadcast(flat, 0);
      if (mpi.rank !== 0) {
        at = 0;
        for (const [, p] of entries) {
          p.set(Tensor.from(flat.subarray(at, at + p.size), p.shape));
          at += p.size;
        }
      }
      // Read back what each GPU now holds: the checksum proves the copy, not the message.
      const held = new Float32Array(flat.length);
      at = 0;
      for (const [, p] of entries) {
        held.set(await p.tensor.read(), at);
        at += p.size;
      }
      await agree("the weights after the broadcast from rank 0", await hashBytes(held));
    },
    async sum(values: Float64Array): Promise<Float64Array> {
      const out = values.slice();
      await ordered.allreduceSum(out);
      return out;
    },
    gradientSync(params: Tensor[]): GradientSync {
      return new BucketedGradientSync(params, {
        world: mpi.size,
        sum: (v) => ordered.allreduceSum(v),
        onDone: (s) => commSteps.push({ ...s, ...batchNormCosts(bnSpans.splice(0), s.waitMs) }),
        staging,
      });
    },
    statsReducer(): StatsReducer {
      return () => {
        const sum = ordered.reserveSum();
        return async (values) => {
          const started = performance.now();
          await sum(values);
          bnSpans.push([started, performance.now()]);
        };
      };
    },
    agree,
    abort: (code: number) => mpi.abort(code),
    finalize: () => mpi.finalize(),
  };
}

/**
 * What synchronised batch norm's all-reduces (`spans`, [start, end] in
 * `performance.now()` time) cost a step whose gradient sum just waited
 * `waitMs`: their total time, the part of it outside that wait (the rest is
 * already counted in it), and their number.
 */
function batchNormCosts(
  spans: [number, number][],
  waitMs: number,
): Pick<CommStep, "bnMs" | "bnWaitMs" | "bnReductions"> {
  const end = performance.now();
  const start = end - waitMs;
  let bnMs = 0;
  let inWait = 0;
  for (const [a, b] of spans) {
    bnMs += b - a;
    inWait += Math.max(0, Math.min(b, end) - Math.max(a, start));
  }
  return { bnMs, bnWaitMs: bnMs - inWait, bnReductions: spans.length };
}

/** {@linkcode Mpi}'s collectives, in the order they are asked for (see {@linkcode orderedCollectives}). */
interface OrderedCollectives {
  allreduceSum(values: Float32Array | Float64Array): Promise<void>;
  broadcast(values: Float32Array | Float64Array | Uint8Array, root?: number): Promise<void>;
  /**
   * Take the next place in the order for a sum whose values come later: the
   * returned function sums them in place once every collective asked for
   * before has run.
   */
  reserveSum(): (values: Float64Array) => Promise<void>;
}

/**
 * The collectives of `mpi` run one at a time in the order they are asked
 * for, including sums reserved before their values exist: synchronised batch
 * norm reserves its all-reduces when the GPU work is recorded and sums when a
 * host step has the values. Every rank records the same work in the same
 * order, so every rank issues the same collectives in the same order,
 * whatever the timing of its GPU; a gradient bucket that is read back early
 * still waits behind the batch-norm sums recorded before it.
 *
 * @example
 * ```ts
 * import type { Mpi } from "../ops/mpi.ts";
 * import { orderedCollectives } from "./distributed.ts";
 * const issued: number[] = [];
 * const world = { // a stand-in for openMpi() that logs what reaches MPI
 *   allreduceSum: (v: Float32Array | Float64Array) => Promise.resolve(void issued.push(v[0])),
 * } as unknown as Mpi;
 * const mpi = orderedCollectives(world);
 * const later = mpi.reserveSum();
 * const now = mpi.allreduceSum(new Float32Array([1])); // waits for the reserved sum
 * await Promise.all([later(new Float64Array([2])), now]);
 * console.log(issued); // [2, 1]
 * ```
 */
export function orderedCollectives(mpi: Mpi): OrderedCollectives {
  let tail: Promise<unknown> = Promise.resolve();
  const inOrder = <T>(f: () => Promise<T>): Promise<T> => {
    const next = tail.then(f);
    tail = next.catch(() => {});
    return next;
  };
  return {
    allreduceSum: (values) => inOrder(() => mpi.allreduceSum(values)),
    broadcast: (values, root) => inOrder(() => mpi.broadcast(values, root)),
    reserveSum() {
      let give!: (values: Float64Array) => void;
      const values = new Promise<Float64Array>((resolve) => (give = resolve));
      const done = inOrder(async () => mpi.allreduceSum(await values));
      return (v) => {
        give(v);
        return done;
      };
    },
  };
}

/**
 * Point Mesa's Vulkan device-select layer at GPU number `localRank` (modulo
 * the GPUs found) by PCI address, so that each rank on a machine with several
 * GPUs gets its own: `DRI_PRIME=pci-…` with
 * `MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1`, set before the first
 * adapter is requested. Nothing changes when `DRI_PRIME` is already set (the
 * user chose), or fewer than two GPUs are found. Returns the address chosen,
 * or null.
 *
 * @example
 * ```ts
 * import { selectGpuByLocalRank } from "./distributed.ts";
 * console.log(selectGpuByLocalRank(0, { DRI_PRIME: "pci-0000_00_06_0" })); // null: already chosen
 * ```
 */
export function selectGpuByLocalRank(
  localRank: number,
  env: Record<string, string | undefined> = Deno.env.toObject(),
  gpus: string[] = pciDisplayDevices(),
): string | null {
  if (env.DRI_PRIME !== undefined || gpus.length < 2) return null;
  const address = gpus[localRank % gpus.length];
  Deno.env.set("DRI_PRIME", `pci-${address.replace(/[:.]/g, "_")}`);
  Deno.env.set("MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE", "1");
  return address;
}

/**
 * PCI addresses (`0000:00:06.0`) of the display and 3D controllers under
 * `/sys/bus/pci/devices`, sorted, excluding the virtual ones of emulated
 * consoles (vendor 0x1234 and 0x1af4); empty where sysfs is not readable.
 *
 * @example
 * ```ts
 * import { pciDisplayDevices } from "./distributed.ts";
 * console.log(pciDisplayDevices()); // e.g. ["0000:00:06.0"]
 * ```
 */
export function pciDisplayDevices(root = "/sys/bus/pci/devices"): string[] {
  const out: string[] = [];
  try {
    for (const e of Deno.readDirSync(root)) {
      const read = (f: string) => Deno.readTextFileSync(`${root}/${e.name}/${f}`).trim();
      try {
        const cls = read("class");
        const vendor = read("vendor");
        // 0x0300xx VGA, 0x0302xx 3D controller (data-centre GPUs).
        if (/^0x030[02]/.test(cls) && vendor !== "0x1234" && vendor !== "0x1af4") out.push(e.name);
      } catch {
        // A device without these files is not a GPU.
      }
    }
  } catch {
    return [];
  }
  return out.sort();
}
