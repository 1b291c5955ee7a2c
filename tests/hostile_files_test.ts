/**
 * Crafted hostile files, one per class of attack on the readers: each is
 * written here byte by byte and must be refused with the reader's own
 * one-line error naming the file, the record and the limit, fast and
 * without a large allocation (CASE_LIMITS). CPU only.
 */
import assert from "node:assert/strict";
import { PTH_LIMITS, PthFormatError, pthStateDict, readPth } from "../models/pth.ts";
import { readSafetensors, SafetensorsFormatError } from "../models/safetensors.ts";
import { NPY_MAX_HEADER_BYTES, NpyFormatError, parseNpy } from "../analysis/npy.ts";
import { makePth, makeZip, Pickle, stateDictPickle } from "./zip_tools.ts";
import { expectReaderOutcome } from "./hostile.ts";

const F32x6 = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);

/** `read` must be refused with a PthFormatError matching every pattern. */
function refusedPth(label: string, read: () => unknown, ...patterns: RegExp[]): void {
  const out = expectReaderOutcome(label, read, PthFormatError, "cannot read hostile.pth: ");
  assert.ok(out.error, `${label}: was accepted`);
  for (const p of patterns) assert.match(out.error.message, p, label);
}

const stateDict = (bytes: Uint8Array, skipUnknown = false) => () =>
  pthStateDict(bytes, { source: "hostile.pth", skipUnknown });
const whole = (bytes: Uint8Array, skipUnknown = false) => () =>
  readPth(bytes, { source: "hostile.pth", skipUnknown });

Deno.test("hostile .pth: huge integers are refused before decoding, in linear time", () => {
  // LONG4 of 256 KB (took 45 s with a quadratic decoder).
  const long4 = new Pickle().raw("\x8b").u32(256 << 10).raw(new Uint8Array(256 << 10)).bytes();
  refusedPth(
    "LONG4 256 KB",
    whole(makePth(long4)),
    /archive\/data\.pkl \(opcode at byte 2\): integer of 262144 bytes \(limit 2048\)/,
  );
  // At the limit it decodes, negative two's complement included.
  const max = new Uint8Array(PTH_LIMITS.maxLongBytes).fill(0xff);
  const ok = new Pickle().raw("\x8b").u32(max.length).raw(max).bytes();
  assert.equal(readPth(makePth(ok)), -1);
  const big = new Pickle().raw("\x8a").u8(9).raw([0, 0, 0, 0, 0, 0, 0, 0, 1]).bytes();
  assert.equal(readPth(makePth(big)), 2n ** 64n);
  // Text integers: Python's own 4300-digit limit.
  const digits = new Pickle().raw(`I${"7".repeat(200_000)}\n`).bytes();
  refusedPth("INT 200k digits", whole(makePth(digits)), /text argument longer than 4302 bytes/);
  const fine = new Pickle().raw(`L${"7".repeat(4300)}L\n`).bytes();
  assert.equal(readPth(makePth(fine)), BigInt("7".repeat(4300)));
});

