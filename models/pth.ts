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
import { inflateRawSync } from "node:zlib";
import { decodeFloat32, type Dtype, dtypeBytes, type Weights } from "./safetensors.ts";

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
    if (storage.dtype === null) {
      throw new Error(`cannot decode a tensor of ${storage.typeName}`);
    }
    let count = 1;
    for (const d of shape) count *= d;
    if (count === 0) return new Float32Array(0);
    let last = storageOffset;
    for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * stride[d];
    if (storageOffset < 0 || last >= storage.numel) {
      throw new Error(
        `tensor [${shape}] (offset ${storageOffset}, stride [${stride}]) reaches past its storage of ${storage.numel} elements`,
      );
    }
    const size = dtypeBytes(storage.dtype);
    const raw = storage.bytes();
    if (raw.byteLength < storage.numel * size) {
      throw new Error(
        `storage data/${storage.key} holds ${raw.byteLength} bytes, ${
          storage.numel * size
        } expected`,
      );
    }
    const span = last - storageOffset + 1;
    const src = decodeFloat32(
      raw.subarray(storageOffset * size, (last + 1) * size),
      storage.dtype,
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

// ---------------------------------------------------------------- zip

interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  compressedSize: number;
  size: number;
  headerOffset: number;
}

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;

function u64(view: DataView, at: number): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`zip64 field ${v} too large`);
  return Number(v);
}

/** Central directory of a zip archive (zip64 aware). */
function readZipDirectory(bytes: Uint8Array, fail: (why: string) => never): Map<string, ZipEntry> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = bytes.byteLength;
  let eocd = -1;
  for (let p = len - 22; p >= Math.max(0, len - 22 - U16_MAX); p--) {
    if (view.getUint32(p, true) === 0x06054b50) {
      eocd = p;
      break;
    }
  }
  if (eocd < 0) fail("truncated or not a zip archive (no end-of-central-directory record)");
  let count = view.getUint16(eocd + 10, true);
  let cdSize = view.getUint32(eocd + 12, true);
  let cdOffset = view.getUint32(eocd + 16, true);
  if (eocd >= 20 && view.getUint32(eocd - 20, true) === 0x07064b50) {
    const at = u64(view, eocd - 20 + 8);
    if (at + 56 > len || view.getUint32(at, true) !== 0x06064b50) {
      fail("corrupt zip64 end-of-central-directory record");
    }
    count = u64(view, at + 32);
    cdSize = u64(view, at + 40);
    cdOffset = u64(view, at + 48);
  } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
    fail("corrupt zip (zip64 sizes without a zip64 record)");
  }
  if (cdOffset + cdSize > len) {
    fail("truncated zip (central directory lies past the end of the file)");
  }
  const entries = new Map<string, ZipEntry>();
  const names = new TextDecoder();
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdOffset + cdSize || view.getUint32(p, true) !== 0x02014b50) {
      fail(`corrupt zip central directory (entry ${i})`);
    }
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    const entry: ZipEntry = {
      name: names.decode(bytes.subarray(p + 46, p + 46 + nameLen)),
      flags: view.getUint16(p + 8, true),
      method: view.getUint16(p + 10, true),
      compressedSize: view.getUint32(p + 20, true),
      size: view.getUint32(p + 24, true),
      headerOffset: view.getUint32(p + 42, true),
    };
    // Zip64 extended information: only the saturated fields are present, in this order.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = view.getUint16(e, true);
      const size = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let f = e + 4;
        if (entry.size === U32_MAX) (entry.size = u64(view, f)), (f += 8);
        if (entry.compressedSize === U32_MAX) (entry.compressedSize = u64(view, f)), (f += 8);
        if (entry.headerOffset === U32_MAX) entry.headerOffset = u64(view, f);
      }
      e += 4 + size;
    }
    entries.set(entry.name, entry);
    p = extraEnd + commentLen;
  }
  return entries;
}

