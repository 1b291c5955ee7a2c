"""Shared pieces of the PyTorch anchors: imports that fail with one line, strict fp32,
and the timing loop every anchor uses.

The anchors import torch only after parsing their flags, so `--help` works on a machine
without torch, and a missing package gives one line on stderr and exit status 2.
"""
import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time

MISSING = 2
"""Exit status when torch, timm, CUDA or a model file is missing."""


def fail(message):
    """Print one line on stderr and exit with MISSING."""
    print(message, file=sys.stderr)
    sys.exit(MISSING)


def first_line(error):
    """An exception's message, first line only (the anchors fail with one line)."""
    return (str(error).splitlines() or [type(error).__name__])[0]


def require(name, script):
    """Import a package by name, or fail with one line naming it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        fail(f"{script}: cannot import {name} ({first_line(e)}); install it (pip install {name}) and run again")


def load_file(path, flag, script):
    """Import a Python file as a module, or fail with one line naming the flag."""
    if not os.path.isfile(path):
        fail(f"{script}: {flag} {path}: no such file (expected the official model file)")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"anchor_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as a plain import does, for code that looks itself up
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        fail(f"{script}: {flag} {path}: its imports failed ({first_line(e)})")
    return module


def cuda_torch(script, extra=()):
    """torch (and the packages in `extra`) with a CUDA device, in strict fp32.

    TF32 is off for matrix products and convolutions, so every product is full fp32 as
    ours; cudnn.benchmark is on, so cuDNN picks its fastest algorithm per shape, as our
    autotuner does. Returns (torch, [extra modules]).
    """
    torch = require("torch", script)
    mods = [require(name, script) for name in extra]
    if not torch.cuda.is_available():
        fail(f"{script}: torch {torch.__version__} sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch, mods


def header(torch, extra=""):
    """The comment line every anchor prints first: versions and the device."""
    parts = [f"torch {torch.__version__}"]
    if extra:
        parts.append(extra)
    parts.append(torch.cuda.get_device_name(0))
    print("# " + " ".join(parts), flush=True)


def median_ms(torch, fn, steps, warmup):
    """Median wall milliseconds of `fn` over `steps` calls after `warmup` untimed ones.

    Each call is timed from a drained GPU to a drained GPU (synchronize on both sides),
    which is how our benchmarks time a step with the wall clock.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def positive(value):
    """argparse type: an integer ≥ 1."""
    n = int(value)
    if n < 1:
        raise ValueError(value)
    return n


def non_negative(value):
    """argparse type: an integer ≥ 0."""
    n = int(value)
    if n < 0:
        raise ValueError(value)
    return n


def kernel_list(value):
    """argparse type: comma-separated k1-k2-k3-k4 groups of positive integers."""
    groups = []
    for group in value.split(","):
        ks = tuple(int(k) for k in group.split("-"))
        if len(ks) != 4 or any(k < 1 for k in ks):
            raise ValueError(value)
        groups.append(ks)
    return groups


def pass_list(value):
    """argparse type: some of infer,train."""
    passes = [p for p in value.split(",") if p]
    if not passes or any(p not in ("infer", "train") for p in passes):
        raise ValueError(value)
    return passes


def parser(doc, script):
    """An ArgumentParser whose --help prints the module docstring as written."""
    return argparse.ArgumentParser(prog=script, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_flags(p):
    """The flags of the whole-model anchors, with the defaults of scripts/bench_models.ts."""
    p.add_argument("--batch", type=positive, default=64, help="images per step (default 64)")
    p.add_argument("--res", type=positive, default=224, help="input side (default 224)")
    p.add_argument("--classes", type=positive, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--steps", type=positive, default=5, help="timed steps, median reported (default 5)")
    p.add_argument("--warmup", type=non_negative, default=2, help="untimed steps first (default 2)")
    p.add_argument("--pass", dest="passes", type=pass_list, default="infer,train",
                   help="some of infer,train (default infer,train)")


MODEL_COLUMNS = "model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib,infer_peak_gib,impl"
"""The CSV header of the whole-model anchors; the leading columns are those of bench_models.csv."""


def bench_model(torch, name, kernels, impl, model, a):
    """Time one model on the GPU and print its CSV row (see MODEL_COLUMNS).

    Inference runs in eval mode under no_grad; a training step is forward, softmax
    cross-entropy, backward, AdamW (torch's default implementation), gradients zeroed, as
    scripts/bench_models.ts times ours. peak_gib is the peak of the training step (weights,
    gradients, AdamW state, activations), infer_peak_gib that of inference.
    """
    model = model.to("cuda")
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.randn(a.batch, 3, a.res, a.res, device="cuda")
    y = torch.randint(0, a.classes, (a.batch,), device="cuda")
    infer_ips = train_ips = peak = infer_peak = ""
    if "infer" in a.passes:
        model.eval()
        torch.cuda.reset_peak_memory_stats()

        def infer():
            with torch.no_grad():
                model(x)

        infer_ips = f"{a.batch / (median_ms(torch, infer, a.steps, a.warmup) / 1e3):.1f}"
        infer_peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
    if "train" in a.passes:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        torch.cuda.reset_peak_memory_stats()

        def step():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        train_ips = f"{a.batch / (median_ms(torch, step, a.steps, a.warmup) / 1e3):.1f}"
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
        del opt
    ks = "-".join(map(str, kernels))
    print(f"{name},{ks},{a.batch},{a.res},{params_m:.2f},{infer_ips},{train_ips},{peak},{infer_peak},{impl}",
          flush=True)
    del model, x, y
    torch.cuda.empty_cache()