Deno.test("hostile .pth: DEFLATE bombs stop at the declared size and the archive's budget", () => {
  const zeros = new Uint8Array(64 << 20);
  const pickle = stateDictPickle("FloatStorage", 16 << 20, 0, [16 << 20], [1]);
  const bomb = (size: number) =>
    makeZip([
      { name: "archive/data.pkl", data: pickle },
      { name: "archive/data/0", data: zeros, method: 8, size },
    ]);
  // Declared honestly: 64 MiB from a ~65 KB file is over 16× its size.
  const honest = bomb(zeros.length);
  assert.ok(honest.length < 100_000);
  refusedPth(
    "bomb, honest size",
    stateDict(honest),
    /zip entry "archive\/data\/0" declares 67108864 inflated bytes, over the limit of 16×/,
  );
  // Declared small (the directory lies): inflation stops at the declared size.
  const liar = bomb(4096);
  refusedPth(
    "bomb, lying size",
    stateDict(liar),
    /(record holds 4096 bytes|inflates past its declared 4096 bytes)/,
  );
  const small = makeZip([
    { name: "archive/data.pkl", data: stateDictPickle("FloatStorage", 1024, 0, [1024], [1]) },
    { name: "archive/data/0", data: new Uint8Array(1 << 20), method: 8, size: 4096 },
  ]);
  refusedPth("bomb past declared size", stateDict(small), /inflates past its declared 4096 bytes/);
  // A pickle inflated past the budget is refused the same way.
  const pkl = makeZip([{ name: "archive/data.pkl", data: zeros.subarray(0, 40 << 20), method: 8 }]);
  refusedPth("pickle bomb", whole(pkl), /data\.pkl" declares 41943040 inflated bytes/);
});

Deno.test("hostile .pth: views must fit the bytes their storage really has", () => {
  const file = (numel: number, offset: number, size: number[], stride: number[], data = F32x6) =>
    makePth(stateDictPickle("FloatStorage", numel, offset, size, stride), { "0": data });
  // A stride-0 view of one element, 2^28 elements long (allocated 1 GiB from a tiny file).
  const stride0 = file(1, 0, [1 << 28], [0], F32x6.subarray(0, 4));
  assert.ok(stride0.length < 1000);
  refusedPth(
    "stride 0",
    stateDict(stride0),
    /tensor \[268435456\] \(offset 0, stride \[0\]\) on storage data\/0 has 268435456 elements, more than its storage's 1/,
  );
  refusedPth(
    "past the end",
    stateDict(file(6, 1, [6], [1])),
    /reaches element 6 of a storage of 6/,
  );
  refusedPth(
    "negative size",
    stateDict(file(6, 0, [-1], [1])),
    /size \[-1\] is not all non-negative/,
  );
  refusedPth("negative stride", stateDict(file(6, 5, [2], [-1])), /stride \[-1\] is not all/);
  refusedPth("negative offset", stateDict(file(6, -1, [2], [1])), /storage offset -1/);
  refusedPth(
    "overflowing strides",
    stateDict(file(6, 0, [0x7fffffff, 0x7fffffff, 0x7fffffff], [1, 1, 1])),
    /overflow 2\^53|reaches element/,
  );
  // The storage's declared size against its record, before reading it.
  refusedPth(
    "storage larger than its record",
    stateDict(file(1 << 30, 0, [6], [1])),
    /storage "data\/0" declares 1073741824 × torch\.FloatStorage \(4294967296 bytes\) but its record holds 24 bytes/,
  );
  // Valid views still decode.
  const t = pthStateDict(file(6, 0, [3, 2], [1, 3])).get("w")!;
  assert.deepEqual([...t.data], [1, 4, 2, 5, 3, 6]);
  // Rank over the limit.
  refusedPth(
    "rank 65",
    stateDict(file(6, 0, new Array(65).fill(1), new Array(65).fill(1))),
    /65 entries \(limit 64/,
  );
});

Deno.test("hostile .pth: many views of one storage are refused before decoding", () => {
  // One tensor over a 1 MiB storage, memoised, then put under 5000 keys: 5 GB to decode.
  const p = new Pickle().raw("}(").str("w").tensor("FloatStorage", "0", 1 << 18, 0, [1 << 18], [1])
    .raw("r").u32(100);
  for (let i = 0; i < 5000; i++) p.str(`k${i}`).raw("j").u32(100);
  const bytes = makePth(p.raw("u").bytes(), { "0": new Uint8Array(1 << 20) });
  refusedPth(
    "shared storage",
    stateDict(bytes),
    /would decode to 5243928576 bytes from 1048576 bytes of storage \(limit 4×/,
  );
});

Deno.test("hostile .pth: stack, memo, items and heap are bounded; long APPENDS and odd keys stay the reader's errors", () => {
  const nones = new Pickle().raw("N".repeat(PTH_LIMITS.maxStack + 1)).bytes();
  refusedPth("stack", whole(makePth(nones)), /stack deeper than 1048576 values/);
  // A million memo entries from a 1 MB pickle: over the heap budget of a 1 MB file, and past the
  // memo's own limit once the file is large enough (padded here) for the budget to allow it.
  const memo = new Pickle().raw("N").raw("\x94".repeat(PTH_LIMITS.maxMemo + 1)).bytes();
  refusedPth("memo heap", whole(makePth(memo)), /the pickle builds more than \d+ bytes of objects/);
  const roomy = makeZip([
    { name: "archive/data.pkl", data: memo },
    { name: "archive/padding", data: new Uint8Array(8 << 20) },
  ]);
  refusedPth("memo", whole(roomy), /memo holds more than 1048576 entries/);
  // A small file whose compressed pickle would run 16 million opcodes: stopped by the opcode budget.
  const padding = new Uint8Array(900_000).map((_, i) => (i * 2654435761) >>> 24);
  const spin = makeZip([
    {
      name: "archive/data.pkl",
      data: new Pickle().raw("N0".repeat(8_000_000)).bytes(),
      method: 8,
    },
    { name: "archive/padding", data: padding },
  ]);
  assert.ok(spin.length < 1_100_000);
  refusedPth(
    "opcodes",
    whole(spin),
    /more than \d+ opcodes \(limit 4194304 \+ 2 per byte of the file\)/,
  );
  // 300 000 items appended at once (a raw JS "call stack" RangeError before) parse fine.
  const many = new Pickle().raw("](").raw("K\x01".repeat(300_000)).raw("e").bytes();
  assert.equal((readPth(makePth(many)) as unknown[]).length, 300_000);
  // Empty dicts cost 200 bytes of heap each: 1 MiB of them per file byte is over the budget.
  const dicts = new Pickle().raw("](").raw("}".repeat(400_000)).raw("e").bytes();
  const small = makePth(dicts, {}, { deflatePickle: true });
  refusedPth(
    "heap",
    whole(small),
    /builds more than \d+ bytes of objects \(limit 16777216 \+ 16 per byte/,
  );
  // Distinct keys (fresh tuples) by the hundred thousand: a dict is fine, the reader's own error if not.
  const keys = new Pickle().raw("}(").raw(")N".repeat(200_000)).raw("u").bytes();
  const out = expectReaderOutcome(
    "tuple keys",
    whole(makePth(keys)),
    PthFormatError,
    "cannot read hostile.pth",
  );
  assert.equal((out.value as Map<unknown, unknown>)?.size ?? 0, out.error ? 0 : 200_000);
  // Keys that are not strings, with newlines or huge, never break the one-line message.
  const odd = new Pickle().raw("}(").raw("\x8a\x09").raw(new Uint8Array(9).fill(0x7f)).str("v")
    .raw("B").u32(100_000).raw(new Uint8Array(100_000)).str("v").str("a\nb").str("v").raw("u")
    .bytes();
  refusedPth(
    "odd keys",
    () => pthStateDict(makePth(odd), { source: "hostile.pth", entry: "model" }),
    /no dict under "model" \(top-level keys: bigint, object, "a\\nb"\)/,
  );
});

Deno.test("hostile .pth: globals that run code are refused even with skipUnknown", () => {
  const call = (module: string, name: string) =>
    makePth(new Pickle().global(module, name).raw("(").str("touch /tmp/x").raw("tR").bytes());
  for (
    const [module, name] of [
      ["os", "system"],
      ["posix", "system"],
      ["subprocess", "Popen"],
      ["builtins", "eval"],
      ["builtins", "getattr"],
      ["__builtin__", "exec"],
      ["argparse", "_os.system"],
      ["torch", "load"],
      ["torch.hub", "load"],
      ["numpy.testing._private.utils", "runstring"],
      ["pickle", "loads"],
      ["functools", "reduce"],
      ["operator", "attrgetter"],
      ["types", "CodeType"],
    ]
  ) {
    refusedPth(
      `${module}.${name}`,
      whole(call(module, name), true),
      /refused the file: its pickle names the global ".*" \(.*\), which no checkpoint needs/,
    );
  }
  // STACK_GLOBAL with a newline in the name: still one line, still refused.
  const stacked = new Pickle().str("os").str("system\nX").raw("\x93").bytes();
  refusedPth("stack global with newline", whole(makePth(stacked), true), /"os\.system\\nX"/);
  // Harmless data classes, also from refused modules, stay inert placeholders.
  for (
    const [module, name] of [
      ["argparse", "Namespace"],
      ["functools", "partial"],
      ["copyreg", "_reconstructor"],
      ["types", "SimpleNamespace"],
    ]
  ) {
    const obj = new Pickle().global(module, name).raw(")R").bytes();
    const top = readPth(makePth(obj), { skipUnknown: true }) as { global: string };
    assert.equal(top.global, `${module}.${name}`);
  }
});

Deno.test("hostile .pth: zip structure lies (CRC, names, sizes, duplicates)", () => {
  const pickle = stateDictPickle("FloatStorage", 6, 0, [6], [1]);
  const tampered = F32x6.slice();
  tampered[0] ^= 1;
  const badCrc = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: tampered, crc: 0x12345678 },
  ]);
  refusedPth(
    "storage CRC",
    stateDict(badCrc),
    /^cannot read hostile\.pth: corrupt zip entry "archive\/data\/0": CRC-32 0x[0-9a-f]{8} of its data, directory says 0x12345678/,
  );
  // Every stored entry is checked, also one the reader would never use.
  const unused = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: F32x6 },
    { name: "archive/data/9", data: F32x6, crc: 1 },
  ]);
  refusedPth("unused entry CRC", whole(unused), /corrupt zip entry "archive\/data\/9": CRC-32/);
  const twice = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: F32x6 },
    { name: "archive/data/0", data: tampered },
  ]);
  refusedPth("duplicate entry", stateDict(twice), /two entries named "archive\/data\/0"/);
  const renamed = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: F32x6, localName: "archive/data/1" },
  ]);
  refusedPth(
    "local name",
    stateDict(renamed),
    /local header of "archive\/data\/0" names "archive\/data\/1"/,
  );
  const short = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: F32x6, size: 4 },
  ]);
  refusedPth(
    "stored size",
    stateDict(short),
    /(record holds 4 bytes|stored with 24 bytes, directory says 4)/,
  );
  // Two directory entries sharing one stretch of bytes (a non-recursive zip bomb's trick).
  const shared = makeZip([
    { name: "archive/data.pkl", data: pickle },
    { name: "archive/data/0", data: F32x6 },
    { name: "archive/data/1", data: F32x6 },
  ]);
  const sv = new DataView(shared.buffer);
  const centrals: number[] = [];
  for (let p = 0; p + 4 <= shared.length; p++) {
    if (sv.getUint32(p, true) === 0x02014b50) centrals.push(p);
  }
  sv.setUint32(centrals[2] + 42, sv.getUint32(centrals[1] + 42, true), true);
  refusedPth(
    "overlapping entries",
    whole(shared),
    /entry "archive\/data\/[01]" overlaps entry "archive\/data\/[01]"/,
  );
  // An end record claiming more entries than its directory can hold.
  const many = makePth(pickle, { "0": F32x6 });
  new DataView(many.buffer).setUint16(many.length - 12, 0xfffe, true);
  refusedPth("entry count", whole(many), /entries cannot fit a \d+-byte central directory/);
});

