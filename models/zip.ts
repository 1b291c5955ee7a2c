/**
 * A zip archive reader for untrusted files (the container of `torch.save`
 * checkpoints): central directory with zip64, STORED and DEFLATE entries.
 *
 * Every size the file declares is checked against the bytes really there
 * before anything is allocated: directory records stay inside the directory,
 * entry data inside the file, entries do not overlap one another, the local
 * header names the same entry as the directory, names are unique, a STORED entry is exactly as long as declared,
 * a DEFLATE entry inflates into a buffer capped at its declared size (so a
 * "zip bomb" stops at the cap instead of filling memory), and all inflation
 * from one archive together stays within {@link ZIP_INFLATE_RATIO} times the
 * archive's size. The CRC-32 of every STORED entry is checked when the
 * archive is opened, that of a DEFLATE entry when it is inflated.
 *
 * @example
 * ```ts
 * import { ZipArchive } from "./zip.ts";
 * const fail = (why: string): never => {
 *   throw new Error(why);
 * };
 * const zip = new ZipArchive(await Deno.readFile("tests/fixtures/state_dict.pth"), fail);
 * console.log(zip.entries.has("state_dict/data.pkl")); // true
 * console.log(zip.read("state_dict/byteorder").length); // 6 ("little")
 * ```
 * @module
 */
import { crc32, inflateRawSync } from "node:zlib";
import { quoteName } from "./quote.ts";

/**
 * Most bytes all DEFLATE entries of one archive may inflate to, per byte of
 * the archive (plus 1 MiB). Weights barely compress (their mantissas are
 * noise), so real checkpoints stay far below it; a bomb does not.
 *
 * @example
 * ```ts
 * import { ZIP_INFLATE_RATIO } from "./zip.ts";
 * console.log(ZIP_INFLATE_RATIO); // 16
 * ```
 */
export const ZIP_INFLATE_RATIO = 16;

/** Inflation any archive may use, however small it is. */
const INFLATE_ALLOWANCE = 1 << 20;

/**
 * One file of a zip archive, as its central directory describes it.
 *
 * @example
 * ```ts
 * import { type ZipEntry, ZipArchive } from "./zip.ts";
 * const zip = new ZipArchive(await Deno.readFile("tests/fixtures/deflate.pth"), (why): never => {
 *   throw new Error(why);
 * });
 * const e: ZipEntry = [...zip.entries.values()][0];
 * console.log(e.method); // 8 (DEFLATE)
 * ```
 */
export interface ZipEntry {
  name: string;
  /** 0 = STORED, 8 = DEFLATE. */
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  /** Uncompressed size. */
  size: number;
  headerOffset: number;
}

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
/** Fixed part of a central directory record. */
const CENTRAL_RECORD = 46;
/** Fixed part of a local file header. */
const LOCAL_HEADER = 30;

/**
 * A zip archive held in memory; see the module documentation for what is
 * checked. `fail` throws the caller's own error for a one-line reason.
 *
 * @example
 * ```ts
 * import { ZipArchive } from "./zip.ts";
 * const bytes = await Deno.readFile("tests/fixtures/deflate.pth");
 * const zip = new ZipArchive(bytes, (why): never => {
 *   throw new Error(`deflate.pth: ${why}`);
 * });
 * const pkl = [...zip.entries.keys()].find((n) => n.endsWith("data.pkl"))!;
 * console.log(zip.read(pkl)[0]); // 128 (the pickle's PROTO opcode)
 * ```
 */
export class ZipArchive {
  /** Entries by name, in directory order. */
  readonly entries: Map<string, ZipEntry>;
  #bytes: Uint8Array;
  #view: DataView;
  #fail: (why: string) => never;
  #inflateLeft: number;
  /** Entries whose CRC-32 has been checked already. */
  #checked = new Set<string>();

