#!/usr/bin/env bash
# One prepared device run (about 4-5 minutes on an H100/H200, bounded by timeouts):
#   1. the kernel test files, natively on the GPU (skipped if pytest is not installed there);
#   2. benchmarks/gpu_kernels.py: correctness at gpt-oss-20b shapes and triton-vs-torch timings.
# Needs python3 with torch and triton. Results go to $OUT (the device tool's folder) or to $1.
# Usage: bash benchmarks/gpu_check.sh [out_dir]
set -u
cd "$(dirname "$0")/.."
out_dir="${OUT:-${1:-benchmarks/results}}"
mkdir -p "$out_dir"
summary="$out_dir/gpu_check_summary.txt"
: > "$summary"

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee -a "$summary"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$summary"

if python3 -c "import pytest" 2>/dev/null; then
    echo "== kernel tests on the GPU" | tee -a "$summary"
    timeout 100 python3 -m pytest -q -x -p no:cacheprovider -W ignore \
        tests/test_kernels_attention.py tests/test_kernels_moe.py tests/test_kernels_rms_norm.py \
        tests/test_kernels_rope_store_kv.py 2>&1 \
        | tail -25 | tee -a "$summary"
else
    echo "== pytest not installed: kernel test files skipped (gpu_kernels.py still checks correctness)" \
        | tee -a "$summary"
fi

echo "== kernel benchmark" | tee -a "$summary"
timeout 200 python3 benchmarks/gpu_kernels.py --out "$out_dir" --budget-s 140 2>"$out_dir/gpu_kernels.stderr"
echo "exit $?" | tee -a "$summary"
cat "$out_dir/gpu_kernels.txt" >> "$summary" 2>/dev/null
tail -20 "$out_dir/gpu_kernels.stderr"