Deno.test("hostile safetensors: header length, JSON, shapes and offsets", () => {
  const frame = (json: string, data = new Uint8Array(), declared?: bigint) => {
    const header = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + header.length + data.length);
    new DataView(out.buffer).setBigUint64(0, declared ?? BigInt(header.length), true);
    out.set(header, 8);
    out.set(data, 8 + header.length);
    return out;
  };
  const refused = (label: string, bytes: Uint8Array, re: RegExp) => {
    const out = expectReaderOutcome(
      label,
      () => readSafetensors(bytes, "hostile.safetensors"),
      SafetensorsFormatError,
      "cannot read hostile.safetensors: ",
    );
    assert.ok(out.error, `${label}: was accepted`);
    assert.match(out.error.message, re, label);
  };
  const entry = (shape: unknown, offsets: unknown, dtype = "F32") =>
    JSON.stringify({ dtype, shape, data_offsets: offsets });
  refused(
    "2^63 header",
    frame("{}", new Uint8Array(), 1n << 63n),
    /header length 9223372036854775808 exceeds the limit of 100000000/,
  );
  refused(
    "header past the file",
    frame("{}", new Uint8Array(), 1000n),
    /header needs 1000 bytes but only 2 follow/,
  );
  refused(
    "duplicate key",
    frame(`{"w":${entry([1], [0, 4])},"w":${entry([1], [4, 8])}}`, new Uint8Array(8)),
    /the key "w" appears twice/,
  );
  refused(
    "duplicate field",
    frame(
      `{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}`,
      new Uint8Array(4),
    ),
    /"dtype" appears twice/,
  );
  refused(
    "overlap",
    frame(`{"a":${entry([2], [0, 8])},"b":${entry([2], [4, 12])}}`, new Uint8Array(12)),
    /"b" starts at byte 4, expected 8 \(it overlaps/,
  );
  refused(
    "gap",
    frame(`{"a":${entry([1], [0, 4])},"b":${entry([1], [8, 12])}}`, new Uint8Array(12)),
    /a gap before it/,
  );
  refused(
    "overflow",
    frame(`{"a":${entry([2 ** 40, 2 ** 40], [0, 4])}}`, new Uint8Array(4)),
    /would need over 2\^53 bytes/,
  );
  refused(
    "fraction",
    frame(`{"a":${entry([1.5], [0, 6])}}`, new Uint8Array(6)),
    /invalid shape \[1\.5\]/,
  );
  refused(
    "nan-like",
    frame(`{"a":${entry(["NaN"], [0, 4])}}`, new Uint8Array(4)),
    /invalid shape \["NaN"\]/,
  );
  refused(
    "offsets past data",
    frame(`{"a":${entry([4], [0, 16])}}`, new Uint8Array(8)),
    /tensor data needs 16 bytes \(through tensor "a"\), only 8 present/,
  );
  refused(
    "offsets reversed",
    frame(`{"a":${entry([1], [4, 0])}}`, new Uint8Array(4)),
    /invalid data_offsets \[4,0\]/,
  );
  refused(
    "name with newline",
    frame(`{"a\\nb":${entry([1], [0, 4], "F8")}}`, new Uint8Array(4)),
    /tensor "a\\nb" has unsupported dtype "F8"/,
  );
  refused("not an object", frame(`{"a":[1,2]}`), /entry "a" is not an object/);
  refused("metadata", frame(`{"__metadata__":{"x":1}}`), /__metadata__\."x" is not a string/);
  // __proto__ as a metadata key stays a plain entry.
  const proto = readSafetensors(
    frame(`{"__metadata__":{"__proto__":"x"},"a":${entry([1], [0, 4])}}`, new Uint8Array(4)),
  );
  assert.equal(proto.get("a")!.data.length, 1);
});

