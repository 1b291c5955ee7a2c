/**
 * Weights I/O: safetensors read/write and the PyTorch `.pth` reader, against
 * hand-built files and the fixtures made by tests/fixtures/make_pth_fixtures.py.
 * CPU only, except the last test, which loads a real PyTorch checkpoint into a model.
 */
import assert from "node:assert/strict";
import {
  decodeFloat32,
  type Dtype,
  loadSafetensorsFile,
  readSafetensors,
  readSafetensorsHeader,
  saveSafetensorsFile,
  type Weights,
  writeSafetensors,
} from "../models/safetensors.ts";
import {
  loadPthFile,
  PickleObject,
  PthFormatError,
  pthStateDict,
  PthTensor,
  readPth,
} from "../models/pth.ts";
import { fixCrc32 } from "./zip_tools.ts";

const fixture = (name: string) => Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url));
const fixturePath = (name: string) => new URL(`./fixtures/${name}`, import.meta.url).pathname;

type Expected = Record<string, { shape: number[]; data: number[] }>;
const expected = JSON.parse(await Deno.readTextFile(fixturePath("pth_expected.json"))) as Record<
  string,
  Expected & Record<string, Expected>
>;

/** Exact f32 comparison (NaN equals NaN, -0 differs from 0). */
function assertF32(actual: Float32Array, want: number[], what: string): void {
  assert.deepEqual(Array.from(actual), want.map(Math.fround), what);
}

function assertWeights(actual: Weights, want: Expected): void {
  assert.deepEqual([...actual.keys()].sort(), Object.keys(want).sort());
  for (const [k, { shape, data }] of Object.entries(want)) {
    assert.deepEqual(actual.get(k)!.shape, shape, `${k} shape`);
    assertF32(actual.get(k)!.data, data, k);
  }
}

