// The PyTorch anchors seen from our side: CSV reading, the join and its ratios, which anchor
// runs for which model, and that bench/pytorch/matmul.py lists the products bench_gemm.ts times.
// No GPU and no torch: the Python scripts run only where they need neither (--help, --list).
import assert from "node:assert/strict";
import {
  csvComments,
  formatTable,
  GEMM_JOIN,
  joinAnchor,
  MODEL_JOIN,
  modelAnchorRuns,
  runAnchor,
} from "../scripts/pytorch_anchor.ts";
import { parseCsv } from "../analysis/csv.ts";
import { gemmCases } from "../scripts/bench_gemm.ts";

const TORCH_MODELS = `# torch 2.11.0 timm 1.0.20 NVIDIA H200
model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib,infer_peak_gib,impl
convnext_tiny,7-7-7-7,64,224,28.59,2826.0,602.6,6.99,1.10,timm 1.0.20
convnext_tiny,51-49-47-13,64,224,30.10,419.5,96.5,8.00,1.30,timm 1.0.20
slak_tiny,51-49-47-13,64,224,38.60,962.4,195.7,11.81,1.19,official SLaK.py
convnext_tiny,7-7-7-7,32,224,28.59,1.0,1.0,1.00,1.00,timm 1.0.20
`;

Deno.test("parseCsv skips comments and blank lines, unquotes cells, fills missing cells", () => {
  const rows = parseCsv('# a comment\n\na,b,c\n1,"x,""y""",\n2\n');
  assert.deepEqual(rows, [{ a: "1", b: 'x,"y"', c: "" }, { a: "2", b: "", c: "" }]);
  assert.deepEqual(parseCsv("# only a comment\n"), []);
  // Two anchors' outputs one after the other: the second header is not a row.
  assert.deepEqual(parseCsv("# torch\na,b\n1,2\n# torch\na,b\n3,4\n"), [
    { a: "1", b: "2" },
    { a: "3", b: "4" },
  ]);
  assert.deepEqual(csvComments(TORCH_MODELS), ["torch 2.11.0 timm 1.0.20 NVIDIA H200"]);
});

Deno.test("joinAnchor lines up models on model, kernels, batch and res, with ours ÷ PyTorch", () => {
  const ours = [
    {
      model: "convnext_tiny",
      kernels: "7-7-7-7",
      batch: 64,
      res: 224,
      infer_img_s: 1413,
      train_img_s: 451.95,
      peak_gib: 8.84,
      timing: "timestamp",
    },
    {
      model: "slak_tiny",
      kernels: "51-49-47-13",
      batch: 64,
      res: 224,
      infer_img_s: 805,
      train_img_s: 220.5,
      peak_gib: 15.78,
    },
    {
      model: "replknet_31b",
      kernels: "31-29-27-13",
      batch: 64,
      res: 224,
      infer_img_s: 623.9,
      train_img_s: "",
      peak_gib: 35.73,
    },
  ];
  const rows = joinAnchor(ours, parseCsv(TORCH_MODELS), MODEL_JOIN);
  // Ours in order, then the anchor rows that matched none (batch 32 does not match batch 64).
  assert.deepEqual(rows.map((r) => `${r.model}@${r.kernels}/${r.batch}`), [
    "convnext_tiny@7-7-7-7/64",
    "slak_tiny@51-49-47-13/64",
    "replknet_31b@31-29-27-13/64",
    "convnext_tiny@51-49-47-13/64",
    "convnext_tiny@7-7-7-7/32",
  ]);
  const [convnext, slak, replknet, onlyTorch] = rows;
  assert.equal(convnext.pytorch_train_img_s, 602.6);
  assert.equal(convnext.train_img_s_ratio, 0.75);
  assert.equal(convnext.infer_img_s_ratio, 0.5);
  assert.equal(convnext.peak_gib_ratio, 1.26);
  assert.equal(convnext.pytorch_impl, "timm 1.0.20");
  assert.equal(convnext.timing, "timestamp"); // our other columns stay
  assert.equal(slak.train_img_s_ratio, 1.13);
  assert.equal(slak.pytorch_impl, "official SLaK.py");
  // No anchor row: PyTorch's columns and the ratios are empty, ours stay.
  assert.equal(replknet.pytorch_infer_img_s, "");
  assert.equal(replknet.infer_img_s_ratio, "");
  assert.equal(replknet.infer_img_s, 623.9);
  // An anchor row alone: our measures and the ratios are empty.
  assert.equal(onlyTorch.infer_img_s, "");
  assert.equal(onlyTorch.pytorch_infer_img_s, 419.5);
  assert.equal(onlyTorch.infer_img_s_ratio, "");
  // Each measure's three columns sit together, in our column order.
  const cols = Object.keys(convnext);
  const at = cols.indexOf("infer_img_s");
  assert.deepEqual(cols.slice(at, at + 3), [
    "infer_img_s",
    "pytorch_infer_img_s",
    "infer_img_s_ratio",
  ]);
});

