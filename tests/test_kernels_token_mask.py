"""Grammar masks from packed bits onto the logits (interpreter child or GPU), against unpack + masked_fill."""
from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch

from oss_serve.engine.structured.step_masks import StepMasks
from oss_serve.kernels.token_mask import mask_tokens_, mask_tokens_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_bits(rows: int, vocab: int, seed: int, density: float = 0.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bits = torch.rand(rows, -(-vocab // 32) * 32, generator=gen) < density
    weights = (1 << torch.arange(32, dtype=torch.int64))
    words = (bits.view(rows, -1, 32).long() * weights).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # bit 31 is the sign


@pytest.mark.parametrize("num_rows,vocab,logit_rows,mask_rows", [
    (4, 100, [0, 1, 2, 3], [0, 1, 2, 3]),
    (5, 4099, [4, 1], [0, 2]),  # some rows, mask rows out of order; the vocab not a multiple of 32
    (3, 33, [2, 0, 1], [1, 1, 0]),  # one mask row used twice
    (2, 64, [], []),
])
def test_matches_unpack_and_masked_fill(num_rows: int, vocab: int, logit_rows: list[int],
                                        mask_rows: list[int]) -> None:
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(num_rows, vocab, generator=gen).to(DEVICE)
    packed = random_bits(4, vocab, seed=num_rows).to(DEVICE)
    want = mask_tokens_reference(logits.clone(), packed, logit_rows, mask_rows)
    got = mask_tokens_(logits, packed, logit_rows, mask_rows)
    assert got is logits
    assert torch.equal(got, want)


def test_every_bit_position_and_strided_logits() -> None:
    vocab = 200
    logits = torch.zeros(2, vocab + 8, device=DEVICE)[:, :vocab]
    packed = torch.full((1, -(-vocab // 32)), -1, dtype=torch.int32, device=DEVICE)  # all disallowed
    mask_tokens_(logits, packed, [1], [0])
    assert torch.isneginf(logits[1]).all() and (logits[0] == 0).all()


def test_step_masks_apply_packed_bits() -> None:
    """The GPU path of StepMasks.apply: packed grammar rows with forced and banned rows in one step."""
    vocab = 70
    requests = [SimpleNamespace(name=i) for i in range(4)]
    packed = random_bits(2, vocab, seed=3)
    done: Future[torch.Tensor] = Future()
    done.set_result(packed)
    masks = StepMasks(vocab, grammar_rows={id(requests[2]): 0, id(requests[0]): 1},
                      forced={id(requests[1]): 5}, banned={id(requests[3]): (7, 9)}, disallowed=done)
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0))
    want = mask_tokens_reference(logits.clone(), packed, [2, 0], [0, 1])
    got = masks.apply(logits.to(DEVICE), requests).cpu()
    assert torch.equal(got[[0, 2]], want[[0, 2]])
    assert got[1].argmax() == 5 and torch.isneginf(got[1]).sum() == vocab - 1
    assert torch.isneginf(got[3, [7, 9]]).all() and torch.isfinite(got[3]).sum() == vocab - 2
