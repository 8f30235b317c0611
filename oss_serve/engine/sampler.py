"""Batched sampling: penalties, temperature, top-k / top-p / min-p, seeded draws, logprobs.

One uniform number per row comes from the request's own generator and picks the token by inverse
CDF (in token order) over the row's filtered distribution, so a seeded request draws the same tokens
whatever else shares its batch. All other work runs on the whole [rows, vocab] tensor at once.
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


# An inverse-CDF draw finds its block of this many tokens from the block totals, then its token from that
# block's running sum: no running sum (nor float64 copy) of the whole [rows, vocab] distribution.
CDF_BLOCK = 1024
# top-k / top-p rank this many of a row's largest weights; a top-p prefix longer than that sorts the row.
CUT_CANDIDATES = 1024


def _weights(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Probabilities at each request's temperature, with min-p applied (then no longer summing to one).
    torch's fused softmax, not exp: on CPU, exp slows down several times on masked (-inf) logits."""
    device = logits.device
    temperature = [r.params.temperature for r in requests]
    if any(t != 1.0 for t in temperature):
        logits = logits / torch.tensor(temperature, dtype=torch.float32, device=device)[:, None]
    weights = torch.softmax(logits, dim=-1)
    min_p = [r.params.min_p for r in requests]
    if any(min_p):
        threshold = torch.tensor(min_p, device=device)[:, None] * weights.amax(dim=-1, keepdim=True)
        weights.masked_fill_(weights < threshold, 0.0)
    return weights


def _cut_by_rank(weights: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """top-k / top-p in place: zero all but each row's first top_k tokens by weight, then all but the
    shortest such prefix whose mass reaches top_p. Ranks are a stable sort's (equal weights in token order),
    found from the row's largest weights rather than a sort of its whole vocabulary."""
    vocab = weights.shape[1]
    device = weights.device
    top_k_list = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in requests]
    top_p_list = [r.params.top_p for r in requests]
    top_k = torch.tensor(top_k_list, device=device)
    top_p = torch.tensor(top_p_list, device=device)
    cuts_mass = any(p < 1.0 for p in top_p_list)
    # top-p weighs the mass that top-k kept: the whole row's where top-k is off.
    totals = weights.sum(-1) if cuts_mass and vocab in top_k_list else None
    # One more than top-k, so that a boundary tied with the weights after it shows.
    largest_k = max((k for k in top_k_list if k < vocab), default=0)
    candidates = min(vocab, max(CUT_CANDIDATES if cuts_mass else 1, largest_k + 1))
    ranked = torch.topk(weights, candidates, dim=-1).values
    keep = _kept_prefix(ranked, totals, top_k, top_p, vocab)
    boundary, ties_kept, partial = _prefix_edge(ranked, keep)
    spill = (keep == candidates).nonzero().flatten().tolist() if cuts_mass and candidates < vocab else []
    if spill:  # these rows' top-p prefixes may run past the candidates: rank their whole vocabulary
        ranked = torch.sort(weights[spill], dim=-1, descending=True).values
        keep = _kept_prefix(ranked, None if totals is None else totals[spill], top_k[spill], top_p[spill], vocab)
        boundary[spill], ties_kept[spill], partial[spill] = _prefix_edge(ranked, keep)
    # The prefix is every token above its last weight and the first few (in token order) equal to it.
    weights.masked_fill_(weights < boundary, 0.0)
    if bool(partial.any()):
        equal = weights == boundary
        weights.masked_fill_(equal & (equal.cumsum(dim=-1) > ties_kept), 0.0)
    return weights


def _kept_prefix(ranked: torch.Tensor, totals: torch.Tensor | None, top_k: torch.Tensor, top_p: torch.Tensor,
                 vocab: int) -> torch.Tensor:
    """How many of each row's largest weights (`ranked`, descending) top-k and top-p keep (at least one)."""
    running = ranked.cumsum(dim=-1)
    k = top_k.clamp(max=ranked.shape[1])
    total = running.gather(1, (k - 1)[:, None]).squeeze(1)
    if totals is not None:
        total = torch.where(top_k < vocab, total, totals)
    within_p = ((running - ranked) < top_p[:, None] * total[:, None]).sum(-1)
    return torch.minimum(k, torch.where(top_p < 1.0, within_p, k)).clamp_(min=1)


