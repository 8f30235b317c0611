"""Offline throughput: oss_serve's LLM against transformers on the same checkpoint, same requests.

    python benchmarks/offline_throughput.py                  # mini preset, 64 x (128 in, 128 out)
    python benchmarks/offline_throughput.py --model-path PATH --num-requests 16 --skip-transformers

Reports output tokens/s of both engines and their ratio, single-request decode tokens/s, and
the engine's own time per step outside the forward pass (scheduling, batch packing, sampling)
at full batch. transformers runs its continuous-batching `generate_batch` when the installed
version has one (else padded batched `generate`).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from oss_serve import LLM, SamplingParams


def make_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 100000) for _ in range(length)] for _ in range(count)]


def bench_oss_serve(model_path: str, prompts: list[list[int]], output_len: int, dtype: str) -> dict[str, float]:
    total_tokens = len(prompts) * (len(prompts[0]) + output_len) + 1024
    llm = LLM(model_path, dtype=dtype, max_total_tokens=total_tokens, max_running_requests=len(prompts),
              disable_radix_cache=True)
    params = SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))  # warm-up
    llm.engine.profile, llm.engine.step_times = True, []
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - started
    generated = sum(len(o.token_ids) for o in outputs)
    full_batch_steps = llm.engine.step_times[2:]  # decode steps at the full batch (prefill goes first)
    overhead_ms = statistics.median((t.total - t.forward) * 1e3 for t in full_batch_steps)
    step_ms = statistics.median(t.total * 1e3 for t in full_batch_steps)

    # Single request: decode steps only.
    llm.engine.step_times = []
    llm.generate([prompts[0]], params)
    decode_steps = [t.total for t in llm.engine.step_times[1:]]
    return {"output_tok_s": generated / elapsed, "elapsed_s": elapsed, "generated": generated,
            "step_ms_at_full_batch": step_ms, "overhead_ms_per_step": overhead_ms,
            "single_request_decode_tok_s": len(decode_steps) / sum(decode_steps)}


def bench_transformers(model_path: str, prompts: list[list[int]], output_len: int, dtype: str) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch_dtype = torch.bfloat16 if dtype in ("auto", "bfloat16") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    model.eval()
    config = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=None, pad_token_id=0,
                              min_new_tokens=output_len)
    if hasattr(model, "generate_batch"):
        method = "generate_batch"
        try:
            with torch.inference_mode():
                model.generate_batch(prompts[:2], generation_config=GenerationConfig(
                    max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0), warmup=False)
                started = time.perf_counter()
                results = model.generate_batch(prompts, generation_config=config, warmup=False)
                elapsed = time.perf_counter() - started
            generated = sum(len(r.generated_tokens) for r in results.values())
            return {"output_tok_s": generated / elapsed, "elapsed_s": elapsed, "generated": generated,
                    "method": method}
        except Exception as error:  # noqa: BLE001 - fall back to padded generate
            print(f"transformers generate_batch failed ({error!r}); using padded generate")
    method = "generate (padded batch)"
    input_ids = torch.tensor(prompts)  # equal lengths: no padding needed
    with torch.inference_mode():
        model.generate(input_ids[:2], generation_config=GenerationConfig(max_new_tokens=4, do_sample=False,
                                                                         pad_token_id=0, eos_token_id=None))
        started = time.perf_counter()
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        elapsed = time.perf_counter() - started
    generated = (out.shape[1] - input_ids.shape[1]) * out.shape[0]
    return {"output_tok_s": generated / elapsed, "elapsed_s": elapsed, "generated": generated, "method": method}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="Checkpoint folder (default: a fresh `mini` test checkpoint).")
    parser.add_argument("--preset", default="mini", choices=("tiny", "mini"))
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_path = args.model_path
    if model_path is None:
        from oss_serve.testing.make_checkpoint import make_checkpoint

        model_path = str(make_checkpoint(Path(tempfile.mkdtemp(prefix="oss-bench-")), preset=args.preset))
    prompts = make_prompts(args.num_requests, args.input_len, args.seed)
    report: dict[str, object] = {"model": model_path, "requests": args.num_requests, "input_len": args.input_len,
                                 "output_len": args.output_len, "dtype": args.dtype,
                                 "threads": torch.get_num_threads()}
    report["oss_serve"] = bench_oss_serve(model_path, prompts, args.output_len, args.dtype)
    if not args.skip_transformers:
        report["transformers"] = bench_transformers(model_path, prompts, args.output_len, args.dtype)
        report["speedup"] = report["oss_serve"]["output_tok_s"] / report["transformers"]["output_tok_s"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
