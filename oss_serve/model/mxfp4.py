"""MXFP4: 32 fp4 (e2m1) values per block sharing one power-of-two scale (uint8, bias 127)."""
from __future__ import annotations

import torch

FP4_VALUES = (+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127
VALUES_PER_BLOCK = 32


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                     rows_per_chunk: int = 4096) -> torch.Tensor:
    """blocks uint8 [..., nblocks, 16], scales uint8 [..., nblocks] -> [..., nblocks * 32].

    Byte j of a block holds element 2j in its low nibble and element 2j+1 in its high nibble.
    Works in row chunks so that the fp32 intermediates never hold the whole tensor.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != VALUES_PER_BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    *lead, nblocks, _ = blocks.shape
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    flat_blocks = blocks.reshape(-1, nblocks, 16)
    flat_scales = scales.reshape(-1, nblocks)
    out = torch.empty(flat_blocks.shape[0], nblocks * VALUES_PER_BLOCK, dtype=dtype, device=blocks.device)
    for start in range(0, flat_blocks.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        packed = flat_blocks[rows].long()
        values = torch.stack([table[packed & 0x0F], table[packed >> 4]], dim=-1).flatten(-2)  # [r, nblocks, 32]
        exponent = flat_scales[rows].to(torch.int32) - SCALE_BIAS
        out[rows] = torch.ldexp(values, exponent[..., None].float()).flatten(-2).to(dtype)
    return out.reshape(*lead, nblocks * VALUES_PER_BLOCK)
