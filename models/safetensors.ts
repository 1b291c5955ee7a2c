/**
 * Read and write the safetensors format (https://github.com/huggingface/safetensors):
 * an 8-byte little-endian header length, a JSON header mapping each tensor name
 * to `{dtype, shape, data_offsets}` (plus an optional `__metadata__` map of
 * strings) padded with spaces to a multiple of 8 bytes, then the tensors' raw
 * little-endian bytes back to back.
 *
 * Reading converts F32, F16, BF16, F64, I64, I32, I16, I8, U8 and BOOL to f32;
 * writing always stores F32, tensors sorted by name as the reference (Rust)
 * implementation does, so its files and ours are byte-identical.
 *
 * @example
 * ```ts
 * import { readSafetensors, type Weights, writeSafetensors } from "./safetensors.ts";
 * const weights: Weights = new Map([["fc.weight", { shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) }]]);
 * const bytes = writeSafetensors(weights, { format: "pt" });
 * console.log(readSafetensors(bytes).get("fc.weight")?.data); // Float32Array [1, 2, 3, 4]
 * ```
 * Reading trusts nothing in the file: the header length is bounded and
 * checked against the file's size, the header must be one JSON object with
 * no key twice, every dtype known, every shape non-negative safe integers
 * whose byte size is a safe integer, and the data offsets must tile the data
 * section exactly, in order, without gaps or overlaps. Violations throw a
 * {@link SafetensorsFormatError} naming the file, the tensor and the limit.
 *
 * @module
 */
import { duplicateJsonKey } from "./json_keys.ts";
import { oneLine, quoteName } from "./quote.ts";

/**
 * A safetensors file that is truncated, malformed or over a limit. The
 * message is one line naming the file and what is wrong.
 *
 * @example
 * ```ts
 * import { readSafetensors, SafetensorsFormatError } from "./safetensors.ts";
 * try {
 *   readSafetensors(new Uint8Array(3), "x.safetensors");
 * } catch (e) {
 *   console.log(e instanceof SafetensorsFormatError); // true
 * }
 * ```
 */
export class SafetensorsFormatError extends Error {
  override name = "SafetensorsFormatError";
}

/**
 * Named f32 tensors, row-major: what `Module.loadStateDict` takes.
 *
 * @example
 * ```ts
 * import type { Weights } from "./safetensors.ts";
 * const w: Weights = new Map([["bias", { shape: [3], data: new Float32Array(3) }]]);
 * console.log(w.get("bias")?.shape); // [3]
 * ```
 */
export type Weights = Map<string, { shape: number[]; data: Float32Array }>;

/**
 * Element types this module decodes (safetensors spelling; `.pth` storages map onto them).
 *
 * @example
 * ```ts
 * import { type Dtype, dtypeBytes } from "./safetensors.ts";
 * const d: Dtype = "BF16";
 * console.log(dtypeBytes(d)); // 2
 * ```
 */
export type Dtype = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

const DTYPE_BYTES: Record<Dtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/**
 * Bytes per element of `dtype`.
 *
 * @example
 * ```ts
 * import { dtypeBytes } from "./safetensors.ts";
 * console.log(dtypeBytes("I64")); // 8
 * ```
 */
export function dtypeBytes(dtype: Dtype): number {
  return DTYPE_BYTES[dtype];
}

/** Whether `s` names a dtype this module can decode. */
function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_BYTES, s);
}

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let halfTable: Float32Array | null = null;

/** All 65536 half values, built on first use: a lookup beats bit twiddling per element. */
function halfToFloat(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    halfTable[h] = exp === 0
      ? sign * mant * 2 ** -24
      : exp === 31
      ? (mant ? NaN : sign * Infinity)
      : sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return halfTable;
}

