/**
 * NumPy `.npy` files (format 1.0–3.0) for float32/float64 arrays in C order,
 * so ERF matrices move to and from NumPy unchanged.
 *
 * @example
 * ```ts
 * import { parseNpy, serializeNpy } from "./npy.ts";
 * const bytes = serializeNpy(new Float64Array([1, 2, 3, 4]), [2, 2]);
 * console.log(parseNpy(bytes).shape); // [2, 2]
 * ```
 * @module
 */

import { oneLine, quoteName } from "../models/quote.ts";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/**
 * Longest header accepted, NumPy's own default (`np.load(max_header_size=10000)`):
 * a float array's header is under 200 bytes.
 *
 * @example
 * ```ts
 * import { NPY_MAX_HEADER_BYTES } from "./npy.ts";
 * console.log(NPY_MAX_HEADER_BYTES); // 10000
 * ```
 */
export const NPY_MAX_HEADER_BYTES = 10_000;

/**
 * A `.npy` file that is truncated, malformed or not a float array in C
 * order. The message is one line naming the file and what is wrong.
 *
 * @example
 * ```ts
 * import { NpyFormatError, parseNpy } from "./npy.ts";
 * try {
 *   parseNpy(new Uint8Array(20), "x.npy");
 * } catch (e) {
 *   console.log(e instanceof NpyFormatError, (e as Error).message); // true "x.npy: not a .npy file (bad magic)"
 * }
 * ```
 */
export class NpyFormatError extends Error {
  override name = "NpyFormatError";
}

/**
 * A parsed array: values widened to float64, its shape and its stored dtype.
 *
 * @example
 * ```ts
 * import { type NpyArray, parseNpy, serializeNpy } from "./npy.ts";
 * const a: NpyArray = parseNpy(serializeNpy([1, 2], [2], "<f4"));
 * console.log(a.dtype, a.data); // "<f4" Float64Array [1, 2]
 * ```
 */
export interface NpyArray {
  data: Float64Array;
  shape: number[];
  dtype: "<f4" | "<f8" | ">f4" | ">f8";
}

const DTYPES: Record<string, NpyArray["dtype"]> = {
  "<f4": "<f4",
  "<f8": "<f8",
  ">f4": ">f4",
  ">f8": ">f8",
};

/** The header dictionary, as NumPy writes it. */
interface NpyHeader {
  descr: string;
  fortran_order: boolean;
  shape: number[];
}

/**
 * Parse the header's Python literal `{'descr': '<f8', 'fortran_order': False,
 * 'shape': (3, 4), }` strictly: exactly those three keys, each once, a
 * string, a boolean and a tuple of non-negative integers. Returns why not.
 */
function parseHeader(text: string): NpyHeader | string {
  let i = 0;
  const space = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const eat = (c: string): boolean => {
    space();
    if (text[i] !== c) return false;
    i++;
    return true;
  };
  const str = (): string | null => {
    space();
    const q = text[i];
    if (q !== "'" && q !== '"') return null;
    const end = text.indexOf(q, i + 1);
    if (end < 0) return null;
    const s = text.slice(i + 1, end);
    if (s.includes("\\")) return null;
    i = end + 1;
    return s;
  };
  const fields: Record<string, unknown> = {};
  if (!eat("{")) return "the header is not a dict";
  while (!eat("}")) {
    const key = str();
    if (key === null) return "a header key is not a string";
    if (!["descr", "fortran_order", "shape"].includes(key)) {
      return `unknown header key ${quoteName(key)}`;
    }
    if (Object.hasOwn(fields, key)) return `header key ${quoteName(key)} appears twice`;
    if (!eat(":")) return `no ':' after header key ${quoteName(key)}`;
    space();
    if (key === "descr") {
      const d = str();
      if (d === null) return "descr is not a string";
      fields.descr = d;
    } else if (key === "fortran_order") {
      const m = /^(True|False)/.exec(text.slice(i, i + 5));
      if (!m) return "fortran_order is not True or False";
      fields.fortran_order = m[1] === "True";
      i += m[1].length;
    } else {
      if (!eat("(")) return "shape is not a tuple";
      const dims: number[] = [];
      while (!eat(")")) {
        space();
        const m = /^\d{1,16}/.exec(text.slice(i, i + 17));
        if (!m) {
          return `shape entry ${quoteName(text.slice(i, i + 12))} is not a non-negative integer`;
        }
        const d = Number(m[0]);
        if (!Number.isSafeInteger(d)) return `shape entry ${m[0]} is too large`;
        dims.push(d);
        i += m[0].length;
        if (!eat(",")) {
          if (!eat(")")) return "shape tuple is malformed";
          break;
        }
      }
      fields.shape = dims;
    }
    if (!eat(",")) {
      if (!eat("}")) return "header dict is malformed";
      break;
    }
  }
  space();
  if (i !== text.length) return "bytes after the header dict";
  for (const key of ["descr", "fortran_order", "shape"]) {
    if (!Object.hasOwn(fields, key)) return `header has no ${quoteName(key)}`;
  }
  return fields as unknown as NpyHeader;
}

