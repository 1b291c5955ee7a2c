"""PyTorch anchor for whole-model speed: timm's ConvNeXt-T with per-stage kernel sizes
(7-7-7-7 is ConvNeXt-T itself; 51-49-47-13 its naive large-kernel variant), inference and
training images/s and peak GPU memory, strict fp32 (TF32 off, cudnn.benchmark on), one GPU.

A training step is what scripts/bench_models.ts times: forward, softmax cross-entropy,
backward, AdamW (torch's default implementation), gradients zeroed. Inference runs in eval
mode under no_grad. Times are the median of --steps after --warmup untimed steps, each from
a drained GPU to a drained GPU.

Prints a comment line (versions, device), then CSV on stdout:
  model,kernels,batch,res,params_m,infer_img_s,train_img_s,peak_gib,infer_peak_gib,impl
with model = convnext_tiny (the registry name of ours) and peak_gib the peak of the
training step (weights, gradients, AdamW state and activations).

  python3 bench/pytorch/convnext.py --kernels 7-7-7-7,51-49-47-13
"""
import os
import sys

import common

SCRIPT = os.path.basename(__file__)


def parse_args(argv):
    p = common.parser(__doc__, SCRIPT)
    p.add_argument("--kernels", type=common.kernel_list, default="7-7-7-7,51-49-47-13",
                   help="stage kernels, k1-k2-k3-k4, comma-separated (default 7-7-7-7,51-49-47-13)")
    common.add_model_flags(p)
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    torch, (timm,) = common.cuda_torch(SCRIPT, ["timm"])
    common.header(torch, f"timm {timm.__version__}")
    print(common.MODEL_COLUMNS, flush=True)
    for kernels in a.kernels:
        torch.manual_seed(0)
        model = timm.models.convnext.ConvNeXt(
            depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), kernel_sizes=kernels, num_classes=a.classes
        )
        common.bench_model(torch, "convnext_tiny", kernels, f"timm {timm.__version__}", model, a)


if __name__ == "__main__":
    main(sys.argv[1:])