  constructor(bytes: Uint8Array, fail: (why: string) => never) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#fail = fail;
    this.#inflateLeft = ZIP_INFLATE_RATIO * bytes.byteLength + INFLATE_ALLOWANCE;
    this.entries = this.#directory();
    // Stored entries cost no allocation to check: all are checked now, so a damaged file is
    // refused whole, even in a record the caller never reads; DEFLATE ones when inflated.
    for (const e of this.entries.values()) if (e.method === 0) this.read(e.name);
  }

  #u64(at: number, what: string): number {
    const v = this.#view.getBigUint64(at, true);
    if (v > BigInt(this.#bytes.byteLength)) {
      this.#fail(
        `corrupt zip: ${what} ${v} is larger than the file (${this.#bytes.byteLength} bytes)`,
      );
    }
    return Number(v);
  }

  #directory(): Map<string, ZipEntry> {
    const view = this.#view;
    const bytes = this.#bytes;
    const len = bytes.byteLength;
    const fail: (why: string) => never = this.#fail;
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
      const at = this.#u64(eocd - 20 + 8, "zip64 end-of-directory offset");
      if (at + 56 > len || view.getUint32(at, true) !== 0x06064b50) {
        fail("corrupt zip64 end-of-central-directory record");
      }
      count = this.#u64(at + 32, "zip64 entry count");
      cdSize = this.#u64(at + 40, "zip64 directory size");
      cdOffset = this.#u64(at + 48, "zip64 directory offset");
    } else if (count === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX) {
      fail("corrupt zip (zip64 sizes without a zip64 record)");
    }
    const cdEnd = cdOffset + cdSize;
    if (cdEnd > len) fail("truncated zip (central directory lies past the end of the file)");
    if (count * CENTRAL_RECORD > cdSize) {
      fail(`corrupt zip: ${count} entries cannot fit a ${cdSize}-byte central directory`);
    }
    const entries = new Map<string, ZipEntry>();
    const names = new TextDecoder();
    let p = cdOffset;
    for (let i = 0; i < count; i++) {
      if (p + CENTRAL_RECORD > cdEnd || view.getUint32(p, true) !== 0x02014b50) {
        fail(`corrupt zip central directory (entry ${i})`);
      }
      const nameLen = view.getUint16(p + 28, true);
      const extraLen = view.getUint16(p + 30, true);
      const commentLen = view.getUint16(p + 32, true);
      const nameAt = p + CENTRAL_RECORD;
      const extraEnd = nameAt + nameLen + extraLen;
      if (extraEnd + commentLen > cdEnd) {
        fail(`corrupt zip central directory (entry ${i} runs past the directory)`);
      }
      const entry: ZipEntry = {
        name: names.decode(bytes.subarray(nameAt, nameAt + nameLen)),
        flags: view.getUint16(p + 8, true),
        method: view.getUint16(p + 10, true),
        crc32: view.getUint32(p + 16, true),
        compressedSize: view.getUint32(p + 20, true),
        size: view.getUint32(p + 24, true),
        headerOffset: view.getUint32(p + 42, true),
      };
      // Zip64 extended information: only the saturated fields are present, in this order.
      let e = nameAt + nameLen;
      while (e + 4 <= extraEnd) {
        const id = view.getUint16(e, true);
        const size = view.getUint16(e + 2, true);
        const end = e + 4 + size;
        if (end > extraEnd) fail(`corrupt zip: extra field of ${quoteName(entry.name)} overruns`);
        if (id === 0x0001) {
          let f = e + 4;
          const field = (what: string): number => {
            if (f + 8 > end) fail(`corrupt zip: zip64 field of ${quoteName(entry.name)} too short`);
            const v = this.#u64(f, `${what} of ${quoteName(entry.name)}`);
            f += 8;
            return v;
          };
          if (entry.size === U32_MAX) entry.size = field("zip64 size");
          if (entry.compressedSize === U32_MAX) {
            entry.compressedSize = field("zip64 compressed size");
          }
          if (entry.headerOffset === U32_MAX) entry.headerOffset = field("zip64 header offset");
        }
        e = end;
      }
      if (entries.has(entry.name)) fail(`corrupt zip: two entries named ${quoteName(entry.name)}`);
      entries.set(entry.name, entry);
      p = extraEnd + commentLen;
    }
    this.#checkNoOverlap([...entries.values()], cdOffset);
    return entries;
  }

  /**
   * Entries (local header + data) must not overlap each other or the
   * directory: overlapping entries let one stretch of bytes count as many
   * files (a non-recursive zip bomb).
   */
  #checkNoOverlap(entries: ZipEntry[], cdOffset: number): void {
    const view = this.#view;
    const spans = entries.map((e) => {
      const h = e.headerOffset;
      if (h + LOCAL_HEADER > this.#bytes.byteLength) {
        this.#fail(`corrupt zip (the local header of ${quoteName(e.name)} lies past the end)`);
      }
      const end = h + LOCAL_HEADER + view.getUint16(h + 26, true) + view.getUint16(h + 28, true) +
        e.compressedSize;
      return { name: e.name, start: h, end };
    }).sort((a, b) => a.start - b.start);
    for (let i = 0; i < spans.length; i++) {
      const limit = i + 1 < spans.length ? spans[i + 1].start : cdOffset;
      if (spans[i].end > limit) {
        this.#fail(
          `corrupt zip: entry ${quoteName(spans[i].name)} overlaps ${
            i + 1 < spans.length ? `entry ${quoteName(spans[i + 1].name)}` : "the central directory"
          }`,
        );
      }
    }
  }

  /**
   * The uncompressed bytes of entry `name` (a view into the archive when
   * STORED), after checking its local header, size and CRC-32.
   */
  read(name: string): Uint8Array {
    const fail: (why: string) => never = this.#fail;
    const entry = this.entries.get(name);
    if (!entry) fail(`missing record ${quoteName(name)}`);
    const q = quoteName(name);
    const bytes = this.#bytes;
    const view = this.#view;
    const h = entry.headerOffset;
    if (h + LOCAL_HEADER > bytes.byteLength || view.getUint32(h, true) !== 0x04034b50) {
      fail(`corrupt zip (bad local header for ${q})`);
    }
    if (entry.flags & 1) fail(`zip entry ${q} is encrypted`);
    const nameLen = view.getUint16(h + 26, true);
    const start = h + LOCAL_HEADER + nameLen + view.getUint16(h + 28, true);
    const end = start + entry.compressedSize;
    if (end > bytes.byteLength) fail(`truncated: zip entry ${q} runs past the end of the file`);
    const localName = new TextDecoder().decode(
      bytes.subarray(h + LOCAL_HEADER, h + LOCAL_HEADER + nameLen),
    );
    if (localName !== name) {
      fail(`corrupt zip: the local header of ${q} names ${quoteName(localName)}`);
    }
    const raw = bytes.subarray(start, end);
    let data: Uint8Array;
    if (entry.method === 0) {
      if (entry.compressedSize !== entry.size) {
        fail(
          `corrupt zip entry ${q}: stored with ${entry.compressedSize} bytes, directory says ${entry.size}`,
        );
      }
      data = raw;
    } else if (entry.method === 8) {
      data = this.#inflate(entry, raw);
    } else {
      fail(`zip entry ${q} uses unsupported compression method ${entry.method}`);
    }
    const crc = this.#checked.has(name) ? entry.crc32 : crc32(data) >>> 0;
    this.#checked.add(name);
    if (crc !== entry.crc32) {
      fail(
        `corrupt zip entry ${q}: CRC-32 ${hex(crc)} of its data, directory says ${
          hex(entry.crc32)
        }`,
      );
    }
    return data;
  }

  #inflate(entry: ZipEntry, raw: Uint8Array): Uint8Array {
    const fail: (why: string) => never = this.#fail;
    const q = quoteName(entry.name);
    if (entry.size > this.#inflateLeft) {
      fail(
        `zip entry ${q} declares ${entry.size} inflated bytes, over the limit of ${ZIP_INFLATE_RATIO}× the archive's size (re-save it uncompressed, as torch.save does)`,
      );
    }
    let data: Uint8Array;
    try {
      // The cap makes zlib stop as soon as the output outgrows the declared size.
      const out = inflateRawSync(raw, { maxOutputLength: Math.max(1, entry.size) });
      data = new Uint8Array(out.buffer, out.byteOffset, out.byteLength); // a view, not a copy
    } catch (e) {
      const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
      if (/larger than/i.test(why)) {
        fail(`corrupt zip entry ${q}: inflates past its declared ${entry.size} bytes`);
      }
      fail(`corrupt DEFLATE data in ${q} (${why})`);
    }
    if (data.byteLength !== entry.size) {
      fail(`corrupt zip entry ${q}: ${data.byteLength} bytes, directory says ${entry.size}`);
    }
    this.#inflateLeft -= data.byteLength;
    return data;
  }
}

function hex(v: number): string {
  return `0x${v.toString(16).padStart(8, "0")}`;
}
