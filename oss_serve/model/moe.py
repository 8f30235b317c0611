"""Mixture of experts: router top-k then softmax, interleaved clamped SwiGLU experts with biases."""
from __future__ import annotations

import torch
from torch import nn

from oss_serve.kernels.reference import swiglu_clamped
from oss_serve.kernels.router_topk import router_topk
from oss_serve.kernels.skinny_linear import linear
from oss_serve.model.config import ModelConfig


def frozen(*shape: int, dtype: torch.dtype, device: torch.device | str) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Router(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.top_k = config.experts_per_token
        self.weight = frozen(config.num_experts, config.hidden_size, dtype=dtype, device=device)
        self.bias = frozen(config.num_experts, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns expert ids [T, k] and their fp32 weights [T, k] (softmax over the chosen k only)."""
        return router_topk(linear(x, self.weight, self.bias), self.top_k)


class TorchExperts(nn.Module):
    """Experts held as dense matrices in the model dtype, laid out [E, out, in] as `F.linear` wants:
    gate_up [E, 2I, H], down [E, H, I] (oneDNN's bf16 GEMM is several times faster on small batches
    with the weight's rows contiguous; transformers' bf16 checkpoints store the transpose).
    Each expert runs once on the tokens routed to it."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.limit, self.alpha = config.swiglu_limit, config.swiglu_alpha
        self.gate_up_proj = frozen(E, 2 * I, H, dtype=dtype, device=device)
        self.gate_up_proj_bias = frozen(E, 2 * I, dtype=dtype, device=device)
        self.down_proj = frozen(E, H, I, dtype=dtype, device=device)
        self.down_proj_bias = frozen(E, H, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor) -> torch.Tensor:
        num_tokens, top_k = expert_ids.shape
        flat_ids = expert_ids.flatten()
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=self.gate_up_proj.shape[0]).tolist()
        token_of = order // top_k
        weight_of = expert_weights.flatten()[order]
        out = torch.zeros(num_tokens, x.shape[1], dtype=torch.float32, device=x.device)
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            start += count
            tokens = token_of[rows]
            h = nn.functional.linear(x[tokens], self.gate_up_proj[expert], self.gate_up_proj_bias[expert])
            h = swiglu_clamped(h, self.limit, self.alpha)
            y = nn.functional.linear(h, self.down_proj[expert], self.down_proj_bias[expert])
            out.index_add_(0, tokens, y.float() * weight_of[rows, None])
        return out.to(x.dtype)


class Mxfp4Experts(nn.Module):
    """Experts kept packed as in the checkpoint (4.25 bits per weight), decoded inside the GEMM by the
    Triton kernel on GPU. Parameter names equal the checkpoint's, so loading is a plain copy."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.limit, self.alpha = config.swiglu_limit, config.swiglu_alpha
        self.gate_up_proj_blocks = frozen(E, 2 * I, H // 32, 16, dtype=torch.uint8, device=device)
        self.gate_up_proj_scales = frozen(E, 2 * I, H // 32, dtype=torch.uint8, device=device)
        self.gate_up_proj_bias = frozen(E, 2 * I, dtype=dtype, device=device)
        self.down_proj_blocks = frozen(E, H, I // 32, 16, dtype=torch.uint8, device=device)
        self.down_proj_scales = frozen(E, H, I // 32, dtype=torch.uint8, device=device)
        self.down_proj_bias = frozen(E, H, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, expert_weights: torch.Tensor) -> torch.Tensor:
        from oss_serve.kernels.moe_mxfp4 import moe_mxfp4

        return moe_mxfp4(x, expert_ids, expert_weights, self.gate_up_proj_blocks, self.gate_up_proj_scales,
                         self.gate_up_proj_bias, self.down_proj_blocks, self.down_proj_scales, self.down_proj_bias,
                         self.limit, self.alpha)


class MoE(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                 packed_mxfp4: bool = False) -> None:
        super().__init__()
        self.router = Router(config, dtype, device)
        self.experts = (Mxfp4Experts if packed_mxfp4 else TorchExperts)(config, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expert_ids, expert_weights = self.router(x)
        return self.experts(x, expert_ids, expert_weights)