/**
 * Parse `.npy` bytes (format 1.0–3.0) holding a float32 or float64 array in
 * C order. Everything is checked before the array is allocated: magic,
 * version, header length (at most {@link NPY_MAX_HEADER_BYTES}, inside the
 * file), the header dict, and a shape whose element count fits the data
 * present. Throws an {@link NpyFormatError} naming `source`.
 *
 * @example
 * ```ts
 * import { parseNpy, serializeNpy } from "./npy.ts";
 * const a = parseNpy(serializeNpy([1, 2, 3, 4, 5, 6], [2, 3]), "m.npy");
 * console.log(a.shape, a.data[5]); // [2, 3] 6
 * ```
 */
export function parseNpy(bytes: Uint8Array, source = ".npy data"): NpyArray {
  const file = oneLine(source);
  const fail = (why: string): never => {
    throw new NpyFormatError(`${file}: ${why}`);
  };
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    fail("not a .npy file (bad magic)");
  }
  const major = bytes[6];
  const minor = bytes[7];
  if (major < 1 || major > 3 || minor !== 0) {
    fail(`unsupported .npy format version ${major}.${minor} (expected 1.0, 2.0 or 3.0)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const start = major === 1 ? 10 : 12;
  if (bytes.length < start) fail(`truncated (${bytes.length} bytes, the preamble needs ${start})`);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  if (headerLen > NPY_MAX_HEADER_BYTES) {
    fail(`header of ${headerLen} bytes is over the limit of ${NPY_MAX_HEADER_BYTES}`);
  }
  if (start + headerLen > bytes.length) {
    fail(`truncated (the header needs ${headerLen} bytes, ${bytes.length - start} follow)`);
  }
  let text: string;
  try {
    text = new TextDecoder(major === 3 ? "utf-8" : "latin1", { fatal: true }).decode(
      bytes.subarray(start, start + headerLen),
    );
  } catch {
    return fail("the header is not valid UTF-8");
  }
  const header = parseHeader(text);
  if (typeof header === "string") return fail(`malformed .npy header (${header})`);
  if (header.fortran_order) fail("Fortran-order arrays are not supported (save with C order)");
  const dtype = DTYPES[header.descr === "|f4" ? "<f4" : header.descr];
  if (!dtype) fail(`dtype ${quoteName(header.descr)} is not float32 or float64`);
  const { shape } = header;
  const width = dtype.endsWith("8") ? 8 : 4;
  const offset = start + headerLen;
  const present = bytes.length - offset;
  let n = 1;
  for (const d of shape) n *= d;
  // Checked before allocating: n·width bytes must really be there (n may have overflowed to a huge value).
  if (!(n * width <= present)) {
    const dims = shape.join(", ");
    const need = Number.isSafeInteger(n * width) ? String(n * width) : "over 2^53";
    fail(
      `truncated (shape (${
        dims.length > 80 ? `${dims.slice(0, 80)}…` : dims
      }) needs ${need} bytes of data, ${present} present)`,
    );
  }
  const little = dtype.startsWith("<");
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const at = offset + i * width;
    data[i] = width === 8 ? view.getFloat64(at, little) : view.getFloat32(at, little);
  }
  return { data, shape, dtype };
}

/**
 * Read and parse a `.npy` file (see {@link parseNpy}); a path that is not a
 * regular file (a device, a pipe, a folder) is refused before reading.
 *
 * @example
 * ```ts
 * import { loadNpyFile } from "./npy.ts";
 * const a = await loadNpyFile("tests/fixtures/erf_f32.npy");
 * console.log(a.shape); // [3, 4]
 * ```
 */
export async function loadNpyFile(path: string): Promise<NpyArray> {
  if (!(await Deno.stat(path)).isFile) {
    throw new NpyFormatError(`${oneLine(path)}: not a regular file`);
  }
  return parseNpy(await Deno.readFile(path), path);
}

/**
 * Serialise values as a little-endian `.npy` (float64 unless `dtype` is "<f4"), format 1.0.
 *
 * @example
 * ```ts
 * import { serializeNpy } from "./npy.ts";
 * const bytes = serializeNpy([0.5, 1.5], [1, 2], "<f4");
 * console.log(bytes.length); // 64-byte header + 8 bytes of data = 72
 * ```
 */
export function serializeNpy(
  values: ArrayLike<number>,
  shape: number[],
  dtype: "<f4" | "<f8" = "<f8",
): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== values.length) {
    throw new Error(`serializeNpy: ${values.length} values do not fill shape [${shape}]`);
  }
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '${dtype}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  // Pad with spaces so the data starts on a 64-byte boundary, newline-terminated, as NumPy writes it.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, " ") + "\n";
  const width = dtype === "<f8" ? 8 : 4;
  const out = new Uint8Array(total + n * width);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  const view = new DataView(out.buffer);
  view.setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  for (let i = 0; i < n; i++) {
    if (width === 8) view.setFloat64(total + i * 8, values[i], true);
    else view.setFloat32(total + i * 4, values[i], true);
  }
  return out;
}