/** The uncompressed bytes of one zip entry (a view into `bytes` when STORED). */
function zipEntryData(
  bytes: Uint8Array,
  entry: ZipEntry,
  fail: (why: string) => never,
): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = entry.headerOffset;
  if (h + 30 > bytes.byteLength || view.getUint32(h, true) !== 0x04034b50) {
    fail(`corrupt zip (bad local header for ${entry.name})`);
  }
  if (entry.flags & 1) fail(`zip entry ${entry.name} is encrypted`);
  const start = h + 30 + view.getUint16(h + 26, true) + view.getUint16(h + 28, true);
  const end = start + entry.compressedSize;
  if (end > bytes.byteLength) {
    fail(`truncated: zip entry ${entry.name} runs past the end of the file`);
  }
  const raw = bytes.subarray(start, end);
  let data: Uint8Array;
  if (entry.method === 0) {
    data = raw;
  } else if (entry.method === 8) {
    try {
      data = new Uint8Array(inflateRawSync(raw));
    } catch (e) {
      fail(`corrupt DEFLATE data in ${entry.name} (${e instanceof Error ? e.message : e})`);
    }
  } else {
    fail(`zip entry ${entry.name} uses unsupported compression method ${entry.method}`);
  }
  if (data!.byteLength !== entry.size) {
    fail(
      `corrupt zip entry ${entry.name}: ${data!.byteLength} bytes, directory says ${entry.size}`,
    );
  }
  return data!;
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
  return v.map((x, i) => toInt(x, `${what}[${i}]`));
}

class Unpickler {
  #data: Uint8Array;
  #view: DataView;
  #pos = 0;
  #stack: Stackable[] = [];
  #memo = new Map<number, Stackable>();
  #skipUnknown: boolean;
  #persistentLoad: (pid: PickleValue) => PickleValue;
  #text = new TextDecoder();

  constructor(
    data: Uint8Array,
    skipUnknown: boolean,
    persistentLoad: (pid: PickleValue) => PickleValue,
  ) {
    this.#data = data;
    this.#view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.#skipUnknown = skipUnknown;
    this.#persistentLoad = persistentLoad;
  }

