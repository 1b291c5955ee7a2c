/**
 * A small MPI binding through `Deno.dlopen`: what data-parallel training
 * needs (rank, size and local rank; in-place sum all-reduce, broadcast,
 * barrier, abort) and nothing more. It needs no GPU.
 *
 * Open MPI (`libmpi.so.40`) and MPICH (`libmpi.so.12`) are both supported;
 * their handles differ in kind (Open MPI's are addresses of global objects,
 * MPICH's are fixed integers), so the binding picks the kind by the library
 * it loaded. Collectives run on a thread of Deno's blocking pool
 * (`nonblocking` FFI calls), one at a time, so the JavaScript thread keeps
 * recording GPU work while a reduction is in flight; MPI is therefore
 * initialised with `MPI_THREAD_SERIALIZED`.
 *
 * Nothing here loads MPI by itself: {@linkcode launchedWorld} reads the
 * launcher's environment, and only {@linkcode openMpi} opens the library.
 *
 * @example
 * ```ts
 * import { launchedWorld, openMpi } from "./mpi.ts";
 * const launched = launchedWorld();
 * if (launched && launched.size > 1) {
 *   const mpi = openMpi();
 *   const v = new Float32Array([mpi.rank]);
 *   await mpi.allreduceSum(v); // v[0] = 0 + 1 + … + (size - 1)
 *   mpi.finalize();
 * } else {
 *   console.log("one process: MPI is not loaded");
 * }
 * ```
 * @module
 */

/** Where this process sits in the job, as the launcher (`mpirun`) told it. */
export interface LaunchedWorld {
  rank: number;
  size: number;
  /** Rank among the processes on this machine (picks the GPU). */
  localRank: number;
}

/**
 * The world `mpirun` started this process in, read from the launcher's
 * environment (Open MPI's `OMPI_COMM_WORLD_*`, MPICH/Hydra's `PMI_*` and
 * `MPI_LOCALRANKID`), or null when no MPI launcher started it.
 *
 * @example
 * ```ts
 * import { launchedWorld } from "./mpi.ts";
 * console.log(launchedWorld({ OMPI_COMM_WORLD_RANK: "1", OMPI_COMM_WORLD_SIZE: "2" }));
 * // { rank: 1, size: 2, localRank: 1 }
 * ```
 */
export function launchedWorld(
  env: Record<string, string | undefined> = Deno.env.toObject(),
): LaunchedWorld | null {
  const num = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : null);
  const ompiSize = num(env.OMPI_COMM_WORLD_SIZE);
  const ompiRank = num(env.OMPI_COMM_WORLD_RANK);
  if (ompiSize !== null && ompiRank !== null) {
    return {
      rank: ompiRank,
      size: ompiSize,
      localRank: num(env.OMPI_COMM_WORLD_LOCAL_RANK) ?? ompiRank,
    };
  }
  const pmiSize = num(env.PMI_SIZE);
  const pmiRank = num(env.PMI_RANK);
  if (pmiSize !== null && pmiRank !== null) {
    return { rank: pmiRank, size: pmiSize, localRank: num(env.MPI_LOCALRANKID) ?? pmiRank };
  }
  return null;
}

/**
 * Thrown when a process started by `mpirun` cannot load or start MPI.
 *
 * @example
 * ```ts
 * import { launchedWorld, MpiUnavailableError, openMpi } from "./mpi.ts";
 * if ((launchedWorld()?.size ?? 1) > 1) {
 *   try {
 *     openMpi().finalize();
 *   } catch (e) {
 *     if (!(e instanceof MpiUnavailableError)) throw e;
 *     // Without libmpi: "cannot load MPI (…): install Open MPI (apt-get install openmpi-bin)"
 *     console.error(e.message);
 *   }
 * }
 * ```
 */
export class MpiUnavailableError extends Error {
  override name = "MpiUnavailableError";
}

/** An initialised MPI world (`MPI_COMM_WORLD`). */
export interface Mpi {
  readonly rank: number;
  readonly size: number;
  readonly localRank: number;
  /** The library that was loaded and its flavour. */
  readonly library: string;
  /** Sum `values` over all ranks, in place (`MPI_Allreduce` with `MPI_IN_PLACE`). */
  allreduceSum(values: Float32Array | Float64Array): Promise<void>;
  /** Overwrite `values` on every rank with rank `root`'s (`MPI_Bcast`). */
  broadcast(values: Float32Array | Float64Array | Uint8Array, root?: number): Promise<void>;
  /** Wait until every rank arrives (`MPI_Barrier`). */
  barrier(): Promise<void>;
  /** Stop every rank of the job at once with exit status `code` (`MPI_Abort`). */
  abort(code: number): never;
  /** Leave MPI (`MPI_Finalize`); call once, after the last collective. */
  finalize(): void;
}

