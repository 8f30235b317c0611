"""On a GPU: greedy outputs of the tiny MXFP4 checkpoint are identical with and without CUDA graphs,
and with the Triton paths against the torch paths (same tokens for most requests; bf16 kernels round
differently). Prints one line per comparison.

    python benchmarks/gpu_graph_check.py
"""
from __future__ import annotations

import tempfile

import torch

from oss_serve import LLM, SamplingParams
from oss_serve.testing.make_checkpoint import make_checkpoint


def run(folder: str, **engine_args) -> list[list[int]]:
    llm = LLM(folder, device="cuda", max_total_tokens=8192, **engine_args)
    prompts = [list(range(1000 + 7 * i, 1000 + 7 * i + 5 + 9 * i)) for i in range(12)]
    params = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)
    outputs = [out.token_ids for out in llm.generate(prompts, params)]
    del llm
    torch.cuda.empty_cache()
    return outputs


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(make_checkpoint(tmp, preset="tiny", mxfp4=True, seed=0))
        graphs = run(folder)
        eager = run(folder, disable_cuda_graph=True)
        torch_path = run(folder, attention_backend="torch", moe_backend="torch", disable_cuda_graph=True)
        fp8 = run(folder, kv_cache_dtype="fp8_e4m3")
    same = sum(a == b for a, b in zip(graphs, eager))
    print(f"cuda_graph_vs_eager identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(eager, torch_path))
    print(f"triton_vs_torch_path identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(graphs, fp8))
    print(f"fp8_kv_vs_bf16_kv identical={same}/{len(graphs)}")


if __name__ == "__main__":
    main()
