"""Grammar masks put on a step's logits straight from llguidance's packed bits, in one launch.

torch has to unpack the bits first (a shift, an and and a cast over int32 temporaries 32 times the
size of the bits, about 50 MB for 64 rows of the o200k vocabulary) and then gather and scatter the
constrained rows when only some rows of the step have a grammar. The kernel reads each row's bits
where they lie and writes -inf over the disallowed tokens only: it never reads the logits.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from oss_serve.kernels import _support
from oss_serve.kernels.async_copy import to_device

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None

_BLOCK_TOKENS = 2048


@functools.cache
def _bit_shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(32, dtype=torch.int32, device=device)


def unpack_bits(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32 bitmask (bit i of word w = token 32w+i) -> [rows, vocab] bool."""
    bits = (packed.unsqueeze(-1) >> _bit_shifts(packed.device)) & 1
    return bits.flatten(1)[:, :vocab_size].bool()


def mask_tokens_reference(logits: torch.Tensor, packed: torch.Tensor, logit_rows: Sequence[int],
                          mask_rows: Sequence[int]) -> torch.Tensor:
    rows = torch.tensor(list(logit_rows), dtype=torch.long, device=logits.device)
    disallowed = unpack_bits(packed[list(mask_rows)], logits.shape[1])
    logits[rows] = logits[rows].masked_fill(disallowed, float("-inf"))
    return logits


def mask_tokens_(logits: torch.Tensor, packed: torch.Tensor, logit_rows: Sequence[int],
                 mask_rows: Sequence[int]) -> torch.Tensor:
    """Set logits[logit_rows[i], t] to -inf, in place, for every token t whose bit is set in
    packed[mask_rows[i]]. logits fp32 [rows, vocab] (unit stride along the vocab), packed int32
    [bitmask rows, ceil(vocab / 32)] on the same device. Returns `logits`."""
    if not _support.use_triton(logits):
        return mask_tokens_reference(logits, packed, logit_rows, mask_rows)
    assert len(logit_rows) == len(mask_rows) and logits.dtype == torch.float32 and packed.dtype == torch.int32
    assert logits.stride(1) == 1 and packed.stride(1) == 1
    if not logit_rows:
        return logits
    vocab_size = logits.shape[1]
    assert packed.shape[1] * 32 >= vocab_size
    rows = to_device([*logit_rows, *mask_rows], torch.int32, logits.device)
    grid = (len(logit_rows), triton.cdiv(vocab_size, _BLOCK_TOKENS))
    mask_tokens_kernel[grid](logits, packed, rows, len(logit_rows), vocab_size, logits.stride(0),
                             packed.stride(0), BLOCK_TOKENS=_BLOCK_TOKENS, num_warps=4 if logits.is_cuda else 1)
    return logits


if triton is not None:
    @triton.jit
    def mask_tokens_kernel(logits_ptr, packed_ptr, rows_ptr, num_rows, vocab_size, stride_logits, stride_packed,
                           BLOCK_TOKENS: tl.constexpr):
        pair = tl.program_id(0)
        logit_row = tl.load(rows_ptr + pair).to(tl.int64)
        mask_row = tl.load(rows_ptr + num_rows + pair).to(tl.int64)
        tokens = tl.program_id(1) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
        in_vocab = tokens < vocab_size
        # 32 neighbouring tokens share a word: the repeated addresses are one load.
        words = tl.load(packed_ptr + mask_row * stride_packed + (tokens >> 5), mask=in_vocab, other=0)
        disallowed = ((words >> (tokens & 31)) & 1) != 0
        tl.store(logits_ptr + logit_row * stride_logits + tokens, tl.full([BLOCK_TOKENS], float("-inf"), tl.float32),
                 mask=in_vocab & disallowed)
