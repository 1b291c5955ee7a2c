/**
 * Seeded fuzzing of the readers of untrusted bytes: `.pth` (zip structure
 * and pickle opcodes), safetensors headers and `.npy` headers. Valid files
 * from the project's writers and fixtures are mutated, and pickles and
 * headers are also generated from their grammar; each case must parse or
 * throw the reader's own one-line error within the bounds of CASE_LIMITS.
 * CPU only, a few seconds. LARGEKERNEL_FUZZ_SCALE=20 LARGEKERNEL_FUZZ_SEED=7 runs a longer
 * campaign with other cases.
 */
import assert from "node:assert/strict";
import { PthFormatError, pthStateDict, readPth } from "../models/pth.ts";
import { ZipArchive } from "../models/zip.ts";
import {
  readSafetensors,
  SafetensorsFormatError,
  type Weights,
  writeSafetensors,
} from "../models/safetensors.ts";
import { NpyFormatError, parseNpy, serializeNpy } from "../analysis/npy.ts";
import { makePth, Pickle } from "./zip_tools.ts";
import { expectReaderOutcome, mutate, SeededRandom } from "./hostile.ts";

/**
 * Longer campaigns: LARGEKERNEL_FUZZ_SCALE multiplies the cases, LARGEKERNEL_FUZZ_SEED shifts
 * every seed (the suite runs scale 1, seed 0).
 */
const SCALE = Math.max(1, Math.floor(Number(Deno.env.get("LARGEKERNEL_FUZZ_SCALE") ?? 1) || 1));
const SEED = Math.floor(Number(Deno.env.get("LARGEKERNEL_FUZZ_SEED") ?? 0) || 0);

const fixture = (name: string) => Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url));

/** The pickle and storage records of a fixture, to be mutated and zipped again. */
async function pthParts(
  name: string,
): Promise<{ pickle: Uint8Array; storages: Record<string, Uint8Array> }> {
  const zip = new ZipArchive(await fixture(name), (why): never => {
    throw new Error(why);
  });
  let pickle = new Uint8Array();
  const storages: Record<string, Uint8Array> = {};
  for (const n of zip.entries.keys()) {
    if (n.endsWith("/data.pkl")) pickle = zip.read(n).slice();
    const m = /\/data\/([^/]+)$/.exec(n);
    if (m) storages[m[1]] = zip.read(n).slice();
  }
  return { pickle, storages };
}

/** Parse `bytes` as the trainer would: state dict first, whole object if that fails on its shape. */
function readPthBoth(bytes: Uint8Array, skipUnknown: boolean): number {
  let decoded = 0;
  try {
    for (const { data } of pthStateDict(bytes, { source: "fuzz.pth", skipUnknown }).values()) {
      decoded += data.byteLength;
    }
  } catch (e) {
    if (!(e instanceof PthFormatError)) throw e;
    readPth(bytes, { source: "fuzz.pth", skipUnknown });
  }
  return decoded;
}

function checkPth(label: string, bytes: Uint8Array, skipUnknown = true): void {
  const out = expectReaderOutcome(
    label,
    () => readPthBoth(bytes, skipUnknown),
    PthFormatError,
    "cannot read fuzz.pth: ",
  );
  if (out.value !== undefined) {
    // Decoded tensors never outgrow what the file could describe.
    assert.ok(out.value <= 8 * bytes.length + (1 << 20), `${label}: decoded ${out.value} bytes`);
  }
}

Deno.test("fuzz .pth: mutated zip structure of every fixture", async () => {
  const rng = new SeededRandom(18 + SEED);
  let refused = 0;
  let total = 0;
  for (const name of ["state_dict.pth", "deflate.pth", "checkpoint.pth", "torch_views.pth"]) {
    const good = await fixture(name);
    // Aim most mutations at the central directory and end records, where the sizes live.
    const tail: [number, number] = [Math.max(0, good.length - 600), good.length];
    for (let i = 0; i < 150 * SCALE; i++) {
      const bad = mutate(good, rng, i % 3 === 0 ? [0, good.length] : tail);
      total++;
      try {
        readPthBoth(bad, true);
      } catch {
        refused++;
      }
      checkPth(`${name} zip mutation ${i}`, bad);
    }
  }
  assert.ok(refused > total / 4, `only ${refused} of ${total} mutations were refused`);
});

