"""y = x W^T + b for a few rows of x (decode at small batches), reading W once.

At one to four rows a linear layer is a matrix-vector product bound by reading the weight; cuBLAS runs
it as a tiled GEMM, whose overheads can dominate matrices as small as the model's qkv and o_proj (15-30
MB: the batch-1 profile spent ~0.7 ms per step in them, ~0.26 ms of weight traffic). Here each program
reads a strip of BLOCK_N weight rows once, BLOCK_K columns at a time, and multiplies it with every row
of x in registers (fp32 math; the interpreter computes bf16 on bit patterns).

`linear` picks per shape, on the GPU it runs on: the first call of a shape outside a CUDA-graph capture
times this kernel against cuBLAS and keeps the faster (this kernel only when clearly faster), so the
choice can only help; captures reuse what the warm-up decided. OSS_SERVE_SKINNY_LINEAR=0 keeps cuBLAS.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from oss_serve import env
from oss_serve.kernels import _support

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only install: cuBLAS / torch serve every call
    triton = tl = None

MAX_ROWS = 4
BLOCK_N = 16
BLOCK_K = 256
# This kernel replaces cuBLAS for a shape only when at least this much faster: a near-tie could otherwise
# flip between restarts, and with it the rounding of the outputs.
REQUIRED_SPEEDUP = 1.15
_TIMING_REPEATS = 20
_ENABLED = env.skinny_linear_enabled()

# (rows, out features, in features, has bias, dtype, device index) -> use this kernel
_choices: dict[tuple, bool] = {}


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, block_n: int = BLOCK_N,
                  block_k: int = BLOCK_K) -> torch.Tensor:
    """x [M <= MAX_ROWS, K], weight [N, K] (rows contiguous), bias [N] -> [M, N] in x's dtype."""
    num_rows, in_features = x.shape
    out_features = weight.shape[0]
    assert num_rows <= MAX_ROWS and x.stride(1) == 1 and weight.stride(1) == 1
    out = torch.empty(num_rows, out_features, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    skinny_linear_kernel[(triton.cdiv(out_features, block_n),)](
        x, weight, bias, out, num_rows, out_features, in_features, x.stride(0), weight.stride(0),
        ROWS=triton.next_power_of_2(num_rows), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4 if x.is_cuda else 1)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, or `skinny_linear` where it was measured faster for this shape on this GPU."""
    if not (_ENABLED and x.is_cuda and x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and x.stride(1) == 1
            and weight.stride(1) == 1 and _support.triton_installed()):
        return F.linear(x, weight, bias)
    key = (x.shape[0], weight.shape[0], weight.shape[1], bias is not None, x.dtype, x.device.index)
    choice = _choices.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            return F.linear(x, weight, bias)  # no timing inside a capture
        choice = _choices[key] = _faster_than_cublas(x, weight, bias)
    return skinny_linear(x, weight, bias) if choice else F.linear(x, weight, bias)


def _faster_than_cublas(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    def elapsed_ms(fn) -> float:
        # Replayed from a CUDA graph, as decode steps run: timed back to back from Python, a kernel this
        # short would measure its launch (Triton's costs more than cuBLAS's) rather than itself.
        fn()  # compiles the kernel (once per shape) or warms cuBLAS up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            for _ in range(_TIMING_REPEATS):
                fn()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    cublas = elapsed_ms(lambda: F.linear(x, weight, bias))
    return elapsed_ms(lambda: skinny_linear(x, weight, bias)) * REQUIRED_SPEEDUP < cublas


if triton is not None:
    @triton.jit
    def skinny_linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, num_rows, out_features, in_features, stride_x,
                             stride_w, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < out_features
        rows = tl.arange(0, ROWS)
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
        for k_start in range(0, in_features, BLOCK_K):
            ks = k_start + tl.arange(0, BLOCK_K)
            k_ok = ks < in_features
            w = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            for r in tl.static_range(ROWS):
                x = tl.load(x_ptr + r * stride_x + ks, mask=k_ok & (r < num_rows), other=0.0).to(tl.float32)
                acc += tl.where(rows[:, None] == r, tl.sum(w * x[None, :], axis=1)[None, :], 0.0)
        if b_ptr is not None:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + rows[:, None] * out_features + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows < num_rows)[:, None] & col_ok[None, :])
