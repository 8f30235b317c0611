"""Small-batch (decode) MXFP4 MoE: matrix-vector products per routing slot, no expert grouping.

At decode sizes a routed expert sees one to a few rows, so a tensor-core tile of 16+ rows is mostly padding
and the grouped path's few programs per expert leave the GPU idle while it streams ~13 MB of packed weights
per expert. Here every program owns one (slot or token, block of output columns) and walks the whole input
dimension, so a single token already launches hundreds of programs that read disjoint weight rows:
  1. gate_up: grid (slots, I / BLOCK_N). Slot s = token * k + choice reads 2*BLOCK_N gate_up rows of its
     expert (gate and up rows of the same columns), adds the bias and writes the clamped SwiGLU (fp32).
  2. down: grid (tokens, H / BLOCK_N). A token's program sums its k choices in a fixed order, routing
     weight folded in, and writes the output in x's dtype: no per-slot buffer, no separate sum, and the
     same result on every run (no atomics). The k experts' tiles are loaded in the same K step so that
     their loads are in flight together.
Slots vary fastest in the gate_up grid: programs of slots that share an expert run side by side and the
repeated weight rows come from L2 rather than HBM.

Weights are decoded in registers with a cheap trick: the three magnitude bits of an e2m1 code placed at
bits 9..11 of an fp16 (sign at bit 15) read as the code's value times 2^-14, the zero/half codes landing
exactly on fp16 subnormals; the 2^14 is folded into the block scale. Products are summed over each
32-element block before the scale is applied, once per block.

With `DecodeTiles.word_decode` the weights are read as int32 words of 8 codes (code e at bits 4e..4e+3) and
every shift, mask and or builds two such fp16 patterns at once, one per 16-bit half: codes p and p + 4
(p < 4). Inline asm (CUDA) splits the halves as it widens them to fp32, and each block of the activation
is split into the same element order.

Host code reads no device values and buffer shapes depend only on T, k, H and I: CUDA-graph safe.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

# A fp16 reading of an e2m1 code is 2^-14 times its value; the scale's exponent absorbs the factor.
FP16_DECODE_EXPONENT_OFFSET = 14


@dataclass(frozen=True)
class DecodeTiles:
    """Output columns per program and input elements per step of each kernel (BLOCK_K a multiple of 32)."""
    gate_up_block_n: int = 16  # intermediate columns: the program reads twice as many gate_up rows
    down_block_n: int = 16
    block_k: int = 256
    num_warps: int = 4
    word_decode: bool = False  # decode two codes per 32-bit op (see the module docstring)


# From H200 sweeps timed as CUDA-graph replays (ms at T=1 / T=4): byte decode (8, 8, 256, 2) 0.0733 / -,
# (8, 8, 512, 4) 0.0587 / 0.180; word decode (8, 8, 512, 4) 0.0479 / 0.137, (8, 4, 512, 4) 0.0449 / 0.169.
DEFAULT_DECODE_TILES = DecodeTiles(gate_up_block_n=8, down_block_n=8, block_k=512, num_warps=4, word_decode=True)
SINGLE_TOKEN_DECODE_TILES = DecodeTiles(gate_up_block_n=8, down_block_n=4, block_k=512, num_warps=4, word_decode=True)
INTERPRETER_DECODE_TILES = DecodeTiles(gate_up_block_n=16, down_block_n=32, block_k=64, num_warps=4)


def moe_mxfp4_decode(x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor,
                     gate_up_blocks: torch.Tensor, gate_up_scales: torch.Tensor, gate_up_bias: torch.Tensor,
                     down_blocks: torch.Tensor, down_scales: torch.Tensor, down_bias: torch.Tensor,
                     swiglu_limit: float, swiglu_alpha: float, tiles: DecodeTiles | None = None) -> torch.Tensor:
    """Same contract as `moe_mxfp4`; meant for T * k up to a few hundred slots.

    Bytes per weight row are passed as arguments (not derived in the kernel) so that Triton sees them
    divisible by 16 and issues 16-byte loads.
    """
    num_tokens, hidden = x.shape
    top_k = expert_ids.shape[1]
    num_experts, two_inter = gate_up_blocks.shape[:2]
    inter = two_inter // 2
    if num_tokens == 0:
        return torch.empty_like(x)
    assert hidden % 32 == 0 and inter % 32 == 0, "MXFP4 rows are whole 32-element blocks"
    if tiles is None:
        tiles = (INTERPRETER_DECODE_TILES if not x.is_cuda else SINGLE_TOKEN_DECODE_TILES if num_tokens == 1
                 else DEFAULT_DECODE_TILES)
    assert tiles.block_k % 32 == 0
    # ids and weights are read in whatever dtype the router produced: a conversion would be one more launch.
    x, ids, weights = x.contiguous(), expert_ids.contiguous(), expert_weights.contiguous()
    num_slots = num_tokens * top_k
    if tiles.word_decode:  # contiguous (checked by moe_mxfp4), 16 bytes a block: 4 little-endian words
        gate_up_blocks, down_blocks = gate_up_blocks.view(torch.int32), down_blocks.view(torch.int32)
    # Inline asm only compiles for NVIDIA GPUs; the interpreter and other targets take plain Triton ops.
    use_asm = x.is_cuda and torch.version.hip is None
    activation = torch.empty(num_slots, inter, dtype=torch.float32, device=x.device)
    out = torch.empty_like(x)

    mxfp4_gate_up_swiglu_gemv_kernel[(num_slots, triton.cdiv(inter, tiles.gate_up_block_n))](
        x, ids, gate_up_blocks, gate_up_scales, gate_up_bias, activation, hidden, inter, hidden // 2,
        gate_up_bias.stride(0), swiglu_limit, swiglu_alpha,
        TOP_K=top_k, BLOCK_N=tiles.gate_up_block_n, BLOCK_K=tiles.block_k, WORD_DECODE=tiles.word_decode,
        USE_ASM=use_asm, num_warps=tiles.num_warps)
    mxfp4_down_gemv_kernel[(num_tokens, triton.cdiv(hidden, tiles.down_block_n))](
        activation, ids, weights, down_blocks, down_scales, down_bias, out, hidden, inter, inter // 2,
        down_bias.stride(0),
        TOP_K=top_k, BLOCK_N=tiles.down_block_n, BLOCK_K=tiles.block_k, WORD_DECODE=tiles.word_decode,
        USE_ASM=use_asm, num_warps=tiles.num_warps)
    return out


if triton is not None:
    @triton.jit
    def fp4_pair_as_fp16(packed):
        """int32 bytes -> (low nibble, high nibble) as fp32 values times 2^-14 (see the module docstring)."""
        low = ((packed & 0x08) << 12) | ((packed & 0x07) << 9)
        high = ((packed & 0x80) << 8) | ((packed & 0x70) << 5)
        low = low.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        high = high.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        return low, high

    @triton.jit
    def mxfp4_scale(exponent_byte):
        """e8m0 byte e -> 2^(e - 127 + 14) as fp32, built from its bits (valid for e < 241)."""
        return ((exponent_byte.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)

    @triton.jit
    def fp16_halves_as_fp32(pairs, USE_ASM: tl.constexpr):
        """uint32 holding two fp16 bit patterns -> (low half, high half) as fp32."""
        if USE_ASM:  # mov splits the register for free; plain Triton would mask and shift first
            low, high = tl.inline_asm_elementwise(
                "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }",
                "=r,=r,r", [pairs], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
        else:
            low = (pairs & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
            high = (pairs >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        return low, high

    @triton.jit
    def _mxfp4_bytes_times_vector(vector_ptr, w_rows, s_rows, w_valid, k_begin, K,
                                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """fp32 [BLOCK_N, BLOCK_K / 32]: per 32-element block, W[rows, block] . v[block] for one K step.

        w_rows / s_rows point at each weight row's packed bytes and scales; vector_ptr at v's first element.
        """
        GROUPS: tl.constexpr = BLOCK_K // 32
        group = k_begin // 32 + tl.arange(0, GROUPS)
        group_valid = group < K // 32
        v = tl.load(vector_ptr + group[:, None] * 32 + tl.arange(0, 32)[None, :], mask=group_valid[:, None],
                    other=0.0).to(tl.float32)
        v_even, v_odd = tl.split(tl.reshape(v, [GROUPS, 16, 2]))  # byte j of a block: elements 2j, 2j+1
        byte_mask = w_valid[:, None, None] & group_valid[None, :, None]
        packed = tl.load(w_rows[:, None, None] + group[None, :, None] * 16 + tl.arange(0, 16)[None, None, :],
                         mask=byte_mask, other=0).to(tl.int32)
        low, high = fp4_pair_as_fp16(packed)
        block_sums = tl.sum(low * v_even[None, :, :] + high * v_odd[None, :, :], axis=2)
        exponent = tl.load(s_rows[:, None] + group[None, :], mask=w_valid[:, None] & group_valid[None, :], other=0)
        return block_sums * mxfp4_scale(exponent)

    @triton.jit
    def _by_pair(v):
        """[G, 4, 2, 2] indexed (group, word, b, c) -> its [G, 4] slices for pairs 0..3 (pair = 2b + c)."""
        c0, c1 = tl.split(v)
        pair0, pair2 = tl.split(c0)
        pair1, pair3 = tl.split(c1)
        return pair0, pair1, pair2, pair3

    @triton.jit
    def _mxfp4_words_times_vector(vector_ptr, w_rows, s_rows, w_valid, k_begin, K,
                                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_ASM: tl.constexpr):
        """`_mxfp4_bytes_times_vector` with w_rows pointing at int32 words: 4 per block, 8 codes per word."""
        GROUPS: tl.constexpr = BLOCK_K // 32
        group = k_begin // 32 + tl.arange(0, GROUPS)
        group_valid = group < K // 32
        word = tl.arange(0, 4)
        words = tl.load(w_rows[:, None, None] + group[None, :, None] * 4 + word[None, None, :],
                        mask=w_valid[:, None, None] & group_valid[None, :, None], other=0)
        words = words.to(tl.uint32, bitcast=True)  # logical shifts
        # One vector load split in registers: strided loads per pair compile to 8 scalar loads per word.
        v = tl.load(vector_ptr + group[:, None, None] * 32 + word[None, :, None] * 8 + tl.arange(0, 8)[None, None, :],
                    mask=group_valid[:, None, None], other=0.0).to(tl.float32)
        # A word's element 4a + 2b + c to axes (b, c, a): split off a (low or high half), then pair 2b + c.
        v_low, v_high = tl.split(tl.permute(tl.reshape(v, [GROUPS, 4, 2, 2, 2]), (0, 1, 3, 4, 2)))
        v_lows, v_highs = _by_pair(v_low), _by_pair(v_high)
        products = tl.zeros([BLOCK_N, GROUPS, 4], tl.float32)
        for pair in tl.static_range(4):
            nibbles = words >> (4 * pair)  # elements pair and pair + 4 to bits 0..3 and 16..19
            halves = ((nibbles & 0x00070007) << 9) | ((nibbles & 0x00080008) << 12)
            low, high = fp16_halves_as_fp32(halves, USE_ASM)
            products += low * v_lows[pair][None, :, :]  # two statements: two FMAs, no separate add
            products += high * v_highs[pair][None, :, :]
        block_sums = tl.sum(products, axis=2)
        exponent = tl.load(s_rows[:, None] + group[None, :], mask=w_valid[:, None] & group_valid[None, :], other=0)
        return block_sums * mxfp4_scale(exponent)

    @triton.jit
    def _mxfp4_rows_times_vector(vector_ptr, blocks_ptr, scales_ptr, rows, row_bytes, w_valid, k_begin, K,
                                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WORD_DECODE: tl.constexpr,
                                 USE_ASM: tl.constexpr):
        """One K step of weight rows `rows` (int64) times v, by the decode that WORD_DECODE picks."""
        s_rows = scales_ptr + rows * (K // 32)
        if WORD_DECODE:  # blocks_ptr is the int32 view; row_bytes // 4 keeps row starts known 16-byte aligned
            block_sums = _mxfp4_words_times_vector(vector_ptr, blocks_ptr + rows * (row_bytes // 4), s_rows,
                                                   w_valid, k_begin, K, BLOCK_N, BLOCK_K, USE_ASM)
        else:
            block_sums = _mxfp4_bytes_times_vector(vector_ptr, blocks_ptr + rows * row_bytes, s_rows, w_valid,
                                                   k_begin, K, BLOCK_N, BLOCK_K)
        return block_sums

    @triton.jit
    def mxfp4_gate_up_swiglu_gemv_kernel(
            x_ptr, ids_ptr, blocks_ptr, scales_ptr, bias_ptr, act_ptr, hidden, inter, row_bytes, stride_bias_expert,
            swiglu_limit, swiglu_alpha, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            WORD_DECODE: tl.constexpr, USE_ASM: tl.constexpr):
        """Grid (slots, I / BLOCK_N):
        act[slot, c] = swiglu(x[token] . W_gu[e, 2c] + b, x[token] . W_gu[e, 2c+1] + b)."""
        slot = tl.program_id(0)
        token = slot // TOP_K
        expert = tl.load(ids_ptr + slot).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_valid = cols < inter
        gate_row = expert * 2 * inter + 2 * cols  # gate_up rows interleave gate (even) and up (odd)
        x_row = x_ptr + token.to(tl.int64) * hidden
        gate_acc = tl.zeros([BLOCK_N, BLOCK_K // 32], tl.float32)
        up_acc = tl.zeros([BLOCK_N, BLOCK_K // 32], tl.float32)
        for k_begin in range(0, hidden, BLOCK_K):
            gate_acc += _mxfp4_rows_times_vector(x_row, blocks_ptr, scales_ptr, gate_row, row_bytes, col_valid,
                                                 k_begin, hidden, BLOCK_N, BLOCK_K, WORD_DECODE, USE_ASM)
            up_acc += _mxfp4_rows_times_vector(x_row, blocks_ptr, scales_ptr, gate_row + 1, row_bytes, col_valid,
                                               k_begin, hidden, BLOCK_N, BLOCK_K, WORD_DECODE, USE_ASM)
        bias_row = bias_ptr + expert * stride_bias_expert + 2 * cols
        gate = tl.sum(gate_acc, axis=1) + tl.load(bias_row, mask=col_valid, other=0.0).to(tl.float32)
        up = tl.sum(up_acc, axis=1) + tl.load(bias_row + 1, mask=col_valid, other=0.0).to(tl.float32)
        gate = tl.minimum(gate, swiglu_limit)
        up = tl.minimum(tl.maximum(up, -swiglu_limit), swiglu_limit)
        h = (up + 1.0) * gate * tl.sigmoid(swiglu_alpha * gate)
        tl.store(act_ptr + slot.to(tl.int64) * inter + cols, h, mask=col_valid)

    @triton.jit
    def mxfp4_down_gemv_kernel(
            act_ptr, ids_ptr, weights_ptr, blocks_ptr, scales_ptr, bias_ptr, out_ptr, hidden, inter, row_bytes,
            stride_bias_expert, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            WORD_DECODE: tl.constexpr, USE_ASM: tl.constexpr):
        """Grid (tokens, H / BLOCK_N): out[t, n] = sum over choices c, in order, of
        weight[t, c] * (act[t*k + c] . W_d[e_c, n] + b_d[e_c, n])."""
        token = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_valid = cols < hidden
        acc = tl.zeros([BLOCK_N, BLOCK_K // 32], tl.float32)
        bias_sum = tl.zeros([BLOCK_N], tl.float32)
        for choice in tl.static_range(TOP_K):
            slot = token * TOP_K + choice
            expert = tl.load(ids_ptr + slot).to(tl.int64)
            routing = tl.load(weights_ptr + slot).to(tl.float32)
            bias = tl.load(bias_ptr + expert * stride_bias_expert + cols, mask=col_valid, other=0.0)
            bias_sum += routing * bias.to(tl.float32)
        for k_begin in range(0, inter, BLOCK_K):
            for choice in tl.static_range(TOP_K):  # all k experts' tiles of this step in flight together
                slot = token * TOP_K + choice
                expert = tl.load(ids_ptr + slot).to(tl.int64)
                routing = tl.load(weights_ptr + slot).to(tl.float32)
                acc += routing * _mxfp4_rows_times_vector(act_ptr + slot.to(tl.int64) * inter, blocks_ptr,
                                                          scales_ptr, expert * hidden + cols, row_bytes, col_valid,
                                                          k_begin, inter, BLOCK_N, BLOCK_K, WORD_DECODE, USE_ASM)
        y = tl.sum(acc, axis=1) + bias_sum
        tl.store(out_ptr + token.to(tl.int64) * hidden + cols, y.to(out_ptr.dtype.element_ty), mask=col_valid)
