"""MXFP4 MoE kernels against the torch reference (CPU: in a TRITON_INTERPRET=1 child; GPU: natively)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from oss_serve.kernels.moe_mxfp4 import (
    DECODE_MAX_SLOTS,
    _group_slots_triton,
    moe_mxfp4,
    moe_mxfp4_reference,
    select_path,
)
from oss_serve.kernels.moe_mxfp4_decode import DecodeTiles

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_experts(num_experts: int, hidden: int, inter: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random packed weights with scales near 2^-4 so that activations stay O(1) through both GEMMs."""
    gen = torch.Generator().manual_seed(seed)

    def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (num_experts, rows, cols // 32, 16), generator=gen, dtype=torch.uint8)
        scales = torch.randint(121, 126, (num_experts, rows, cols // 32), generator=gen, dtype=torch.uint8)
        return blocks, scales

    gate_up_blocks, gate_up_scales = packed(2 * inter, hidden)
    down_blocks, down_scales = packed(hidden, inter)
    weights = dict(gate_up_blocks=gate_up_blocks, gate_up_scales=gate_up_scales,
                   gate_up_bias=torch.randn(num_experts, 2 * inter, generator=gen),
                   down_blocks=down_blocks, down_scales=down_scales,
                   down_bias=torch.randn(num_experts, hidden, generator=gen))
    return {name: value.to(DEVICE) for name, value in weights.items()}


def make_routing(num_tokens: int, num_experts: int, top_k: int, allowed: list[int] | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor(allowed if allowed is not None else list(range(num_experts)))
    ids = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:top_k]] for _ in range(num_tokens)]) \
        if num_tokens else torch.zeros(0, top_k, dtype=torch.long)
    weights = torch.softmax(torch.randn(num_tokens, top_k, generator=gen), dim=-1)
    return ids.to(DEVICE), weights.to(DEVICE)


def check(num_tokens: int, *, num_experts: int = 4, top_k: int = 2, hidden: int = 96, inter: int = 32,
          dtype: torch.dtype = torch.float32, allowed: list[int] | None = None, block_m: int | None = None,
          atol: float = 1e-4, seed: int = 0, **path_options) -> torch.Tensor:
    experts = make_experts(num_experts, hidden, inter, seed)
    ids, weights = make_routing(num_tokens, num_experts, top_k, allowed, seed)
    x = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
    # Low-precision runs are held to the fp32 reference on the same (exactly representable) inputs.
    expected = moe_mxfp4_reference(x.float(), ids, weights, **experts)
    actual = moe_mxfp4(x, ids, weights, **experts, block_m=block_m, **path_options)
    assert actual.shape == x.shape and actual.dtype == dtype
    if dtype != torch.float32:
        atol *= expected.abs().max().item()  # bf16 rounding of outputs that reach O(100)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=atol)
    return actual


