/**
 * The values a `.pth` pickle rebuilds (dicts, lists, tensors, storages,
 * placeholders), the reader's error class and its limits, and the checks of
 * a tensor view against its storage. `pth.ts` re-exports the public
 * ones.
 *
 * @example
 * ```ts
 * import { PthTensor, readPth } from "./pth.ts";
 * const sd = readPth(await Deno.readFile("tests/fixtures/state_dict.pth")) as Map<string, PthTensor>;
 * console.log(sd.get("fc.weight_t")!.stride); // [1, 4]
 * ```
 * @module
 */
import { decodeFloat32, type Dtype, dtypeBytes } from "./safetensors.ts";

/**
 * Every way a `.pth` file can be refused: malformed, truncated, over a limit
 * or naming a refused global. The message is one line naming the file, the
 * record (and byte) at fault and, for a limit, the limit.
 *
 * @example
 * ```ts
 * import { PthFormatError, readPth } from "./pth.ts";
 * try {
 *   readPth(new Uint8Array([1, 2, 3]), { source: "x.pth" });
 * } catch (e) {
 *   console.log(e instanceof PthFormatError, (e as Error).message); // true "cannot read x.pth: not a torch.save zip archive …"
 * }
 * ```
 */
export class PthFormatError extends Error {
  override name = "PthFormatError";
}

/**
 * Limits of the `.pth` reader, enforced before the memory they guard is
 * allocated. They are far above what real checkpoints need.
 *
 * @example
 * ```ts
 * import { PTH_LIMITS } from "./pth.ts";
 * console.log(PTH_LIMITS.maxStack); // 1048576
 * ```
 */
export const PTH_LIMITS = {
  /** Bytes of `data.pkl` (the pickle; tensor data lives in other records). */
  maxPickleBytes: 64 << 20,
  /** Bytes of one LONG1/LONG4 integer (Python refuses ints of over 4300 digits; 2 KiB is 4932). */
  maxLongBytes: 2048,
  /** Digits of a text INT/LONG, Python's own default limit. */
  maxIntDigits: 4300,
  /**
   * Opcodes run: this, plus {@link PTH_LIMITS.opsPerFileByte} per byte of the
   * file. A stored pickle runs at most one per byte; the budget bounds the
   * time a small file with a highly compressed pickle can take.
   */
  baseOps: 1 << 22,
  opsPerFileByte: 2,
  /** Values on the pickle stack at once. */
  maxStack: 1 << 20,
  /** Memo entries. */
  maxMemo: 1 << 20,
  /** Items of one list, dict or set. */
  maxItems: 1 << 23,
  /** Estimated heap bytes of the objects a pickle builds: this, plus {@link PTH_LIMITS.heapPerFileByte} per byte of the file. */
  baseHeapBytes: 16 << 20,
  heapPerFileByte: 16,
  /** Dimensions of a tensor. */
  maxRank: 64,
  /**
   * f32 bytes all tensors of a state dict may decode to, per byte of the
   * storage records they view (plus 1 MiB): an f32 storage may back up to
   * four tensors (tied weights), a u8 one a single full view (it widens 4×),
   * but no storage thousands of views.
   */
  outputPerStorageByte: 4,
} as const;

// ---------------------------------------------------------------- values

/**
 * Anything a checkpoint's pickle can hold here: Python dicts become `Map`s
 * (keys keep their Python values), lists and tuples arrays, sets `Set`s,
 * `bytes` `Uint8Array`s, ints `number`s (`bigint` beyond 2^53), tensors
 * {@link PthTensor}s and, with `skipUnknown`, unknown objects {@link PickleObject}s.
 *
 * @example
 * ```ts
 * import { type PickleValue, readPth } from "./pth.ts";
 * const top: PickleValue = readPth(await Deno.readFile("tests/fixtures/state_dict.pth"));
 * console.log(top instanceof Map); // true
 * ```
 */
export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PickleValue[]
  | Map<PickleValue, PickleValue>
  | Set<PickleValue>
  | PthTensor
  | PthStorage
  | PickleGlobal
  | PickleObject;

/**
 * A global named by the pickle (`module.name`). Whitelisted ones are
 * interpreted by the reader; unknown ones (only with `skipUnknown`) are inert.
 *
 * @example
 * ```ts
 * import { PickleGlobal } from "./pth.ts";
 * console.log(new PickleGlobal("os", "system", false).fullName); // "os.system"
 * ```
 */
