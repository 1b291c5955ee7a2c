"""PyTorch anchor for matrix-product speed: torch.matmul in strict fp32 (TF32 off) on the
products of the pointwise (1x1) convolutions of ConvNeXt-T and SLaK-T at 224², the cases of
scripts/bench_gemm.ts's `convnext` and `slak` sets under the same names: per stage, the two
pointwise linears' forwards, the first one's input gradient and both weight gradients.
Layout "nn" multiplies A [m, k] by B [k, n]; "tn" reads A stored [k, m] transposed, as a
weight gradient reads the activations.

Each case is timed with CUDA events around --reps products back to back (enough to last
about 20 ms, so the GPU stays at its working clock), median of --runs after ~60 ms of
warm-up. FLOPs are 2 per multiply-add.

Prints a comment line (versions, device), then CSV on stdout, the columns of bench_gemm.csv:
  impl,case,m,n,k,ms,gflop_s,pct_fp32_peak,timing
--list prints the cases (case,m,n,k,layout) without torch.

  python3 bench/pytorch/matmul.py --n 64 --set convnext,slak
"""
import os
import sys

import common

SCRIPT = os.path.basename(__file__)

# Stage widths: ConvNeXt-T, and SLaK-T's (ConvNeXt-T's x 1.3, truncated as SLaK's code does).
CONVNEXT_T_DIMS = (96, 192, 384, 768)
POINTWISE_DIMS = {
    "convnext": CONVNEXT_T_DIMS,
    "slak": tuple(int(d * 1.3) for d in CONVNEXT_T_DIMS),
}


def cases(set_name, batch):
    """(name, m, n, k, layout) of every product of a set, in bench_gemm.ts's order."""
    out = []
    for s, dim in enumerate(POINTWISE_DIMS[set_name]):
        rows = batch * (56 >> s) ** 2  # stage s + 1 works on (224 / 4 / 2^s)² pixels per image
        prefix = f"{set_name} s{s + 1}"
        out += [
            (f"{prefix} fc1 fwd", rows, 4 * dim, dim, "nn"),
            (f"{prefix} fc2 fwd", rows, dim, 4 * dim, "nn"),
            (f"{prefix} fc1 dgrad", rows, dim, 4 * dim, "nn"),
            (f"{prefix} fc1 wgrad", 4 * dim, dim, rows, "tn"),
            (f"{prefix} fc2 wgrad", dim, 4 * dim, rows, "tn"),
        ]
    return out


def set_list(value):
    """argparse type: some of convnext,slak."""
    out = [s for s in value.split(",") if s]
    if not out or any(s not in POINTWISE_DIMS for s in out):
        raise ValueError(value)
    return out


def parse_args(argv):
    p = common.parser(__doc__, SCRIPT)
    p.add_argument("--set", dest="sets", type=set_list, default="convnext,slak",
                   help="some of convnext,slak (default both)")
    p.add_argument("--n", type=common.positive, default=64, help="batch: rows = n * side² (default 64)")
    p.add_argument("--runs", type=common.positive, default=5, help="timed runs, median reported (default 5)")
    p.add_argument("--min-ms", type=float, default=20.0,
                   help="each timed run repeats the product for at least this long (default 20)")
    p.add_argument("--peak-tflops", type=float, default=67.0,
                   help="FP32 peak for pct_fp32_peak (default 67, an H200)")
    p.add_argument("--list", action="store_true", help="print the cases (case,m,n,k,layout) and exit")
    return p.parse_args(argv)


def time_product(torch, run, runs, min_ms):
    """GPU milliseconds per call of `run`: median of `runs` CUDA-event timings of back-to-back calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(reps):
        start.record()
        for _ in range(reps):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps

    timed(1)  # the first call also picks cuBLAS's kernel
    once = timed(1)
    reps = max(1, min(256, int(min_ms / max(once, 1e-3)) + 1))
    timed(max(1, int(60 / max(once, 1e-3))))  # ~60 ms busy, so the clock has ramped up
    return sorted(timed(reps) for _ in range(runs))[runs // 2]


def main(argv):
    a = parse_args(argv)
    if a.list:
        print("case,m,n,k,layout")
        for s in a.sets:
            for name, m, n, k, layout in cases(s, a.n):
                print(f"{name},{m},{n},{k},{layout}")
        return
    torch, _ = common.cuda_torch(SCRIPT)
    common.header(torch)
    print("impl,case,m,n,k,ms,gflop_s,pct_fp32_peak,timing", flush=True)
    for s in a.sets:
        for name, m, n, k, layout in cases(s, a.n):
            g = torch.Generator(device="cuda").manual_seed(1)
            a_mat = torch.randn(*((k, m) if layout == "tn" else (m, k)), device="cuda", generator=g)
            b_mat = torch.randn(k, n, device="cuda", generator=g)
            lhs = a_mat.t() if layout == "tn" else a_mat
            out = torch.empty(m, n, device="cuda")
            ms = time_product(torch, lambda: torch.matmul(lhs, b_mat, out=out), a.runs, a.min_ms)
            gflops = 2 * m * n * k / (ms * 1e6)
            print(f"torch-matmul,{name},{m},{n},{k},{ms:.4f},{gflops:.4g},"
                  f"{gflops / (10 * a.peak_tflops):.3g},cuda-event", flush=True)
            del a_mat, b_mat, lhs, out
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
