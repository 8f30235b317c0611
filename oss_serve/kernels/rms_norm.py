"""RMSNorm in fp32 (as the model computes it), optionally fused with the residual add before it.

One program per row: the row is read once, the fp32 statistics never leave registers, and with a
residual the sum is written once and normalised in the same pass (torch needs three kernels for that).
"""
from __future__ import annotations

import torch

from oss_serve.kernels import _support

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: the torch reference serves every call
    triton = tl = None


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """norm(x) or, with `residual`, (norm(x + residual), x + residual); the sum is rounded to x's dtype
    first, as an unfused `x + residual` in that dtype would be."""
    if residual is not None:
        x = x + residual
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    return normed if residual is None else (normed, x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [T, H], weight [H]; see `rms_norm_reference` for the contract."""
    if not _support.use_triton(x):
        return rms_norm_reference(x, weight, eps, residual)
    num_rows, hidden = x.shape
    assert x.stride(1) == 1 and weight.is_contiguous()
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else None
    if num_rows == 0:
        return out if residual is None else (out, summed)
    block = triton.next_power_of_2(hidden)
    rms_norm_kernel[(num_rows,)](
        x, residual, weight, out, summed, hidden, eps, x.stride(0),
        residual.stride(0) if residual is not None else 0, BLOCK=block,
        num_warps=min(16, max(1, block // 256)) if x.is_cuda else 1)
    return out if residual is None else (out, summed)


if triton is not None:
    @triton.jit
    def rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, summed_ptr, hidden, eps, stride_x, stride_residual,
                        BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        valid = cols < hidden
        x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0)
        if residual_ptr is not None:
            x = (x.to(tl.float32) + tl.load(residual_ptr + row * stride_residual + cols, mask=valid,
                                            other=0.0).to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(summed_ptr + row * hidden + cols, x, mask=valid)
        xf = x.to(tl.float32)
        inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        weight = tl.load(weight_ptr + cols, mask=valid, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * hidden + cols, (xf * inv_rms * weight).to(out_ptr.dtype.element_ty), mask=valid)
