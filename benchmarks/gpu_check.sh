#!/usr/bin/env bash
# One prepared device run (about 7-8 minutes on an H100/H200, every step bounded by a timeout):
#   1. the kernel test files, natively on the GPU (skipped if pytest is not installed there);
#   2. benchmarks/gpu_kernels.py: correctness at gpt-oss-20b shapes and triton-vs-torch timings;
#   3. benchmarks/gpu_graph_check.py: outputs with/without CUDA graphs and the overlapped schedule, triton vs
#      torch paths, and the calls that still make an overlapped decode step wait for the GPU;
#   4. benchmarks/gpu_serving.sh: the server + bench_serving on gpt-oss-20b shapes with dummy MXFP4
#      weights: batch-1 decode, concurrency 64 and 256, fp8 KV + CUDA graphs, and the PyTorch path;
#   5. the sampler against the textbook one, and the step-time growth of 64 grammar-constrained
#      requests (raw and harmony), last, so that a short budget cuts these first.
# Needs python3 with torch and triton (and oss-serve's Python dependencies for steps 3-4).
# Results go to $OUT (the device tool's folder) or to $1.
# Usage: bash benchmarks/gpu_check.sh [out_dir] [serving output length, default 512]
set -u
cd "$(dirname "$0")/.."
out_dir="${OUT:-${1:-benchmarks/results}}"
out_len="${2:-512}"
mkdir -p "$out_dir"
summary="$out_dir/gpu_check_summary.txt"
: > "$summary"

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee -a "$summary"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$summary"

if python3 -c "import pytest" 2>/dev/null; then
    echo "== kernel tests on the GPU" | tee -a "$summary"
    timeout 90 python3 -m pytest -q -x -p no:cacheprovider -W ignore \
        tests/test_kernels_attention.py tests/test_kernels_moe.py tests/test_kernels_rms_norm.py \
        tests/test_kernels_rope_store_kv.py tests/test_kernels_router_topk.py tests/test_kernels_token_mask.py \
        tests/test_kernels_skinny_linear.py \
        2>&1 | tail -8 | tee -a "$summary"
else
    echo "== pytest not installed: kernel test files skipped (gpu_kernels.py still checks correctness)" \
        | tee -a "$summary"
fi

echo "== kernel benchmark" | tee -a "$summary"
timeout 100 python3 benchmarks/gpu_kernels.py --out "$out_dir" --budget-s 70 2>"$out_dir/gpu_kernels.stderr"
echo "exit $?" | tee -a "$summary"
cat "$out_dir/gpu_kernels.txt" >> "$summary" 2>/dev/null
tail -5 "$out_dir/gpu_kernels.stderr"

echo "== CUDA graphs and backends: greedy agreement on the tiny checkpoint" | tee -a "$summary"
timeout 150 python3 benchmarks/gpu_graph_check.py 2>&1 | grep -E "identical|synchroniz|Error|error" | tail -10 | tee -a "$summary"

echo "== serving" | tee -a "$summary"
timeout 300 bash benchmarks/gpu_serving.sh "$out_dir" "$out_len" 2>&1 | tee -a "$summary"

echo "== sampler and structured outputs" | tee -a "$summary"
timeout 45 python3 benchmarks/sampling.py --rows 256 --repeats 2 2>&1 | tail -10 | tee -a "$summary"
for mode in "" "--harmony"; do
    timeout 60 python3 benchmarks/structured_overhead.py --preset mini --mxfp4 --repeats 1 $mode 2>&1 \
        | grep -E "device|harmony|step_ms|growth|fill|apply|Error" | tee -a "$summary"
done
