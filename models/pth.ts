/**
 * Read official PyTorch checkpoints (`.pth`/`.pt` files written by
 * `torch.save` since PyTorch 1.6) without PyTorch and without ever executing
 * anything from the file.
 *
 * Such a file is a zip archive holding `<archive>/data.pkl` (a pickle of the
 * saved object), one `<archive>/data/<key>` record of raw bytes per tensor
 * storage, `<archive>/byteorder` and `<archive>/version`. The pickle is run by
 * a small whitelisting virtual machine: it rebuilds dicts, lists, numbers and
 * strings itself and knows only the handful of globals a state dict needs
 * (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
 * `torch._utils._rebuild_parameter`, the storage types, …). Any other global
 * (`os.system`, `builtins.eval`, `argparse.Namespace`, …) makes it refuse the
 * file, unless `{ skipUnknown: true }` is passed, in which case such globals
 * become inert {@link PickleObject} placeholders; they are never called.
 * Globals that could only serve an attack (running commands, loading code,
 * reaching attributes by name: see `pickle_globals.ts`) are refused even then.
 *
 * The file is untrusted: the zip layer (`zip.ts`) checks every entry's
 * CRC-32 and caps inflation; the virtual machine bounds opcode arguments,
 * the stack, the memo, each container, the estimated heap of what it builds
 * and the opcodes it runs ({@link PTH_LIMITS}); every tensor view is checked
 * against the bytes its storage record really holds (no negative, overlapping
 * or overflowing strides), and a state dict against the bytes all its views
 * would decode to, all before allocating. Every refusal is a
 * {@link PthFormatError}: one line naming the file, the record and the limit.
 *
 * @example
 * ```ts
 * import { loadPthFile } from "./pth.ts";
 * // Official SLaK checkpoints keep `args` (an argparse.Namespace) next to the weights.
 * const weights = await loadPthFile("tests/fixtures/checkpoint.pth", { skipUnknown: true });
 * console.log([...weights.keys()]); // ["stem.weight", "stem.bias"]
 * ```
 * @module
 */
import { decodeFloat32, type Dtype, dtypeBytes, type Weights } from "./safetensors.ts";
import { ZipArchive } from "./zip.ts";
import { oneLine, quoteName } from "./quote.ts";
import { dangerousGlobal } from "./pickle_globals.ts";

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

/** Elements of a view and the last storage element it reads (offset - 1 when empty). */
interface ViewExtent {
  count: number;
  last: number;
}

/**
 * The extent of a strided view, or why it is invalid: dimensions, strides
 * and offset must be non-negative safe integers, and every index computed
 * from them must stay a safe integer (no silent rounding past 2^53).
 */
function viewExtent(
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
 */
function viewOutsideStorage(extent: ViewExtent, numel: number): string | null {
  if (extent.last >= numel) {
    return `reaches element ${extent.last} of a storage of ${numel} elements`;
  }
  if (extent.count > numel) {
    return `has ${extent.count} elements, more than its storage's ${numel} (overlapping strides such as 0 are refused)`;
  }
  return null;
}

// ---------------------------------------------------------------- options

/**
 * Options of {@link readPth}.
 *
 * @example
 * ```ts
 * import { type PthOptions, readPth } from "./pth.ts";
 * const opts: PthOptions = { skipUnknown: true, source: "checkpoint.pth" };
 * readPth(await Deno.readFile("tests/fixtures/checkpoint.pth"), opts);
 * ```
 */
export interface PthOptions {
  /**
   * Turn globals outside the whitelist into inert {@link PickleObject}
   * placeholders instead of refusing the file (default false: refuse).
   */
  skipUnknown?: boolean;
  /** Name used in error messages (the file path). */
  source?: string;
}

/**
 * Options of {@link pthStateDict} and {@link loadPthFile}.
 *
 * @example
 * ```ts
 * import { pthStateDict, type PthStateDictOptions } from "./pth.ts";
 * const opts: PthStateDictOptions = { skipUnknown: true, entry: "model_ema" };
 * pthStateDict(await Deno.readFile("tests/fixtures/checkpoint.pth"), opts);
 * ```
 */
export interface PthStateDictOptions extends PthOptions {
  /**
   * Top-level key holding the state dict. Default: the first of `model`,
   * `state_dict`, `model_ema` whose value is a dict, else the top-level dict itself.
   */
  entry?: string;
  /** Leading key prefix to remove (default "module.", left by DataParallel). */
  stripPrefix?: string;
}

// ---------------------------------------------------------------- pickle VM

const STORAGE_DTYPES: Record<string, Dtype> = {
  "torch.FloatStorage": "F32",
  "torch.HalfStorage": "F16",
  "torch.BFloat16Storage": "BF16",
  "torch.DoubleStorage": "F64",
  "torch.LongStorage": "I64",
  "torch.IntStorage": "I32",
  "torch.ShortStorage": "I16",
  "torch.CharStorage": "I8",
  "torch.ByteStorage": "U8",
  "torch.BoolStorage": "BOOL",
};

/** The only callables a checkpoint may name; each is interpreted here, never looked up. */
const CALLABLES = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  // Protocol 2 pickles Python 3 `bytes` as _codecs.encode(str, "latin1").
  "_codecs.encode",
]);

