/**
 * Test helpers that write `.pth` files byte by byte: a zip writer whose
 * every field can be forged (sizes, CRC-32, method), a CRC fixer for
 * tampered archives, and a tiny pickle assembler. The reader under test
 * never sees anything else, so hostile files are made here, not stored.
 */
import { crc32, deflateRawSync } from "node:zlib";

/** One zip entry to write; the optional fields forge what the headers declare. */
export interface ZipInput {
  name: string;
  data: Uint8Array;
  /** 0 = STORED (default), 8 = DEFLATE. */
  method?: 0 | 8;
  /** Declared uncompressed size (default: the real one). */
  size?: number;
  /** Declared CRC-32 (default: the real one). */
  crc?: number;
  /** Name written in the local header (default: `name`). */
  localName?: string;
}

/** A zip archive of `entries` (no zip64), laid out as PyTorch's writer does. */
export function makeZip(entries: ZipInput[]): Uint8Array {
  const enc = new TextEncoder();
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = enc.encode(e.name);
    const localName = enc.encode(e.localName ?? e.name);
    const method = e.method ?? 0;
    const body = method === 8 ? new Uint8Array(deflateRawSync(e.data)) : e.data;
    const crc = e.crc ?? (crc32(e.data) >>> 0);
    const size = e.size ?? e.data.length;
    const local = new Uint8Array(30 + localName.length + body.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint16(8, method, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, body.length, true);
    lv.setUint32(22, size, true);
    lv.setUint16(26, localName.length, true);
    local.set(localName, 30);
    local.set(body, 30 + localName.length);
    const central = new Uint8Array(46 + name.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(10, method, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, body.length, true);
    cv.setUint32(24, size, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, offset, true);
    central.set(name, 46);
    locals.push(local);
    centrals.push(central);
    offset += local.length;
  }
  const cdSize = centrals.reduce((a, c) => a + c.length, 0);
  const out = new Uint8Array(offset + cdSize + 22);
  let p = 0;
  for (const part of [...locals, ...centrals]) out.set(part, p), (p += part.length);
  const ev = new DataView(out.buffer);
  ev.setUint32(p, 0x06054b50, true);
  ev.setUint16(p + 8, entries.length, true);
  ev.setUint16(p + 10, entries.length, true);
  ev.setUint32(p + 12, cdSize, true);
  ev.setUint32(p + 16, offset, true);
  return out;
}

/**
 * Recompute the CRC-32 of STORED entry `name` of `zip` in place (central and
 * local header), so a test can tamper with the data and still reach the
 * checks behind the CRC.
 */
export function fixCrc32(zip: Uint8Array, name: string): void {
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const enc = new TextEncoder().encode(name);
  for (let p = 0; p + 46 <= zip.length; p++) {
    if (view.getUint32(p, true) !== 0x02014b50) continue;
    const nameLen = view.getUint16(p + 28, true);
    const here = zip.subarray(p + 46, p + 46 + nameLen);
    if (nameLen !== enc.length || !here.every((b, i) => b === enc[i])) continue;
    const h = view.getUint32(p + 42, true);
    const start = h + 30 + view.getUint16(h + 26, true) + view.getUint16(h + 28, true);
    const crc = crc32(zip.subarray(start, start + view.getUint32(p + 20, true))) >>> 0;
    view.setUint32(p + 16, crc, true);
    view.setUint32(h + 14, crc, true);
    return;
  }
  throw new Error(`no central directory entry ${name}`);
}

/** A `.pth` archive: `archive/data.pkl`, `archive/byteorder` and `archive/data/<key>` records. */
export function makePth(
  pickle: Uint8Array,
  storages: Record<string, Uint8Array> = {},
  opts: { deflatePickle?: boolean } = {},
): Uint8Array {
  return makeZip([
    { name: "archive/data.pkl", data: pickle, method: opts.deflatePickle ? 8 : 0 },
    { name: "archive/byteorder", data: new TextEncoder().encode("little") },
    ...Object.entries(storages).map(([k, data]) => ({ name: `archive/data/${k}`, data })),
  ]);
}

/** Pickle assembler: bytes, opcode letters and little-endian integers, concatenated. */
export class Pickle {
  #parts: Uint8Array[] = [];

  /** Raw bytes or a latin1 string of opcodes and arguments. */
  raw(x: string | Uint8Array | number[]): this {
    if (typeof x === "string") {
      const b = new Uint8Array(x.length);
      for (let i = 0; i < x.length; i++) b[i] = x.charCodeAt(i) & 0xff;
      this.#parts.push(b);
    } else this.#parts.push(Uint8Array.from(x));
    return this;
  }

  u8(v: number): this {
    return this.raw([v & 0xff]);
  }

  u32(v: number): this {
    return this.raw([v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff]);
  }

  /** SHORT_BINUNICODE. */
  str(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.raw([0x8c, b.length]).raw(b);
  }

  /** BININT (signed 32-bit). */
  int(v: number): this {
    return this.raw("J").u32(v);
  }

  /** GLOBAL module\nname\n. */
  global(module: string, name: string): this {
    return this.raw(`c${module}\n${name}\n`);
  }

  /** `('storage', torch.<type>, key, 'cpu', numel)` as BINPERSID. */
  storage(type: string, key: string, numel: number): this {
    return this.raw("(").str("storage").global("torch", type).str(key).str("cpu").int(numel)
      .raw("tQ");
  }

  /** `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`. */
  tensor(
    type: string,
    key: string,
    numel: number,
    offset: number,
    size: number[],
    stride: number[],
  ): this {
    this.global("torch._utils", "_rebuild_tensor_v2").raw("(");
    this.storage(type, key, numel).int(offset);
    this.raw("(");
    for (const d of size) this.int(d);
    this.raw("t(");
    for (const s of stride) this.int(s);
    this.raw("t\x89").global("collections", "OrderedDict").raw(")R").raw("tR");
    return this;
  }

  /** The assembled bytes, with PROTO 2 in front and STOP at the end unless told otherwise. */
  bytes(opts: { proto?: boolean; stop?: boolean } = {}): Uint8Array {
    const parts = [
      ...(opts.proto === false ? [] : [Uint8Array.of(0x80, 2)]),
      ...this.#parts,
      ...(opts.stop === false ? [] : [Uint8Array.of(0x2e)]),
    ];
    const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) out.set(p, at), (at += p.length);
    return out;
  }
}

/** `{"w": tensor}` pickled: the smallest state dict, for tests that break one part of it. */
export function stateDictPickle(
  type: string,
  numel: number,
  offset: number,
  size: number[],
  stride: number[],
): Uint8Array {
  return new Pickle().raw("}").str("w").tensor(type, "0", numel, offset, size, stride).raw("s")
    .bytes();
}
