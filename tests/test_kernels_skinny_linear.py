"""Small-batch linear kernel against F.linear (CPU: in a TRITON_INTERPRET=1 child; GPU: natively)."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from oss_serve.kernels import skinny_linear as module
from oss_serve.kernels.skinny_linear import linear, skinny_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("num_rows", [0, 1, 3, 4])
@pytest.mark.parametrize("out_features,in_features", [(16, 256), (37, 300), (5, 17)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_f_linear(num_rows: int, out_features: int, in_features: int, with_bias: bool,
                          dtype: torch.dtype, tol: float) -> None:
    # Odd sizes: a partial strip of output features and a partial last block of the inner dimension.
    gen = torch.Generator().manual_seed(out_features * 1000 + in_features)
    x = torch.randn(num_rows, in_features, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(out_features, in_features, generator=gen) / in_features ** 0.5).to(dtype).to(DEVICE)
    bias = torch.randn(out_features, generator=gen).to(dtype).to(DEVICE) if with_bias else None
    expected = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    got = skinny_linear(x, weight, bias)
    assert got.dtype == dtype and got.shape == (num_rows, out_features)
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


def test_rows_of_a_strided_input() -> None:
    # The rows the lm_head gets are a gather of hidden states; x's rows need not be adjacent.
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 64, generator=gen).to(DEVICE)
    weight = torch.randn(24, 32, generator=gen).to(DEVICE)
    x = hidden[::2, :32]
    torch.testing.assert_close(skinny_linear(x, weight), F.linear(x, weight), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the choice is timed on a GPU")
def test_linear_picks_per_shape_and_matches() -> None:
    module._choices.clear()
    x = torch.randn(1, 2880, device=DEVICE, dtype=torch.bfloat16)
    weight = torch.randn(5120, 2880, device=DEVICE, dtype=torch.bfloat16) / 50
    bias = torch.randn(5120, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), atol=2e-2, rtol=2e-2)
    assert list(module._choices) == [(1, 5120, 2880, True, torch.bfloat16, x.device.index)]
    x4 = torch.randn(4, 2880, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(linear(x4, weight, bias), F.linear(x4, weight, bias), atol=2e-2, rtol=2e-2)
    assert len(module._choices) == 2