  #need(n: number): number {
    if (!(n >= 0) || this.#pos + n > this.#data.byteLength) {
      throw new Error(`truncated pickle (needs ${n} bytes at byte ${this.#pos})`);
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
      throw new Error(`truncated pickle (length ${v} at byte ${this.#pos - 8})`);
    }
    return Number(v);
  };

  #bytes(n: number): Uint8Array {
    const at = this.#need(n);
    return this.#data.subarray(at, at + n);
  }

  #line(): string {
    const end = this.#data.indexOf(0x0a, this.#pos);
    if (end < 0) throw new Error(`truncated pickle (unterminated line at byte ${this.#pos})`);
    const s = this.#text.decode(this.#data.subarray(this.#pos, end));
    this.#pos = end + 1;
    return s;
  }

  #str(n: number): string {
    return this.#text.decode(this.#bytes(n));
  }

  #push(v: Stackable): void {
    this.#stack.push(v);
  }

  #pop(): PickleValue {
    const v = this.#stack.pop();
    if (v === undefined) throw new Error("corrupt pickle (stack underflow)");
    if (v === MARK) throw new Error("corrupt pickle (unexpected MARK)");
    return v;
  }

  #top(): PickleValue {
    const v = this.#stack[this.#stack.length - 1];
    if (v === undefined || v === MARK) throw new Error("corrupt pickle (no object on the stack)");
    return v;
  }

  #popMark(): PickleValue[] {
    const at = this.#stack.lastIndexOf(MARK);
    if (at < 0) throw new Error("corrupt pickle (no MARK)");
    const items = this.#stack.splice(at) as PickleValue[];
    items.shift();
    return items;
  }

  #long(bytes: Uint8Array): number | bigint {
    let v = 0n;
    for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]);
    if (bytes.length && bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #global(module: string, name: string): PickleGlobal {
    const full = `${module}.${name}`;
    if (CALLABLES.has(full) || full in STORAGE_DTYPES) return new PickleGlobal(module, name, true);
    if (this.#skipUnknown) return new PickleGlobal(module, name, false);
    throw new Error(
      `refused the file: its pickle names the global "${full}", which is not on the weights whitelist (nothing in the file was executed; pass { skipUnknown: true } to read it with such objects as inert placeholders)`,
    );
  }

  #call(fn: PickleValue, args: PickleValue[]): PickleValue {
    if (!(fn instanceof PickleGlobal)) throw new Error(`corrupt pickle (calls a ${typeOf(fn)})`);
    if (!fn.known) return new PickleObject(fn.fullName, args);
    switch (fn.fullName) {
      case "collections.OrderedDict": {
        const d = new Map<PickleValue, PickleValue>();
        const init = args[0];
        if (Array.isArray(init)) {
          for (const kv of init) if (Array.isArray(kv) && kv.length === 2) d.set(kv[0], kv[1]);
        }
        return d;
      }
      case "torch._utils._rebuild_tensor":
      case "torch._utils._rebuild_tensor_v2": {
        const [storage, offset, size, stride] = args;
        if (!(storage instanceof PthStorage)) {
          throw new Error(`${fn.fullName}: expected a storage, got ${typeOf(storage)}`);
        }
        const shape = toIntList(size, "tensor size");
        const strides = toIntList(stride, "tensor stride");
        if (
          shape.length !== strides.length || shape.some((d) => d < 0) || strides.some((s) => s < 0)
        ) {
          throw new Error(`${fn.fullName}: invalid size [${shape}] / stride [${strides}]`);
        }
        return new PthTensor(storage, toInt(offset, "storage offset"), shape, strides);
      }
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state":
        if (!(args[0] instanceof PthTensor)) {
          throw new Error(`${fn.fullName}: expected a tensor, got ${typeOf(args[0])}`);
        }
        return args[0];
      case "_codecs.encode": {
        const [s, enc] = args;
        if (typeof s !== "string") throw new Error(`_codecs.encode of ${typeOf(s)}`);
        if (enc === "latin1" || enc === "latin-1") {
          return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
        }
        return new TextEncoder().encode(s);
      }
      default:
        throw new Error(`${fn.fullName} cannot be called`);
    }
  }

  #setItems(target: PickleValue, items: PickleValue[]): void {
    const dict = target instanceof Map
      ? target
      : target instanceof PickleObject
      ? target.dictItems
      : null;
    if (!dict) throw new Error(`corrupt pickle (SETITEM on a ${typeOf(target)})`);
    for (let i = 0; i + 1 < items.length; i += 2) dict.set(items[i], items[i + 1]);
  }

  #append(target: PickleValue, items: PickleValue[]): void {
    const list = Array.isArray(target)
      ? target
      : target instanceof PickleObject
      ? target.listItems
      : null;
    if (!list) throw new Error(`corrupt pickle (APPEND on a ${typeOf(target)})`);
    list.push(...items);
  }

  run(): PickleValue {
    const data = this.#data;
    while (this.#pos < data.byteLength) {
      const at = this.#pos;
      const op = data[this.#pos++];
      switch (op) {
        case 0x80: { // PROTO
          const v = this.#u8();
          if (v > 5) throw new Error(`unsupported pickle protocol ${v}`);
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
          this.#push(this.#long(this.#bytes(this.#u8())));
          break;
        case 0x8b: // LONG4
          this.#push(this.#long(this.#bytes(this.#i32())));
          break;
        case 0x49: { // INT (text); "00"/"01" are protocol 0 booleans
          const s = this.#line();
          this.#push(s === "00" ? false : s === "01" ? true : this.#parseInt(s));
          break;
        }
        case 0x4c: // LONG (text)
          this.#push(this.#parseInt(this.#line().replace(/L$/, "")));
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
          this.#push(this.#bytes(this.#u32()).slice());
          break;
        case 0x43: // SHORT_BINBYTES
          this.#push(this.#bytes(this.#u8()).slice());
          break;
        case 0x8e: // BINBYTES8
        case 0x96: // BYTEARRAY8
          this.#push(this.#bytes(this.#u64()).slice());
          break;
        case 0x29: // EMPTY_TUPLE
          this.#push([]);
          break;
        case 0x74: // TUPLE
        case 0x6c: // LIST
          this.#push(this.#popMark());
          break;
        case 0x85: // TUPLE1
          this.#push([this.#pop()]);
          break;
        case 0x86: { // TUPLE2
          const b = this.#pop();
          this.#push([this.#pop(), b]);
          break;
        }
        case 0x87: { // TUPLE3
          const c = this.#pop();
          const b = this.#pop();
          this.#push([this.#pop(), b, c]);
          break;
        }
        case 0x5d: // EMPTY_LIST
          this.#push([]);
          break;
        case 0x7d: // EMPTY_DICT
          this.#push(new Map());
          break;
        case 0x64: { // DICT
          const d = new Map<PickleValue, PickleValue>();
          this.#setItems(d, this.#popMark());
          this.#push(d);
          break;
        }
        case 0x8f: // EMPTY_SET
          this.#push(new Set());
          break;
        case 0x91: // FROZENSET
          this.#push(new Set(this.#popMark()));
          break;
        case 0x90: { // ADDITEMS
          const items = this.#popMark();
          const s = this.#top();
          if (!(s instanceof Set)) throw new Error(`corrupt pickle (ADDITEMS on a ${typeOf(s)})`);
          for (const v of items) s.add(v);
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
          this.#memo.set(this.#u8(), this.#top());
          break;
        case 0x72: // LONG_BINPUT
          this.#memo.set(this.#u32(), this.#top());
          break;
        case 0x70: // PUT (text)
          this.#memo.set(this.#parseIndex(this.#line()), this.#top());
          break;
        case 0x94: // MEMOIZE
          this.#memo.set(this.#memo.size, this.#top());
          break;
        case 0x68: // BINGET
          this.#push(this.#get(this.#u8()));
          break;
        case 0x6a: // LONG_BINGET
          this.#push(this.#get(this.#u32()));
          break;
        case 0x67: // GET (text)
          this.#push(this.#get(this.#parseIndex(this.#line())));
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
            throw new Error("corrupt pickle (STACK_GLOBAL needs two strings)");
          }
          this.#push(this.#global(module, name));
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
            throw new Error(`corrupt pickle (REDUCE arguments are a ${typeOf(args)})`);
          }
          this.#push(this.#call(fn, args));
          break;
        }
        case 0x81: { // NEWOBJ: cls.__new__(cls, *args)
          const args = this.#pop();
          const cls = this.#pop();
          if (!Array.isArray(args)) {
            throw new Error(`corrupt pickle (NEWOBJ arguments are a ${typeOf(args)})`);
          }
          this.#push(this.#call(cls, args));
          break;
        }
        case 0x92: { // NEWOBJ_EX: keyword arguments are kept only on placeholders
          const kwargs = this.#pop();
          const args = this.#pop();
          const cls = this.#pop();
          if (!Array.isArray(args)) {
            throw new Error(`corrupt pickle (NEWOBJ_EX arguments are a ${typeOf(args)})`);
          }
          const obj = this.#call(cls, args);
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
          this.#push(this.#persistentLoad(this.#pop()));
          break;
        case 0x50: // PERSID (text id)
          this.#push(this.#persistentLoad(this.#line()));
          break;
        default:
          throw new Error(
            `unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} (${
              JSON.stringify(String.fromCharCode(op))
            }) at byte ${at}`,
          );
      }
    }
    throw new Error("truncated pickle (no STOP)");
  }

  #get(i: number): Stackable {
    const v = this.#memo.get(i);
    if (v === undefined) throw new Error(`corrupt pickle (memo ${i} is not set)`);
    return v;
  }

  #parseInt(s: string): number | bigint {
    if (!/^[+-]?\d+$/.test(s.trim())) {
      throw new Error(`corrupt pickle (bad integer ${JSON.stringify(s)})`);
    }
    const v = BigInt(s.trim());
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : v;
  }

  #parseIndex(s: string): number {
    const v = this.#parseInt(s);
    if (typeof v !== "number" || v < 0) throw new Error(`corrupt pickle (bad memo index ${s})`);
    return v;
  }
}

