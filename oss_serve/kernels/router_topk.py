"""The router's top-k over expert logits and the softmax over the chosen k, one launch.

torch needs topk (two kernels on GPU), a cast and a softmax for this: four tiny launches per layer of a
decode step, each latency-bound. One program handles a block of tokens whose logits (E <= 128) fit in
registers: k rounds of "largest logit not yet taken, lowest expert id on ties", then the fp32 softmax.
"""
from __future__ import annotations

import torch

from oss_serve.kernels import _support

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None

MAX_EXPERTS = 128
# Logits held per program: enough tokens per program for prefill, one register tile.
_TILE_ELEMENTS = 512


def router_topk_reference(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk then the fp32 softmax over the chosen logits; tie order is torch's."""
    top_logits, top_ids = torch.topk(logits, top_k, dim=-1)
    return top_ids, torch.softmax(top_logits.float(), dim=-1)


def router_topk(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] (E <= 128, any float dtype) -> expert ids int64 [T, k] by descending logit and their fp32
    softmax weights [T, k]. The kernel breaks ties by the lowest expert id and counts NaN logits as -inf,
    so every id is a valid expert."""
    if not _support.use_triton(logits):
        return router_topk_reference(logits, top_k)
    num_tokens, num_experts = logits.shape
    assert 0 < top_k <= num_experts <= MAX_EXPERTS and logits.stride(1) == 1
    ids = torch.empty(num_tokens, top_k, dtype=torch.int64, device=logits.device)
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    if num_tokens == 0:
        return ids, weights
    block_experts = triton.next_power_of_2(num_experts)
    block_tokens = min(triton.next_power_of_2(num_tokens), max(1, _TILE_ELEMENTS // block_experts))
    router_topk_kernel[(triton.cdiv(num_tokens, block_tokens),)](
        logits, ids, weights, num_tokens, logits.stride(0), NUM_EXPERTS=num_experts, TOP_K=top_k,
        BLOCK_TOKENS=block_tokens, BLOCK_EXPERTS=block_experts, BLOCK_K=triton.next_power_of_2(top_k),
        num_warps=4 if logits.is_cuda else 1)
    return ids, weights


if triton is not None:
    @triton.jit
    def router_topk_kernel(logits_ptr, ids_ptr, weights_ptr, num_tokens, stride_token,
                           NUM_EXPERTS: tl.constexpr, TOP_K: tl.constexpr, BLOCK_TOKENS: tl.constexpr,
                           BLOCK_EXPERTS: tl.constexpr, BLOCK_K: tl.constexpr):
        tokens = tl.program_id(0) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
        token_valid = tokens < num_tokens
        experts = tl.arange(0, BLOCK_EXPERTS)
        available = token_valid[:, None] & (experts < NUM_EXPERTS)[None, :]
        logits = tl.load(logits_ptr + tokens.to(tl.int64)[:, None] * stride_token + experts[None, :],
                         mask=available, other=float("-inf")).to(tl.float32)
        logits = tl.where(logits == logits, logits, float("-inf"))
        choices = tl.arange(0, BLOCK_K)
        top_logits = tl.full([BLOCK_TOKENS, BLOCK_K], float("-inf"), tl.float32)
        top_ids = tl.zeros([BLOCK_TOKENS, BLOCK_K], tl.int32)
        for choice in range(TOP_K):
            best = tl.max(tl.where(available, logits, float("-inf")), axis=1)
            # Comparing against the max among the untaken ones finds an expert even when all left are -inf.
            hits = available & (logits == best[:, None])
            pick = tl.min(tl.where(hits, experts[None, :], BLOCK_EXPERTS), axis=1)
            available = available & (experts[None, :] != pick[:, None])
            top_logits = tl.where(choices[None, :] == choice, best[:, None], top_logits)
            top_ids = tl.where(choices[None, :] == choice, pick[:, None], top_ids)
        chosen = choices[None, :] < TOP_K
        # Choice 0 holds the row's largest logit. Padded token rows hold only -inf: kept away from
        # -inf - -inf and 0 / 0, though their results are never stored.
        shift = tl.where(token_valid, tl.max(top_logits, axis=1), 0.0)
        exps = tl.where(chosen, tl.exp(top_logits - shift[:, None]), 0.0)
        probs = exps / tl.where(token_valid, tl.sum(exps, axis=1), 1.0)[:, None]
        out_offsets = tokens.to(tl.int64)[:, None] * TOP_K + choices[None, :]
        out_mask = token_valid[:, None] & chosen
        tl.store(ids_ptr + out_offsets, top_ids.to(tl.int64), mask=out_mask)
        tl.store(weights_ptr + out_offsets, probs, mask=out_mask)
