"""Mixture-of-experts over MXFP4 expert weights: grouped GEMMs that decode the fp4 blocks in registers.

Routing slots (token, choice) are sorted by expert into tiles of BLOCK_M rows, each tile padded so that
it holds one expert only. Two kernels then run over (tile, output-column block):
  1. gate_up: rows of x @ W_gu[e]^T + bias, with the interleaved clamped SwiGLU in the epilogue, so only
     the [rows, I] activation reaches memory (never the [rows, 2I] pre-activation);
  2. down: h @ W_d[e]^T + bias, scaled by the routing weight, written per slot, then summed over the k
     choices of each token (a fixed-order sum: deterministic, unlike atomics).
Weights stay packed (4.25 bits per value) in memory; a bf16 copy of the experts is never made.

The grouping itself is two small kernels (histogram + tile map, then atomic placement) instead of a dozen
torch ops, since at batch 1 those launches would cost more than the expert GEMMs' own latency. Slots
land in a tile in arbitrary order, but every row of a GEMM tile is computed alike and the k choices are
summed in a fixed order, so results are bitwise reproducible. Shapes depend only on T, k and E: the call
is CUDA-graph safe.

Small batches take a different path (`moe_mxfp4_decode`): per-slot matrix-vector kernels with no grouping
and no tile padding. `moe_mxfp4` picks the path from T * k; see `DECODE_MAX_SLOTS`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from oss_serve.kernels import _support
from oss_serve.kernels.moe_mxfp4_decode import DecodeTiles, moe_mxfp4_decode

try:
    import triton
    import triton.language as tl

    from oss_serve.kernels.moe_mxfp4_decode import fp4_pair_as_fp16, mxfp4_scale
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None

# Routing slots (T * k) up to which the per-slot GEMV path runs instead of the grouped GEMMs. The GEMV reads
# an expert's weights once per slot (repeats mostly from L2), the grouped path once per touched expert.
# Measured on an H200 at gpt-oss-20b shapes: T=1 decode 0.086 ms; T=8 decode 0.34 ms; T=32 decode 1.21 ms
# vs grouped 0.40 ms, where grouped reads its ~31 experts at ~1 TB/s, i.e. ~0.26 ms for the ~20 experts
# that T=8 touches. So the GEMV only for T <= 4 (k = 4).
DECODE_MAX_SLOTS = 16


@dataclass(frozen=True)
class GroupedTiles:
    """Tiles of the grouped (prefill) kernels. block_m 0 means: choose from the rows per expert.

    word_decode reads the weights as int32 words and builds bf16 values two per 32-bit op in inline PTX (bf16
    activations on CUDA; elsewhere a plain-Triton decode of the same words stands in, for the interpreter);
    otherwise each byte is decoded through fp32 (`fp4_pair_as_fp16`)."""
    block_m: int = 0
    block_n: int = 64
    block_k: int = 128
    num_warps: int = 0  # 0: 8 for block_m >= 128, else 4
    num_stages: int = 3
    word_decode: bool = False


DEFAULT_GROUPED_TILES = GroupedTiles()
# From H200 sweeps (ms, k=4): these tiles give T=4096 3.95 against 4.78 with the default tiles (dense bf16
# torch: 5.17); with the word decode T=1024 1.40 and T=4096 3.85, against 1.74 and 3.99 by bytes. Below T=1024
# the word decode was slower (T=64 0.55 vs 0.40, T=256 0.80 vs 0.70): used only for prefill-sized batches.
LARGE_BATCH_GROUPED_TILES = GroupedTiles(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=4)
LARGE_BATCH_MIN_SLOTS = 4096
INTERPRETER_GROUPED_TILES = GroupedTiles(block_n=16, block_k=64, num_stages=1)


def moe_mxfp4_reference(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
                        gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                        down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
                        swiglu_limit: float = 7.0, swiglu_alpha: float = 1.702) -> torch.Tensor:
    """Dequantizes one routed expert at a time and runs it like `TorchExperts`, in x's dtype."""
    # Imported here: the model may import this module to pick its GPU path.
    from oss_serve.kernels.reference import dequantize_mxfp4, swiglu_clamped

    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(expert_ids).tolist():
        tokens, choices = (expert_ids == expert).nonzero(as_tuple=True)
        gate_up = dequantize_mxfp4(gate_up_blocks[expert], gate_up_scales[expert], x.dtype)  # [2I, H]
        h = x[tokens] @ gate_up.T + gate_up_bias[expert].to(x.dtype)
        h = swiglu_clamped(h, swiglu_limit, swiglu_alpha)
        down = dequantize_mxfp4(down_blocks[expert], down_scales[expert], x.dtype)  # [H, I]
        y = h @ down.T + down_bias[expert].to(x.dtype)
        out.index_add_(0, tokens, y.float() * expert_weights[tokens, choices, None].float())
    return out.to(x.dtype)


