"""Time of the engine's sampler against the textbook one (softmax, a stable sort of the whole vocabulary
when filtering, a float64 running sum, searchsorted), same rows, same run.

    python benchmarks/sampling.py [--rows 1 64] [--device cpu|cuda]

Rows are o200k-sized. "gaussian" logits have a heavy tail (a top-p prefix runs past the sampler's 1,024
candidates, so it sorts too); "zipf" logits fall off as rank^-2, closer to a trained model's.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch

from oss_serve.engine.sampler import sample
from oss_serve.engine.sampling_params import SamplingParams

VOCAB = 201088
SETTINGS = {"greedy": dict(temperature=0.0), "plain": dict(temperature=1.0), "min_p 0.05": dict(min_p=0.05),
            "top_k 50": dict(top_k=50), "top_p 0.9": dict(top_p=0.9), "top_k 50 top_p 0.95": dict(top_k=50, top_p=0.95),
            "logprobs, top 5": dict(logprobs=True, top_logprobs=5)}


def textbook_sample(logits: torch.Tensor, requests: list) -> list[int]:
    params = requests[0].params
    if params.logprobs:  # each row's logprob and top alternatives, row by row
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = textbook_sample(logits, [SimpleNamespace(params=SamplingParams(temperature=params.temperature),
                                                          rng=r.rng) for r in requests])
        for row, token in enumerate(tokens):
            float(logprobs[row, token]), torch.topk(logprobs[row], params.top_logprobs)[0].tolist()
        return tokens
    if params.temperature == 0:
        return torch.argmax(logits, dim=-1).tolist()
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.min_p:
        probs = probs.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), 0.0)
    order = None
    if params.top_k > 0 or params.top_p < 1.0:
        probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        if params.top_k > 0:
            probs[:, params.top_k:] = 0.0
        if params.top_p < 1.0:
            probs = probs.masked_fill(probs.cumsum(-1) - probs >= params.top_p * probs.sum(-1, keepdim=True), 0.0)
    cdf = probs.double().cumsum(-1)
    uniforms = torch.tensor([r.rng.random() for r in requests], dtype=torch.float64, device=logits.device)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).clamp_(max=VOCAB - 1)
    return (picks if order is None else order.gather(1, picks)).squeeze(1).tolist()


def median_ms(function, logits: torch.Tensor, requests: list, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        copy = logits.clone()
        if copy.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        function(copy, requests)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    rank_logits = -2 * torch.arange(1, VOCAB + 1, dtype=torch.float32).log()
    for rows in args.rows:
        shapes = {"gaussian": 3 * torch.randn(rows, VOCAB, generator=generator),
                  "zipf": torch.stack([rank_logits[torch.randperm(VOCAB, generator=generator)] for _ in range(rows)])}
        for shape, logits in shapes.items():
            logits = logits.to(args.device)
            for name, setting in SETTINGS.items():
                if shape == "zipf" and name in ("greedy", "plain", "min_p 0.05", "logprobs, top 5"):
                    continue  # no different from gaussian rows
                params = SamplingParams(**{"temperature": 1.0, **setting})
                requests = [SimpleNamespace(params=params, rng=random.Random(i), step_masks=None, token_ids=[],
                                            output_counts=None) for i in range(rows)]
                ours = median_ms(lambda rows, reqs: sample(rows, reqs).resolve(), logits, requests, args.repeats)
                textbook = median_ms(textbook_sample, logits, requests, args.repeats)
                print(f"{rows:3d} rows, {shape:8s} {name:20s}: {ours:8.1f} ms, textbook {textbook:8.1f} ms, "
                      f"{textbook / ours:5.1f}x", flush=True)


if __name__ == "__main__":
    main()
