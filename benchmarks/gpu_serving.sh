#!/usr/bin/env bash
# Serving figures on one GPU, gpt-oss-20b shapes with dummy MXFP4 weights (no download):
# batch-1 decode and output throughput at concurrency 64 and 256 through the real server and
# bench_serving, with fp8 KV and CUDA graphs, then batch-1 and concurrency 64 on the PyTorch path
# (torch attention, dequantized experts, no graphs) for the ratio.
# Usage: bash benchmarks/gpu_serving.sh OUT_DIR [OUTPUT_LEN] [quick]   (each step is bounded by a timeout;
# "quick" runs batch 1 and concurrency 64 on the fast path only)
set -u
cd "$(dirname "$0")/.."
out_dir="${1:-benchmarks/results}"
out_len="${2:-512}"
quick="${3:-}"
mkdir -p "$out_dir"
model=/tmp/gpt-oss-20b-dummy
python3 -m oss_serve.testing.make_checkpoint "$model" --preset gpt-oss-20b --mxfp4 --config-only >/dev/null || exit 1

serve() {  # name, extra flags...; waits for the ready line
    local name=$1; shift
    python3 -m oss_serve.launch_server --model-path "$model" --load-format dummy --port 30000 \
        --mem-fraction-static 0.85 --served-model-name gpt-oss-20b "$@" > "$out_dir/server_$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 240); do
        grep -q "fired up and ready to roll" "$out_dir/server_$name.log" && return 0
        kill -0 $server_pid 2>/dev/null || break
        sleep 1
    done
    echo "server $name did not start"; tail -30 "$out_dir/server_$name.log"; return 1
}
stop() { kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; }
api_cpu_s() {  # CPU seconds of the server's API process (the engine is its child) so far
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server_pid/stat" 2>/dev/null || echo 0
}
bench() {  # label, input len, output len, prompts, concurrency
    echo "== $1: in $2 out $3 prompts $4 concurrency $5"
    local cpu_before started
    cpu_before=$(api_cpu_s); started=$(date +%s.%N)
    timeout 120 python3 -m oss_serve.bench_serving --backend sglang-oai --port 30000 --tokenizer "$model" \
        --model gpt-oss-20b --dataset-name random --random-input-len "$2" --random-output-len "$3" \
        --random-range-ratio 1 --num-prompts "$4" --max-concurrency "$5" --output-file "$out_dir/bench.jsonl" \
        2>&1 | grep -E "Successful|Benchmark duration|Output token throughput|Total token throughput|Mean TPOT|Median TPOT|Mean TTFT|failed|Error" 
    # A busy API process (one Python thread) would cap the throughput above: how busy it was.
    awk -v cpu="$(awk -v a="$cpu_before" -v b="$(api_cpu_s)" 'BEGIN {print b - a}')" \
        -v wall="$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" \
        'BEGIN {printf "API process CPU %.1f s in %.1f s (%.0f%% of one core, client start-up included)\n", cpu, wall, 100 * cpu / wall}'
}

if serve fast --kv-cache-dtype fp8_e4m3; then
    grep -E "KV cache|CUDA graphs|Loaded" "$out_dir/server_fast.log" | head -5
    bench "triton+graphs+fp8 batch 1" 1024 "$out_len" 2 1
    bench "triton+graphs+fp8 concurrency 64" 1024 "$out_len" 64 64
    [ -z "$quick" ] && bench "triton+graphs+fp8 concurrency 256" 1024 "$out_len" 256 256
    stop
fi
[ -n "$quick" ] && exit 0
if serve torch --attention-backend torch --moe-backend torch --disable-cuda-graph; then
    bench "torch path batch 1" 1024 64 1 1
    bench "torch path concurrency 64" 1024 64 64 64
    stop
fi