const MARK = Symbol("mark");

type Stackable = PickleValue | typeof MARK;

/**
 * Estimated heap bytes of the objects the VM builds: measured on V8, doubled
 * for what growing containers leave behind before the collector runs.
 */
const HEAP_COST = { map: 300, set: 240, array: 64, item: 16, entry: 96, object: 300, string: 48 };

function typeOf(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof Map) return "dict";
  if (Array.isArray(v)) return "list/tuple";
  if (v instanceof PickleGlobal) return `global ${v.fullName}`;
  if (v instanceof PickleObject) return `placeholder ${v.global}`;
  if (v instanceof PthTensor) return "tensor";
  if (v instanceof PthStorage) return "storage";
  return typeof v;
}

function toInt(v: unknown, what: string): number {
  if (
    typeof v === "bigint" && v >= BigInt(Number.MIN_SAFE_INTEGER) &&
    v <= BigInt(Number.MAX_SAFE_INTEGER)
  ) {
    return Number(v);
  }
  if (typeof v === "number" && Number.isSafeInteger(v)) return v;
  throw new Error(`${what} is ${typeOf(v)}, not an integer`);
}

function toIntList(v: unknown, what: string): number[] {
  if (!Array.isArray(v)) throw new Error(`${what} is ${typeOf(v)}, not a tuple`);
  if (v.length > PTH_LIMITS.maxRank) {
    throw new Error(`${what} has ${v.length} entries (limit ${PTH_LIMITS.maxRank} dimensions)`);
  }
  return v.map((x, i) => toInt(x, `${what}[${i}]`));
}

/** What the VM needs from the archive around the pickle. */
interface UnpicklerContext {
  /** Record name for messages, e.g. "archive/data.pkl". */
  record: string;
  skipUnknown: boolean;
  /** Estimated heap bytes the pickle's objects may take. */
  heapBudget: number;
  /** Opcodes the pickle may run. */
  opBudget: number;
  persistentLoad: (pid: PickleValue) => PickleValue;
  fail: (why: string) => never;
}

/**
 * A pickle virtual machine that builds values and never calls anything:
 * whitelisted globals are interpreted, others refused or kept inert. Every
 * opcode argument, the stack, the memo, each container and the estimated
 * heap of all values built are bounded before they grow.
 */
class Unpickler {
  #data: Uint8Array;
  #view: DataView;
  #pos = 0;
  /** Start of the opcode being run, for messages. */
  #at = 0;
  #stack: Stackable[] = [];
  /** Memo by index (an array: dense in practice, and faster than a Map). */
  #memo: Stackable[] = [];
  #memoCount = 0;
  #ctx: UnpicklerContext;
  #heapLeft: number;
  #text = new TextDecoder();

  constructor(data: Uint8Array, ctx: UnpicklerContext) {
    this.#data = data;
    this.#view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.#ctx = ctx;
    this.#heapLeft = ctx.heapBudget;
  }