/**
 * Decode `count` elements of `dtype` from `bytes` (starting at its first byte)
 * to f32. Integers beyond 2^24 and f64 values round to the nearest f32.
 *
 * @example
 * ```ts
 * import { decodeFloat32 } from "./safetensors.ts";
 * // Two halves, little-endian: 1.0 (0x3c00) and -2.0 (0xc000).
 * console.log(decodeFloat32(new Uint8Array([0x00, 0x3c, 0x00, 0xc0]), "F16", 2)); // Float32Array [1, -2]
 * ```
 */
export function decodeFloat32(
  bytes: Uint8Array,
  dtype: Dtype,
  count: number,
  littleEndian = true,
): Float32Array {
  if (!Number.isSafeInteger(count) || count < 0 || !isDtype(dtype)) {
    throw new RangeError(`decodeFloat32: cannot decode ${count} values of ${dtype}`);
  }
  const need = count * DTYPE_BYTES[dtype];
  if (bytes.byteLength < need) {
    throw new Error(`need ${need} bytes for ${count} ${dtype} values, have ${bytes.byteLength}`);
  }
  const out = new Float32Array(count);
  const le = littleEndian;
  if (dtype === "F32" && le === HOST_LITTLE_ENDIAN) {
    // Copy the raw bytes: no per-element conversion, and the result does not pin the file buffer.
    new Uint8Array(out.buffer).set(bytes.subarray(0, need));
    return out;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, need);
  switch (dtype) {
    case "F32":
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, le);
      break;
    case "F64":
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(8 * i, le);
      break;
    case "F16": {
      const table = halfToFloat();
      for (let i = 0; i < count; i++) out[i] = table[view.getUint16(2 * i, le)];
      break;
    }
    case "BF16": {
      // bf16 is the top half of an f32: write the bits straight into the output.
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(2 * i, le) << 16;
      break;
    }
    case "I64":
      for (let i = 0; i < count; i++) {
        const lo = view.getUint32(8 * i + (le ? 0 : 4), le);
        const hi = view.getInt32(8 * i + (le ? 4 : 0), le);
        out[i] = hi * 4294967296 + lo;
      }
      break;
    case "I32":
      for (let i = 0; i < count; i++) out[i] = view.getInt32(4 * i, le);
      break;
    case "I16":
      for (let i = 0; i < count; i++) out[i] = view.getInt16(2 * i, le);
      break;
    case "I8":
      for (let i = 0; i < count; i++) out[i] = view.getInt8(i);
      break;
    case "U8":
    case "BOOL":
      for (let i = 0; i < count; i++) out[i] = view.getUint8(i);
      break;
  }
  return out;
}

/** Product of the dimensions (1 for a scalar's empty shape). */
function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** The reference implementation refuses headers over 100 MB; so do we, before allocating. */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte range [begin, end) relative to the start of the data section. */
  dataOffsets: [number, number];
}

/**
 * Parse and validate the header of a safetensors file: its `__metadata__` and
 * its tensor entries in file order. Throws a one-line error naming `source`
 * for truncated or corrupt input.
 *
 * @example
 * ```ts
 * import { readSafetensorsHeader, writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors(new Map([["x", { shape: [], data: new Float32Array([5]) }]]), { step: "10" });
 * const { metadata, tensors } = readSafetensorsHeader(bytes);
 * console.log(metadata.step, tensors[0].dtype); // "10" "F32"
 * ```
 */
