"""Batched sampling: penalties, temperature, top-k / top-p / min-p, seeded draws, logprobs.

One uniform number per row comes from the request's own generator and picks the token by inverse
CDF (in token order) over the row's filtered distribution, so a seeded request draws the same tokens
whatever else shares its batch. All other work runs on the whole [rows, vocab] tensor at once.
Sampling only queues device work: the draws come back as `SampledTokens`, read when the engine
needs them (with the overlapped schedule, after it has queued the next step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from oss_serve.engine.outputs import TokenLogprob
from oss_serve.engine.request import Request
from oss_serve.engine.structured.step_masks import apply_step_masks
from oss_serve.kernels.async_copy import to_device


@dataclass
class SampledTokens:
    """One step's draws, row by row. `tokens` stays on the device, where the next step may take its
    inputs from it; the host copies are started when sampling is queued and read by `resolve`."""
    tokens: torch.Tensor  # int64 [rows]
    _host_tokens: torch.Tensor
    _logprob_rows: list[int]  # rows whose requests asked for logprobs
    _top_counts: list[int]  # alternatives each of those asked for
    _host_logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # picked, top values, top ids
    _copied: torch.cuda.Event | None

    @classmethod
    def start_copy(cls, tokens: torch.Tensor, logprob_rows: list[int], top_counts: list[int],
                   logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> SampledTokens:
        # non_blocking to the CPU lands in page-locked memory: the copies run behind the sampling.
        host = [t.to("cpu", non_blocking=True) for t in (tokens, *(logprobs or ()))]
        copied = None
        if tokens.is_cuda:
            copied = torch.cuda.Event()
            copied.record()
        return cls(tokens, host[0], logprob_rows, top_counts, tuple(host[1:]) if logprobs else None, copied)

    def wait(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()

    def resolve(self) -> tuple[list[int], list[TokenLogprob | None]]:
        """The token of each row and, for rows that asked, its logprob with the top alternatives."""
        self.wait()
        tokens = self._host_tokens.tolist()
        logprobs: list[TokenLogprob | None] = [None] * len(tokens)
        if self._host_logprobs is not None:
            picked, top_values, top_ids = (t.tolist() for t in self._host_logprobs)
            for j, (row, count) in enumerate(zip(self._logprob_rows, self._top_counts)):
                top = tuple(zip(top_ids[j][:count], top_values[j][:count])) if count else ()
                logprobs[row] = TokenLogprob(tokens[row], picked[j], top)
        return tokens, logprobs


def _apply_penalties(logits: torch.Tensor, requests: list[Request]) -> None:
    for row, request in enumerate(requests):
        params = request.params
        if params.repetition_penalty != 1.0:
            seen = to_device(sorted(set(request.token_ids)), torch.int64, logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / params.repetition_penalty,
                                            values * params.repetition_penalty)
        if params.frequency_penalty or params.presence_penalty:
            counts = request.output_counts or {}
            if counts:
                ids = to_device(list(counts.keys()), torch.int64, logits.device)
                freq = to_device(list(counts.values()), logits.dtype, logits.device)
                logits[row, ids] -= params.frequency_penalty * freq + params.presence_penalty


# An inverse-CDF draw finds its block of this many tokens from the block totals, then its token from that
# block's running sum: no running sum (nor float64 copy) of the whole [rows, vocab] distribution.
CDF_BLOCK = 1024
# top-k / top-p rank this many of a row's largest weights; a top-p prefix longer than that sorts the row.
CUT_CANDIDATES = 1024
# At or below this temperature a draw is greedy: dividing by it would overflow the logits to inf (and the
# softmax to NaN). Above the other bound every distribution is uniform to float32 precision anyway.
GREEDY_TEMPERATURE = 1e-6
FLAT_TEMPERATURE = 1e6


def _weights(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Probabilities at each request's temperature, with min-p applied (then no longer summing to one).
    torch's fused softmax, not exp: on CPU, exp slows down several times on masked (-inf) logits."""
    device = logits.device
    temperature = [min(r.params.temperature, FLAT_TEMPERATURE) for r in requests]
    if any(t != 1.0 for t in temperature):
        logits = logits / to_device(temperature, torch.float32, device)[:, None]
    weights = torch.softmax(logits, dim=-1)
    min_p = [r.params.min_p for r in requests]
    if any(min_p):
        threshold = to_device(min_p, torch.float32, device)[:, None] * weights.amax(dim=-1, keepdim=True)
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
    top_k = to_device(top_k_list, torch.int64, device)
    top_p = to_device(top_p_list, torch.float32, device)
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
    # Rows without a partial tie are left as they are by the cut below. A GPU does it for every row: asking
    # whether any row needs it would wait for the step's forward.
    if weights.is_cuda or bool(partial.any()):
        equal = weights == boundary
        weights.masked_fill_(equal & (equal.cumsum(dim=-1, dtype=torch.int32) > ties_kept), 0.0)
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