PATHS = ["decode", "grouped"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("num_tokens", [1, 5, 13])
def test_matches_reference(num_tokens: int, path: str) -> None:
    check(num_tokens, seed=num_tokens, path=path)


def test_expert_without_tokens_and_multi_tile_expert() -> None:
    # Experts 1 and 3 get nothing; expert 0 gets every token, so it spans several 16-row tiles.
    check(21, allowed=[0, 2], block_m=16, path="grouped")


def test_decode_path_with_every_token_on_the_same_experts() -> None:
    # Slots of different tokens share an expert's weight rows (the L2-reuse case on a GPU).
    check(9, allowed=[1, 2], path="decode")


@pytest.mark.parametrize("path", PATHS)
def test_top4_of_8_experts(path: str) -> None:
    check(7, num_experts=8, top_k=4, hidden=64, inter=64, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_bf16_activations(path: str) -> None:
    # The grouped kernel rounds h to bf16 and the output; the decode kernel only the output. The model's bf16
    # path rounds after every op.
    check(6, dtype=torch.bfloat16, atol=1e-2, path=path)


def test_decode_partial_column_blocks_and_k_steps() -> None:
    # hidden 96 = 1.5 K steps of 64 for gate_up, and 1.5 column blocks of 64 for down; inter 96 likewise.
    check(3, hidden=96, inter=96, path="decode",
          decode_tiles=DecodeTiles(gate_up_block_n=64, down_block_n=64, block_k=64, num_warps=4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens", [1, 2, 5, 8])
def test_word_decode_matches_byte_decode(num_tokens: int, dtype: torch.dtype) -> None:
    # hidden 160 and inter 96 against block_k 64 and 64 columns a program: partial K steps and partial column
    # blocks in both kernels.
    shape = dict(num_experts=8, top_k=4, hidden=160, inter=96, dtype=dtype, seed=num_tokens, path="decode")
    for name in ("gate_up_blocks", "down_blocks"):
        codes = make_experts(8, 160, 96, seed=num_tokens)[name]
        codes = torch.stack([codes & 15, codes >> 4], dim=-1).view(-1, 8)  # a word's 8 codes, in element order
        # Every code, the negative ones included, at every position of a word.
        assert all(codes[:, element].unique().numel() == 16 for element in range(8))
    tiles = DecodeTiles(gate_up_block_n=64, down_block_n=64, block_k=64, num_warps=4)
    atol = 1e-4 if dtype == torch.float32 else 1e-2
    by_byte = check(num_tokens, atol=atol, decode_tiles=tiles, **shape)
    by_word = check(num_tokens, atol=atol, decode_tiles=replace(tiles, word_decode=True), **shape)
    # The same products summed in another order; a bf16 output may round to the neighbouring value.
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(by_word.float(), by_byte.float(), rtol=tol, atol=tol * by_byte.abs().max().item())


def test_decode_path_is_deterministic() -> None:
    first = check(4, num_experts=8, top_k=4, hidden=64, inter=64, path="decode", seed=3)
    second = check(4, num_experts=8, top_k=4, hidden=64, inter=64, path="decode", seed=3)
    assert torch.equal(first, second)


def test_path_choice_by_slot_count() -> None:
    assert select_path(1, 4) == "decode"
    assert select_path(DECODE_MAX_SLOTS // 4, 4) == "decode"
    assert select_path(DECODE_MAX_SLOTS // 4 + 1, 4) == "grouped"


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch(path: str) -> None:
    experts = make_experts(4, 96, 32)
    ids, weights = make_routing(0, 4, 2)
    x = torch.zeros(0, 96, device=DEVICE)
    assert moe_mxfp4(x, ids, weights, **experts, path=path).shape == (0, 96)


def group_slots_by_expert(expert_ids: torch.Tensor, num_experts: int,
                          block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (tile_expert int32 [max_tiles], row_slot int32 [max_tiles * block_m]).

    Slot s = token * k + choice. Expert e's slots fill ceil(count_e / block_m) consecutive tiles; padding rows
    hold -1 and unused tiles have expert id num_experts. max_tiles depends only on T*k and E.
    """
    flat = expert_ids.flatten().long()
    num_slots = flat.numel()
    device = flat.device
    max_tiles = -(-num_slots // block_m) + min(num_experts, num_slots)
    counts = torch.zeros(num_experts, dtype=torch.long, device=device).index_add_(
        0, flat, torch.ones_like(flat))  # bincount would sync with the host to size its output
    tiles = (counts + block_m - 1) // block_m
    tile_end = tiles.cumsum(0)
    tile_begin = tile_end - tiles
    tile_expert = torch.searchsorted(tile_end, torch.arange(max_tiles, device=device), right=True)
    order = torch.argsort(flat, stable=True)
    sorted_expert = flat[order]
    first_sorted = counts.cumsum(0) - counts
    rank = torch.arange(num_slots, device=device) - first_sorted[sorted_expert]
    row_slot = torch.full((max_tiles * block_m,), -1, dtype=torch.int32, device=device)
    row_slot[tile_begin[sorted_expert] * block_m + rank] = order.to(torch.int32)
    return tile_expert.to(torch.int32), row_slot


def test_grouping_pads_each_expert_to_whole_tiles() -> None:
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEVICE)
    tile_expert, row_slot = group_slots_by_expert(ids, num_experts=4, block_m=2)
    # Expert 0: slots 1, 4; expert 2: slots 0, 2, 5 (two tiles); expert 3: slot 3. The bound on tiles,
    # cdiv(6, 2) + min(4, 6) = 7, leaves three unused tiles (expert id 4).
    assert tile_expert.tolist() == [0, 2, 2, 3, 4, 4, 4]
    assert row_slot.tolist() == [1, 4, 0, 2, 5, -1, 3, -1] + [-1] * 6


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [(1, 4, 2, 16), (9, 8, 4, 4), (40, 4, 2, 16)])
def test_kernel_grouping_matches_torch_grouping(num_tokens: int, num_experts: int, top_k: int, block_m: int) -> None:
    ids, _ = make_routing(num_tokens, num_experts, top_k, allowed=list(range(num_experts - 1)), seed=num_tokens)
    want_tiles, want_slots = group_slots_by_expert(ids, num_experts, block_m)
    got_tiles, got_slots = _group_slots_triton(ids, num_experts, block_m)
    assert got_tiles.tolist() == want_tiles.tolist()
    # Atomic placement gives each of an expert's slots a distinct row among the expert's first count rows,
    # in any order (on a GPU the order varies run to run), so an expert spanning several tiles may split its
    # slots between them differently: compare each expert's rows as a set, and the padding rows exactly.
    got_rows, want_rows = got_slots.view(-1, block_m).cpu(), want_slots.view(-1, block_m).cpu()
    assert (got_rows < 0).tolist() == (want_rows < 0).tolist()
    for expert in range(num_experts):
        tiles = want_tiles.cpu() == expert
        assert sorted(got_rows[tiles].flatten().tolist()) == sorted(want_rows[tiles].flatten().tolist())


def test_reference_matches_dense_torch_experts() -> None:
    """The reference follows the model's TorchExperts once the blocks are dequantized."""
    from oss_serve.kernels.reference import dequantize_mxfp4
    from oss_serve.model.moe import TorchExperts

    class Config:
        num_experts, hidden_size, intermediate_size, swiglu_limit, swiglu_alpha = 4, 96, 32, 7.0, 1.702

    experts = {name: value.cpu() for name, value in make_experts(4, 96, 32).items()}
    dense = TorchExperts(Config, torch.float32, "cpu")
    gate_up = dequantize_mxfp4(experts["gate_up_blocks"], experts["gate_up_scales"], torch.float32)
    down = dequantize_mxfp4(experts["down_blocks"], experts["down_scales"], torch.float32)
    dense.gate_up_proj.copy_(gate_up)  # TorchExperts holds [E, out, in], like the blocks
    dense.gate_up_proj_bias.copy_(experts["gate_up_bias"])
    dense.down_proj.copy_(down)
    dense.down_proj_bias.copy_(experts["down_bias"])
    ids, weights = make_routing(9, 4, 2)
    x = torch.randn(9, 96)
    torch.testing.assert_close(moe_mxfp4_reference(x, ids.cpu(), weights.cpu(), **experts),
                               dense(x, ids.cpu(), weights.cpu()), atol=1e-5, rtol=1e-5)