// ---------------------------------------------------------------- public API

/**
 * Read a `torch.save` checkpoint and return the saved top-level object, with
 * tensors as lazily decoded {@link PthTensor}s. Refuses (throws, naming the
 * global) any pickle global outside the whitelist unless `skipUnknown` is set.
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
  const source = opts.source ?? "PyTorch checkpoint";
  try {
    return readPthUnchecked(bytes, source, opts.skipUnknown ?? false);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if (msg.startsWith(`cannot read ${source}: `)) throw e;
    throw new Error(`cannot read ${source}: ${msg}`);
  }
}

function readPthUnchecked(bytes: Uint8Array, source: string, skipUnknown: boolean): PickleValue {
  const fail: (why: string) => never = (why) => {
    throw new Error(`cannot read ${source}: ${why}`);
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
  const entries = readZipDirectory(bytes, fail);
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
  const record = (name: string): Uint8Array => {
    const e = entries.get(prefix + name);
    if (!e) fail(`missing record ${prefix + name}`);
    return zipEntryData(bytes, e, fail);
  };
  let littleEndian = true;
  if (entries.has(`${prefix}byteorder`)) {
    const order = new TextDecoder().decode(record("byteorder")).trim();
    if (order !== "little" && order !== "big") fail(`unknown byteorder ${JSON.stringify(order)}`);
    littleEndian = order === "little";
  }
  const storages = new Map<string, PthStorage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      throw new Error(`corrupt pickle (unknown persistent id ${typeOf(pid)})`);
    }
    const [, type, key, location, numel] = pid;
    if (!(type instanceof PickleGlobal)) {
      throw new Error(`corrupt pickle (storage type is a ${typeOf(type)})`);
    }
    if (typeof key !== "string") {
      throw new Error(`corrupt pickle (storage key is a ${typeOf(key)})`);
    }
    const cached = storages.get(key);
    if (cached) return cached;
    const name = `data/${key}`;
    if (!entries.has(prefix + name)) fail(`missing record ${prefix + name}`);
    let raw: Uint8Array | null = null;
    const storage = new PthStorage(
      key,
      STORAGE_DTYPES[type.fullName] ?? null,
      type.fullName,
      String(location),
      toInt(numel, "storage size"),
      littleEndian,
      () => (raw ??= record(name)),
    );
    storages.set(key, storage);
    return storage;
  };
  return new Unpickler(record("data.pkl"), skipUnknown, persistentLoad).run();
}

/**
 * Read a `torch.save` checkpoint as f32 weights: the state dict found under
 * `model`, `state_dict` or `model_ema` (first present, or `opts.entry`), or
 * the top-level dict itself, with a leading `module.` stripped from keys.
 * Non-tensor entries are skipped.
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
  const source = opts.source ?? "PyTorch checkpoint";
  const fail: (why: string) => never = (why) => {
    throw new Error(`cannot read ${source}: ${why}`);
  };
  const top = readPth(bytes, opts);
  if (!(top instanceof Map)) fail(`the saved object is a ${typeOf(top)}, not a dict`);
  let dict: Map<PickleValue, PickleValue> = top;
  let where = "the top-level dict";
  if (opts.entry !== undefined) {
    const v = top.get(opts.entry);
    if (!(v instanceof Map)) {
      const keys = [...top.keys()].map((k) => JSON.stringify(k)).join(", ");
      fail(`no dict under "${opts.entry}" (top-level keys: ${keys})`);
    }
    dict = v;
    where = `"${opts.entry}"`;
  } else {
    for (const key of ["model", "state_dict", "model_ema"]) {
      const v = top.get(key);
      if (v instanceof Map) {
        dict = v;
        where = `"${key}"`;
        break;
      }
    }
  }
  const strip = opts.stripPrefix ?? "module.";
  const out: Weights = new Map();
  for (const [k, v] of dict) {
    if (!(v instanceof PthTensor)) continue;
    const name = strip && String(k).startsWith(strip) ? String(k).slice(strip.length) : String(k);
    if (out.has(name)) fail(`duplicate key "${name}" after removing the prefix "${strip}"`);
    try {
      out.set(name, { shape: [...v.shape], data: v.toFloat32() });
    } catch (e) {
      fail(`tensor "${k}": ${e instanceof Error ? e.message : e}`);
    }
  }
  if (out.size === 0) fail(`no tensors in ${where}`);
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
  return pthStateDict(await Deno.readFile(path), { source: path, ...opts });
}
