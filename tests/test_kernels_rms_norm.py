"""Fused RMSNorm kernel against the torch reference (CPU: in a TRITON_INTERPRET=1 child; GPU: natively)."""
from __future__ import annotations

import pytest
import torch

from oss_serve.kernels.rms_norm import rms_norm, rms_norm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("num_rows,hidden", [(0, 40), (1, 64), (5, 45)])
def test_matches_reference(num_rows: int, hidden: int, dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x = (3 * torch.randn(num_rows, hidden, generator=gen)).to(dtype).to(DEVICE)
    residual = torch.randn(num_rows, hidden, generator=gen).to(dtype).to(DEVICE)
    weight = torch.randn(hidden, generator=gen).to(dtype).to(DEVICE)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5), atol=tol, rtol=tol)
    normed, summed = rms_norm(x, weight, 1e-5, residual)
    expected_normed, expected_summed = rms_norm_reference(x, weight, 1e-5, residual)
    torch.testing.assert_close(summed, expected_summed, atol=tol, rtol=tol)
    torch.testing.assert_close(normed, expected_normed, atol=tol, rtol=tol)