  /** A one-line error naming the record, the opcode's byte and why. */
  #fail(why: string): never {
    return this.#ctx.fail(`${this.#ctx.record} (opcode at byte ${this.#at}): ${why}`);
  }

  #charge(bytes: number): void {
    this.#heapLeft -= bytes;
    if (this.#heapLeft < 0) {
      this.#fail(
        `the pickle builds more than ${this.#ctx.heapBudget} bytes of objects (limit ${PTH_LIMITS.baseHeapBytes} + ${PTH_LIMITS.heapPerFileByte} per byte of the file)`,
      );
    }
  }

  #need(n: number): number {
    if (!(n >= 0) || this.#pos + n > this.#data.byteLength) {
      this.#fail(`truncated pickle (needs ${n} bytes at byte ${this.#pos})`);
    }
    const at = this.#pos;
    this.#pos += n;
    return at;
  }

  #u8 = (): number => this.#view.getUint8(this.#need(1));
  #u16 = (): number => this.#view.getUint16(this.#need(2), true);
  #u32 = (): number => this.#view.getUint32(this.#need(4), true);
  #i32 = (): number => this.#view.getInt32(this.#need(4), true);
  #u64 = (): number => {
    const v = this.#view.getBigUint64(this.#need(8), true);
    if (v > BigInt(this.#data.byteLength)) {
      this.#fail(`truncated pickle (length ${v} at byte ${this.#pos - 8})`);
    }
    return Number(v);
  };

  #bytes(n: number): Uint8Array {
    const at = this.#need(n);
    return this.#data.subarray(at, at + n);
  }

  /** A newline-terminated argument of at most `max` bytes. */
  #line(max = 1024): string {
    const end = this.#data.subarray(this.#pos, this.#pos + max + 1).indexOf(0x0a);
    if (end < 0) {
      this.#fail(
        this.#pos + max + 1 > this.#data.byteLength
          ? `truncated pickle (unterminated line at byte ${this.#pos})`
          : `text argument longer than ${max} bytes`,
      );
    }
    const s = this.#decode(this.#data.subarray(this.#pos, this.#pos + end));
    this.#pos += end + 1;
    this.#charge(HEAP_COST.string + s.length);
    return s;
  }

  /** UTF-8 text; short ASCII (most keys and names) without the decoder's per-call cost. */
  #decode(bytes: Uint8Array): string {
    if (bytes.length <= 64 && bytes.every((b) => b < 0x80)) {
      return String.fromCharCode(...bytes);
    }
    return this.#text.decode(bytes);
  }

  #str(n: number): string {
    const s = this.#decode(this.#bytes(n));
    this.#charge(HEAP_COST.string + 2 * s.length);
    return s;
  }

  #byteString(n: number): Uint8Array {
    this.#charge(HEAP_COST.object + n);
    return this.#bytes(n).slice();
  }

  #push(v: Stackable): void {
    if (this.#stack.length >= PTH_LIMITS.maxStack) {
      this.#fail(`stack deeper than ${PTH_LIMITS.maxStack} values`);
    }
    this.#stack.push(v);
  }

  #pop(): PickleValue {
    const v = this.#stack.pop();
    if (v === undefined) this.#fail("corrupt pickle (stack underflow)");
    if (v === MARK) this.#fail("corrupt pickle (unexpected MARK)");
    return v as PickleValue;
  }

  #top(): PickleValue {
    const v = this.#stack[this.#stack.length - 1];
    if (v === undefined || v === MARK) this.#fail("corrupt pickle (no object on the stack)");
    return v as PickleValue;
  }

  #popMark(): PickleValue[] {
    const at = this.#stack.lastIndexOf(MARK);
    if (at < 0) this.#fail("corrupt pickle (no MARK)");
    const items = this.#stack.splice(at) as PickleValue[];
    items.shift();
    return items;
  }

  #tuple(items: PickleValue[]): PickleValue[] {
    this.#charge(HEAP_COST.array + HEAP_COST.item * items.length);
    return items;
  }

  #memoize(index: number): void {
    if (this.#memo[index] === undefined) {
      if (this.#memoCount >= PTH_LIMITS.maxMemo) {
        this.#fail(`memo holds more than ${PTH_LIMITS.maxMemo} entries`);
      }
      this.#memoCount++;
      this.#charge(HEAP_COST.entry);
    }
    this.#memo[index] = this.#top();
  }

  /** Two's-complement little-endian integer, decoded in linear time through hex. */
  #long(n: number): number | bigint {
    if (n > PTH_LIMITS.maxLongBytes) {
      this.#fail(`integer of ${n} bytes (limit ${PTH_LIMITS.maxLongBytes})`);
    }
    const bytes = this.#bytes(n);
    if (n === 0) return 0;
    let hex = "";
    for (let i = n - 1; i >= 0; i--) hex += bytes[i].toString(16).padStart(2, "0");
    let v = BigInt(`0x${hex}`);
    if (bytes[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    this.#charge(HEAP_COST.string + n);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #global(module: string, name: string): PickleGlobal {
    const full = `${module}.${name}`;
    this.#charge(HEAP_COST.object);
    if (CALLABLES.has(full) || full in STORAGE_DTYPES) return new PickleGlobal(module, name, true);
    const danger = dangerousGlobal(module, name);
    if (danger) {
      this.#fail(
        `refused the file: its pickle names the global ${
          quoteName(full)
        } (${danger}), which no checkpoint needs; nothing in the file was executed`,
      );
    }
    if (this.#ctx.skipUnknown) return new PickleGlobal(module, name, false);
    this.#fail(
      `refused the file: its pickle names the global ${
        quoteName(full)
      }, which is not on the weights whitelist (nothing in the file was executed; pass { skipUnknown: true } to read it with such objects as inert placeholders)`,
    );
  }

  #call(fn: PickleValue, args: PickleValue[]): PickleValue {
    if (!(fn instanceof PickleGlobal)) this.#fail(`corrupt pickle (calls a ${typeOf(fn)})`);
    const global = fn as PickleGlobal;
    this.#charge(HEAP_COST.object);
    if (!global.known) return new PickleObject(global.fullName, args);
    switch (global.fullName) {
      case "collections.OrderedDict": {
        const d = new Map<PickleValue, PickleValue>();
        const init = args[0];
        if (Array.isArray(init)) {
          for (const kv of init) if (Array.isArray(kv) && kv.length === 2) d.set(kv[0], kv[1]);
        }
        this.#charge(HEAP_COST.map + HEAP_COST.entry * d.size);
        return d;
      }
      case "torch._utils._rebuild_tensor":
      case "torch._utils._rebuild_tensor_v2":
        return this.#rebuildTensor(global.fullName, args);
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
        if (!(args[0] instanceof PthTensor)) {
          this.#fail(`${global.fullName}: expected a tensor, got ${typeOf(args[0])}`);
        }
        return args[0];
      case "_codecs.encode": {
        const [s, enc] = args;
        if (typeof s !== "string") this.#fail(`_codecs.encode of ${typeOf(s)}`);
        const text = s as string;
        this.#charge(HEAP_COST.object + 3 * text.length);
        if (enc === "latin1" || enc === "latin-1") {
          return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
        }
        return new TextEncoder().encode(text);
      }
      default:
        this.#fail(`${global.fullName} cannot be called`);
    }
  }

  /** A tensor view, checked against the elements its storage really has. */
  #rebuildTensor(name: string, args: PickleValue[]): PthTensor {
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof PthStorage)) {
      this.#fail(`${name}: expected a storage, got ${typeOf(storage)}`);
    }
    const s = storage as PthStorage;
    let shape: number[] = [];
    let strides: number[] = [];
    let start = 0;
    try {
      shape = toIntList(size, "tensor size");
      strides = toIntList(stride, "tensor stride");
      start = toInt(offset, "storage offset");
    } catch (e) {
      this.#fail(`${name}: ${(e as Error).message}`);
    }
    const extent = viewExtent(shape, strides, start);
    if (typeof extent === "string") this.#fail(`${name}: tensor view ${extent}`);
    const outside = (extent as ViewExtent).count > 0 &&
      viewOutsideStorage(extent as ViewExtent, s.numel);
    if (outside) {
      this.#fail(
        `tensor [${shape}] (offset ${start}, stride [${strides}]) on storage data/${s.key} ${outside}`,
      );
    }
    this.#charge(HEAP_COST.object);
    return new PthTensor(s, start, shape, strides);
  }

  #setItems(target: PickleValue, items: PickleValue[]): void {
    const dict = target instanceof Map
      ? target
      : target instanceof PickleObject
      ? target.dictItems
      : null;
    if (!dict) this.#fail(`corrupt pickle (SETITEM on a ${typeOf(target)})`);
    const d = dict as Map<PickleValue, PickleValue>;
    if (d.size + items.length / 2 > PTH_LIMITS.maxItems) {
      this.#fail(`a dict grows past ${PTH_LIMITS.maxItems} items`);
    }
    this.#charge(HEAP_COST.entry * (items.length >> 1));
    for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
  }

  #append(target: PickleValue, items: PickleValue[]): void {
    const list = Array.isArray(target)
      ? target
      : target instanceof PickleObject
      ? target.listItems
      : null;
    if (!list) this.#fail(`corrupt pickle (APPEND on a ${typeOf(target)})`);
    const l = list as PickleValue[];
    if (l.length + items.length > PTH_LIMITS.maxItems) {
      this.#fail(`a list grows past ${PTH_LIMITS.maxItems} items`);
    }
    this.#charge(HEAP_COST.item * items.length);
    // One push per item: spreading a long list into push() overflows the JS call stack.
    for (const v of items) l.push(v);
  }

  #addItems(target: PickleValue, items: PickleValue[]): void {
    if (!(target instanceof Set)) this.#fail(`corrupt pickle (ADDITEMS on a ${typeOf(target)})`);
    const s = target as Set<PickleValue>;
    if (s.size + items.length > PTH_LIMITS.maxItems) {
      this.#fail(`a set grows past ${PTH_LIMITS.maxItems} items`);
    }
    this.#charge(HEAP_COST.entry * items.length);
    for (const v of items) s.add(v);
  }

  run(): PickleValue {
    try {
      return this.#run();
    } catch (e) {
      if (e instanceof PthFormatError) throw e;
      // Errors of the helpers (persistent ids, integer checks) get the record and byte too.
      this.#fail(oneLine((e instanceof Error ? e.message : String(e)).slice(0, 300)));
    }
  }

  #run(): PickleValue {
    const data = this.#data;
    let opsLeft = this.#ctx.opBudget;
    while (this.#pos < data.byteLength) {
      const at = this.#pos;
      this.#at = at;
      if (--opsLeft < 0) {
        this.#fail(
          `more than ${this.#ctx.opBudget} opcodes (limit ${PTH_LIMITS.baseOps} + ${PTH_LIMITS.opsPerFileByte} per byte of the file)`,
        );
      }
      const op = data[this.#pos++];
      switch (op) {
        case 0x80: { // PROTO
          const v = this.#u8();
          if (v > 5) this.#fail(`unsupported pickle protocol ${v}`);
          break;
        }
        case 0x95: // FRAME: framing only groups opcodes; the data is all in memory already
          this.#need(8);
          break;
        case 0x2e: // STOP
          return this.#pop();
        case 0x28: // MARK
          this.#push(MARK);
          break;
        case 0x30: // POP
          if (this.#stack[this.#stack.length - 1] === MARK) this.#popMark();
          else this.#pop();
          break;
        case 0x31: // POP_MARK
          this.#popMark();
          break;
        case 0x32: // DUP
          this.#push(this.#top());
          break;
        case 0x4e: // NONE
          this.#push(null);
          break;
        case 0x88: // NEWTRUE
          this.#push(true);
          break;
        case 0x89: // NEWFALSE
          this.#push(false);
          break;
        case 0x4a: // BININT
          this.#push(this.#i32());
          break;
        case 0x4b: // BININT1
          this.#push(this.#u8());
          break;
        case 0x4d: // BININT2
          this.#push(this.#u16());
          break;
        case 0x8a: // LONG1
          this.#push(this.#long(this.#u8()));
          break;
        case 0x8b: // LONG4
          this.#push(this.#long(this.#i32()));
          break;
        case 0x49: { // INT (text); "00"/"01" are protocol 0 booleans
          const s = this.#line(PTH_LIMITS.maxIntDigits + 2);
          this.#push(s === "00" ? false : s === "01" ? true : this.#parseInt(s));
          break;
        }
        case 0x4c: // LONG (text)
          this.#push(this.#parseInt(this.#line(PTH_LIMITS.maxIntDigits + 2).replace(/L$/, "")));
          break;
        case 0x46: // FLOAT (text)
          this.#push(Number.parseFloat(this.#line()));
          break;
        case 0x47: // BINFLOAT: big-endian f64
          this.#push(this.#view.getFloat64(this.#need(8), false));
          break;
        case 0x58: // BINUNICODE
          this.#push(this.#str(this.#u32()));
          break;
        case 0x8c: // SHORT_BINUNICODE
          this.#push(this.#str(this.#u8()));
          break;
        case 0x8d: // BINUNICODE8
          this.#push(this.#str(this.#u64()));
          break;
        case 0x54: // BINSTRING (Python 2 str; torch.load decodes it as UTF-8)
          this.#push(this.#str(this.#i32()));
          break;
        case 0x55: // SHORT_BINSTRING
          this.#push(this.#str(this.#u8()));
          break;
        case 0x42: // BINBYTES
          this.#push(this.#byteString(this.#u32()));
          break;
        case 0x43: // SHORT_BINBYTES
          this.#push(this.#byteString(this.#u8()));
          break;
        case 0x8e: // BINBYTES8
        case 0x96: // BYTEARRAY8
          this.#push(this.#byteString(this.#u64()));
          break;
        case 0x29: // EMPTY_TUPLE
          this.#push(this.#tuple([]));
          break;
        case 0x74: // TUPLE
        case 0x6c: // LIST
          this.#push(this.#tuple(this.#popMark()));
          break;
        case 0x85: // TUPLE1
          this.#push(this.#tuple([this.#pop()]));
          break;
        case 0x86: { // TUPLE2
          const b = this.#pop();
          this.#push(this.#tuple([this.#pop(), b]));
          break;
        }
        case 0x87: { // TUPLE3
          const c = this.#pop();
          const b = this.#pop();
          this.#push(this.#tuple([this.#pop(), b, c]));
          break;
        }
        case 0x5d: // EMPTY_LIST
          this.#push(this.#tuple([]));
          break;
        case 0x7d: // EMPTY_DICT
          this.#charge(HEAP_COST.map);
          this.#push(new Map());
          break;
        case 0x64: { // DICT
          this.#charge(HEAP_COST.map);
          const d = new Map<PickleValue, PickleValue>();
          this.#setItems(d, this.#popMark());
          this.#push(d);
          break;
        }
        case 0x8f: // EMPTY_SET
          this.#charge(HEAP_COST.set);
          this.#push(new Set());
          break;
        case 0x91: { // FROZENSET
          this.#charge(HEAP_COST.set);
          const s = new Set<PickleValue>();
          this.#addItems(s, this.#popMark());
          this.#push(s);
          break;
        }
        case 0x90: { // ADDITEMS
          const items = this.#popMark();
          this.#addItems(this.#top(), items);
          break;
        }
        case 0x61: { // APPEND
          const v = this.#pop();
          this.#append(this.#top(), [v]);
          break;
        }
        case 0x65: { // APPENDS
          const items = this.#popMark();
          this.#append(this.#top(), items);
          break;
        }
        case 0x73: { // SETITEM
          const v = this.#pop();
          const k = this.#pop();
          this.#setItems(this.#top(), [k, v]);
          break;
        }
        case 0x75: { // SETITEMS
          const items = this.#popMark();
          this.#setItems(this.#top(), items);
          break;
        }
        case 0x71: // BINPUT
          this.#memoize(this.#u8());
          break;
        case 0x72: // LONG_BINPUT
          this.#memoize(this.#u32());
          break;
        case 0x70: // PUT (text)
          this.#memoize(this.#parseIndex(this.#line(20)));
          break;
        case 0x94: // MEMOIZE
          this.#memoize(this.#memoCount);
          break;
        case 0x68: // BINGET
          this.#push(this.#get(this.#u8()));
          break;
        case 0x6a: // LONG_BINGET
          this.#push(this.#get(this.#u32()));
          break;
        case 0x67: // GET (text)
          this.#push(this.#get(this.#parseIndex(this.#line(20))));
          break;
        case 0x63: { // GLOBAL
          const module = this.#line();
          this.#push(this.#global(module, this.#line()));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.#pop();
          const module = this.#pop();
          if (typeof module !== "string" || typeof name !== "string") {
            this.#fail("corrupt pickle (STACK_GLOBAL needs two strings)");
          }
          this.#push(this.#global(module as string, name as string));
          break;
        }
        case 0x69: { // INST: class named inline, arguments since the MARK
          const module = this.#line();
          const cls = this.#global(module, this.#line());
          this.#push(this.#call(cls, this.#popMark()));
          break;
        }
        case 0x6f: { // OBJ: class and arguments since the MARK
          const [cls, ...args] = this.#popMark();
          this.#push(this.#call(cls, args));
          break;
        }
        case 0x52: { // REDUCE
          const args = this.#pop();
          const fn = this.#pop();
          if (!Array.isArray(args)) {
            this.#fail(`corrupt pickle (REDUCE arguments are a ${typeOf(args)})`);
          }
          this.#push(this.#call(fn, args as PickleValue[]));
          break;
        }
        case 0x81: { // NEWOBJ: cls.__new__(cls, *args)
          const args = this.#pop();
          const cls = this.#pop();
          if (!Array.isArray(args)) {
            this.#fail(`corrupt pickle (NEWOBJ arguments are a ${typeOf(args)})`);
          }
          this.#push(this.#call(cls, args as PickleValue[]));
          break;
        }
        case 0x92: { // NEWOBJ_EX: keyword arguments are kept only on placeholders
          const kwargs = this.#pop();
          const args = this.#pop();
          const cls = this.#pop();
          if (!Array.isArray(args)) {
            this.#fail(`corrupt pickle (NEWOBJ_EX arguments are a ${typeOf(args)})`);
          }
          const obj = this.#call(cls, args as PickleValue[]);
          if (obj instanceof PickleObject) obj.state = kwargs;
          this.#push(obj);
          break;
        }
        case 0x62: { // BUILD: only placeholders keep their state (OrderedDict._metadata is dropped)
          const state = this.#pop();
          const obj = this.#top();
          if (obj instanceof PickleObject) obj.state = state;
          break;
        }
        case 0x51: // BINPERSID
          this.#push(this.#ctx.persistentLoad(this.#pop()));
          break;
        case 0x50: // PERSID (text id)
          this.#push(this.#ctx.persistentLoad(this.#line()));
          break;
        default:
          this.#fail(
            `unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} (${
              quoteName(String.fromCharCode(op))
            })`,
          );
      }
    }
    this.#fail("truncated pickle (no STOP)");
  }

  #get(i: number): Stackable {
    const v = this.#memo[i];
    if (v === undefined) this.#fail(`corrupt pickle (memo ${i} is not set)`);
    return v as Stackable;
  }

  #parseInt(s: string): number | bigint {
    const t = s.trim();
    if (!/^[+-]?\d+$/.test(t)) this.#fail(`corrupt pickle (bad integer ${quoteName(s)})`);
    if (t.length <= 15) return Number(t);
    const v = BigInt(t);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #parseIndex(s: string): number {
    const v = this.#parseInt(s);
    if (typeof v !== "number" || v < 0) {
      this.#fail(`corrupt pickle (bad memo index ${quoteName(s)})`);
    }
    return v as number;
  }
}

