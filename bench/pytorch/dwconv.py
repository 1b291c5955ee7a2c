"""PyTorch anchor for depthwise-convolution speed, the setting of RepLKNet's Table 1: a stack
of --layers depthwise KxK convolutions ("same" padding, no bias, stride 1) on an (N, C, R, R)
fp32 tensor, forward, and forward+backward (input and filter gradients of every layer, loss =
sum of the output), as scripts/latency.ts times ours. Strict fp32 (TF32 off), cudnn.benchmark
on. Times are the median of --runs after --warmup untimed runs, each from a drained GPU to a
drained GPU.

Prints a comment line (versions, device), then CSV on stdout, the columns of
scripts/latency.ts's latency.csv:
  impl,pass,N,C,R,K,ms_per_stack

  python3 bench/pytorch/dwconv.py --r 32 --k 3,7,13,31
"""
import os
import sys

import common

SCRIPT = os.path.basename(__file__)
PASS_NAME = {"fwd": "forward", "fwdbwd": "forward+backward"}


def int_list(value):
    """argparse type: comma-separated positive integers."""
    out = [int(v) for v in value.split(",") if v]
    if not out or any(v < 1 for v in out):
        raise ValueError(value)
    return out


def pass_names(value):
    """argparse type: some of fwd,fwdbwd."""
    out = [p for p in value.split(",") if p]
    if not out or any(p not in PASS_NAME for p in out):
        raise ValueError(value)
    return out


def parse_args(argv):
    p = common.parser(__doc__, SCRIPT)
    p.add_argument("--n", type=common.positive, default=64, help="batch (default 64)")
    p.add_argument("--c", type=common.positive, default=384, help="channels (default 384)")
    p.add_argument("--r", type=int_list, default="32", help="input sides, comma-separated (default 32)")
    p.add_argument("--k", type=int_list, default="3,7,13,31",
                   help="kernel sizes, odd, comma-separated (default 3,7,13,31)")
    p.add_argument("--layers", type=common.positive, default=24, help="layers in the stack (default 24)")
    p.add_argument("--runs", type=common.positive, default=5, help="timed runs, median reported (default 5)")
    p.add_argument("--warmup", type=common.non_negative, default=2, help="untimed runs first (default 2)")
    p.add_argument("--pass", dest="passes", type=pass_names, default="fwd,fwdbwd",
                   help="some of fwd,fwdbwd (default fwd,fwdbwd)")
    a = p.parse_args(argv)
    if any(k % 2 == 0 for k in a.k):
        p.error(f"--k: expected odd kernel sizes (\"same\" padding), got {a.k}")
    return a


def bench(torch, a, r, k):
    """Rows for one R and K: ms per stack of each pass."""
    x = torch.randn(a.n, a.c, r, r, device="cuda")
    convs = torch.nn.ModuleList(
        torch.nn.Conv2d(a.c, a.c, k, padding=k // 2, groups=a.c, bias=False) for _ in range(a.layers)
    ).to("cuda")
    weights = [c.weight for c in convs]

    def stack(y):
        for c in convs:
            y = c(y)
        return y

    def fwd():
        with torch.no_grad():
            stack(x)

    xg = x.detach().requires_grad_(True)

    def fwd_bwd():
        # The gradients themselves, without accumulating them into .grad.
        torch.autograd.grad(stack(xg).sum(), [xg, *weights])

    runs = {"fwd": fwd, "fwdbwd": fwd_bwd}
    for name in a.passes:
        ms = common.median_ms(torch, runs[name], a.runs, a.warmup)
        print(f"pytorch-cudnn,{PASS_NAME[name]},{a.n},{a.c},{r},{k},{ms:.3f}", flush=True)
    del x, xg, convs, weights
    torch.cuda.empty_cache()


def main(argv):
    a = parse_args(argv)
    torch, _ = common.cuda_torch(SCRIPT)
    common.header(torch, f"cudnn {torch.backends.cudnn.version()}")
    print("impl,pass,N,C,R,K,ms_per_stack", flush=True)
    for r in a.r:
        for k in a.k:
            bench(torch, a, r, k)


if __name__ == "__main__":
    main(sys.argv[1:])