def _draw(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """One token per row: argmax for greedy rows, an inverse-CDF draw with the request's uniform otherwise."""
    device = logits.device
    random_rows = [i for i, r in enumerate(requests) if r.params.temperature > GREEDY_TEMPERATURE]
    if len(random_rows) < len(requests):
        tokens = logits.max(dim=-1).indices  # the first maximum, as argmax; 4x faster than argmax on CPU
    else:
        tokens = torch.empty(len(requests), dtype=torch.long, device=device)
    if not random_rows:
        return tokens
    subset = [requests[i] for i in random_rows]
    every_row = len(subset) == len(requests)
    random_index = None if every_row else to_device(random_rows, torch.int64, device)
    weights = _weights(logits if every_row else logits[random_index], subset)
    uniforms = to_device([r.rng.random() for r in subset], torch.float64, device)
    cut = [i for i, r in enumerate(subset) if r.params.top_k > 0 or r.params.top_p < 1.0]
    if len(cut) == len(subset):
        _cut_by_rank(weights, subset)
    elif cut:
        cut_index = to_device(cut, torch.int64, device)
        weights[cut_index] = _cut_by_rank(weights[cut_index], [subset[i] for i in cut])
    drawn = _inverse_cdf(weights, uniforms)
    if every_row:
        return drawn
    tokens[random_index] = drawn
    return tokens


@torch.inference_mode()  # the logits come from the model's forward, run in inference mode
def sample(logits: torch.Tensor, requests: list[Request]) -> SampledTokens:
    """logits fp32 [rows, vocab], one row per request: the next token of each and, for requests that
    asked, its logprob (from the model's raw distribution) with the top alternatives."""
    logprob_rows = [i for i, r in enumerate(requests) if r.params.logprobs]
    raw_logprobs = some_rows = None
    if logprob_rows:  # before the masks and penalties below change the logits
        if len(logprob_rows) < len(requests):
            some_rows = to_device(logprob_rows, torch.int64, logits.device)
        raw_logprobs = torch.log_softmax(logits if some_rows is None else logits[some_rows], dim=-1)
    logits = apply_step_masks(logits, requests)  # grammar-constrained rows (logprobs stay the model's own)
    if any(r.params.repetition_penalty != 1.0 or r.params.frequency_penalty or r.params.presence_penalty
           for r in requests):
        logits = logits.clone()
        _apply_penalties(logits, requests)
    tokens = _draw(logits, requests)
    top_counts = [requests[i].params.top_logprobs for i in logprob_rows]
    logprobs = None
    if raw_logprobs is not None:
        picked = raw_logprobs.gather(1, (tokens if some_rows is None else tokens[some_rows])[:, None]).squeeze(1)
        top_values, top_ids = torch.topk(raw_logprobs, max(top_counts), dim=-1)  # k = 0 gives empty rows
        logprobs = (picked, top_values, top_ids)
    return SampledTokens.start_copy(tokens, logprob_rows, top_counts, logprobs)
