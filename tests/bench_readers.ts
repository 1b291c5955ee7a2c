/**
 * Time and peak memory of the weights readers on hostile files of at most
 * about 1 MB (the crafted cases of tests/hostile_files_test.ts, written here
 * again): each case runs in its own process, which resets its peak resident
 * size (Linux `clear_refs`) after loading the file and reports the growth
 * while the reader ran. The bar: at most 1 s and 100 MB each.
 *
 * @example
 * ```sh
 * deno run -A tests/bench_readers.ts            # all cases, a table on stdout
 * deno run -A tests/bench_readers.ts --case stride0
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { runMain } from "../ops/gpu.ts";
import { pthStateDict, readPth } from "../models/pth.ts";
import { readSafetensors } from "../models/safetensors.ts";
import { parseNpy } from "../analysis/npy.ts";
import { makePth, makeZip, Pickle, stateDictPickle } from "./zip_tools.ts";

const F32x6 = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);

/** A safetensors file: `json` as its header, then `data`. */
function safetensors(json: string, data = new Uint8Array(), declared?: bigint): Uint8Array {
  const header = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + header.length + data.length);
  new DataView(out.buffer).setBigUint64(0, declared ?? BigInt(header.length), true);
  out.set(header, 8);
  out.set(data, 8 + header.length);
  return out;
}

/** A version-1 `.npy` with the given header dict. */
function npy(header: string, data = new Uint8Array(16)): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(10 + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, h.length, true);
  out.set(h, 10);
  out.set(data, 10 + h.length);
  return out;
}

type Reader = "pth" | "safetensors" | "npy";

/** Each case: the reader it targets and a maker of its bytes. */
const CASES: Record<string, [Reader, () => Uint8Array]> = {
  long4: [
    "pth",
    () => makePth(new Pickle().raw("\x8b").u32(256 << 10).raw(new Uint8Array(256 << 10)).bytes()),
  ],
  deflate_bomb: ["pth", () =>
    makeZip([
      {
        name: "archive/data.pkl",
        data: stateDictPickle("FloatStorage", 1 << 24, 0, [1 << 24], [1]),
      },
      { name: "archive/data/0", data: new Uint8Array(64 << 20), method: 8 },
    ])],
  deflate_bomb_lying: ["pth", () =>
    makeZip([
      { name: "archive/data.pkl", data: stateDictPickle("FloatStorage", 1024, 0, [1024], [1]) },
      { name: "archive/data/0", data: new Uint8Array(64 << 20), method: 8, size: 4096 },
    ])],
  stride0: [
    "pth",
    () =>
      makePth(stateDictPickle("FloatStorage", 1, 0, [1 << 28], [0]), { "0": F32x6.subarray(0, 4) }),
  ],
  shared_storage: ["pth", () => {
    const p = new Pickle().raw("}(").str("w")
      .tensor("FloatStorage", "0", 1 << 17, 0, [1 << 17], [1]).raw("r").u32(100);
    for (let i = 0; i < 5000; i++) p.str(`k${i}`).raw("j").u32(100);
    return makePth(p.raw("u").bytes(), { "0": new Uint8Array(1 << 19) });
  }],
  stack: ["pth", () => makePth(new Pickle().raw("N".repeat((1 << 20) + 1)).bytes())],
  memo: ["pth", () => makePth(new Pickle().raw("N").raw("\x94".repeat((1 << 20) + 1)).bytes())],
  dicts: ["pth", () => makePth(new Pickle().raw("](").raw("}".repeat(1_000_000)).raw("e").bytes())],
  opcodes: ["pth", () =>
    makeZip([
      {
        name: "archive/data.pkl",
        data: new Pickle().raw("N0".repeat(8_000_000)).bytes(),
        method: 8,
      },
      {
        name: "archive/padding",
        data: new Uint8Array(900_000).map((_, i) => (i * 2654435761) >>> 24),
      },
    ])],
  appends_valid: [
    "pth",
    () => makePth(new Pickle().raw("](").raw("K\x01".repeat(300_000)).raw("e").bytes()),
  ],
  tuple_keys_valid: [
    "pth",
    () => makePth(new Pickle().raw("}(").raw(")N".repeat(200_000)).raw("u").bytes()),
  ],
  st_header_2e63: ["safetensors", () => safetensors("{}", new Uint8Array(), 1n << 63n)],
  st_20k_then_duplicate: ["safetensors", () => {
    const entries = Array.from(
      { length: 20_000 },
      (_, i) => `"t${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`,
    );
    return safetensors(`{${entries.join(",")},"t0":{}}`);
  }],
  st_20k_valid: ["safetensors", () => {
    const entries = Array.from(
      { length: 20_000 },
      (_, i) => `"t${i}":{"dtype":"F32","shape":[1],"data_offsets":[${4 * i},${4 * i + 4}]}`,
    );
    return safetensors(`{${entries.join(",")}}`, new Uint8Array(80_000));
  }],
  npy_huge_shape: [
    "npy",
    () => npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"),
  ],
  npy_long_header: [
    "npy",
    () => npy(`{'descr': '<f8', 'fortran_order': False, 'shape': (${"1, ".repeat(3300)}), }`),
  ],
};