// ---------------------------------------------------------------- public API

/**
 * Read a `torch.save` checkpoint and return the saved top-level object, with
 * tensors as lazily decoded {@link PthTensor}s. Refuses (throws a
 * {@link PthFormatError}, naming the global) any pickle global outside the
 * whitelist unless `skipUnknown` is set, and globals that could only serve
 * an attack (`os.system`, `builtins.eval`, …) even then. Every size the file
 * declares is checked against {@link PTH_LIMITS} and the bytes present
 * before memory is allocated for it.
 *
 * @example
 * ```ts
 * import { PthTensor, readPth } from "./pth.ts";
 * const ckpt = readPth(await Deno.readFile("tests/fixtures/checkpoint.pth"), { skipUnknown: true });
 * const top = ckpt as Map<string, unknown>;
 * console.log(top.get("epoch")); // 3
 * const model = top.get("model") as Map<string, PthTensor>;
 * console.log(model.get("module.stem.weight")!.toFloat32()); // Float32Array(6) [-1, -0.5, 0, 0.5, 1, 1.5]
 * ```
 */
export function readPth(bytes: Uint8Array, opts: PthOptions = {}): PickleValue {
  const source = oneLine(opts.source ?? "PyTorch checkpoint");
  try {
    return readPthUnchecked(bytes, source, opts.skipUnknown ?? false);
  } catch (e) {
    if (e instanceof PthFormatError) throw e;
    // A last line of defence: whatever slipped past the checks still leaves as one line.
    const msg = oneLine((e instanceof Error ? e.message : String(e)).slice(0, 300));
    throw new PthFormatError(`cannot read ${source}: ${msg}`);
  }
}