Deno.test("fuzz .pth: mutated pickles of every fixture, zipped with valid CRCs", async () => {
  const rng = new SeededRandom(1806 + SEED);
  for (const name of ["state_dict.pth", "deflate.pth", "checkpoint.pth", "torch_views.pth"]) {
    const { pickle, storages } = await pthParts(name);
    for (let i = 0; i < 150 * SCALE; i++) {
      let bad = pickle;
      for (let k = 1 + rng.int(3); k > 0; k--) bad = mutate(bad, rng);
      checkPth(
        `${name} pickle mutation ${i}`,
        makePth(bad, storages, { deflatePickle: i % 2 === 1 }),
      );
    }
  }
});

const GLOBALS: [string, string][] = [
  ["collections", "OrderedDict"],
  ["torch", "FloatStorage"],
  ["torch._utils", "_rebuild_tensor_v2"],
  ["argparse", "Namespace"],
  ["os", "system"],
  ["builtins", "getattr"],
  ["_codecs", "encode"],
];

/** Opcodes with their argument writers, from the pickle protocols 0-5. */
function randomOpcode(p: Pickle, rng: SeededRandom): void {
  const small = () => rng.pick([0, 1, 2, 3, 255, 0x7fffffff, 0xffffffff, rng.int(64)]);
  const ops: (() => void)[] = [
    () => p.raw("("),
    () => p.raw(")"),
    () => p.raw("]"),
    () => p.raw("}"),
    () => p.raw("N"),
    () => p.raw("\x88"),
    () => p.raw("\x8f"),
    () => p.raw("t"),
    () => p.raw("l"),
    () => p.raw("d"),
    () => p.raw("\x85"),
    () => p.raw("\x86"),
    () => p.raw("\x87"),
    () => p.raw("a"),
    () => p.raw("e"),
    () => p.raw("s"),
    () => p.raw("u"),
    () => p.raw("\x90"),
    () => p.raw("\x91"),
    () => p.raw("0"),
    () => p.raw("1"),
    () => p.raw("2"),
    () => p.raw("R"),
    () => p.raw("\x81"),
    () => p.raw("\x92"),
    () => p.raw("b"),
    () => p.raw("o"),
    () => p.raw("\x93"),
    () => p.raw("Q"),
    () => p.raw("\x94"),
    () => p.raw("q").u8(rng.int(8)),
    () => p.raw("h").u8(rng.int(8)),
    () => p.raw("r").u32(small()),
    () => p.raw("j").u32(small()),
    () => p.raw("K").u8(rng.int(256)),
    () => p.raw("M").u8(rng.int(256)).u8(rng.int(256)),
    () => p.int(rng.u32() | 0),
    () => p.raw("\x8a").u8(rng.int(12)).raw(Array.from({ length: 12 }, () => rng.int(256))),
    () => p.raw("\x8b").u32(small()),
    () => p.str(rng.pick(["storage", "torch", "FloatStorage", "0", "cpu", "model", "\n"])),
    () => p.raw("X").u32(small()),
    () => p.raw("B").u32(small()),
    () => p.raw("\x8e").u32(small()).u32(rng.int(2) ? 0 : 0xffffffff),
    () => p.raw(`I${rng.pick(["1", "-7", "00", "01", "9".repeat(5000), "x"])}\n`),
    () => p.raw(`L${rng.pick(["12L", "-1", "1".repeat(4400)])}\n`),
    () => p.raw(`F${rng.pick(["1.5", "nan", "1e999", ""])}\n`),
    () => p.raw(`g${rng.int(4)}\n`),
    () => p.raw("\x95").u32(small()).u32(0),
    () => p.raw("G").raw(Array.from({ length: 8 }, () => rng.int(256))),
    () => p.raw("C").u8(rng.int(4)).raw("abcd"),
    () => p.raw("U").u8(rng.int(4)).raw("abcd"),
    () => p.raw("T").u32(small()),
    () => p.raw("\x8d").u32(small()).u32(0),
    () => p.raw("\x96").u32(small()).u32(0),
    () => p.raw(`P${rng.pick(["0", "storage", ""])}\n`),
    () =>
      p.raw(`i${rng.pick(["argparse\nNamespace", "os\nsystem", "collections\nOrderedDict"])}\n`),
    () => p.raw("\x80").u8(rng.int(8)),
    () => p.u8(rng.pick([0x82, 0x83, 0x84, 0x97, 0x98, 0xff, 0x00, 0x41])),
    () => p.raw(`p${rng.pick(["0", "-1", "99999999999999999999"])}\n`),
    () => {
      const [module, name] = rng.pick(GLOBALS);
      p.global(module, name);
    },
    () =>
      p.storage(
        rng.pick(["FloatStorage", "HalfStorage", "LongStorage"]),
        String(rng.int(3)),
        small(),
      ),
    () =>
      p.tensor(
        "FloatStorage",
        "0",
        rng.pick([0, 1, 4, 6, 0xffffffff]),
        rng.pick([0, 1, 5, -1]),
        [rng.pick([0, 1, 2, 3, 0x7fffffff, -1])],
        [rng.pick([0, 1, 2, -1, 0x7fffffff])],
      ),
  ];
  rng.pick(ops)();
}

