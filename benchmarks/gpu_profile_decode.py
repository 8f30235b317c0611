"""Where a decode step's GPU time goes: gpt-oss-20b shapes with dummy MXFP4 weights, batch 1 and 64,
eager (no CUDA graph) so that the profiler sees every kernel. Prints the top kernels by GPU time.

    python benchmarks/gpu_profile_decode.py --model-path DIR   (a --config-only folder of make_checkpoint)
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from oss_serve import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    llm = LLM(args.model_path, load_format="dummy", device="cuda", disable_cuda_graph=True,
              kv_cache_dtype="fp8_e4m3", mem_fraction_static=0.8)
    for batch in args.batch_sizes:
        prompts = [[1000 + i] * 128 for i in range(batch)]
        params = SamplingParams(temperature=0, max_new_tokens=args.steps, ignore_eos=True)
        llm.generate(prompts, params)  # warm-up: Triton compiles
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            llm.generate(prompts, params)
            torch.cuda.synchronize()
        print(f"== batch {batch}: {args.steps} decode steps after a 128-token prefill")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