function readPthUnchecked(bytes: Uint8Array, source: string, skipUnknown: boolean): PickleValue {
  const fail: (why: string) => never = (why) => {
    throw new PthFormatError(`cannot read ${source}: ${why}`);
  };
  if (
    bytes.byteLength < 4 || bytes[0] !== 0x50 || bytes[1] !== 0x4b || bytes[2] !== 0x03 ||
    bytes[3] !== 0x04
  ) {
    if (bytes[0] === 0x80) {
      fail(
        "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a recent PyTorch",
      );
    }
    fail("not a torch.save zip archive (no zip signature at the start)");
  }
  const zip = new ZipArchive(bytes, fail);
  const entries = zip.entries;
  const names = [...entries.keys()];
  if (
    names.some((n) => /(^|\/)constants\.pkl$/.test(n)) && names.some((n) => /(^|\/)code\//.test(n))
  ) {
    fail("this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint");
  }
  // PyTorch's reader takes the archive folder from the first entry; fall back to any <dir>/data.pkl.
  const first = names[0]?.split("/")[0];
  const pkl = entries.has(`${first}/data.pkl`)
    ? `${first}/data.pkl`
    : names.find((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (!pkl) fail("no <archive>/data.pkl record");
  const prefix = pkl.slice(0, -"data.pkl".length);
  const record = (name: string): Uint8Array => zip.read(prefix + name);
  let littleEndian = true;
  if (entries.has(`${prefix}byteorder`)) {
    if (entries.get(`${prefix}byteorder`)!.size > 16) fail(`${prefix}byteorder is too long`);
    const order = new TextDecoder().decode(record("byteorder")).trim();
    if (order !== "little" && order !== "big") fail(`unknown byteorder ${quoteName(order)}`);
    littleEndian = order === "little";
  }
  const pickleSize = entries.get(pkl)!.size;
  if (pickleSize > PTH_LIMITS.maxPickleBytes) {
    fail(`${pkl} is ${pickleSize} bytes (limit ${PTH_LIMITS.maxPickleBytes})`);
  }
  const storages = new Map<string, PthStorage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      throw new Error(`corrupt pickle (unknown persistent id ${typeOf(pid)})`);
    }
    const [, type, key, location, numelValue] = pid;
    if (!(type instanceof PickleGlobal) || !/Storage$/.test(type.name)) {
      throw new Error(`corrupt pickle (storage type is a ${typeOf(type)})`);
    }
    if (typeof key !== "string") {
      throw new Error(`corrupt pickle (storage key is a ${typeOf(key)})`);
    }
    const numel = toInt(numelValue, "storage size");
    const name = `data/${key}`;
    const cached = storages.get(key);
    if (cached) {
      if (cached.typeName !== type.fullName || cached.numel !== numel) {
        throw new Error(
          `storage ${
            quoteName(name)
          } is declared twice, as ${cached.numel} × ${cached.typeName} and ${numel} × ${type.fullName}`,
        );
      }
      return cached;
    }
    const entry = entries.get(prefix + name);
    if (!entry) throw new Error(`missing record ${quoteName(prefix + name)}`);
    const dtype = STORAGE_DTYPES[type.fullName] ?? null;
    if (numel < 0) throw new Error(`storage ${quoteName(name)} has ${numel} elements`);
    // The record's size is known from the directory: check it before anything is read.
    if (dtype !== null && entry.size < numel * dtypeBytes(dtype)) {
      throw new Error(
        `storage ${quoteName(name)} declares ${numel} × ${type.fullName} (${
          numel * dtypeBytes(dtype)
        } bytes) but its record holds ${entry.size} bytes`,
      );
    }
    let raw: Uint8Array | null = null;
    const storage = new PthStorage(
      key,
      dtype,
      type.fullName,
      String(location).slice(0, 64),
      numel,
      littleEndian,
      () => (raw ??= record(name)),
      source,
    );
    storages.set(key, storage);
    return storage;
  };
  return new Unpickler(record("data.pkl"), {
    record: pkl,
    skipUnknown,
    heapBudget: PTH_LIMITS.baseHeapBytes + PTH_LIMITS.heapPerFileByte * bytes.byteLength,
    opBudget: PTH_LIMITS.baseOps + PTH_LIMITS.opsPerFileByte * bytes.byteLength,
    persistentLoad,
    fail,
  }).run();
}

/** A dict key for a message: strings quoted, other values by type. */
function describeKey(k: PickleValue): string {
  return typeof k === "string" ? quoteName(k) : typeOf(k);
}

/**
 * Read a `torch.save` checkpoint as f32 weights: the state dict found under
 * `model`, `state_dict` or `model_ema` (first present, or `opts.entry`), or
 * the top-level dict itself, with a leading `module.` stripped from keys.
 * Non-tensor entries are skipped. The tensors together may decode to at most
 * {@link PTH_LIMITS}`.outputPerStorageByte` f32 bytes per byte of the
 * storages they view (plus 1 MiB), checked before any is decoded.
 *
 * @example
 * ```ts
 * import { pthStateDict } from "./pth.ts";
 * const bytes = await Deno.readFile("tests/fixtures/checkpoint.pth");
 * const ema = pthStateDict(bytes, { skipUnknown: true, entry: "model_ema" });
 * console.log(ema.get("stem.bias")); // { shape: [2], data: Float32Array [-1, -2] }
 * ```
 */
export function pthStateDict(bytes: Uint8Array, opts: PthStateDictOptions = {}): Weights {
  const source = oneLine(opts.source ?? "PyTorch checkpoint");
  const fail: (why: string) => never = (why) => {
    throw new PthFormatError(`cannot read ${source}: ${why}`);
  };
  const top = readPth(bytes, { ...opts, source });
  if (!(top instanceof Map)) fail(`the saved object is a ${typeOf(top)}, not a dict`);
  let dict: Map<PickleValue, PickleValue> = top as Map<PickleValue, PickleValue>;
  let where = "the top-level dict";
  if (opts.entry !== undefined) {
    const v = dict.get(opts.entry);
    if (!(v instanceof Map)) {
      const keys = [...dict.keys()];
      const shown = keys.slice(0, 20).map(describeKey).join(", ");
      fail(
        `no dict under ${quoteName(opts.entry)} (top-level keys: ${shown}${
          keys.length > 20 ? `, … ${keys.length} in all` : ""
        })`,
      );
    }
    dict = v as Map<PickleValue, PickleValue>;
    where = quoteName(opts.entry);
  } else {
    for (const key of ["model", "state_dict", "model_ema"]) {
      const v = dict.get(key);
      if (v instanceof Map) {
        dict = v;
        where = `"${key}"`;
        break;
      }
    }
  }
  const strip = opts.stripPrefix ?? "module.";
  const tensors: [string, string, PthTensor][] = [];
  const names = new Set<string>();
  const storages = new Set<PthStorage>();
  let outputBytes = 0;
  for (const [k, v] of dict) {
    if (!(v instanceof PthTensor)) continue;
    if (typeof k !== "string") fail(`a tensor in ${where} has a ${typeOf(k)} key, not a string`);
    const key = k as string;
    const name = strip && key.startsWith(strip) ? key.slice(strip.length) : key;
    if (names.has(name)) {
      fail(`duplicate key ${quoteName(name)} after removing the prefix ${quoteName(strip)}`);
    }
    names.add(name);
    if (v.dtype === null) {
      fail(`tensor ${quoteName(key)}: cannot decode a tensor of ${v.storage.typeName}`);
    }
    tensors.push([key, name, v]);
    storages.add(v.storage);
    outputBytes += 4 * v.shape.reduce((a, b) => a * b, 1);
  }
  if (tensors.length === 0) fail(`no tensors in ${where}`);
  let storageBytes = 0;
  for (const s of storages) storageBytes += s.dtype ? s.numel * dtypeBytes(s.dtype) : 0;
  const allowed = PTH_LIMITS.outputPerStorageByte * storageBytes + (1 << 20);
  if (outputBytes > allowed) {
    fail(
      `the tensors of ${where} would decode to ${outputBytes} bytes from ${storageBytes} bytes of storage (limit ${PTH_LIMITS.outputPerStorageByte}× + 1 MiB: views repeat one storage too often)`,
    );
  }
  const out: Weights = new Map();
  const prefix = `cannot read ${source}: `;
  for (const [key, name, t] of tensors) {
    try {
      out.set(name, { shape: [...t.shape], data: t.toFloat32() });
    } catch (e) {
      const msg = oneLine(e instanceof Error ? e.message : String(e));
      fail(`tensor ${quoteName(key)}: ${msg.startsWith(prefix) ? msg.slice(prefix.length) : msg}`);
    }
  }
  return out;
}

/**
 * Read a `torch.save` checkpoint file from disk as f32 weights (see
 * {@link pthStateDict}); errors name the file.
 *
 * @example
 * ```ts
 * import { loadPthFile } from "./pth.ts";
 * const weights = await loadPthFile("tests/fixtures/state_dict.pth");
 * console.log(weights.get("bn.num_batches_tracked")); // { shape: [], data: Float32Array [7] }
 * ```
 */
export async function loadPthFile(path: string, opts: PthStateDictOptions = {}): Promise<Weights> {
  // A device or pipe would be read without end; checkpoints are regular files.
  if (!(await Deno.stat(path)).isFile) {
    throw new PthFormatError(`cannot read ${oneLine(path)}: not a regular file`);
  }
  return pthStateDict(await Deno.readFile(path), { source: path, ...opts });
}