Deno.test("hostile .npy: header fields validated, no raw RangeError", () => {
  const npy = (header: string, data = new Uint8Array(16), version = 1, declared?: number) => {
    const h = new TextEncoder().encode(header);
    const pre = version === 1 ? 10 : 12;
    const out = new Uint8Array(pre + h.length + data.length);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
    const view = new DataView(out.buffer);
    if (version === 1) view.setUint16(8, declared ?? h.length, true);
    else view.setUint32(8, declared ?? h.length, true);
    out.set(h, pre);
    out.set(data, pre + h.length);
    return out;
  };
  const refused = (label: string, bytes: Uint8Array, re: RegExp) => {
    const out = expectReaderOutcome(
      label,
      () => parseNpy(bytes, "hostile.npy"),
      NpyFormatError,
      "hostile.npy: ",
    );
    assert.ok(out.error, `${label}: was accepted`);
    assert.match(out.error.message, re, label);
  };
  const dict = (shape: string, descr = "'<f8'", fortran = "False") =>
    `{'descr': ${descr}, 'fortran_order': ${fortran}, 'shape': ${shape}, }`;
  refused("negative", npy(dict("(-1,)")), /shape entry "-1,\), }" is not a non-negative integer/);
  refused("nan", npy(dict("(nan, 2)")), /shape entry "nan, 2\), }"/);
  refused("float", npy(dict("(1.5,)")), /shape tuple is malformed/);
  refused(
    "huge",
    npy(dict("(4294967296, 4294967296)")),
    /needs over 2\^53 bytes of data, 16 present/,
  );
  refused(
    "too long",
    npy(dict("(2,)"), new Uint8Array(16), 2, 0xffffffff),
    /header of 4294967295 bytes is over the limit of 10000/,
  );
  refused(
    "past the file",
    npy(dict("(2,)"), new Uint8Array(0), 1, 9000),
    /truncated \(the header needs 9000 bytes/,
  );
  refused(
    "version",
    npy(dict("(2,)"), new Uint8Array(16), 9),
    /unsupported \.npy format version 9\.0/,
  );
  refused("fortran", npy(dict("(2,)", "'<f8'", "True")), /Fortran-order/);
  refused("dtype", npy(dict("(2,)", "'<i8'")), /dtype "<i8" is not float32 or float64/);
  refused("missing key", npy("{'descr': '<f8', 'shape': (2,), }"), /header has no "fortran_order"/);
  refused("unknown key", npy(dict("(2,)").replace("}", "'x': 1, }")), /unknown header key "x"/);
  refused(
    "twice",
    npy(`{'shape': (1,), ${dict("(2,)").slice(1)}`),
    /header key "shape" appears twice/,
  );
  refused("not a dict", npy("[1, 2]"), /the header is not a dict/);
  assert.ok(NPY_MAX_HEADER_BYTES === 10000);
  // Valid, with the header keys in any order.
  assert.deepEqual(parseNpy(npy("{'shape': (2,), 'fortran_order': False, 'descr': '<f8'}")).shape, [
    2,
  ]);
});
