"""The MXFP4 decoder against hand-computed bytes."""
import torch

from oss_serve.kernels.reference import dequantize_mxfp4


def test_nibble_order_and_scale_bias():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    # Byte 0: low nibble 0x2 (1.0) is element 0, high nibble 0xF (-6.0) is element 1.
    blocks[0, 0] = 0xF2
    # Byte 1: low 0x9 (-0.5) is element 2, high 0x7 (6.0) is element 3.
    blocks[0, 1] = 0x79
    # Byte 15: low 0x1 (0.5) is element 30, high 0x5 (3.0) is element 31.
    blocks[0, 15] = 0x51
    scales = torch.tensor([128], dtype=torch.uint8)  # 2^(128-127) = 2
    values = dequantize_mxfp4(blocks, scales, dtype=torch.float32)
    assert values.shape == (32,)
    assert values[:4].tolist() == [2.0, -12.0, -1.0, 12.0]
    assert values[30:].tolist() == [1.0, 6.0]
    assert values[4:30].abs().sum().item() == 0.0


def test_every_code_and_negative_exponent():
    # One block holding codes 0..15 twice, scale 2^-2.
    codes = torch.arange(16, dtype=torch.uint8)
    blocks = (codes[0::2] | (codes[1::2] << 4)).repeat(2)[None]  # [1, 16]
    values = dequantize_mxfp4(blocks, torch.tensor([125], dtype=torch.uint8), dtype=torch.float32)
    table = [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6]
    assert values.tolist() == [v / 4 for v in table] * 2


def test_leading_dimensions_and_blocks_along_input():
    blocks = torch.zeros(2, 3, 2, 16, dtype=torch.uint8)  # [E, out, in/32, 16]
    blocks[1, 2, 1, 0] = 0x02  # element 32 of row (1, 2) = 1.0
    scales = torch.full((2, 3, 2), 127, dtype=torch.uint8)
    values = dequantize_mxfp4(blocks, scales, dtype=torch.bfloat16)
    assert values.shape == (2, 3, 64) and values.dtype == torch.bfloat16
    assert values[1, 2, 32].item() == 1.0 and values.float().abs().sum().item() == 1.0