type DataKind = "f32" | "f64" | "u8";

/** The calls the two flavours share, with their handles already chosen. */
interface Calls {
  library: string;
  initThread(provided: Int32Array): number;
  commRank(out: Int32Array): number;
  commSize(out: Int32Array): number;
  allreduceSum(buf: BufferSource, count: number, kind: DataKind): Promise<number>;
  bcast(buf: BufferSource, count: number, kind: DataKind, root: number): Promise<number>;
  barrier(): Promise<number>;
  abort(code: number): number;
  finalize(): number;
}

/** `MPI_THREAD_SERIALIZED` (the same value in Open MPI and MPICH). */
const THREAD_SERIALIZED = 2;

/** Elements per MPI call: counts are C `int`s, so large arrays go in slices. */
const MAX_COUNT = 1 << 30;

const OPEN_MPI = {
  MPI_Init_thread: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
  MPI_Comm_rank: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Comm_size: { parameters: ["pointer", "buffer"], result: "i32" },
  MPI_Allreduce: {
    parameters: ["pointer", "buffer", "i32", "pointer", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  MPI_Bcast: {
    parameters: ["buffer", "i32", "pointer", "i32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  MPI_Barrier: { parameters: ["pointer"], result: "i32", nonblocking: true },
  MPI_Abort: { parameters: ["pointer", "i32"], result: "i32" },
  MPI_Finalize: { parameters: [], result: "i32" },
  ompi_mpi_comm_world: { type: "pointer" },
  ompi_mpi_float: { type: "pointer" },
  ompi_mpi_double: { type: "pointer" },
  ompi_mpi_byte: { type: "pointer" },
  ompi_mpi_op_sum: { type: "pointer" },
} as const;

function openMpiCalls(path: string): Calls {
  const { symbols: s } = Deno.dlopen(path, OPEN_MPI);
  const comm = s.ompi_mpi_comm_world;
  const types = { f32: s.ompi_mpi_float, f64: s.ompi_mpi_double, u8: s.ompi_mpi_byte };
  const inPlace = Deno.UnsafePointer.create(1n);
  return {
    library: `${path} (Open MPI)`,
    initThread: (p) => s.MPI_Init_thread(null, null, THREAD_SERIALIZED, p),
    commRank: (out) => s.MPI_Comm_rank(comm, out),
    commSize: (out) => s.MPI_Comm_size(comm, out),
    allreduceSum: (buf, n, k) =>
      s.MPI_Allreduce(inPlace, buf, n, types[k], s.ompi_mpi_op_sum, comm),
    bcast: (buf, n, k, root) => s.MPI_Bcast(buf, n, types[k], root, comm),
    barrier: () => s.MPI_Barrier(comm),
    abort: (code) => s.MPI_Abort(comm, code),
    finalize: () => s.MPI_Finalize(),
  };
}

const MPICH = {
  MPI_Init_thread: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
  MPI_Comm_rank: { parameters: ["i32", "buffer"], result: "i32" },
  MPI_Comm_size: { parameters: ["i32", "buffer"], result: "i32" },
  MPI_Allreduce: {
    parameters: ["pointer", "buffer", "i32", "i32", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  MPI_Bcast: {
    parameters: ["buffer", "i32", "i32", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  MPI_Barrier: { parameters: ["i32"], result: "i32", nonblocking: true },
  MPI_Abort: { parameters: ["i32", "i32"], result: "i32" },
  MPI_Finalize: { parameters: [], result: "i32" },
} as const;

/** MPICH's fixed handles (mpi.h): they are part of its ABI. */
const MPICH_HANDLES = {
  commWorld: 0x44000000,
  f32: 0x4c00040a,
  f64: 0x4c00080b,
  u8: 0x4c00010d,
  sum: 0x58000003,
} as const;

function mpichCalls(path: string): Calls {
  const { symbols: s } = Deno.dlopen(path, MPICH);
  const h = MPICH_HANDLES;
  const inPlace = Deno.UnsafePointer.create(0xffffffffffffffffn); // (void*)-1
  return {
    library: `${path} (MPICH)`,
    initThread: (p) => s.MPI_Init_thread(null, null, THREAD_SERIALIZED, p),
    commRank: (out) => s.MPI_Comm_rank(h.commWorld, out),
    commSize: (out) => s.MPI_Comm_size(h.commWorld, out),
    allreduceSum: (buf, n, k) => s.MPI_Allreduce(inPlace, buf, n, h[k], h.sum, h.commWorld),
    bcast: (buf, n, k, root) => s.MPI_Bcast(buf, n, h[k], root, h.commWorld),
    barrier: () => s.MPI_Barrier(h.commWorld),
    abort: (code) => s.MPI_Abort(h.commWorld, code),
    finalize: () => s.MPI_Finalize(),
  };
}

/** Libraries tried in order, with the flavour each one is. */
const LIBRARIES: [string, (path: string) => Calls][] = [
  ["libmpi.so.40", openMpiCalls],
  ["libmpi.so.12", mpichCalls],
];

/** Open the first MPI library that loads, or explain on one line what to install. */
function loadCalls(): Calls {
  const override = Deno.env.get("LARGEKERNEL_LIBMPI");
  const tried: string[] = [];
  const candidates: [string, (path: string) => Calls][] = override
    ? [[override, /mpich/i.test(override) ? mpichCalls : openMpiCalls]]
    : LIBRARIES;
  for (const [path, open] of candidates) {
    try {
      return open(path);
    } catch (e) {
      tried.push(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new MpiUnavailableError(
    `cannot load MPI (${tried.join("; ")}): install Open MPI (apt-get install openmpi-bin)`,
  );
}

function check(what: string, code: number): void {
  if (code !== 0) throw new Error(`${what} failed with MPI error code ${code}`);
}

const kindOf = (a: Float32Array | Float64Array | Uint8Array): DataKind =>
  a instanceof Float32Array ? "f32" : a instanceof Float64Array ? "f64" : "u8";

let opened: Mpi | null = null;

/**
 * Load libmpi and initialise MPI (once per process; later calls return the
 * same world). Throws {@linkcode MpiUnavailableError} with a one-line
 * message naming the library and the package to install when it cannot.
 * `LARGEKERNEL_LIBMPI` names another library file to load (a path whose
 * name contains "mpich" is bound as MPICH, any other as Open MPI).
 *
 * @example
 * ```ts ignore
 * import { openMpi } from "./mpi.ts";
 * const mpi = openMpi(); // under `mpirun -np 2`
 * await mpi.barrier();
 * mpi.finalize();
 * ```
 */
export function openMpi(): Mpi {
  if (opened) return opened;
  const calls = loadCalls();
  const out = new Int32Array(1);
  check("MPI_Init_thread", calls.initThread(out));
  if (out[0] < THREAD_SERIALIZED) {
    throw new MpiUnavailableError(
      `${calls.library} gives thread level ${out[0]}, below MPI_THREAD_SERIALIZED`,
    );
  }
  check("MPI_Comm_rank", calls.commRank(out));
  const rank = out[0];
  check("MPI_Comm_size", calls.commSize(out));
  const size = out[0];
  const localRank = launchedWorld()?.localRank ?? rank;
  // One collective at a time: each runs on some thread of the blocking pool.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(f: () => Promise<T>): Promise<T> => {
    const next = queue.then(f);
    queue = next.catch(() => {});
    return next;
  };
  const sliced = async (
    what: string,
    a: Float32Array | Float64Array | Uint8Array,
    call: (part: BufferSource, n: number) => Promise<number>,
  ) => {
    for (let at = 0; at < a.length; at += MAX_COUNT) {
      // A shared buffer would do as well: MPI only reads and writes the memory.
      const part = a.subarray(at, Math.min(a.length, at + MAX_COUNT)) as ArrayBufferView<
        ArrayBuffer
      >;
      check(what, await call(part, part.byteLength / a.BYTES_PER_ELEMENT));
    }
  };
  let finalized = false;
  opened = {
    rank,
    size,
    localRank,
    library: calls.library,
    allreduceSum: (values) =>
      serial(() =>
        sliced("MPI_Allreduce", values, (p, n) => calls.allreduceSum(p, n, kindOf(values)))
      ),
    broadcast: (values, root = 0) =>
      serial(() => sliced("MPI_Bcast", values, (p, n) => calls.bcast(p, n, kindOf(values), root))),
    barrier: () => serial(async () => check("MPI_Barrier", await calls.barrier())),
    abort(code: number): never {
      calls.abort(code);
      Deno.exit(code);
    },
    finalize() {
      if (finalized) return;
      finalized = true;
      check("MPI_Finalize", calls.finalize());
    },
  };
  return opened;
}