def moe_mxfp4(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
              gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
              down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
              swiglu_limit: float = 7.0, swiglu_alpha: float = 1.702, *, block_m: int | None = None,
              path: str | None = None, grouped_tiles: GroupedTiles | None = None,
              decode_tiles: DecodeTiles | None = None) -> torch.Tensor:
    """x [T, H]; expert_ids int [T, k]; expert_weights fp32 [T, k];
    gate_up_blocks uint8 [E, 2I, H/32, 16], gate_up_scales uint8 [E, 2I, H/32], gate_up_bias [E, 2I];
    down_blocks uint8 [E, H, I/32, 16], down_scales uint8 [E, H, I/32], down_bias [E, H]. Returns [T, H]
    in x's dtype.

    `path` "decode" (per-slot GEMV) or "grouped" (expert-grouped GEMMs) defaults to `select_path(T, k)`.
    `block_m` (rows per expert tile of the grouped path) overrides the tiles' choice from T, k and E.
    """
    if not _support.use_triton(x):
        return moe_mxfp4_reference(x, expert_ids, expert_weights, gate_up_blocks, gate_up_scales, gate_up_bias,
                                   down_blocks, down_scales, down_bias, swiglu_limit, swiglu_alpha)
    for packed in (gate_up_blocks, gate_up_scales, down_blocks, down_scales):
        assert packed.is_contiguous() and packed.dtype == torch.uint8
    assert gate_up_bias.stride(1) == 1 and down_bias.stride(1) == 1
    path = path or select_path(x.shape[0], expert_ids.shape[1])
    if path == "decode":
        return moe_mxfp4_decode(x, expert_ids, expert_weights, gate_up_blocks, gate_up_scales, gate_up_bias,
                                down_blocks, down_scales, down_bias, swiglu_limit, swiglu_alpha, decode_tiles)
    assert path == "grouped", path
    if grouped_tiles is None and not x.is_cuda:
        grouped_tiles = INTERPRETER_GROUPED_TILES
    if grouped_tiles is None and expert_ids.numel() >= LARGE_BATCH_MIN_SLOTS:
        # The PTX word decode makes bf16 weights, so it serves bf16 activations only.
        grouped_tiles = replace(LARGE_BATCH_GROUPED_TILES, word_decode=_has_bf16_word_decode(x))
    tiles = grouped_tiles or DEFAULT_GROUPED_TILES
    if block_m is not None:
        tiles = replace(tiles, block_m=block_m)
    return _moe_mxfp4_grouped(x, expert_ids, expert_weights, gate_up_blocks, gate_up_scales, gate_up_bias,
                              down_blocks, down_scales, down_bias, swiglu_limit, swiglu_alpha, tiles)


def _has_bf16_word_decode(x: torch.Tensor) -> bool:
    """The PTX word decode makes bf16 weights for bf16 activations with `mul.bf16x2` (Hopper and later)."""
    return (x.is_cuda and x.dtype == torch.bfloat16 and torch.version.hip is None
            and torch.cuda.get_device_capability(x.device) >= (9, 0))


