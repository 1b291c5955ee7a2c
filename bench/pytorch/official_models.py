"""PyTorch anchor for whole-model speed with the official model code: SLaK-T (SLaK.py: kernels
51-49-47-13 with the small kernel 5, width x1.3, decomposed kernels, BN) and RepLKNet-31B
(replknet.py: create_RepLKNet31B, without gradient checkpointing), inference and training
images/s and peak GPU memory, strict fp32 (TF32 off, cudnn.benchmark on), one GPU.

The model files are not part of this repository: pass their paths (--slak-py, --replknet-py);
each is imported from its path, and needs torch and timm. A training step is what
scripts/bench_models.ts times: forward, softmax cross-entropy, backward, AdamW (torch's
default implementation), gradients zeroed. Inference runs in eval mode under no_grad. Times are
the median of --steps after --warmup untimed steps, each from a drained GPU to a drained GPU.

Prints a comment line (versions, device), then CSV on stdout, the columns of
bench/pytorch/convnext.py:
  model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib,infer_peak_gib,impl
with model = slak_tiny or replknet_31b (the registry names of ours), kernels the four stage
kernels, and peak_gib the peak of the training step.

  python3 bench/pytorch/official_models.py --slak-py SLaK.py --replknet-py replknet.py
"""
import contextlib
import os
import sys

import common

SCRIPT = os.path.basename(__file__)
MODELS = ("slak_tiny", "replknet_31b")


def model_list(value):
    """argparse type: some of slak_tiny,replknet_31b."""
    out = [m for m in value.split(",") if m]
    if not out or any(m not in MODELS for m in out):
        raise ValueError(value)
    return out


def slak_kernels(value):
    """argparse type: five positive integers k1-k2-k3-k4-small."""
    ks = [int(k) for k in value.split("-")]
    if len(ks) != 5 or any(k < 1 for k in ks):
        raise ValueError(value)
    return ks


def parse_args(argv):
    p = common.parser(__doc__, SCRIPT)
    p.add_argument("--models", type=model_list, default="slak_tiny,replknet_31b",
                   help="some of slak_tiny,replknet_31b (default both)")
    p.add_argument("--slak-py", metavar="FILE", help="the official SLaK.py (needed for slak_tiny)")
    p.add_argument("--replknet-py", metavar="FILE", help="the official replknet.py (needed for replknet_31b)")
    p.add_argument("--slak-kernels", type=slak_kernels, default="51-49-47-13-5",
                   help="SLaK's kernel_size: four stage kernels and the small one (default 51-49-47-13-5)")
    p.add_argument("--slak-width", type=float, default=1.3, help="SLaK's width_factor (default 1.3)")
    common.add_model_flags(p)
    a = p.parse_args(argv)
    if "slak_tiny" in a.models and not a.slak_py:
        p.error("--slak-py: expected the path of the official SLaK.py (slak_tiny is in --models)")
    if "replknet_31b" in a.models and not a.replknet_py:
        p.error("--replknet-py: expected the path of the official replknet.py (replknet_31b is in --models)")
    for flag, path in (("--slak-py", a.slak_py), ("--replknet-py", a.replknet_py)):
        if path and not os.path.isfile(path):
            common.fail(f"{SCRIPT}: {flag} {path}: no such file (expected the official model file)")
    return a


def builders(a):
    """For each model asked for: (stage kernels, impl name, a function that builds it)."""
    out = {}
    if "slak_tiny" in a.models:
        slak = common.load_file(a.slak_py, "--slak-py", SCRIPT)
        out["slak_tiny"] = (a.slak_kernels[:4], "official SLaK.py", lambda: slak.SLaK_tiny(
            kernel_size=a.slak_kernels, width_factor=a.slak_width, Decom=True, bn=True,
            num_classes=a.classes))
    if "replknet_31b" in a.models:
        replknet = common.load_file(a.replknet_py, "--replknet-py", SCRIPT)
        out["replknet_31b"] = ([31, 29, 27, 13], "official replknet.py", lambda: replknet.create_RepLKNet31B(
            num_classes=a.classes, use_checkpoint=False))
    return out


def main(argv):
    a = parse_args(argv)
    torch, (timm,) = common.cuda_torch(SCRIPT, ["timm"])
    models = builders(a)
    common.header(torch, f"timm {timm.__version__}")
    print(common.MODEL_COLUMNS, flush=True)
    for name in a.models:
        kernels, impl, build = models[name]
        torch.manual_seed(0)
        # The official files print while they build (replknet.py: a "drop path" line per block):
        # stdout carries the CSV only.
        with contextlib.redirect_stdout(sys.stderr):
            model = build()
        common.bench_model(torch, name, kernels, impl, model, a)


if __name__ == "__main__":
    main(sys.argv[1:])
