#!/usr/bin/env bash
# One device run: the PyTorch anchors (bench/pytorch/) and our kernels side by side, on the same
# GPU. Run on the GPU machine from the repository root, carrying [".device"]:
#   bash .device/setup.sh && bash scripts/device_bench.sh
# Writes into $OUT (default out/device_bench/):
#   torch_dwconv.csv    PyTorch 24-layer dwconv stack, N=64 C=384: R=32 K=3,7,13,31 and R=64 K=31
#   latency.csv         ours, same columns (impl,pass,N,C,R,K,ms_per_stack): fast (tuned) + generic fwd
#   latency_detail.csv  ours with wall ms, timing method, TFLOP/s, % of the FP32 peak, tile plans
#   tune.csv            every tiling the autotuner timed
#   check.csv           fast (direct tiles, FFT 32/64) vs generic outputs at R=32, N=3, C=4
#   bench_gemm_vs_pytorch.csv  our tiled matrix products beside torch.matmul (TF32 off), per shape
#   bench_models_vs_pytorch.csv  ours beside PyTorch: img/s, peak GiB and the ratios per model
#   bench_models.csv    ours, every column; pytorch_models.csv the anchors' own CSV
#   log.txt             everything printed, including the ratio tables
# Each step has a time limit and a failed step does not stop the others; the whole run stays
# under DEADLINE seconds (default 540). PART=1 runs steps 1-2 (depthwise), PART=2 steps 3-4
# (matrix products, ConvNeXt-T with 7-7-7-7 and 51-49-47-13 kernels), PART=5 (SLaK-T and
# RepLKNet-31B against the official model files in .device/anchors/; EXTRA_MODELS="--models
# slak_tiny" or "--models replknet_31b" runs one of them, should both not fit), default 1 and 2:
# the device tool allows 600 s per command, so run the parts as separate commands back to back
# on the same machine. PART=3 (only when asked): sparse vs dense speed
# (sparse_speed.csv) and the ERF at 1024² (erf_table.csv, erf_compare.png). PART=4: the closest
# targets again (ConvNeXt-T both, K=31 stacks at R=32 and 64), with gemm_tune.csv.
# OFFICIAL (default .device/anchors) is the folder of the official SLaK.py and replknet.py.
# PLANS=DIR keeps the tuned kernel plans across device calls (each call starts a fresh machine, and
# first-run tuning takes minutes per model): the plan cache is read from and written to
# DIR/largekernel/plans.json (XDG_CACHE_HOME=DIR), and $OUT/plans.json gets a copy at the end, to
# put back into DIR here before the next call (carry DIR).
# EXTRA_LAT / EXTRA_GEMM / EXTRA_MODELS append flags to our scripts
# (a dry run on llvmpipe: EXTRA_LAT="--n 1 --c 8 --layers 2 --r 16 --k 3"
# EXTRA_GEMM="--n 1 --set convnext --runs 1"
# EXTRA_MODELS="--models convnext_cpu --batch 2 --size 32 --classes 10"). Redraw the chart afterwards, off the device:
#   deno run -A scripts/latency.ts --plot-only --out <dir with latency.csv> --torch <torch_dwconv.csv>
set -x
OUT="${OUT:-out/device_bench}"
DEADLINE="${DEADLINE:-540}"
PART="${PART:-all}"
OFFICIAL="${OFFICIAL:-.device/anchors}"
mkdir -p "$OUT"
export PATH="/usr/local/bin:$PATH"
tmp="$(mktemp -d)"
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -n "${PLANS:-}" ]; then
  export XDG_CACHE_HOME="$(realpath -m "$PLANS")"
  trap 'cp "$XDG_CACHE_HOME/largekernel/plans.json" "$OUT/plans.json" 2>/dev/null || true' EXIT
fi

# step LIMIT CMD...: run CMD for at most LIMIT seconds (less if the deadline is nearer).
step() {
  local limit=$1
  shift
  local left=$((DEADLINE - SECONDS - 5))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 10 ]; then
    echo "device_bench: skipped (deadline): $*" >&2
    return 1
  fi
  timeout -k 5 "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 0 ] || echo "device_bench: step failed (rc=$rc, limit ${limit}s): $*" >&2
  return 0
}