def _prefix_edge(ranked: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the prefix's last weight, how many tokens of that weight it keeps, and whether that may be
    fewer than there are (the ranked values may end before all of them)."""
    boundary = ranked.gather(1, (keep - 1)[:, None])
    ties_kept = keep[:, None] - (ranked > boundary).sum(-1, keepdim=True)
    partial = (ties_kept < (ranked == boundary).sum(-1, keepdim=True)) | (ranked[:, -1:] == boundary)
    return boundary, ties_kept, partial


def _inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the column where uniform * total falls in the running sum of the non-negative weights."""
    rows, vocab = weights.shape
    whole = vocab // CDF_BLOCK * CDF_BLOCK
    totals = weights[:, :whole].reshape(rows, -1, CDF_BLOCK).sum(-1)
    if whole < vocab:
        totals = torch.cat([totals, weights[:, whole:].sum(-1, keepdim=True)], dim=1)
    cdf = totals.double().cumsum_(dim=-1)
    total = cdf[:, -1]
    # u * total may round up to the total: stay below it, so that the block found holds weight.
    target = torch.minimum(uniforms * total, torch.nextafter(total, torch.zeros_like(total)))[:, None]
    block = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[1] - 1)
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    columns = block * CDF_BLOCK + torch.arange(CDF_BLOCK, device=weights.device)
    chunk = weights.gather(1, columns.clamp(max=vocab - 1)).masked_fill_(columns >= vocab, 0.0)
    offset = torch.searchsorted(chunk.double().cumsum(dim=-1), target - before, right=True).clamp_(max=CDF_BLOCK - 1)
    # The block totals and this running sum round differently: a draw past the block's last weight takes
    # its largest instead.
    offset = torch.where(chunk.gather(1, offset) > 0, offset, chunk.argmax(dim=-1, keepdim=True))
    return (block * CDF_BLOCK + offset).squeeze(1)


def _draw(logits: torch.Tensor, requests: list[Request]) -> list[int]:
    """One token per row: argmax for greedy rows, an inverse-CDF draw with the request's uniform otherwise."""
    random_rows = [i for i, r in enumerate(requests) if r.params.temperature > 0]
    if len(random_rows) < len(requests):
        tokens = logits.max(dim=-1).indices  # the first maximum, as argmax; 4x faster than argmax on CPU
    else:
        tokens = torch.empty(len(requests), dtype=torch.long, device=logits.device)
    if not random_rows:
        return tokens.tolist()
    subset = [requests[i] for i in random_rows]
    weights = _weights(logits if len(subset) == len(requests) else logits[random_rows], subset)
    uniforms = torch.tensor([r.rng.random() for r in subset], dtype=torch.float64, device=logits.device)
    cut = [i for i, r in enumerate(subset) if r.params.top_k > 0 or r.params.top_p < 1.0]
    if len(cut) == len(subset):
        _cut_by_rank(weights, subset)
    elif cut:
        weights[cut] = _cut_by_rank(weights[cut], [subset[i] for i in cut])
    tokens[random_rows] = _inverse_cdf(weights, uniforms)
    return tokens.tolist()


def sample(logits: torch.Tensor, requests: list[Request]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits fp32 [rows, vocab], one row per request; returns the next token of each and, for
    requests that asked, its logprob (from the model's raw distribution) with the top alternatives."""
    logprob_rows = [i for i, r in enumerate(requests) if r.params.logprobs]
    raw_logprobs = None
    if logprob_rows:  # before the masks and penalties below change the logits
        raw_logprobs = torch.log_softmax(logits if len(logprob_rows) == len(requests) else logits[logprob_rows],
                                         dim=-1)
    logits = apply_step_masks(logits, requests)  # grammar-constrained rows (logprobs stay the model's own)
    if any(r.params.repetition_penalty != 1.0 or r.params.frequency_penalty or r.params.presence_penalty
           for r in requests):
        logits = logits.clone()
        _apply_penalties(logits, requests)
    tokens = _draw(logits, requests)
    logprobs: list[TokenLogprob | None] = [None] * len(requests)
    if raw_logprobs is not None:
        # Gathered for all rows at once: one transfer from a GPU, not one per row.
        picked = raw_logprobs.gather(1, torch.tensor([[tokens[i]] for i in logprob_rows], device=logits.device))
        picked = picked.squeeze(1).tolist()
        most = max(requests[i].params.top_logprobs for i in logprob_rows)
        top_values, top_ids = [], []
        if most:
            values, ids = torch.topk(raw_logprobs, most, dim=-1)
            top_values, top_ids = values.tolist(), ids.tolist()
        for j, row in enumerate(logprob_rows):
            count = requests[row].params.top_logprobs
            top = tuple(zip(top_ids[j][:count], top_values[j][:count])) if count else ()
            logprobs[row] = TokenLogprob(tokens[row], picked[j], top)
    return tokens, logprobs