export class PickleGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    /** Whether the reader implements it (whitelisted); if not, calling it yields a placeholder. */
    readonly known: boolean,
  ) {}

  /** `module.name`. */
  get fullName(): string {
    return `${this.module}.${this.name}`;
  }
}

/**
 * Inert stand-in for an object built by an unknown global (read with
 * `skipUnknown`): records what the pickle asked for and never calls it.
 *
 * @example
 * ```ts
 * import { PickleObject, readPth } from "./pth.ts";
 * const ckpt = readPth(await Deno.readFile("tests/fixtures/checkpoint.pth"), { skipUnknown: true });
 * const args = (ckpt as Map<unknown, unknown>).get("args") as PickleObject;
 * console.log(args.global, (args.state as Map<string, unknown>).get("model")); // "argparse.Namespace" "SLaK_tiny"
 * ```
 */
export class PickleObject {
  /** State passed by BUILD (`__setstate__`/`__dict__`), if any. */
  state: PickleValue | undefined = undefined;
  /** Items added by SETITEM(S), for dict-like objects. */
  readonly dictItems: Map<PickleValue, PickleValue> = new Map();
  /** Items added by APPEND(S), for list-like objects. */
  readonly listItems: PickleValue[] = [];

  constructor(
    /** `module.name` of the global that would have been called. */
    readonly global: string,
    /** Arguments it would have been called with. */
    readonly args: PickleValue[],
  ) {}
}

/**
 * A tensor storage: `numel` elements of one dtype, stored as the zip record
 * `data/<key>`. Its bytes are read only when a tensor is decoded.
 *
 * @example
 * ```ts
 * import { PthTensor, readPth } from "./pth.ts";
 * const sd = readPth(await Deno.readFile("tests/fixtures/state_dict.pth")) as Map<string, PthTensor>;
 * console.log(sd.get("half.weight")!.storage.typeName); // "torch.HalfStorage"
 * ```
 */
export class PthStorage {
  constructor(
    /** Record key, e.g. "0". */
    readonly key: string,
    /** Element type, or null for a storage type this reader cannot decode. */
    readonly dtype: Dtype | null,
    /** The pickled storage type, e.g. "torch.FloatStorage". */
    readonly typeName: string,
    /** Device it was saved from, e.g. "cpu" or "cuda:0". */
    readonly location: string,
    /** Number of elements. */
    readonly numel: number,
    readonly littleEndian: boolean,
    /** Fetches (and for DEFLATE entries inflates) the raw record. */
    readonly bytes: () => Uint8Array,
    /** The file it comes from, for error messages. */
    readonly source = "PyTorch checkpoint",
  ) {}
}

/**
 * A strided view of a {@link PthStorage}, as `torch._utils._rebuild_tensor_v2`
 * describes it. `toFloat32()` gathers it into a dense row-major f32 array.
 *
 * @example
 * ```ts
 * import { PthTensor, readPth } from "./pth.ts";
 * const sd = readPth(await Deno.readFile("tests/fixtures/state_dict.pth")) as Map<string, PthTensor>;
 * const t = sd.get("fc.weight_t")!; // a transposed (non-contiguous) matrix
 * console.log(t.shape, t.stride, t.toFloat32().length); // [4, 3] [1, 4] 12
 * ```
 */
export class PthTensor {
  constructor(
    readonly storage: PthStorage,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}

  /** The element type of the storage (null if it cannot be decoded). */
  get dtype(): Dtype | null {
    return this.storage.dtype;
  }

