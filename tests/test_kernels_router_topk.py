"""Fused router top-k + softmax against torch.topk (interpreter child or GPU)."""
from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.router_topk import router_topk, router_topk_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check(logits: torch.Tensor, top_k: int) -> None:
    ids, weights = router_topk(logits, top_k)
    want_ids, want_weights = router_topk_reference(logits, top_k)
    assert ids.shape == weights.shape == (logits.shape[0], top_k)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int64
    # torch.topk orders ties arbitrarily on CPU; the kernel takes the lowest expert id first.
    lowest_first = torch.sort(logits.float().cpu(), dim=-1, descending=True, stable=True).indices[:, :top_k]
    assert torch.equal(ids.cpu(), lowest_first)
    torch.testing.assert_close(logits.gather(1, ids), logits.gather(1, want_ids), atol=0, rtol=0)
    torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(0, 32, 4), (1, 32, 4), (7, 32, 4), (45, 32, 4),
                                                          (3, 5, 2), (9, 128, 4), (2, 128, 128), (5, 20, 1)])
def test_matches_torch_topk(num_tokens: int, num_experts: int, top_k: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(num_tokens * 131 + num_experts)
    logits = (4 * torch.randn(num_tokens, num_experts, generator=gen)).to(dtype).to(DEVICE)
    check(logits, top_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_take_the_lowest_expert_id(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (11, 32), generator=gen).to(dtype)
    logits[0] = 0.0  # all tied
    logits[1, :] = float("-inf")
    logits[1, [3, 9]] = 1.0  # fewer finite logits than k
    check(logits.to(DEVICE), 4)


def test_strided_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=gen).to(DEVICE)[:, :32]
    check(logits, 4)


def test_nan_logits_never_give_an_invalid_expert() -> None:
    logits = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    logits[0, 5] = float("nan")
    logits[1] = float("nan")
    ids, _ = router_topk(logits.to(DEVICE), 4)
    assert 5 not in ids[0].tolist()
    assert ids[1].tolist() == [0, 1, 2, 3]
