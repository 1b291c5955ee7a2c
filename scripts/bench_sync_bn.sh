#!/usr/bin/env bash
# What synchronised BatchNorm costs: the same data-parallel run under `mpirun -np RANKS`, once
# without and once with --sync-bn, summarised from rank 0's comm.csv as CSV on stdout:
#   sync_bn,steps,step_ms,grad_wait_ms,bn_allreduce_ms,bn_share
# means over the optimiser steps after the first (which compiles the kernels); bn_share is
# bn_allreduce_ms / step_ms. Each run's output goes to OUT/sync_bn_{0,1}.log, its files under
# OUT/sync_bn_{0,1}/. Usage, from the repository root:
#   bash scripts/bench_sync_bn.sh OUT RANKS TRAIN_FLAGS...
# e.g. (llvmpipe, a few minutes):
#   bash scripts/bench_sync_bn.sh out/sync_bn 2 --model resnet_cpu --input-size 32 \
#     --batch-size 8 --train-size 96 --val-size 8 --epochs 1 --warmup-epochs 0 --log-every 2
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/bench_sync_bn.sh OUT RANKS TRAIN_FLAGS..." >&2
  exit 2
fi
out=$1
ranks=$2
shift 2
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
mkdir -p "$out"
echo "sync_bn,steps,step_ms,grad_wait_ms,bn_allreduce_ms,bn_share"
for sync in 0 1; do
  dir="$out/sync_bn_$sync"
  rm -rf "$dir"
  flags=("$@")
  if [ "$sync" = 1 ]; then flags+=(--sync-bn); fi
  if ! mpirun -np "$ranks" --oversubscribe deno run -A train/main.ts --out "$dir" "${flags[@]}" \
    >"$dir.log" 2>&1; then
    echo "sync_bn=$sync failed; the end of $dir.log:" >&2
    tail -5 "$dir.log" >&2
    continue
  fi
  # Columns of comm.csv: step,bytes,read_ms,allreduce_ms,write_ms,wait_ms,step_ms,bn_allreduce_ms
  awk -F, -v s="$sync" 'NR > 2 { n++; step += $7; wait += $6; bn += $8 }
    END { if (n) printf "%d,%d,%.1f,%.1f,%.1f,%.3f\n", s, n, step / n, wait / n, bn / n, bn / step }' \
    "$dir/comm.csv"
done