/** A one-line error whose message matches every pattern. */
function throwsLine(fn: () => unknown, ...patterns: RegExp[]): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(!e.message.includes("\n"), `multi-line error: ${e.message}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

/** Header length (u64 LE) + header padded with spaces to a multiple of 8 + data. */
function frame(json: string, data: Uint8Array): Uint8Array {
  const header = new TextEncoder().encode(json);
  const padded = Math.ceil(header.length / 8) * 8;
  const out = new Uint8Array(8 + padded + data.length).fill(0x20, 8, 8 + padded);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(header, 8);
  out.set(data, 8 + padded);
  return out;
}

/** A safetensors file built without the writer: tensors given as raw little-endian bytes. */
function handMade(
  tensors: { name: string; dtype: Dtype | string; shape: number[]; raw: Uint8Array }[],
): Uint8Array {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.raw.length],
    };
    offset += t.raw.length;
  }
  const data = new Uint8Array(offset);
  offset = 0;
  for (const t of tensors) data.set(t.raw, offset), (offset += t.raw.length);
  return frame(JSON.stringify(header), data);
}

function rawLE(
  kind: "u16" | "f32" | "f64" | "i64" | "i32",
  values: (number | bigint)[],
): Uint8Array {
  const size = { u16: 2, f32: 4, f64: 8, i64: 8, i32: 4 }[kind];
  const out = new Uint8Array(size * values.length);
  const v = new DataView(out.buffer);
  values.forEach((x, i) => {
    if (kind === "u16") v.setUint16(2 * i, Number(x), true);
    else if (kind === "f32") v.setFloat32(4 * i, Number(x), true);
    else if (kind === "f64") v.setFloat64(8 * i, Number(x), true);
    else if (kind === "i64") v.setBigInt64(8 * i, BigInt(x), true);
    else v.setInt32(4 * i, Number(x), true);
  });
  return out;
}

// ---------------------------------------------------------------- safetensors

Deno.test("safetensors round trip: metadata, scalar, empty and odd shapes", () => {
  const values = (n: number, seed: number) =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(seed + i * 1.7) * 3);
  const weights: Weights = new Map([
    ["stages.1.weight", { shape: [3, 1, 5], data: values(15, 1) }],
    ["a.scalar", { shape: [], data: new Float32Array([-0.5]) }],
    ["empty", { shape: [0, 4], data: new Float32Array(0) }],
    ["b.bias", { shape: [7], data: values(7, 2) }],
  ]);
  const metadata = { format: "pt", note: 'ünïcode "quoted"\n', epoch: "3" };
  const bytes = writeSafetensors(weights, metadata);
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLen % 8, 0);
  const header = readSafetensorsHeader(bytes);
  assert.deepEqual(header.metadata, metadata);
  assert.equal(header.dataStart, 8 + headerLen);
  // Sorted by name, as the reference implementation writes them.
  assert.deepEqual(header.tensors.map((t) => t.name), [
    "a.scalar",
    "b.bias",
    "empty",
    "stages.1.weight",
  ]);
  assert.ok(header.tensors.every((t) => t.dtype === "F32"));
  const back = readSafetensors(bytes);
  assert.deepEqual([...back.keys()], ["a.scalar", "b.bias", "empty", "stages.1.weight"]);
  for (const [k, { shape, data }] of weights) {
    assert.deepEqual(back.get(k)!.shape, shape, k);
    assert.deepEqual(back.get(k)!.data, data, k);
  }
  // No metadata: no __metadata__ key at all.
  assert.ok(!new TextDecoder().decode(writeSafetensors(weights)).includes("__metadata__"));
  throwsLine(
    () => writeSafetensors(new Map([["x", { shape: [2, 2], data: new Float32Array(3) }]])),
    /"x" has 3 values, shape \[2,2\] needs 4/,
  );
});

Deno.test("safetensors: hand-written file padded as the Rust library does", () => {
  // Compact JSON, __metadata__ first, tensors in data order, then spaces up to a multiple of 8.
  const json =
    '{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},' +
    '"b":{"dtype":"F32","shape":[],"data_offsets":[16,20]}}';
  const pad = (8 - (json.length % 8)) % 8;
  assert.ok(pad > 0, "the test header should need padding");
  const data = rawLE("f32", [1.5, -2, 0.25, 1e-3, 42]);
  const bytes = new Uint8Array(8 + json.length + pad + data.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length + pad), true);
  bytes.set(new TextEncoder().encode(json + " ".repeat(pad)), 8);
  bytes.set(data, 8 + json.length + pad);

  const w = readSafetensors(bytes);
  assert.deepEqual(w.get("a.weight")!.shape, [2, 2]);
  assertF32(w.get("a.weight")!.data, [1.5, -2, 0.25, 1e-3], "a.weight");
  assert.deepEqual(w.get("b")!.shape, []);
  assertF32(w.get("b")!.data, [42], "b");
  // Our writer produces exactly these bytes.
  assert.deepEqual(writeSafetensors(w, { format: "pt" }), bytes);
});

Deno.test("safetensors: F16, BF16, F64, I64, I32 decode to known values", () => {
  const bytes = handMade([
    // 1, -2, max half, smallest subnormal, -0, inf, nearest half to 1/3, NaN
    {
      name: "h",
      dtype: "F16",
      shape: [2, 4],
      raw: rawLE("u16", [0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x3555, 0x7e00]),
    },
    // 1, -3, 3.140625, -inf, smallest bf16 subnormal (2^-133)
    {
      name: "bf",
      dtype: "BF16",
      shape: [5],
      raw: rawLE("u16", [0x3f80, 0xc040, 0x4049, 0xff80, 0x0001]),
    },
    { name: "d", dtype: "F64", shape: [3], raw: rawLE("f64", [0.1, -1e300, 2 ** -30]) },
    { name: "n", dtype: "I64", shape: [], raw: rawLE("i64", [7n]) },
    { name: "l", dtype: "I64", shape: [3], raw: rawLE("i64", [-1n, 2n ** 40n + 3n, -(2n ** 53n)]) },
    { name: "i", dtype: "I32", shape: [2], raw: rawLE("i32", [-7, 2147483647]) },
  ]);
  const w = readSafetensors(bytes);
  assertF32(w.get("h")!.data, [1, -2, 65504, 2 ** -24, -0, Infinity, 0.333251953125, NaN], "F16");
  assertF32(w.get("bf")!.data, [1, -3, 3.140625, -Infinity, 2 ** -133], "BF16");
  assert.ok(w.get("bf")!.data[4] > 0, "bf16 subnormal survives as an f32 subnormal");
  assertF32(w.get("d")!.data, [0.1, -Infinity, 2 ** -30], "F64");
  assert.deepEqual(w.get("n")!.shape, []);
  assertF32(w.get("n")!.data, [7], "I64 scalar");
  assertF32(w.get("l")!.data, [-1, 2 ** 40 + 3, -(2 ** 53)], "I64");
  assertF32(w.get("i")!.data, [-7, 2147483647], "I32");
  // Big-endian decoding (used for .pth files saved on big-endian hosts).
  assertF32(
    decodeFloat32(new Uint8Array([0x3c, 0x00, 0xc0, 0x00]), "F16", 2, false),
    [1, -2],
    "F16 BE",
  );
});

Deno.test("safetensors: truncated and corrupt input gives one-line errors", async () => {
  const good = writeSafetensors(new Map([["w", { shape: [2], data: new Float32Array([1, 2]) }]]));
  const src = "model.safetensors";
  throwsLine(
    () => readSafetensors(good.subarray(0, 5), src),
    /model\.safetensors/,
    /truncated: 5 bytes/,
  );
  throwsLine(() => readSafetensors(good.subarray(0, 20), src), /truncated: header needs \d+ bytes/);
  throwsLine(
    () => readSafetensors(good.subarray(0, good.length - 4), src),
    /truncated: tensor data needs 8 bytes/,
  );
  throwsLine(
    () => readSafetensors(new Uint8Array([...good, 0, 0, 0, 0]), src),
    /4 unexpected bytes/,
  );
  throwsLine(
    () => readSafetensors(frame("{not json", new Uint8Array()), src),
    /model\.safetensors: corrupt header/,
  );
  throwsLine(() => readSafetensors(frame("[1,2]", new Uint8Array()), src), /not a JSON object/);
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  throwsLine(() => readSafetensors(huge, src), /header length \d+ exceeds/);
  const badDtype = handMade([{ name: "q", dtype: "F8_E4M3", shape: [1], raw: new Uint8Array(1) }]);
  throwsLine(() => readSafetensors(badDtype, src), /"q" has unsupported dtype "F8_E4M3"/);
  const short = frame('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', new Uint8Array(4));
  throwsLine(() => readSafetensors(short, src), /"w" spans 4 bytes, its shape and dtype need 8/);
  const gap = frame('{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', new Uint8Array(8));
  throwsLine(() => readSafetensors(gap, src), /"w" starts at byte 4, expected 0/);
  const badShape = frame(
    '{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
    new Uint8Array(4),
  );
  throwsLine(() => readSafetensors(badShape, src), /invalid shape \[-1\]/);

  // Through the file helper, the error names the file.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/cut.safetensors`;
    await Deno.writeFile(path, good.subarray(0, good.length - 1));
    await assert.rejects(loadSafetensorsFile(path), (e: Error) => {
      assert.ok(e.message.startsWith(`cannot read ${path}: truncated`), e.message);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: save replaces the file atomically and leaves no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/ckpt.safetensors`;
    const a: Weights = new Map([["w", { shape: [3], data: new Float32Array([1, 2, 3]) }]]);
    const b: Weights = new Map([["w", { shape: [1, 2], data: new Float32Array([4, 5]) }]]);
    await saveSafetensorsFile(path, a, { step: "1" });
    await saveSafetensorsFile(path, b, { step: "2" });
    const back = await loadSafetensorsFile(path);
    assert.deepEqual(back.get("w"), { shape: [1, 2], data: new Float32Array([4, 5]) });
    assert.deepEqual(readSafetensorsHeader(await Deno.readFile(path)).metadata, { step: "2" });
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["ckpt.safetensors"]);
    // A failed save (bad data) leaves the previous file intact.
    await assert.rejects(
      saveSafetensorsFile(path, new Map([["w", { shape: [9], data: new Float32Array(1) }]])),
    );
    assert.deepEqual((await loadSafetensorsFile(path)).get("w")!.data, new Float32Array([4, 5]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- .pth

Deno.test("pth: torch.save-style state dict (strided, shared, f16/bf16/f64/i64/i32)", async () => {
  const bytes = await fixture("state_dict.pth");
  assertWeights(pthStateDict(bytes), expected["state_dict.pth"]);
  assertWeights(await loadPthFile(fixturePath("state_dict.pth")), expected["state_dict.pth"]);

  const sd = readPth(bytes) as Map<string, PthTensor>;
  const t = sd.get("fc.weight_t")!;
  assert.deepEqual([t.shape, t.stride], [[4, 3], [1, 4]]);
  // Transposed: element (a, b) is the saved [3, 4] matrix's (b, a) = -2 + 0.5 (4b + a).
  assertF32(t.toFloat32(), [-2, 0, 2, -1.5, 0.5, 2.5, -1, 1, 3, -0.5, 1.5, 3.5], "transpose");
  const view = sd.get("conv.weight_view")!;
  assert.equal(view.storage, sd.get("conv.weight")!.storage, "views share one storage");
  assert.deepEqual([view.storageOffset, view.stride], [2, [2]]);
  assert.equal(sd.get("half.weight")!.dtype, "F16");
  const nbt = sd.get("bn.num_batches_tracked")!;
  assert.deepEqual([nbt.dtype, nbt.shape, Array.from(nbt.toFloat32())], ["I64", [], [7]]);
});

Deno.test("pth: SLaK-style checkpoint with args/optimizer needs skipUnknown", async () => {
  const bytes = await fixture("checkpoint.pth");
  throwsLine(
    () => pthStateDict(bytes, { source: "slak.pth" }),
    /^cannot read slak\.pth: archive\/data\.pkl \(opcode at byte \d+\): refused/,
    /"argparse\.Namespace"/,
    /nothing in the file was executed/,
  );
  const top = readPth(bytes, { skipUnknown: true }) as Map<string, unknown>;
  assert.deepEqual([...top.keys()], [
    "model",
    "model_ema",
    "optimizer",
    "epoch",
    "max_accuracy",
    "args",
  ]);
  assert.equal(top.get("epoch"), 3);
  assert.equal(top.get("max_accuracy"), 82.5);
  const args = top.get("args") as PickleObject;
  assert.ok(args instanceof PickleObject);
  assert.equal(args.global, "argparse.Namespace");
  const state = args.state as Map<string, unknown>;
  assert.equal(state.get("model"), "SLaK_tiny");
  assert.equal(state.get("lr"), 4e-3);
  assert.deepEqual(state.get("kernel_size"), [51, 49, 47, 13, 5]);
  assert.equal(state.get("sparse"), true);
  const optimizer = top.get("optimizer") as Map<string, unknown>;
  const group = (optimizer.get("param_groups") as Map<string, unknown>[])[0];
  assert.deepEqual([group.get("betas"), group.get("params")], [[0.9, 0.999], [0, 1]]);
  const slot = (optimizer.get("state") as Map<number, Map<string, unknown>>).get(0)!;
  assert.equal(slot.get("step"), 3);
  assert.ok(slot.get("exp_avg") instanceof PthTensor);

  // Default: "model", with the DataParallel "module." prefix removed.
  const strip = (e: Expected) =>
    Object.fromEntries(Object.entries(e).map(([k, v]) => [k.replace(/^module\./, ""), v]));
  assertWeights(
    pthStateDict(bytes, { skipUnknown: true }),
    strip(expected["checkpoint.pth"].model),
  );
  assertWeights(
    pthStateDict(bytes, { skipUnknown: true, entry: "model_ema" }),
    expected["checkpoint.pth"].model_ema,
  );
  assert.deepEqual(
    [...pthStateDict(bytes, { skipUnknown: true, stripPrefix: "" }).keys()],
    ["module.stem.weight", "module.stem.bias"],
  );
  throwsLine(
    () => pthStateDict(bytes, { skipUnknown: true, entry: "nope" }),
    /no dict under "nope" \(top-level keys: "model", "model_ema", "optimizer", "epoch", "max_accuracy", "args"\)/,
  );
});

Deno.test("pth: DEFLATE-compressed entries and pickle protocol 4", async () => {
  const bytes = await fixture("deflate.pth");
  assert.equal(new DataView(bytes.buffer).getUint16(8, true), 8, "first entry is DEFLATE");
  assertWeights(pthStateDict(bytes), expected["deflate.pth"]);
});

Deno.test("pth: a pickle calling os.system or builtins.eval is refused, never executed", async () => {
  const marker = "/tmp/largekernel_pwned";
  // The payload would `touch` the marker: it must neither appear nor, if it exists, change time.
  const markerTime = () => Deno.lstat(marker).then((s) => s.mtime?.getTime() ?? 0, () => null);
  const before = await markerTime();
  const evil = await fixture("evil.pth");
  for (
    const read of [
      () => readPth(evil, { source: "evil.pth" }),
      () => pthStateDict(evil, { source: "evil.pth" }),
    ]
  ) {
    throwsLine(
      read,
      /^cannot read evil\.pth: archive\/data\.pkl \(opcode at byte \d+\): refused the file/,
      /global "os\.system"/,
      /nothing in the file was executed/,
    );
  }
  const evilEval = await fixture("evil_eval.pth");
  throwsLine(
    () => readPth(evilEval),
    /refused the file/,
    /global "builtins\.eval"/,
  );
  // skipUnknown keeps unknown data classes as placeholders, but never a global that runs commands.
  for (const [file, global] of [[evil, "os\\.system"], [evilEval, "builtins\\.eval"]] as const) {
    for (
      const read of [
        () => readPth(file, { skipUnknown: true }),
        () => pthStateDict(file, { skipUnknown: true }),
      ]
    ) {
      assert.throws(read, (e: Error) => {
        assert.ok(e instanceof PthFormatError, String(e));
        assert.match(
          e.message,
          new RegExp(`global "${global}" \\(.*\\), which no checkpoint needs`),
        );
        return true;
      });
    }
  }
  assert.equal(await markerTime(), before, "the payload must not have run");
});

Deno.test("pth: truncated, non-zip and tampered files give one-line errors", async () => {
  const good = await fixture("state_dict.pth");
  throwsLine(
    () => readPth(good.subarray(0, good.length >> 1)),
    /no end-of-central-directory record/,
  );
  throwsLine(() => readPth(new Uint8Array([1, 2, 3, 4, 5])), /not a torch\.save zip archive/);
  throwsLine(() => readPth(new Uint8Array([0x80, 0x02, 0x8a, 0x0a])), /legacy \(pre-1\.6/);
  // Rename the whitelisted global in place: a near miss is still refused.
  const tampered = good.slice();
  const at = new TextDecoder("latin1").decode(tampered).indexOf("collections\nOrderedDict");
  assert.ok(at > 0);
  tampered[at + "collections\nOrderedDic".length] = "X".charCodeAt(0);
  throwsLine(
    () => readPth(tampered),
    /corrupt zip entry "state_dict\/data\.pkl": CRC-32 0x[0-9a-f]{8} of its data/,
  );
  // With its CRC-32 fixed up as well, the near miss is still refused by the whitelist.
  fixCrc32(tampered, "state_dict/data.pkl");
  throwsLine(() => readPth(tampered), /global "collections\.OrderedDicX"/);
  // Through the file helper, the error names the file.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/cut.pth`;
    await Deno.writeFile(path, good.subarray(0, good.length - 30));
    await assert.rejects(loadPthFile(path), (e: Error) => {
      assert.ok(e.message.startsWith(`cannot read ${path}: `), e.message);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------- files written by real PyTorch

Deno.test("pth: views and dtypes written by real torch.save (PyTorch 2.11)", async () => {
  // Made on the device machine by tests/fixtures/make_torch_fixtures.py.
  const sd = readPth(await fixture("torch_views.pth")) as Map<string, PthTensor>;
  const want = JSON.parse(
    await Deno.readTextFile(fixturePath("torch_views_expected.json")),
  ) as Record<
    string,
    { shape: number[]; values: number[] }
  >;
  assert.deepEqual([...sd.keys()].sort(), Object.keys(want).sort());
  for (const [k, { shape, values }] of Object.entries(want)) {
    const t = sd.get(k)!;
    assert.deepEqual(t.shape, shape, `${k} shape`);
    assertF32(t.toFloat32(), values, k);
  }
  assert.deepEqual(sd.get("transposed")!.stride, [1, 10]);
  assert.ok(sd.get("offset")!.storageOffset > 0, "a view into its storage");
});

Deno.test("pth: a real torch.save'd SLaK-style checkpoint loads into slak_cpu by its key names", async () => {
  const { createModel } = await import("../models/registry.ts");
  const { parseNpy } = await import("../analysis/npy.ts");
  const { setup } = await import("./harness.ts");
  const weights = await loadPthFile(fixturePath("torch_slak_cpu.pth"), { skipUnknown: true });
  const flat = parseNpy(await fixture("torch_slak_cpu_expected.npy")).data;
  const keys = JSON.parse(await Deno.readTextFile(fixturePath("slak_cpu_keys.json"))) as [
    string,
    number[],
  ][];
  await setup();
  const model = createModel("slak_cpu", { numClasses: 10 });
  // The key list the fixture was made from is still our model's.
  assert.deepEqual(keys, [...model.namedEntries()].map(([k, p]) => [k, [...p.shape]]));
  const { missing, unexpected } = model.loadStateDict(weights);
  assert.deepEqual([missing, unexpected], [[], []]);
  assert.ok([...weights.keys()].some((k) => k.endsWith("num_batches_tracked")));
  let offset = 0;
  for (const [k, p] of model.namedEntries()) {
    const got = await p.tensor.read();
    const want = Array.from(flat.subarray(offset, offset + p.size));
    assertF32(got, want, k);
    offset += p.size;
  }
  assert.equal(offset, flat.length);
  model.dispose();
});