Deno.test("joinAnchor reads the older anchor's convnext-t as convnext_tiny; the first row of a key wins", () => {
  const old = parseCsv(
    "model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib\n" +
      "convnext-t,7-7-7-7,64,224,28.59,2826.0,602.6,6.99\n" +
      "convnext_tiny,7-7-7-7,64,224,28.59,1.0,1.0,1.0\n",
  );
  const [row, ...rest] = joinAnchor(
    [{ model: "convnext_tiny", kernels: "7-7-7-7", batch: 64, res: 224, train_img_s: 602.6 }],
    old,
    MODEL_JOIN,
  );
  assert.equal(row.train_img_s_ratio, 1);
  assert.equal(rest.length, 0); // the second row shares the key and is not listed
  // Another model with the same kernels does not take ConvNeXt-T's row.
  const [small] = joinAnchor(
    [{ model: "convnext_small", kernels: "7-7-7-7", batch: 64, res: 224, train_img_s: 300 }],
    old,
    MODEL_JOIN,
  );
  assert.equal(small.pytorch_train_img_s, "");
});

Deno.test("joinAnchor leaves out lines that the official model code printed among the CSV", () => {
  // replknet.py prints "drop path: DropPath(drop_prob=…)" per block while it builds.
  const printed = parseCsv(
    "model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib,impl\n" +
      "drop path: Identity()\n" +
      "drop path: DropPath(drop_prob=0.013)\n" +
      "replknet_31b,31-29-27-13,64,224,79.86,649.1,105.9,29.89,official replknet.py\n",
  );
  const rows = joinAnchor(
    [{ model: "replknet_31b", kernels: "31-29-27-13", batch: 64, res: 224, train_img_s: 154.21 }],
    printed,
    MODEL_JOIN,
  );
  assert.equal(rows.length, 1, JSON.stringify(rows));
  assert.equal(rows[0].train_img_s_ratio, 1.46);
});

Deno.test("joinAnchor lines up matrix products on case, m, n and k", () => {
  const torch = parseCsv(
    "impl,case,m,n,k,ms,gflop_s,pct_fp32_peak,timing\n" +
      "torch-matmul,slak s1 fc1 fwd,200704,496,124,0.6,40000,59.7,cuda-event\n" +
      "torch-matmul,slak s1 fc2 fwd,200704,124,496,0.6,50000,74.6,cuda-event\n",
  );
  const ours = [
    { impl: "tiled", case: "slak s1 fc1 fwd", m: 200704, n: 496, k: 124, gflop_s: 22000 },
    { impl: "simple", case: "slak s1 fc1 fwd", m: 200704, n: 496, k: 124, gflop_s: 4000 },
    // The same name at another batch is another product.
    { impl: "tiled", case: "slak s1 fc2 fwd", m: 3136, n: 124, k: 496, gflop_s: 1000 },
  ];
  const rows = joinAnchor(ours, torch, GEMM_JOIN);
  assert.deepEqual(rows.map((r) => r.gflop_s_ratio), [0.55, 0.1, "", ""]);
  assert.equal(rows[3].pytorch_gflop_s, 50000);
});

Deno.test("modelAnchorRuns picks timm for ConvNeXt-T and the official files for SLaK-T and RepLKNet-31B", () => {
  const o = {
    batch: 64,
    size: 224,
    classes: 1000,
    steps: 3,
    warmup: 1,
    passes: ["infer", "train"],
  };
  const models = [
    { name: "convnext_tiny", kernels: "7-7-7-7" },
    { name: "convnext_tiny", kernels: "51-49-47-13" },
    { name: "convnext_tiny", kernels: "7-7-7-7" },
    { name: "slak_tiny", kernels: "51-49-47-13", smallKernel: 5 },
    { name: "replknet_31b", kernels: "31-29-27-13" },
    { name: "resnet50", kernels: "" },
  ];
  const without = modelAnchorRuns(models, o);
  assert.deepEqual(without.runs.map((r) => r.script), ["convnext.py"]);
  assert.deepEqual(without.runs[0].args.slice(0, 2), ["--kernels", "7-7-7-7,51-49-47-13"]);
  assert.deepEqual(without.runs[0].args.slice(2), [
    ...["--batch", "64", "--res", "224", "--classes", "1000"],
    ...["--steps", "3", "--warmup", "1", "--pass", "infer,train"],
  ]);
  assert.equal(without.skipped.length, 3);
  assert.match(without.skipped[0], /^slak_tiny@51-49-47-13: .*--slak-py/);
  assert.match(without.skipped[2], /^resnet50@: no PyTorch anchor/);

  const withFiles = modelAnchorRuns(models, {
    ...o,
    slakPy: "a/SLaK.py",
    replknetPy: "a/replknet.py",
  });
  const official = withFiles.runs[1];
  assert.equal(official.script, "official_models.py");
  assert.deepEqual(official.args.slice(0, 8), [
    ...["--models", "slak_tiny,replknet_31b", "--slak-py", "a/SLaK.py"],
    ...["--slak-kernels", "51-49-47-13-5", "--replknet-py", "a/replknet.py"],
  ]);
  assert.equal(withFiles.skipped.length, 1);

  // The official RepLKNet-31B has fixed kernels: another set gets no anchor rather than a wrong one.
  const other = modelAnchorRuns([{ name: "replknet_31b", kernels: "13-13-13-13" }], {
    ...o,
    replknetPy: "r.py",
  });
  assert.equal(other.runs.length, 0);
  assert.match(other.skipped[0], /31-29-27-13/);
});

