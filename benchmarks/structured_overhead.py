"""Step time of 64 grammar-constrained requests against 64 unconstrained ones, same engine.

    python benchmarks/structured_overhead.py                     # mini preset, CPU
    python benchmarks/structured_overhead.py --preset tiny       # a step that is almost all vocabulary work
    python benchmarks/structured_overhead.py --mxfp4 --device cuda   # Triton MoE and CUDA graphs, as served
    python benchmarks/structured_overhead.py --model-path PATH --batch 64 --output-len 64
    python benchmarks/structured_overhead.py --harmony            # grammar on the final answer only
    python benchmarks/structured_overhead.py --bounded-strings 4000  # every string bounded: the slow case

By default every constrained request has a live JSON-schema grammar on every step (raw mode,
schemas whose strings and arrays stay open). `--harmony` is the chat case: the grammar is live only
in the final answer, so a step mixes grammar rows with rows that only have end tokens banned or a
header forced. `--bounded-strings N` gives every string a maxLength, for which the grammar library
walks the whole vocabulary per mask. Reports the median full-batch step time of both runs, the
growth, how long the mask fill took on its worker thread, and how long the sampler spent applying
masks (the part on the critical path, including any wait for the fill).

The default is the mini preset: the mask work scales with the vocabulary, and the tiny preset's step (2
layers of width 64) is almost nothing but the 201k-wide lm_head and sampler, which exaggerates the share;
in gpt-oss-20b the rest of the forward is about 5x the lm_head (3.0 vs 0.58 billion multiply-adds a token).
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
from oss_serve.engine.structured import step_masks
from oss_serve.engine.structured.spec import GrammarSpec, StructuredOutput


def open_schemas(max_length: int | None) -> list[dict]:
    """Schemas whose strings and arrays stay open. With `max_length` every string is bounded, llguidance's
    slow case: a counted string lexeme defeats its token-trie shortcut, so each mask walks the whole
    vocabulary (~100-150 us a row on o200k, against ~5 us for an unbounded string)."""
    text = {"type": "string"} if max_length is None else {"type": "string", "maxLength": max_length}
    return [
        {"type": "object", "properties": {"title": text, "body": text}, "required": ["title", "body"]},
        {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "note": text},
                                    "required": ["id", "note"]}, "maxItems": 500},
        {"type": "object", "properties": {"tags": {"type": "array", "items": text}}, "required": ["tags"]},
        {"anyOf": [{"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "text": text},
                    "required": ["kind", "text"]}, {"type": "array", "items": text}]},
    ]


class Timings:
    """Wall time of the worker's mask fills and of the sampler's mask application."""

    def __init__(self) -> None:
        self.fill: list[float] = []
        self.apply: list[float] = []
        fill, apply = step_masks.StructuredDecoding._fill, step_masks.StepMasks.apply

        def timed_fill(decoding, steps):
            started = time.perf_counter()
            result = fill(decoding, steps)
            self.fill.append(time.perf_counter() - started)
            return result

        def timed_apply(masks, logits, requests):
            started = time.perf_counter()
            result = apply(masks, logits, requests)
            if result.is_cuda:
                torch.cuda.synchronize()
            self.apply.append(time.perf_counter() - started)
            return result

        step_masks.StructuredDecoding._fill = timed_fill  # type: ignore[method-assign]
        step_masks.StepMasks.apply = timed_apply  # type: ignore[method-assign]


def median_full_batch_step_ms(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]) -> float:
    llm.engine.profile, llm.engine.step_times = True, []
    llm.generate(prompts, params)
    # The first steps prefill; the last ones may run with fewer requests.
    steps = llm.engine.step_times[2:-2]
    return statistics.median(t.total * 1e3 for t in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path")
    parser.add_argument("--preset", default="mini", choices=["tiny", "mini"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mxfp4", action="store_true",
                        help="MXFP4 experts: on a GPU the Triton MoE and CUDA graphs, as served")
    parser.add_argument("--bounded-strings", type=int, metavar="N",
                        help="every string gets maxLength N (the grammar library's slow case)")
    parser.add_argument("--harmony", action="store_true",
                        help="grammar on the final answer only: free reasoning first, then a forced header")
    args = parser.parse_args()

    model_path = args.model_path
    if model_path is None:
        from oss_serve.testing.make_checkpoint import make_checkpoint

        model_path = str(make_checkpoint(Path(tempfile.mkdtemp()) / args.preset, preset=args.preset,
                                         mxfp4=args.mxfp4, seed=0))
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 100000) for _ in range(args.prompt_len)] for _ in range(args.batch)]
    total_tokens = args.batch * (args.prompt_len + args.output_len) + 1024
    llm = LLM(model_path, device=args.device, max_total_tokens=total_tokens, max_running_requests=args.batch,
              disable_radix_cache=True)

    schemas = open_schemas(args.bounded_strings)

    def params(constrained: bool) -> list[SamplingParams]:
        return [SamplingParams(max_new_tokens=args.output_len, temperature=1.0, seed=i, ignore_eos=True,
                               structured=StructuredOutput(answer=GrammarSpec(
                                   "json_schema", json.dumps(schemas[i % len(schemas)])), harmony=args.harmony)
                               if constrained else None)
                for i in range(args.batch)]

    llm.generate(prompts[:4], params(True)[:4])  # warm-up, and the grammar tokenizer is built once
    timings = Timings()
    free_ms, constrained_ms = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        free_ms.append(median_full_batch_step_ms(llm, prompts, params(False)))
        constrained_ms.append(median_full_batch_step_ms(llm, prompts, params(True)))
    free, constrained = min(free_ms), min(constrained_ms)
    report = {
        "device": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "model": Path(model_path).name, "mxfp4": args.mxfp4, "batch": args.batch, "harmony": args.harmony,
        "bounded_strings": args.bounded_strings,
        "unconstrained_step_ms": round(free, 3), "constrained_step_ms": round(constrained, 3),
        "growth_percent": round(100 * (constrained / free - 1), 2),
        "mask_fill_ms_median (worker thread, overlaps the forward)": round(statistics.median(timings.fill) * 1e3, 3),
        "mask_apply_ms_median (sampler, on the critical path)": round(statistics.median(timings.apply) * 1e3, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