export function readSafetensorsHeader(
  bytes: Uint8Array,
  source = "safetensors data",
): { metadata: Record<string, string>; tensors: SafetensorsEntry[]; dataStart: number } {
  const file = oneLine(source);
  const fail: (why: string) => never = (why) => {
    throw new SafetensorsFormatError(`cannot read ${file}: ${why}`);
  };
  if (bytes.byteLength < 8) {
    fail(`truncated: ${bytes.byteLength} bytes, shorter than the 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    fail(`corrupt: header length ${headerLen} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  const n = Number(headerLen);
  if (8 + n > bytes.byteLength) {
    fail(`truncated: header needs ${n} bytes but only ${bytes.byteLength - 8} follow the length`);
  }
  // As the reference reader: the header is a JSON object from its first byte.
  if (n > 0 && bytes[8] !== 0x7b) {
    fail(`corrupt header: not a JSON object (its first byte is ${bytes[8]}, not "{")`);
  }
  let text = "";
  let header: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n));
    header = JSON.parse(text);
  } catch (e) {
    fail(`corrupt header (${oneLine((e instanceof Error ? e.message : String(e)).slice(0, 200))})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("corrupt header: not a JSON object");
  }
  const twice = duplicateJsonKey(text);
  if (twice !== null) {
    fail(`corrupt header: the key ${quoteName(twice)} appears twice in one object`);
  }
  const metadata: Record<string, string> = {};
  const tensors: SafetensorsEntry[] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    const q = quoteName(name);
    if (name === "__metadata__") {
      if (typeof info !== "object" || info === null || Array.isArray(info)) {
        fail("corrupt header: __metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(info as Record<string, unknown>)) {
        if (typeof v !== "string") {
          fail(`corrupt header: __metadata__.${quoteName(k)} is not a string`);
        }
        // defineProperty: a key named "__proto__" stays a plain entry.
        Object.defineProperty(metadata, k, {
          value: v,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      continue;
    }
    const t = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof t !== "object" || t === null || Array.isArray(t)) {
      fail(`corrupt header: entry ${q} is not an object`);
    }
    if (!isDtype(t.dtype)) {
      fail(`tensor ${q} has unsupported dtype ${excerpt(t.dtype)}`);
    }
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(
        `corrupt header: tensor ${q} has invalid shape ${
          excerpt(shape)
        } (expected non-negative integers)`,
      );
    }
    const size = byteSize(shape as number[], t.dtype as Dtype);
    if (size === null) {
      fail(`corrupt header: tensor ${q} of shape ${excerpt(shape)} would need over 2^53 bytes`);
    }
    const offs = t.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[1] < offs[0]
    ) {
      fail(`corrupt header: tensor ${q} has invalid data_offsets ${excerpt(offs)}`);
    }
    tensors.push({
      name,
      dtype: t.dtype as Dtype,
      shape: shape as number[],
      dataOffsets: [(offs as number[])[0], (offs as number[])[1]],
    });
  }
  // JSON object order is not reliable (integer-like keys move first): order by position in the data.
  tensors.sort((a, b) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
  const dataStart = 8 + n;
  const dataLen = bytes.byteLength - dataStart;
  let end = 0;
  for (const t of tensors) {
    const [b, e] = t.dataOffsets;
    const q = quoteName(t.name);
    if (b !== end) {
      fail(
        `corrupt header: tensor ${q} starts at byte ${b}, expected ${end} (${
          b < end ? "it overlaps the tensor before it" : "a gap before it"
        })`,
      );
    }
    const want = byteSize(t.shape, t.dtype)!;
    if (e - b !== want) {
      fail(`corrupt header: tensor ${q} spans ${e - b} bytes, its shape and dtype need ${want}`);
    }
    if (e > dataLen) {
      fail(
        `truncated: tensor data needs ${e} bytes (through tensor ${q}), only ${dataLen} present`,
      );
    }
    end = e;
  }
  if (end < dataLen) fail(`corrupt: ${dataLen - end} unexpected bytes after the last tensor`);
  return { metadata, tensors, dataStart };
}

/** Bytes of a tensor of `shape` and `dtype`, or null past 2^53. */
function byteSize(shape: readonly number[], dtype: Dtype): number | null {
  if (shape.includes(0)) return 0;
  let n = DTYPE_BYTES[dtype];
  for (const d of shape) {
    n *= d;
    if (n > Number.MAX_SAFE_INTEGER) return null;
  }
  return n;
}

/** A JSON value from a header, shortened for a one-line message. */
function excerpt(v: unknown): string {
  const s = oneLine(JSON.stringify(v) ?? String(v));
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

/**
 * Decode a safetensors file to f32 weights (entries in file order). Throws a
 * one-line error naming `source` for truncated or corrupt input.
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const json = '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'; // padding is optional to a reader
 * const header = new TextEncoder().encode(json);
 * const bytes = new Uint8Array(8 + header.length + 4);
 * new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
 * bytes.set(header, 8);
 * new DataView(bytes.buffer).setFloat32(8 + header.length, 2.5, true);
 * console.log(readSafetensors(bytes).get("x")); // { shape: [1], data: Float32Array [2.5] }
 * ```
 */
export function readSafetensors(bytes: Uint8Array, source = "safetensors data"): Weights {
  const { tensors, dataStart } = readSafetensorsHeader(bytes, source);
  const out: Weights = new Map();
  for (const t of tensors) {
    const raw = bytes.subarray(dataStart + t.dataOffsets[0], dataStart + t.dataOffsets[1]);
    out.set(t.name, { shape: [...t.shape], data: decodeFloat32(raw, t.dtype, numelOf(t.shape)) });
  }
  return out;
}

/**
 * Encode weights as a safetensors file of F32 tensors, sorted by name, with
 * optional string `metadata` (written as `__metadata__`). The header is padded
 * with spaces to a multiple of 8 bytes, as the reference implementation does.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors(new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]));
 * console.log(bytes.length % 8); // 0
 * ```
 */
export function writeSafetensors(weights: Weights, metadata?: Record<string, string>): Uint8Array {
  const names = [...weights.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new Error(`safetensors metadata "${k}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const name of names) {
    if (name === "__metadata__") throw new Error(`"__metadata__" cannot name a tensor`);
    const { shape, data } = weights.get(name)!;
    if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new Error(`tensor "${name}" has invalid shape [${shape}]`);
    }
    if (data.length !== numelOf(shape)) {
      throw new Error(
        `tensor "${name}" has ${data.length} values, shape [${shape}] needs ${numelOf(shape)}`,
      );
    }
    header[name] = {
      dtype: "F32",
      shape: [...shape],
      data_offsets: [offset, offset + 4 * data.length],
    };
    offset += 4 * data.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const name of names) {
    const data = weights.get(name)!.data;
    if (HOST_LITTLE_ENDIAN) {
      out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), pos);
    } else {
      for (let i = 0; i < data.length; i++) view.setFloat32(pos + 4 * i, data[i], true);
    }
    pos += data.byteLength;
  }
  return out;
}

/**
 * Read a safetensors file from disk; errors name the file.
 *
 * @example
 * ```ts
 * import { loadSafetensorsFile, saveSafetensorsFile } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveSafetensorsFile(path, new Map([["w", { shape: [1], data: new Float32Array([3]) }]]));
 * console.log((await loadSafetensorsFile(path)).get("w")?.data); // Float32Array [3]
 * await Deno.remove(path);
 * ```
 */
export async function loadSafetensorsFile(path: string): Promise<Weights> {
  // A device or pipe would be read without end; weights are regular files.
  if (!(await Deno.stat(path)).isFile) {
    throw new SafetensorsFormatError(`cannot read ${oneLine(path)}: not a regular file`);
  }
  return readSafetensors(await Deno.readFile(path), path);
}

/**
 * Write weights as a safetensors file. The bytes go to a temporary file in the
 * same directory, are flushed to disk, then renamed over `path`, so `path`
 * never holds a half-written file.
 *
 * @example
 * ```ts
 * import { saveSafetensorsFile } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveSafetensorsFile(path, new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]), {
 *   epoch: "3",
 * });
 * await Deno.remove(path);
 * ```
 */
export async function saveSafetensorsFile(
  path: string,
  weights: Weights,
  metadata?: Record<string, string>,
): Promise<void> {
  const bytes = writeSafetensors(weights, metadata);
  const tmp = `${path}.${Deno.pid}-${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      for (let pos = 0; pos < bytes.length;) pos += await file.write(bytes.subarray(pos));
      await file.syncData();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
