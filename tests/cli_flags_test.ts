/**
 * Every command line refuses bad flags before it starts any work: a
 * non-zero exit and one line on stderr that names the flag. The flags are
 * checked before the GPU is opened, so these run without one.
 */
import assert from "node:assert/strict";
import { parseFlags, readFlagFile, readFlagJson } from "../train/flags.ts";

const CASES: [string, string[], RegExp][] = [
  ["train/main.ts", ["--epochs", "-3"], /--epochs: expected an integer in \[1, 100000\]/],
  ["train/main.ts", ["--input-size", "1e9"], /--input-size: expected an integer in \[32, 2048\]/],
  ["scripts/erf.ts", ["--num", "-3"], /--num: expected an integer/],
  ["scripts/erf.ts", ["--size", "1e9"], /--size: expected an integer in \[32, 4096\]/],
  ["scripts/erf.ts", ["--partial-load"], /--partial-load applies to --weights/],
  ["scripts/erf.ts", ["--model", "slak_tiny,nope"], /--model: expected one of .*got "nope"/],
  ["scripts/bench_gemm.ts", ["--n", "abc"], /--n: expected an integer/],
  ["scripts/bench_models.ts", ["--batch", "0"], /--batch: expected an integer in \[1, 4096\]/],
  [
    "scripts/bench_models.ts",
    ["--sparsity", "0,1"],
    /--sparsity: expected fractions in \[0, 1\) separated by commas, got "0,1"/,
  ],
  ["scripts/latency.ts", ["--k", "3,x"], /--k: expected an integer/],
  ["scripts/model_table.ts", ["--bogus"], /--bogus: unknown flag/],
  ["scripts/scaling_flops.ts", ["--max", "NaN"], /--max: expected an integer/],
  ["scripts/sparse_speed.ts", ["--density", "1.5"], /--density: expected a number in \[0, 1\]/],
  ["scripts/sparsity_width.ts", ["--epochs", "2"], /--epochs applies to --train/],
  [
    "scripts/bench_models.ts",
    ["--anchor", "/no/such.csv"],
    /--anchor: cannot read "\/no\/such.csv": no such file$/,
  ],
  [
    "scripts/latency.ts",
    ["--torch", "/"],
    /--torch: cannot read "\/": it is a folder, expected a file$/,
  ],
];

for (const [script, args, re] of CASES) {
  Deno.test(`${script} ${args.join(" ")}: one-line error naming the flag, non-zero exit`, async () => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const err = new TextDecoder().decode(r.stderr).trim();
    assert.notEqual(r.code, 0, err);
    assert.match(err, re);
    assert.equal(err.split("\n").length, 1, err);
  });
}

Deno.test("parseFlags: short aliases, lists, on/off flags, negative numbers and defaults", () => {
  const specs = {
    rate: { type: "number", min: -1, max: 1, short: "r" },
    k: { type: "intList", min: 1, max: 9, lengths: [2, 3] },
    mode: { type: "choice", options: ["a", "b"], default: "a" },
    fast: { type: "boolean" },
  } as const;
  assert.deepEqual(parseFlags(["-r", "-0.5", "--k=3,5", "--no-fast"], specs), {
    rate: -0.5,
    k: [3, 5],
    fast: false,
    mode: "a",
  });
  assert.deepEqual(parseFlags(["--fast=true", "--mode", "b"], specs), { fast: true, mode: "b" });
  for (
    const [args, re] of [
      [["--k", "1,2,3,4"], /^--k: expected 2 or 3 integers, got 4/],
      [["--rate", "--fast"], /^--rate: expected a value/],
      [["--rate", "1e999"], /^--rate: expected a number in \[-1, 1\]/],
      [["--fast=yes"], /^--fast: expected true or false/],
      [["--no-mode"], /^--no-mode: --mode is not an on\/off flag/],
      [["-z"], /^-z: unknown flag/],
      [["--mode", ""], /^--mode: expected one of a, b, got ""/],
    ] as [string[], RegExp][]
  ) {
    assert.throws(() => parseFlags(args, specs), (e: Error) => re.test(e.message), args.join(" "));
  }
});

Deno.test("readFlagFile/readFlagJson: one line naming the flag for binary, non-JSON and missing files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/bin`, new Uint8Array([0xff, 0xfe, 0x00, 0xc3]));
    await Deno.writeTextFile(`${dir}/bad.json`, '{"plans": [');
    await Deno.writeTextFile(`${dir}/ok.json`, '{"version": 1}');
    await assert.rejects(
      () => readFlagFile("anchor", `${dir}/bin`),
      /^Error: --anchor: cannot read ".*bin": not UTF-8 text$/,
    );
    await assert.rejects(
      () => readFlagJson("tuned", `${dir}/bad.json`),
      /^Error: --tuned: ".*bad.json" is not JSON \(/,
    );
    await assert.rejects(
      () => readFlagJson("tuned", `${dir}/none.json`),
      /--tuned: cannot read .*: no such file$/,
    );
    assert.deepEqual(await readFlagJson("tuned", `${dir}/ok.json`), { version: 1 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