  /** Dense row-major values converted to f32 (a new array each call). */
  toFloat32(): Float32Array {
    const { storage, shape, stride, storageOffset } = this;
    const fail = (why: string): never => {
      throw new PthFormatError(`cannot read ${storage.source}: ${why}`);
    };
    if (storage.dtype === null) fail(`cannot decode a tensor of ${storage.typeName}`);
    const dtype = storage.dtype!;
    const extent = viewExtent(shape, stride, storageOffset);
    if (typeof extent === "string") fail(`tensor view ${extent}`);
    const { count, last } = extent as ViewExtent;
    if (count === 0) return new Float32Array(0);
    const where = viewOutsideStorage(extent as ViewExtent, storage.numel);
    if (where) fail(`tensor [${shape}] (offset ${storageOffset}, stride [${stride}]) ${where}`);
    const size = dtypeBytes(dtype);
    const raw = storage.bytes();
    if (raw.byteLength < storage.numel * size) {
      fail(
        `storage record data/${storage.key} holds ${raw.byteLength} bytes, its ${storage.numel} elements need ${
          storage.numel * size
        }`,
      );
    }
    const span = last - storageOffset + 1;
    const src = decodeFloat32(
      raw.subarray(storageOffset * size, (last + 1) * size),
      dtype,
      span,
      storage.littleEndian,
    );
    if (isContiguous(shape, stride)) return src;
    const out = new Float32Array(count);
    const rank = shape.length;
    const idx = new Array<number>(rank).fill(0);
    let at = 0;
    for (let i = 0; i < count; i++) {
      out[i] = src[at];
      for (let d = rank - 1; d >= 0; d--) {
        if (++idx[d] < shape[d]) {
          at += stride[d];
          break;
        }
        at -= (shape[d] - 1) * stride[d];
        idx[d] = 0;
      }
    }
    return out;
  }
}

/** Row-major strides (dimensions of size 1 may carry any stride). */
function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/**
 * Elements of a view and the last storage element it reads (offset - 1 when empty).
 *
 * @example
 * ```ts
 * import { type ViewExtent, viewExtent } from "./pth_values.ts";
 * const e = viewExtent([2, 3], [3, 1], 4) as ViewExtent;
 * console.log(e.count, e.last); // 6 9
 * ```
 */
export interface ViewExtent {
  count: number;
  last: number;
}

/**
 * The extent of a strided view, or why it is invalid: dimensions, strides
 * and offset must be non-negative safe integers, and every index computed
 * from them must stay a safe integer (no silent rounding past 2^53).
 *
 * @example
 * ```ts
 * import { viewExtent } from "./pth_values.ts";
 * console.log(viewExtent([4, 3], [1, 4], 0)); // { count: 12, last: 11 }
 * console.log(viewExtent([2], [-1], 0)); // "stride [-1] is not all non-negative integers"
 * ```
 */
export function viewExtent(
  shape: readonly number[],
  stride: readonly number[],
  offset: number,
): ViewExtent | string {
  if (shape.length > PTH_LIMITS.maxRank) {
    return `has ${shape.length} dimensions (limit ${PTH_LIMITS.maxRank})`;
  }
  if (shape.length !== stride.length) {
    return `size [${shape}] and stride [${stride}] differ in length`;
  }
  const bad = (v: number) => !Number.isSafeInteger(v) || v < 0;
  if (shape.some(bad)) return `size [${shape}] is not all non-negative integers`;
  if (stride.some(bad)) return `stride [${stride}] is not all non-negative integers`;
  if (bad(offset)) return `storage offset ${offset} is not a non-negative integer`;
  if (shape.includes(0)) return { count: 0, last: offset - 1 };
  let count = 1;
  let last = offset;
  for (let d = 0; d < shape.length; d++) {
    count *= shape[d];
    last += (shape[d] - 1) * stride[d];
    if (count > Number.MAX_SAFE_INTEGER || last > Number.MAX_SAFE_INTEGER) {
      return `size [${shape}] / stride [${stride}] overflow 2^53 elements`;
    }
  }
  return { count, last };
}

/**
 * Why a non-empty view does not fit its storage of `numel` elements, or null.
 * A view may not hold more elements than its storage: overlapping strides
 * (such as 0) would let a few stored bytes fill any amount of memory.
 *
 * @example
 * ```ts
 * import { viewOutsideStorage } from "./pth_values.ts";
 * console.log(viewOutsideStorage({ count: 1 << 20, last: 0 }, 1)); // "has 1048576 elements, more than its storage's 1 (…)"
 * console.log(viewOutsideStorage({ count: 6, last: 5 }, 6)); // null
 * ```
 */
export function viewOutsideStorage(extent: ViewExtent, numel: number): string | null {
  if (extent.last >= numel) {
    return `reaches element ${extent.last} of a storage of ${numel} elements`;
  }
  if (extent.count > numel) {
    return `has ${extent.count} elements, more than its storage's ${numel} (overlapping strides such as 0 are refused)`;
  }
  return null;
}