Deno.test("fuzz .pth: random opcode programs from the pickle grammar", () => {
  const rng = new SeededRandom(4004 + SEED);
  const f32 = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
  let parsed = 0;
  for (let i = 0; i < 500 * SCALE; i++) {
    const p = new Pickle();
    for (let n = 1 + rng.int(30); n > 0; n--) randomOpcode(p, rng);
    const bytes = makePth(p.bytes(), { "0": f32, "1": f32.subarray(0, 8), "2": new Uint8Array() });
    const out = expectReaderOutcome(
      `program ${i}`,
      () => readPth(bytes, { source: "fuzz.pth", skipUnknown: rng.int(2) === 0 }),
      PthFormatError,
      "cannot read fuzz.pth: ",
    );
    if (!out.error) parsed++;
  }
  assert.ok(parsed > 0, "some random programs are valid pickles");
});

// ---------------------------------------------------------------- safetensors

function checkSafetensors(label: string, bytes: Uint8Array): void {
  const out = expectReaderOutcome(
    label,
    () => readSafetensors(bytes, "fuzz.safetensors"),
    SafetensorsFormatError,
    "cannot read fuzz.safetensors: ",
  );
  if (out.value) {
    let decoded = 0;
    for (const { data } of out.value.values()) decoded += data.byteLength;
    assert.ok(decoded <= 4 * bytes.length, `${label}: decoded ${decoded} bytes`);
  }
}

Deno.test("fuzz safetensors: mutated files from the writer, mostly in the header", () => {
  const rng = new SeededRandom(2026 + SEED);
  const weights: Weights = new Map([
    ["a.weight", { shape: [3, 4], data: Float32Array.from({ length: 12 }, (_, i) => i - 5) }],
    ["b", { shape: [], data: new Float32Array([7]) }],
    ["c.empty", { shape: [0, 2], data: new Float32Array() }],
    ["d", { shape: [5], data: new Float32Array(5).fill(0.5) }],
  ]);
  const good = writeSafetensors(weights, { format: "pt", epoch: "3" });
  const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
  for (let i = 0; i < 400 * SCALE; i++) {
    checkSafetensors(
      `mutation ${i}`,
      mutate(good, rng, i % 4 === 0 ? [0, good.length] : [0, headerEnd]),
    );
  }
});

