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

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** A parsed array: values widened to float64, its shape and its stored dtype. */
export interface NpyArray {
  data: Float64Array;
  shape: number[];
  dtype: "<f4" | "<f8" | ">f4" | ">f8";
}

/** Parse `.npy` bytes holding a float32 or float64 array in C order. */
export function parseNpy(bytes: Uint8Array, source = ".npy data"): NpyArray {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new Error(`${source}: not a .npy file (bad magic)`);
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    bytes.subarray(start, start + headerLen),
  );
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) {
    throw new Error(`${source}: malformed .npy header`);
  }
  if (fortran === "True") {
    throw new Error(`${source}: Fortran-order arrays are not supported (save with C order)`);
  }
  const dtypes: Record<string, NpyArray["dtype"]> = {
    "<f4": "<f4",
    "<f8": "<f8",
    ">f4": ">f4",
    ">f8": ">f8",
    "|f4": "<f4",
  };
  const dtype = dtypes[descr];
  if (!dtype) throw new Error(`${source}: dtype ${descr} is not float32 or float64`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const width = dtype.endsWith("8") ? 8 : 4;
  const offset = start + headerLen;
  if (bytes.length < offset + n * width) {
    throw new Error(`${source}: truncated (${n} values of ${width} bytes expected)`);
  }
  const little = dtype.startsWith("<");
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const at = offset + i * width;
    data[i] = width === 8 ? view.getFloat64(at, little) : view.getFloat32(at, little);
  }
  return { data, shape, dtype };
}

/** Serialise values as a little-endian `.npy` (float64 unless `dtype` is "<f4"), format 1.0. */
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