def select_path(num_tokens: int, top_k: int) -> str:
    """"decode" while the routing slots fit DECODE_MAX_SLOTS, else "grouped"."""
    return "decode" if num_tokens * top_k <= DECODE_MAX_SLOTS else "grouped"


def _group_slots_triton(expert_ids: torch.Tensor, num_experts: int,
                        block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_slots_by_expert` in two launches; slots within an expert's tiles may come in any order."""
    flat = expert_ids.reshape(-1)
    num_slots = flat.numel()
    max_tiles = -(-num_slots // block_m) + min(num_experts, num_slots)
    device = flat.device
    tile_expert = torch.empty(max_tiles, dtype=torch.int32, device=device)
    row_slot = torch.empty(max_tiles * block_m, dtype=torch.int32, device=device)
    tile_begin = torch.empty(num_experts, dtype=torch.int32, device=device)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=device)
    chunk = 1024 if flat.is_cuda else 64
    moe_tile_map_kernel[(1,)](flat, num_slots, num_experts, tile_expert, max_tiles, row_slot, tile_begin, cursor,
                              BLOCK_M=block_m, NUM_BINS=triton.next_power_of_2(num_experts + 1), CHUNK=chunk,
                              TILE_CHUNK=64 if flat.is_cuda else 16)
    moe_place_slots_kernel[(triton.cdiv(num_slots, chunk),)](flat, num_slots, tile_begin, cursor, row_slot,
                                                             BLOCK_M=block_m, CHUNK=chunk)
    return tile_expert, row_slot


def _default_block_m(num_tokens: int, top_k: int, num_experts: int, on_gpu: bool) -> int:
    """Each weight tile is decoded once per row tile: large batches want tall tiles to amortise the decode."""
    rows_per_expert = num_tokens * top_k / num_experts
    if not on_gpu or rows_per_expert <= 16:
        return 16
    return 32 if rows_per_expert <= 48 else 64 if rows_per_expert <= 256 else 128


def _moe_mxfp4_grouped(x, expert_ids, expert_weights, gate_up_blocks, gate_up_scales, gate_up_bias, down_blocks,
                       down_scales, down_bias, swiglu_limit, swiglu_alpha, tiles: GroupedTiles) -> torch.Tensor:
    num_tokens, hidden = x.shape
    top_k = expert_ids.shape[1]
    num_experts, two_inter = gate_up_blocks.shape[:2]
    inter = two_inter // 2
    if num_tokens == 0:
        return torch.empty_like(x)
    assert x.stride(1) == 1
    assert tiles.block_k % 32 == 0
    block_m = tiles.block_m or _default_block_m(num_tokens, top_k, num_experts, x.is_cuda)
    dot_name = _support.dot_dtype_name(x.dtype)
    dot_dtype = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[dot_name]
    precision = _support.dot_input_precision(dot_name)

    word_decode = tiles.word_decode
    use_asm = word_decode and _has_bf16_word_decode(x)  # elsewhere the same words decode in plain Triton
    # Packed weights as the kernels read them: bytes, or int32 words (8 codes each); row length in those units.
    per_unit = 8 if word_decode else 2
    gate_up_w = gate_up_blocks.view(torch.int32) if word_decode else gate_up_blocks
    down_w = down_blocks.view(torch.int32) if word_decode else down_blocks
    tile_expert, row_slot = _group_slots_triton(expert_ids, num_experts, block_m)
    max_tiles = tile_expert.shape[0]
    activation = torch.empty(max_tiles * block_m, inter, dtype=x.dtype, device=x.device)
    per_slot = torch.empty(num_tokens * top_k, hidden, dtype=torch.float32, device=x.device)
    weights = expert_weights.reshape(-1).to(torch.float32).contiguous()
    # Row byte counts go in as arguments so that Triton sees them divisible by 16 (16-byte loads).
    common = dict(BLOCK_M=block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, DOT_DTYPE=dot_dtype,
                  INPUT_PRECISION=precision, WORD_DECODE=word_decode, USE_ASM=use_asm,
                  num_warps=tiles.num_warps or (8 if block_m >= 128 else 4),
                  num_stages=tiles.num_stages if x.is_cuda else 1)

    mxfp4_gate_up_swiglu_kernel[(max_tiles, triton.cdiv(inter, tiles.block_n))](
        x, gate_up_w, gate_up_scales, gate_up_bias, activation, tile_expert, row_slot,
        num_experts, hidden, inter, hidden // per_unit, x.stride(0), gate_up_bias.stride(0), swiglu_limit, swiglu_alpha,
        TOP_K=top_k, **common)
    mxfp4_down_kernel[(max_tiles, triton.cdiv(hidden, tiles.block_n))](
        activation, down_w, down_scales, down_bias, weights, per_slot, tile_expert, row_slot,
        num_experts, hidden, inter, inter // per_unit, down_bias.stride(0), **common)
    return per_slot.view(num_tokens, top_k, hidden).sum(dim=1).to(x.dtype)


if triton is not None:
    @triton.jit
    def moe_tile_map_kernel(ids_ptr, num_slots, num_experts, tile_expert_ptr, max_tiles, row_slot_ptr, tile_begin_ptr,
                            cursor_ptr, BLOCK_M: tl.constexpr, NUM_BINS: tl.constexpr, CHUNK: tl.constexpr,
                            TILE_CHUNK: tl.constexpr):
        """One program: per-expert counts, each expert's first tile, the expert of every tile (num_experts for
        unused ones), zeroed placement cursors, and row_slot filled with -1 (padding)."""
        counts = tl.zeros([NUM_BINS], tl.int32)
        for start in range(0, num_slots, CHUNK):
            offsets = start + tl.arange(0, CHUNK)
            # Out-of-range lanes go to the last bin, which is past every expert and discarded below.
            ids = tl.load(ids_ptr + offsets, mask=offsets < num_slots, other=NUM_BINS - 1).to(tl.int32)
            counts += tl.histogram(ids, NUM_BINS)
        bins = tl.arange(0, NUM_BINS)
        is_expert = bins < num_experts
        tiles = (tl.where(is_expert, counts, 0) + BLOCK_M - 1) // BLOCK_M
        tile_end = tl.cumsum(tiles, 0)
        tl.store(tile_begin_ptr + bins, tile_end - tiles, mask=is_expert)
        tl.store(cursor_ptr + bins, tl.zeros([NUM_BINS], tl.int32), mask=is_expert)
        for start in range(0, max_tiles, TILE_CHUNK):
            tile = start + tl.arange(0, TILE_CHUNK)
            # A tile's expert is the number of experts whose tiles all end at or before it.
            done = (tile_end[None, :] <= tile[:, None]) & is_expert[None, :]
            tl.store(tile_expert_ptr + tile, tl.sum(done.to(tl.int32), axis=1), mask=tile < max_tiles)
        for start in range(0, max_tiles * BLOCK_M, CHUNK):
            rows = start + tl.arange(0, CHUNK)
            tl.store(row_slot_ptr + rows, tl.full([CHUNK], -1, tl.int32), mask=rows < max_tiles * BLOCK_M)

    @triton.jit
    def moe_place_slots_kernel(ids_ptr, num_slots, tile_begin_ptr, cursor_ptr, row_slot_ptr,
                               BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
        """Each slot takes the next free row of its expert's tiles."""
        slots = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
        valid = slots < num_slots
        ids = tl.load(ids_ptr + slots, mask=valid, other=0).to(tl.int32)
        rank = tl.atomic_add(cursor_ptr + ids, 1, mask=valid)
        first_row = tl.load(tile_begin_ptr + ids, mask=valid, other=0) * BLOCK_M
        tl.store(row_slot_ptr + first_row + rank, slots, mask=valid)

    # Eight e2m1 codes of an int32 word -> eight bf16 values. A code's magnitude bits placed at bf16 bits 6..8
    # (sign at 15) read as its value times 2^-126 (the zero and half codes as bf16 subnormals); two codes
    # that sit 16 bits apart are built in one register, multiplied back by 2^126 and by the block scale
    # (exact: powers of two), and split into halves for free. Word bits 4j..4j+3 hold code j.
    _WORD_TO_BF16_PTX = tl.constexpr("""{
    .reg .b32 m, s, p, c;
    mov.b32 c, 0x7E807E80;
    and.b32 m, $8, 0x00070007; shl.b32 m, m, 6; and.b32 s, $8, 0x00080008; shl.b32 s, s, 12; or.b32 p, m, s;
    mul.rn.bf16x2 p, p, c; mul.rn.bf16x2 p, p, $9; mov.b32 {$0, $4}, p;
    and.b32 m, $8, 0x00700070; shl.b32 m, m, 2; and.b32 s, $8, 0x00800080; shl.b32 s, s, 8; or.b32 p, m, s;
    mul.rn.bf16x2 p, p, c; mul.rn.bf16x2 p, p, $9; mov.b32 {$1, $5}, p;
    and.b32 m, $8, 0x07000700; shr.b32 m, m, 2; and.b32 s, $8, 0x08000800; shl.b32 s, s, 4; or.b32 p, m, s;
    mul.rn.bf16x2 p, p, c; mul.rn.bf16x2 p, p, $9; mov.b32 {$2, $6}, p;
    and.b32 m, $8, 0x70007000; shr.b32 m, m, 6; and.b32 s, $8, 0x80008000; or.b32 p, m, s;
    mul.rn.bf16x2 p, p, c; mul.rn.bf16x2 p, p, $9; mov.b32 {$3, $7}, p;
    }""")

    @triton.jit
    def _words_to_values(words, exponent, OUT_DTYPE: tl.constexpr, USE_ASM: tl.constexpr):
        """int32 words [R, G, 4] (a 32-block's 16 bytes per [r, g]) and their blocks' e8m0 exponents [R, G]
        -> [R, G * 32] values in K order."""
        if USE_ASM:
            e = exponent.to(tl.int32)
            # 2^(e - 127) as bf16 bits, twice; e = 0 is the subnormal 2^-127.
            half = tl.where(e == 0, 0x40, e << 7)
            scale2 = tl.broadcast_to((half | (half << 16))[:, :, None], words.shape)
            e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
                _WORD_TO_BF16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, scale2], dtype=(tl.bfloat16,) * 8,
                is_pure=True, pack=1)
        else:
            scale = mxfp4_scale(exponent)[:, :, None]
            e0, e1 = fp4_pair_as_fp16(words & 0xFF)
            e2, e3 = fp4_pair_as_fp16((words >> 8) & 0xFF)
            e4, e5 = fp4_pair_as_fp16((words >> 16) & 0xFF)
            e6, e7 = fp4_pair_as_fp16((words >> 24) & 0xFF)
            e0, e1, e2, e3 = (e0 * scale).to(OUT_DTYPE), (e1 * scale).to(OUT_DTYPE), (e2 * scale).to(OUT_DTYPE), \
                (e3 * scale).to(OUT_DTYPE)
            e4, e5, e6, e7 = (e4 * scale).to(OUT_DTYPE), (e5 * scale).to(OUT_DTYPE), (e6 * scale).to(OUT_DTYPE), \
                (e7 * scale).to(OUT_DTYPE)
        # join appends the new axis last: interleave so that the flattened [4 words, 2, 2, 2] is code order.
        codes = tl.join(tl.join(tl.join(e0, e4), tl.join(e2, e6)), tl.join(tl.join(e1, e5), tl.join(e3, e7)))
        return tl.reshape(codes, [words.shape[0], words.shape[1] * 32])

    @triton.jit
    def _mxfp4_tile_product(a_rows, a_row_valid, w_rows, s_rows, w_row_valid, K,
                            BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr,
                            DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, WORD_DECODE: tl.constexpr,
                            USE_ASM: tl.constexpr):
        """fp32 [BLOCK_M, BLOCK_W] = A[rows, :K] @ W[w rows, :K]^T with W given as MXFP4 codes and scales.

        a_rows: pointers to the start of each A row (contiguous along K); w_rows / s_rows: pointers to each
        weight row's packed codes (K / 2 bytes, or K / 8 int32 words with WORD_DECODE) and scales (K / 32).
        Byte j holds elements 2j (low nibble) and 2j+1 (high nibble); the byte decode splits A into even and
        odd columns instead of interleaving W, the word decode returns W in K order.
        (`tl.dot_scaled`, which takes the packed codes as they are, timed no faster on an H200: its
        upcast on GPUs without fp4 MMAs costs as much as the byte decode.)
        """
        acc = tl.zeros([BLOCK_M, BLOCK_W], tl.float32)
        # The word decode makes W the left operand: it stays in registers (Hopper's MMA reads its left operand
        # from there) and its rows fill the MMA's M side even when few tokens share an expert.
        acc_t = tl.zeros([BLOCK_W, BLOCK_M], tl.float32)
        HALF_K: tl.constexpr = BLOCK_K // 2
        GROUPS: tl.constexpr = BLOCK_K // 32
        for k_begin in range(0, K, BLOCK_K):
            cols = k_begin + tl.arange(0, BLOCK_K)
            a = tl.load(a_rows[:, None] + cols[None, :], mask=a_row_valid[:, None] & (cols < K)[None, :], other=0.0)
            group = k_begin // 32 + tl.arange(0, GROUPS)
            group_valid = group < K // 32
            exponent = tl.load(s_rows[:, None] + group[None, :], mask=w_row_valid[:, None] & group_valid[None, :],
                               other=0)
            if WORD_DECODE:
                words = tl.load(w_rows[:, None, None] + group[None, :, None] * 4 + tl.arange(0, 4)[None, None, :],
                                mask=w_row_valid[:, None, None] & group_valid[None, :, None], other=0)
                w = _words_to_values(words, exponent, DOT_DTYPE, USE_ASM)
                acc_t = tl.dot(w, tl.trans(a.to(DOT_DTYPE)), acc_t, input_precision=INPUT_PRECISION)
            else:
                a_even, a_odd = tl.split(tl.reshape(a.to(tl.float32), [BLOCK_M, HALF_K, 2]))
                # Bytes as [rows, 32-blocks, 16] so that each block's scale is loaded once and broadcast.
                packed = tl.load(w_rows[:, None, None] + group[None, :, None] * 16 + tl.arange(0, 16)[None, None, :],
                                 mask=w_row_valid[:, None, None] & group_valid[None, :, None], other=0).to(tl.int32)
                scale = mxfp4_scale(exponent)[:, :, None]
                low, high = fp4_pair_as_fp16(packed)
                w_low = tl.reshape(low * scale, [BLOCK_W, HALF_K]).to(DOT_DTYPE)
                w_high = tl.reshape(high * scale, [BLOCK_W, HALF_K]).to(DOT_DTYPE)
                acc = tl.dot(a_even.to(DOT_DTYPE), tl.trans(w_low), acc, input_precision=INPUT_PRECISION)
                acc = tl.dot(a_odd.to(DOT_DTYPE), tl.trans(w_high), acc, input_precision=INPUT_PRECISION)
        if WORD_DECODE:
            return tl.trans(acc_t)
        return acc

    @triton.jit
    def mxfp4_gate_up_swiglu_kernel(
            x_ptr, blocks_ptr, scales_ptr, bias_ptr, act_ptr, tile_expert_ptr, row_slot_ptr,
            num_experts, hidden, inter, w_row_bytes, stride_x_tok, stride_bias_expert, swiglu_limit, swiglu_alpha,
            TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, WORD_DECODE: tl.constexpr,
            USE_ASM: tl.constexpr):
        """Grid (tiles, I / BLOCK_N): act[row, c] = swiglu(x[token] @ W_gu[e, 2c:2c+2]^T + bias) for one tile.

        The program takes the 2*BLOCK_N consecutive gate_up rows (gate, up interleaved) of its BLOCK_N
        intermediate columns, so the SwiGLU pairs are in the same tile.
        """
        tile = tl.program_id(0)
        expert = tl.load(tile_expert_ptr + tile)
        if expert >= num_experts:
            return
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.load(row_slot_ptr + rows)
        row_valid = slot >= 0
        token = tl.where(row_valid, slot // TOP_K, 0).to(tl.int64)
        w_out = tl.program_id(1) * 2 * BLOCK_N + tl.arange(0, 2 * BLOCK_N)  # gate_up row = 2c (gate), 2c+1 (up)
        w_valid = w_out < 2 * inter
        w_row = expert.to(tl.int64) * 2 * inter + w_out
        acc = _mxfp4_tile_product(x_ptr + token * stride_x_tok, row_valid, blocks_ptr + w_row * w_row_bytes,
                                  scales_ptr + w_row * (hidden // 32), w_valid, hidden,
                                  BLOCK_M, 2 * BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION, WORD_DECODE, USE_ASM)
        bias = tl.load(bias_ptr + expert * stride_bias_expert + w_out, mask=w_valid, other=0.0).to(tl.float32)
        gate, up = tl.split(tl.reshape(acc + bias[None, :], [BLOCK_M, BLOCK_N, 2]))
        gate = tl.minimum(gate, swiglu_limit)
        up = tl.minimum(tl.maximum(up, -swiglu_limit), swiglu_limit)
        h = (up + 1.0) * gate * tl.sigmoid(swiglu_alpha * gate)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(act_ptr + rows.to(tl.int64)[:, None] * inter + cols[None, :], h.to(act_ptr.dtype.element_ty),
                 mask=row_valid[:, None] & (cols < inter)[None, :])

    @triton.jit
    def mxfp4_down_kernel(
            act_ptr, blocks_ptr, scales_ptr, bias_ptr, weights_ptr, out_ptr, tile_expert_ptr, row_slot_ptr,
            num_experts, hidden, inter, w_row_bytes, stride_bias_expert,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, WORD_DECODE: tl.constexpr,
            USE_ASM: tl.constexpr):
        """Grid (tiles, H / BLOCK_N): out[slot, n] = weight[slot] * (act[row] @ W_d[e, n]^T + bias[e, n])."""
        tile = tl.program_id(0)
        expert = tl.load(tile_expert_ptr + tile)
        if expert >= num_experts:
            return
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.load(row_slot_ptr + rows)
        row_valid = slot >= 0
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_valid = cols < hidden
        w_row = expert.to(tl.int64) * hidden + cols
        acc = _mxfp4_tile_product(act_ptr + rows.to(tl.int64) * inter, row_valid, blocks_ptr + w_row * w_row_bytes,
                                  scales_ptr + w_row * (inter // 32), col_valid, inter,
                                  BLOCK_M, BLOCK_N, BLOCK_K, DOT_DTYPE, INPUT_PRECISION, WORD_DECODE, USE_ASM)
        bias = tl.load(bias_ptr + expert * stride_bias_expert + cols, mask=col_valid, other=0.0).to(tl.float32)
        routing = tl.load(weights_ptr + slot, mask=row_valid, other=0.0)
        y = (acc + bias[None, :]) * routing[:, None]
        safe_slot = tl.where(row_valid, slot, 0).to(tl.int64)
        tl.store(out_ptr + safe_slot[:, None] * hidden + cols[None, :], y,
                 mask=row_valid[:, None] & col_valid[None, :])