# csv_merge OUT FILES...: the first file whole, the data rows (no comments, no header) of the rest.
csv_merge() {
  local out=$1 first=$2
  shift 2
  [ -s "$first" ] || return 0
  cp "$first" "$out"
  for f in "$@"; do
    [ -s "$f" ] && grep -v '^#' "$f" | tail -n +2 >> "$out"
  done
  return 0
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv || true
deno --version | head -1

if [ "$PART" = all ] || [ "$PART" = 1 ]; then
# 1. PyTorch depthwise anchors (strict fp32).
step 75 python3 bench/pytorch/dwconv.py --r 32 --k 3,7,13,31 > "$tmp/torch32.csv"
step 60 python3 bench/pytorch/dwconv.py --r 64 --k 31 --runs 3 > "$tmp/torch64.csv"
csv_merge "$OUT/torch_dwconv.csv" "$tmp/torch32.csv" "$tmp/torch64.csv"
cat "$OUT/torch_dwconv.csv"
anchor=()
[ -s "$OUT/torch_dwconv.csv" ] && anchor=(--anchor "$OUT/torch_dwconv.csv")

# 2. Ours: tuned fast kernels, and the generic forward as the baseline.
step 230 deno run -A scripts/latency.ts --r 32 --k 3,7,13,31 --tune --check --impl fast,generic \
  --generic-pass fwd "${anchor[@]}" --no-plot --out "$tmp/lat32" $EXTRA_LAT
step 150 deno run -A scripts/latency.ts --r 64 --k 31 --tune --tune-max 3 --impl fast --runs 3 \
  --warmup 1 "${anchor[@]}" --no-plot --out "$tmp/lat64" $EXTRA_LAT
csv_merge "$OUT/latency.csv" "$tmp/lat32/latency.csv" "$tmp/lat64/latency.csv"
csv_merge "$OUT/latency_detail.csv" "$tmp/lat32/latency_detail.csv" "$tmp/lat64/latency_detail.csv"
csv_merge "$OUT/tune.csv" "$tmp/lat32/tune.csv" "$tmp/lat64/tune.csv"
[ -s "$tmp/lat32/check.csv" ] && cp "$tmp/lat32/check.csv" "$OUT/"
fi

if [ "$PART" = all ] || [ "$PART" = 2 ]; then

# 3. Our tiled matrix products beside torch.matmul (TF32 off) on ConvNeXt-T's and SLaK-T's
#    pointwise products at batch 64 (the anchor runs first, in the same command), and ResNet-101's.
step 120 deno run -A scripts/bench_gemm.ts --n 64 --impl tiled --runs 3 --with-pytorch \
  --out "$tmp/gemm" $EXTRA_GEMM
for f in bench_gemm.csv bench_gemm_vs_pytorch.csv; do
  [ -s "$tmp/gemm/$f" ] && cp "$tmp/gemm/$f" "$OUT/"
done

# 4. ConvNeXt-T, 7-7-7-7 and 51-49-47-13: timm first, then ours with the depthwise tiles tuned
#    per shape (the CSV is rewritten after each model, so a timeout keeps the finished ones).
step 400 deno run -A scripts/bench_models.ts --steps 3 --warmup 1 --tune --tune-max 3 \
  --models convnext_tiny@51-49-47-13,convnext_tiny --with-pytorch --out "$tmp/bm" $EXTRA_MODELS
for f in bench_models.csv bench_models_vs_pytorch.csv pytorch_models.csv; do
  [ -s "$tmp/bm/$f" ] && cp "$tmp/bm/$f" "$OUT/"
done
fi

if [ "$PART" = 5 ]; then
# 5. SLaK-T and RepLKNet-31B against the official model files, the same way.
step 530 deno run -A scripts/bench_models.ts --steps 3 --warmup 1 --tune --tune-max 3 \
  --models slak_tiny,replknet_31b --with-pytorch --official-dir "$OFFICIAL" --out "$tmp/bm" \
  $EXTRA_MODELS
for f in bench_models.csv bench_models_vs_pytorch.csv pytorch_models.csv; do
  [ -s "$tmp/bm/$f" ] && cp "$tmp/bm/$f" "$OUT/"
done
fi

if [ "$PART" = 3 ]; then
# 6. Sparse vs dense depthwise on SLaK-T's stage 1, both tuned, back to back.
step 240 deno run -A scripts/sparse_speed.ts --out "$tmp/sparse"
[ -s "$tmp/sparse/sparse_speed.csv" ] && cp "$tmp/sparse/sparse_speed.csv" "$OUT/"
# 7. ERF at 1024² × 50 images, random weights. The PNGs need sharp, which the device
#    cannot download: carry a copy of node_modules as .devnm (without the musl libvips .so files,
#    to stay under the carry limit).
if [ -d .devnm ]; then rm -rf node_modules && cp -a .devnm node_modules; fi
step 330 deno run -A scripts/erf.ts --model resnet101,convnext_tiny,slak_tiny --num 50 \
  --size 1024 --out "$tmp/erf"
for f in erf_table.csv erf_compare.png; do [ -s "$tmp/erf/$f" ] && cp "$tmp/erf/$f" "$OUT/"; done
fi

if [ "$PART" = 4 ]; then
# A re-measure of the closest targets in one command, most doubtful first: ConvNeXt-T 7-7-7-7
# training (0.7× PyTorch), the K=31 forward+backward stacks (15×), ConvNeXt-T 51-49-47-13 (2×).
step 50 python3 bench/pytorch/convnext.py --kernels 7-7-7-7,51-49-47-13 --steps 3 --warmup 1 \
  > "$OUT/torch_models.csv"
cat "$OUT/torch_models.csv"
anchor=()
grep -q '^convnext' "$OUT/torch_models.csv" && anchor=(--anchor "$OUT/torch_models.csv")
step 110 deno run -A scripts/bench_models.ts --steps 3 --warmup 1 --tune --tune-max 3 \
  --models convnext_tiny "${anchor[@]}" --out "$tmp/bm7" $EXTRA_MODELS
step 40 python3 bench/pytorch/dwconv.py --r 32 --k 31 > "$tmp/torch32.csv"
step 40 python3 bench/pytorch/dwconv.py --r 64 --k 31 --runs 3 > "$tmp/torch64.csv"
csv_merge "$OUT/torch_dwconv.csv" "$tmp/torch32.csv" "$tmp/torch64.csv"
cat "$OUT/torch_dwconv.csv"
anchor=()
[ -s "$OUT/torch_dwconv.csv" ] && anchor=(--anchor "$OUT/torch_dwconv.csv")
step 70 deno run -A scripts/latency.ts --r 32 --k 31 --tune --impl fast "${anchor[@]}" --no-plot \
  --out "$tmp/lat32" $EXTRA_LAT
step 120 deno run -A scripts/latency.ts --r 64 --k 31 --tune --tune-max 3 --impl fast --runs 3 \
  --warmup 1 "${anchor[@]}" --no-plot --out "$tmp/lat64" $EXTRA_LAT
csv_merge "$OUT/latency.csv" "$tmp/lat32/latency.csv" "$tmp/lat64/latency.csv"
csv_merge "$OUT/latency_detail.csv" "$tmp/lat32/latency_detail.csv" "$tmp/lat64/latency_detail.csv"
csv_merge "$OUT/tune.csv" "$tmp/lat32/tune.csv" "$tmp/lat64/tune.csv"
anchor=()
grep -q '^convnext' "$OUT/torch_models.csv" && anchor=(--anchor "$OUT/torch_models.csv")
step 110 deno run -A scripts/bench_models.ts --steps 3 --warmup 1 --tune --tune-max 3 \
  --models convnext_tiny@51-49-47-13 "${anchor[@]}" --out "$tmp/bm51" $EXTRA_MODELS
csv_merge "$OUT/bench_models.csv" "$tmp/bm7/bench_models.csv" "$tmp/bm51/bench_models.csv"
csv_merge "$OUT/gemm_tune.csv" "$tmp/bm7/gemm_tune.csv" "$tmp/bm51/gemm_tune.csv"
fi

ls -la "$OUT"
echo "device_bench: done in ${SECONDS}s"
