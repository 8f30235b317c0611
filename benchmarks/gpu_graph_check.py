"""On a GPU: greedy outputs of the tiny MXFP4 checkpoint are identical with and without CUDA graphs,
with and without the overlapped schedule (also seeded sampling), and with the Triton paths against the
torch paths (same tokens for most requests; bf16 kernels round differently). Prints one line per
comparison, then how many calls of overlapped decode steps made the host wait for the GPU (each one
serializes what the overlap should hide), and where the first one is.

    python benchmarks/gpu_graph_check.py
"""
from __future__ import annotations

import tempfile
import traceback
import warnings

import torch

from oss_serve import LLM, SamplingParams
from oss_serve.testing.make_checkpoint import make_checkpoint


def run(folder: str, temperature: float = 0.0, **engine_args) -> list[list[int]]:
    llm = LLM(folder, device="cuda", max_total_tokens=8192, cuda_graph_max_bs=16, **engine_args)
    prompts = [list(range(1000 + 7 * i, 1000 + 7 * i + 5 + 9 * i)) for i in range(12)]
    params = [SamplingParams(temperature=temperature, seed=i, max_new_tokens=24, ignore_eos=True) for i in range(12)]
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
        plain = run(folder, disable_overlap_schedule=True)
        sampled = run(folder, temperature=0.8), run(folder, temperature=0.8, disable_overlap_schedule=True)
        report_synchronizing_calls(folder)
    same = sum(a == b for a, b in zip(graphs, eager))
    print(f"cuda_graph_vs_eager identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(eager, torch_path))
    print(f"triton_vs_torch_path identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(graphs, fp8))
    print(f"fp8_kv_vs_bf16_kv identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(graphs, plain))
    print(f"overlap_vs_plain_schedule greedy identical={same}/{len(graphs)}")
    same = sum(a == b for a, b in zip(*sampled))
    print(f"overlap_vs_plain_schedule seeded temperature 0.8 identical={same}/{len(graphs)}")


def report_synchronizing_calls(folder: str, steps: int = 20) -> None:
    llm = LLM(folder, device="cuda", max_total_tokens=8192, cuda_graph_max_bs=16)
    engine = llm.engine
    for i in range(8):  # greedy, plain and top-k sampling
        engine.add_request(f"s{i}", list(range(1000 + i, 1040 + i)),
                           SamplingParams(temperature=1.0 if i % 2 else 0.0, top_k=20 if i % 4 == 3 else -1,
                                          max_new_tokens=200, ignore_eos=True))
    for _ in range(4):  # prefill, then graph-replayed decodes
        engine.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        for _ in range(steps):
            engine.step()
        torch.cuda.set_sync_debug_mode("default")
    print(f"overlapped decode: {len(caught)} synchronizing calls in {steps} steps")
    if caught:
        torch.cuda.set_sync_debug_mode("error")
        try:
            engine.step()
        except RuntimeError as error:
            frames = [f for f in traceback.extract_tb(error.__traceback__) if "oss_serve" in f.filename]
            print("first synchronizing call at " + " <- ".join(
                f"{f.filename.rsplit('oss_serve/', 1)[-1]}:{f.lineno} {f.line}" for f in reversed(frames[-3:])))
        finally:
            torch.cuda.set_sync_debug_mode("default")


if __name__ == "__main__":
    main()
