"""Batched sampling: penalties, temperature, top-k / top-p / min-p, seeded draws, logprobs.

One uniform number per row comes from the request's own generator and picks the token by inverse
CDF over the row's filtered distribution, so a seeded request draws the same tokens whatever else
shares its batch. All other work runs on the whole [rows, vocab] tensor at once.
"""
from __future__ import annotations

import torch

from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.request import Request
from oss_serve.structured.step_masks import apply_step_masks


def _apply_penalties(logits: torch.Tensor, requests: list[Request]) -> None:
    for row, request in enumerate(requests):
        params = request.params
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(request.token_ids)), dtype=torch.long, device=logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / params.repetition_penalty,
                                            values * params.repetition_penalty)
        if params.frequency_penalty or params.presence_penalty:
            counts = request.output_counts or {}
            if counts:
                ids = torch.tensor(list(counts.keys()), dtype=torch.long, device=logits.device)
                freq = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
                logits[row, ids] -= params.frequency_penalty * freq + params.presence_penalty


def _filtered_probs(logits: torch.Tensor, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities after temperature and top-k/top-p/min-p. When filtering needs a sort, the
    probabilities come back in sorted order together with the token ids of each column."""
    device = logits.device
    temperature = torch.tensor([r.params.temperature for r in requests], dtype=torch.float32, device=device)
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    min_p = [r.params.min_p for r in requests]
    if any(min_p):
        threshold = torch.tensor(min_p, device=device)[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < threshold, 0.0)
    top_k = [r.params.top_k for r in requests]
    top_p = [r.params.top_p for r in requests]
    if all(k < 0 for k in top_k) and all(p >= 1.0 for p in top_p):
        return probs, None
    vocab = probs.shape[-1]
    # A stable sort: bf16 logits tie often, and ties must fall in the same order whatever the batch.
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    columns = torch.arange(sorted_probs.shape[-1], device=device)
    k_per_row = torch.tensor([k if k > 0 else vocab for k in top_k], device=device)
    sorted_probs = sorted_probs.masked_fill(columns[None, :] >= k_per_row[:, None], 0.0)
    if any(p < 1.0 for p in top_p):
        top_p_t = torch.tensor(top_p, device=device)[:, None]
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        # Keep the smallest set of top tokens whose mass reaches top_p (always the first one).
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p_t * sorted_probs.sum(-1, keepdim=True), 0.0)
    return sorted_probs, order


def sample(logits: torch.Tensor, requests: list[Request]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits fp32 [rows, vocab], one row per request; returns the next token of each and, for
    requests that asked, its logprob (from the model's raw distribution) with the top alternatives."""
    raw_logprobs = None
    if any(r.params.logprobs for r in requests):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
    logits = apply_step_masks(logits, requests)  # grammar-constrained rows (logprobs stay the model's own)
    if any(r.params.repetition_penalty != 1.0 or r.params.frequency_penalty or r.params.presence_penalty
           for r in requests):
        logits = logits.clone()
        _apply_penalties(logits, requests)

    greedy_tokens = torch.argmax(logits, dim=-1)
    random_rows = [i for i, r in enumerate(requests) if r.params.temperature > 0]
    if random_rows:
        subset = [requests[i] for i in random_rows]
        probs, order = _filtered_probs(logits[random_rows], subset)
        uniforms = torch.tensor([r.rng.random() for r in subset], dtype=torch.float64, device=logits.device)
        cdf = torch.cumsum(probs.double(), dim=-1)
        picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)
        # A zero-probability column can only be picked through rounding at the very end: step back.
        picked_prob = torch.gather(probs, 1, picks)
        fallback = torch.argmax(probs, dim=-1, keepdim=True)
        picks = torch.where(picked_prob > 0, picks, fallback)
        if order is not None:
            picks = torch.gather(order, 1, picks)
        greedy_tokens[random_rows] = picks.squeeze(1)
    tokens = greedy_tokens.tolist()

    logprobs: list[TokenLogprob | None] = [None] * len(requests)
    if raw_logprobs is not None:
        for row, request in enumerate(requests):
            if not request.params.logprobs:
                continue
            top: tuple[tuple[int, float], ...] = ()
            if request.params.top_logprobs:
                values, ids = torch.topk(raw_logprobs[row], request.params.top_logprobs)
                top = tuple(zip(ids.tolist(), values.tolist()))
            logprobs[row] = TokenLogprob(tokens[row], float(raw_logprobs[row, tokens[row]]), top)
    return tokens, logprobs