Deno.test("formatTable aligns columns and right-aligns numbers", () => {
  const text = formatTable(
    [{ model: "convnext_tiny", ratio: 0.75 }, { model: "slak_tiny", ratio: 1.13 }],
    ["model", "ratio"],
    { ratio: "×" },
  );
  assert.equal(
    text,
    "model             ×\n-------------  ----\nconvnext_tiny  0.75\nslak_tiny      1.13",
  );
});

const hasPython = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

/** Appended to the names of the tests that need python3, so a skip says why in the test output. */
const needsPython = hasPython ? "" : " (skipped: no python3 on PATH)";

async function python(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("python3", { args, env: { PYTHONDONTWRITEBYTECODE: "1" } })
    .output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const BENCH = new URL("../bench/pytorch/", import.meta.url).pathname;

Deno.test({
  name: "bench/pytorch/matmul.py lists the products bench_gemm.ts times, under the same names" +
    needsPython,
  ignore: !hasPython,
  async fn() {
    for (const [set, batch] of [["convnext", 64], ["slak", 64], ["slak", 3]] as const) {
      const out = await python([`${BENCH}matmul.py`, "--list", "--set", set, "--n", `${batch}`]);
      assert.equal(out.code, 0, out.stderr);
      const listed = parseCsv(out.stdout);
      const ours = gemmCases(set, batch).map((c) => ({
        case: c.name,
        m: `${c.m}`,
        n: `${c.n}`,
        k: `${c.k}`,
        layout: c.layout,
      }));
      assert.deepEqual(listed, ours);
    }
  },
});

Deno.test({
  name:
    "the PyTorch anchors answer --help without torch; a missing model file is one line and status 2" +
    needsPython,
  ignore: !hasPython,
  async fn() {
    for (const script of ["convnext.py", "dwconv.py", "matmul.py", "official_models.py"]) {
      const out = await python([`${BENCH}${script}`, "--help"]);
      assert.equal(out.code, 0, `${script}: ${out.stderr}`);
      assert.match(out.stdout, /^usage: /);
    }
    const missing = await python([
      `${BENCH}official_models.py`,
      ...["--models", "slak_tiny", "--slak-py", "/nonexistent/SLaK.py"],
    ]);
    assert.equal(missing.code, 2);
    assert.equal(missing.stderr.trim().split("\n").length, 1);
    assert.match(missing.stderr, /--slak-py \/nonexistent\/SLaK\.py: no such file/);
  },
});

Deno.test("runAnchor returns the anchor's CSV, fails on status 2, keeps the rows of a crash", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const script = `${dir}/anchor.sh`;
    // The "Python" is sh; the script's first argument says how it ends.
    await Deno.writeTextFile(script, 'echo "# fake"; echo "a,b"; echo "1,2"; exit "$1"\n');
    const ok = await runAnchor("sh", script, ["0"], "--with-pytorch");
    assert.deepEqual(parseCsv(ok), [{ a: "1", b: "2" }]);
    const crashed = await runAnchor("sh", script, ["1"], "--with-pytorch");
    assert.deepEqual(parseCsv(crashed), [{ a: "1", b: "2" }]);
    await assert.rejects(
      () => runAnchor("sh", script, ["2"], "--with-pytorch"),
      /^Error: --with-pytorch: .*exited with status 2/,
    );
    await assert.rejects(
      () => runAnchor(`${dir}/no-such-python`, script, [], "--with-pytorch"),
      /--python names the Python/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
