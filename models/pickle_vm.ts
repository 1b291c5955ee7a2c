/**
 * The pickle virtual machine of the `.pth` reader: it runs a checkpoint's
 * `data.pkl` opcode by opcode, builds dicts, lists, numbers, strings and
 * tensors itself, interprets the few whitelisted globals a state dict needs
 * and never calls anything from the file. Every resource it uses is bounded
 * by {@link PTH_LIMITS}.
 *
 * @example
 * ```ts
 * import { Unpickler } from "./pickle_vm.ts";
 * const pickle = Uint8Array.from([0x80, 2, 0x5d, 0x4b, 7, 0x61, 0x2e]); // [7]
 * const fail = (why: string): never => {
 *   throw new Error(why);
 * };
 * const ctx = { record: "x", skipUnknown: false, heapBudget: 1 << 20, opBudget: 1 << 20 };
 * console.log(new Unpickler(pickle, { ...ctx, persistentLoad: () => null, fail }).run()); // [7]
 * ```
 * @module
 */
import type { Dtype } from "./safetensors.ts";
import { oneLine, quoteName } from "./quote.ts";
import { dangerousGlobal } from "./pickle_globals.ts";
import {
  PickleGlobal,
  PickleObject,
  type PickleValue,
  PTH_LIMITS,
  PthFormatError,
  PthStorage,
  PthTensor,
  type ViewExtent,
  viewExtent,
  viewOutsideStorage,
} from "./pth_values.ts";

/**
 * The pickled storage types this reader decodes, by `module.name`.
 *
 * @example
 * ```ts
 * import { STORAGE_DTYPES } from "./pickle_vm.ts";
 * console.log(STORAGE_DTYPES["torch.HalfStorage"]); // "F16"
 * ```
 */
export const STORAGE_DTYPES: Record<string, Dtype> = {
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

/**
 * What kind of pickle value `v` is, for messages.
 *
 * @example
 * ```ts
 * import { typeOf } from "./pickle_vm.ts";
 * console.log(typeOf(new Map()), typeOf(null), typeOf(2n)); // "dict" "None" "bigint"
 * ```
 */
export function typeOf(v: unknown): string {
  if (v === null) return "None";
  if (v instanceof Map) return "dict";
  if (Array.isArray(v)) return "list/tuple";
  if (v instanceof PickleGlobal) return `global ${v.fullName}`;
  if (v instanceof PickleObject) return `placeholder ${v.global}`;
  if (v instanceof PthTensor) return "tensor";
  if (v instanceof PthStorage) return "storage";
  return typeof v;
}

/**
 * `v` as a safe integer, or an error naming `what`.
 *
 * @example
 * ```ts
 * import { toInt } from "./pickle_vm.ts";
 * console.log(toInt(7n, "storage size")); // 7
 * ```
 */
export function toInt(v: unknown, what: string): number {
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

/**
 * What the VM needs from the archive around the pickle.
 *
 * @example
 * ```ts
 * import type { UnpicklerContext } from "./pickle_vm.ts";
 * const ctx: UnpicklerContext = {
 *   record: "archive/data.pkl",
 *   skipUnknown: false,
 *   heapBudget: 1 << 20,
 *   opBudget: 1 << 20,
 *   persistentLoad: () => null,
 *   fail: (why) => {
 *     throw new Error(why);
 *   },
 * };
 * console.log(ctx.record);
 * ```
 */
export interface UnpicklerContext {
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
 *
 * @example
 * ```ts
 * import { Unpickler } from "./pickle_vm.ts";
 * // PROTO 2, EMPTY_DICT, SHORT_BINUNICODE "a", BININT1 1, SETITEM, STOP
 * const pickle = Uint8Array.from([0x80, 2, 0x7d, 0x8c, 1, 0x61, 0x4b, 1, 0x73, 0x2e]);
 * const vm = new Unpickler(pickle, {
 *   record: "data.pkl",
 *   skipUnknown: false,
 *   heapBudget: 1 << 20,
 *   opBudget: 1 << 20,
 *   persistentLoad: () => null,
 *   fail: (why) => {
 *     throw new Error(why);
 *   },
 * });
 * console.log(vm.run()); // Map(1) { "a" => 1 }
 * ```
 */
export class Unpickler {
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
