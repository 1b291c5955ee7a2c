/**
 * Matrix-product speed: the tiled GEMM kernels (ops/gemm.ts) against the
 * simple ones on the products of real layers: ConvNeXt-T's pointwise
 * linears (forward, input gradient, weight gradient) at batch `--n`, 224²,
 * and ResNet-101's 1×1 / 3×3 / stem convolutions (forward) at `--n`, 256²
 * (the ERF setting). Prints and writes `bench_gemm.csv`:
 * impl,case,m,n,k,ms,gflop_s,pct_fp32_peak (FLOPs = 2 per multiply-add).
 *
 * ```sh
 * deno run -A scripts/bench_gemm.ts --n 64                    # on a GPU
 * deno run -A scripts/bench_gemm.ts --n 1 --set resnet --runs 1   # llvmpipe
 * ```
 *
 * @example
 * ```ts
 * import { gemmCases } from "./bench_gemm.ts";
 * console.log(gemmCases("convnext", 64).length > 0); // true
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { type Cell, toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { noGrad } from "../ops/autograd.ts";
import { conv2d } from "../ops/conv.ts";
import { timeGpu, TUNE_WARMUP_MS } from "../ops/depthwise_fast.ts";
import { setGemmImpl } from "../ops/gemm.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { matmul } from "../ops/matmul.ts";
import { scope, Tensor } from "../ops/tensor.ts";

/** One timed product: build its operands, then `run` records it. */
export interface GemmCase {
  name: string;
  m: number;
  n: number;
  k: number;
  make(): { tensors: Tensor[]; run: () => void };
}

function mm(name: string, m: number, n: number, k: number, transA = false): GemmCase {
  return {
    name,
    m,
    n,
    k,
    make() {
      const a = Tensor.randn(transA ? [k, m] : [m, k], { seed: 1 });
      const b = Tensor.randn([k, n], { seed: 2 });
      return { tensors: [a, b], run: () => void matmul(a, b, { transA }) };
    },
  };
}

function conv(
  name: string,
  batch: number,
  cin: number,
  cout: number,
  size: number,
  kernel: number,
  stride: number,
): GemmCase {
  const pad = Math.floor(kernel / 2);
  const out = Math.floor((size + 2 * pad - kernel) / stride) + 1;
  return {
    name,
    m: cout,
    n: batch * out * out,
    k: cin * kernel * kernel,
    make() {
      const x = Tensor.randn([batch, cin, size, size], { seed: 1 });
      const w = Tensor.randn([cout, cin, kernel, kernel], { seed: 2 });
      return {
        tensors: [x, w],
        run: () => void conv2d(x, w, null, { stride, padding: pad }),
      };
    },
  };
}

/**
 * The cases of a set: `convnext` (stage-1 and stage-3 pointwise linears of
 * ConvNeXt-T: forward, input gradient, weight gradient) or `resnet`
 * (ResNet-101 convolutions at 256²), for `batch` images.
 *
 * @example
 * ```ts
 * import { gemmCases } from "./bench_gemm.ts";
 * console.log(gemmCases("resnet", 1).map((c) => c.name)[0]); // "resnet 1x1 256->64 @64"
 * ```
 */
export function gemmCases(set: string, batch: number): GemmCase[] {
  if (set === "convnext") {
    const out: GemmCase[] = [];
    for (const [stage, dim, side] of [[1, 96, 56], [3, 384, 14]]) {
      const rows = batch * side * side;
      out.push(
        mm(`convnext s${stage} fc1 fwd`, rows, 4 * dim, dim),
        mm(`convnext s${stage} fc2 fwd`, rows, dim, 4 * dim),
        mm(`convnext s${stage} fc1 dgrad`, rows, dim, 4 * dim),
        mm(`convnext s${stage} fc1 wgrad`, 4 * dim, dim, rows, true),
      );
    }
    return out;
  }
  if (set === "resnet") {
    return [
      conv("resnet 1x1 256->64 @64", batch, 256, 64, 64, 1, 1),
      conv("resnet 1x1 64->256 @64", batch, 64, 256, 64, 1, 1),
      conv("resnet 1x1 1024->256 @16", batch, 1024, 256, 16, 1, 1),
      conv("resnet 3x3 256->256 @16", batch, 256, 256, 16, 3, 1),
      conv("resnet 7x7/2 3->64 @256", batch, 3, 64, 256, 7, 2),
    ];
  }
  throw new Error(`--set: expected convnext or resnet, got "${set}"`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      set: { type: "string", default: "convnext,resnet" },
      n: { type: "string", default: "64" },
      impl: { type: "string", default: "tiled,simple" },
      runs: { type: "string", default: "5" },
      "peak-tflops": { type: "string", default: "67" },
      out: { type: "string", default: "out/bench_gemm/" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno run -A scripts/bench_gemm.ts [--set convnext,resnet] [--n 64] [--impl tiled,simple] [--runs 5] [--out DIR]",
    );
    return;
  }
  const batch = Number(values.n);
  const runs = Number(values.runs);
  const peak = Number(values["peak-tflops"]);
  const impls = values.impl.split(",") as ("tiled" | "simple")[];
  const out = values.out.replace(/\/+$/, "");
  await initGpu();
  console.log(`# adapter: ${gpu().description}; FLOPs = 2 per multiply-add`);
  const rows: Record<string, Cell>[] = [];
  for (const set of values.set.split(",")) {
    for (const c of gemmCases(set, batch)) {
      const { tensors, run } = c.make();
      for (const impl of impls) {
        setGemmImpl(impl);
        const t = await timeGpu(() => noGrad(() => scope(run)), {
          runs,
          warmup: 1,
          minMs: 20,
          warmupMs: TUNE_WARMUP_MS,
        });
        const gflops = (2 * c.m * c.n * c.k) / (t.ms * 1e6);
        rows.push({
          impl,
          case: c.name,
          m: c.m,
          n: c.n,
          k: c.k,
          ms: Number(t.ms.toFixed(3)),
          gflop_s: Number(gflops.toPrecision(4)),
          pct_fp32_peak: Number((gflops / (10 * peak)).toPrecision(3)),
          timing: t.method,
        });
        console.log(
          `${impl} ${c.name} (${c.m}×${c.n}×${c.k}): ${t.ms.toFixed(2)} ms, ${
            gflops.toPrecision(4)
          } GFLOP/s`,
        );
      }
      setGemmImpl("tiled");
      for (const t of tensors) t.dispose();
      await writeFileAtomic(`${out}/bench_gemm.csv`, toCsv(rows));
    }
  }
  console.log(`wrote ${out}/bench_gemm.csv`);
}

if (import.meta.main) await runMain(main);