/** A random JSON value of the kinds a header holds, often wrong. */
function randomJson(rng: SeededRandom, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 5 : 7)) {
    case 0:
      return rng.pick([0, 1, -1, 1.5, 2 ** 53, 2 ** 64, -0, 1e308]);
    case 1:
      return rng.pick(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "", "__proto__"]);
    case 2:
      return null;
    case 3:
      return rng.int(2) === 0;
    case 4:
      return [rng.int(5), rng.int(9)];
    case 5:
      return Array.from({ length: rng.int(4) }, () => randomJson(rng, depth + 1));
    default:
      return Object.fromEntries(
        Array.from(
          { length: rng.int(4) },
          () => [rng.pick(["dtype", "shape", "data_offsets", "x"]), randomJson(rng, depth + 1)],
        ),
      );
  }
}

Deno.test("fuzz safetensors: headers generated from the format's grammar", () => {
  const rng = new SeededRandom(77 + SEED);
  let parsed = 0;
  for (let i = 0; i < 400 * SCALE; i++) {
    const entries: string[] = [];
    let offset = 0;
    for (let t = rng.int(4); t > 0; t--) {
      const dtype = rng.pick(["F32", "F16", "U8", "I64", "F8_E4M3"]);
      const shape = Array.from({ length: rng.int(3) }, () => rng.pick([0, 1, 2, 3, -1, 2 ** 40]));
      const size = shape.reduce((a, b) => a * b, 1) *
        ({ F32: 4, F16: 2, U8: 1, I64: 8 }[dtype] ?? 1);
      const begin = rng.int(4) === 0 ? rng.pick([0, offset + 1, offset - 1]) : offset;
      const end = rng.int(4) === 0 ? rng.pick([begin, begin + 1, 2 ** 60]) : begin + size;
      const info = rng.int(8) === 0
        ? JSON.stringify(randomJson(rng))
        : JSON.stringify({ dtype, shape, data_offsets: [begin, end] });
      entries.push(`${JSON.stringify(rng.pick(["w", "b", "w", "__metadata__", "x\ny"]))}:${info}`);
      offset = Math.max(0, end);
    }
    const json = new TextEncoder().encode(`{${entries.join(",")}}`);
    const dataLen = rng.int(3) === 0 ? rng.int(64) : Math.min(offset, 4096);
    const bytes = new Uint8Array(8 + json.length + Math.max(0, dataLen));
    new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
    bytes.set(json, 8);
    checkSafetensors(`header ${i}`, bytes);
    try {
      readSafetensors(bytes);
      parsed++;
    } catch { /* counted above */ }
  }
  assert.ok(parsed > 0, "some generated headers are valid");
});

// ---------------------------------------------------------------- .npy

Deno.test("fuzz .npy: mutated NumPy fixtures and our own files", async () => {
  const rng = new SeededRandom(1234 + SEED);
  const files = [
    await fixture("erf_f32.npy"),
    await fixture("erf_f64.npy"),
    serializeNpy([1, 2, 3, 4, 5, 6], [2, 3]),
    serializeNpy([0.5], [1], "<f4"),
  ];
  for (let i = 0; i < 600 * SCALE; i++) {
    const good = rng.pick(files);
    const bad = mutate(good, rng, i % 4 === 0 ? [0, good.length] : [0, 80]);
    const out = expectReaderOutcome(
      `npy mutation ${i}`,
      () => parseNpy(bad, "fuzz.npy"),
      NpyFormatError,
      "fuzz.npy: ",
    );
    if (out.value) {
      assert.equal(out.value.data.length, out.value.shape.reduce((a, b) => a * b, 1));
      assert.ok(
        out.value.data.length * 4 <= bad.length,
        `npy mutation ${i}: more values than bytes`,
      );
    }
  }
});