function read(reader: Reader, bytes: Uint8Array): void {
  if (reader === "pth") {
    try {
      pthStateDict(bytes, { source: "bench.pth" });
    } catch (e) {
      // Not a state dict: the whole object is what a caller would read next.
      if (!/no tensors|not a dict/.test((e as Error).message)) throw e;
      readPth(bytes, { source: "bench.pth" });
    }
  } else if (reader === "safetensors") readSafetensors(bytes, "bench.safetensors");
  else parseNpy(bytes, "bench.npy");
}

/** Resident and peak resident size of this process (kB), from /proc. */
function residentKb(): { rss: number; peak: number } {
  const status = Deno.readTextFileSync("/proc/self/status");
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}

/** Child process: read one case's file and report time and peak growth as JSON. */
async function runCase(name: string, file: string): Promise<void> {
  const [reader] = CASES[name];
  const bytes = await Deno.readFile(file);
  Deno.writeTextFileSync("/proc/self/clear_refs", "5"); // reset the peak to the current size
  const before = residentKb().rss;
  const t0 = performance.now();
  let outcome = "parsed";
  try {
    read(reader, bytes);
  } catch (e) {
    outcome = (e as Error).message.replace(/^cannot read [^:]+: /, "").slice(0, 90);
  }
  const ms = performance.now() - t0;
  const peakMb = (residentKb().peak - before) / 1024;
  console.log(JSON.stringify({ ms, peakMb, outcome }));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { case: { type: "string" }, file: { type: "string" }, help: { type: "boolean" } },
    strict: true,
  });
  if (values.help) {
    console.log(
      `usage: deno run -A tests/bench_readers.ts [--case NAME]\ncases: ${
        Object.keys(CASES).join(", ")
      }`,
    );
    return;
  }
  if (values.case !== undefined && !(values.case in CASES)) {
    throw new Error(
      `--case: unknown case "${values.case}" (expected one of ${Object.keys(CASES).join(", ")})`,
    );
  }
  if (values.file) return await runCase(values.case!, values.file);
  const dir = await Deno.makeTempDir({ prefix: "bench_readers_" });
  try {
    console.log("case,reader,bytes,ms,peak_mb,outcome");
    for (const name of values.case ? [values.case] : Object.keys(CASES)) {
      const [reader, make] = CASES[name];
      const bytes = make();
      const file = `${dir}/${name}`;
      await Deno.writeFile(file, bytes);
      const child = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL(import.meta.url).pathname, "--case", name, "--file", file],
        stderr: "inherit",
      }).output();
      if (!child.success) throw new Error(`case ${name}: the child process failed`);
      const r = JSON.parse(new TextDecoder().decode(child.stdout));
      console.log(
        [
          name,
          reader,
          bytes.length,
          r.ms.toFixed(0),
          r.peakMb.toFixed(1),
          JSON.stringify(r.outcome),
        ]
          .join(","),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await runMain(main);
