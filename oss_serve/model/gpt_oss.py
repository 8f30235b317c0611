"""The gpt-oss transformer. Parameter names mirror the Hugging Face checkpoint so loading is a lookup."""
from __future__ import annotations

import torch
from torch import nn

from oss_serve.kernels.rms_norm import rms_norm
from oss_serve.kernels.skinny_linear import linear
from oss_serve.model.attention import AttentionBackend
from oss_serve.model.config import ModelConfig
from oss_serve.model.moe import MoE, frozen
from oss_serve.model.rope import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.eps = eps
        self.weight = frozen(size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x), or (norm(x + residual), x + residual) in one pass; fp32 math whatever the model
        dtype, as the model was trained. One Triton kernel on GPU, the torch reference elsewhere."""
        return rms_norm(x, self.weight, self.eps, residual)


class Linear(nn.Linear):
    """nn.Linear (the checkpoint's names), run by the small-batch kernel where that is faster on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device: torch.device | str) -> Linear:
    layer = Linear(in_features, out_features, bias=bias, dtype=dtype, device=device)
    layer.requires_grad_(False)
    return layer


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.window = config.window_of(layer_id)
        self.scale = self.head_dim ** -0.5
        H = config.hidden_size
        self.q_proj = _linear(H, self.num_heads * self.head_dim, True, dtype, device)
        self.k_proj = _linear(H, self.num_kv_heads * self.head_dim, True, dtype, device)
        self.v_proj = _linear(H, self.num_kv_heads * self.head_dim, True, dtype, device)
        self.o_proj = _linear(self.num_heads * self.head_dim, H, True, dtype, device)
        # Sinks stay fp32: they are single logits and the softmax runs in fp32.
        self.sinks = frozen(self.num_heads, dtype=torch.float32, device=device)
        # q/k/v_proj's weights and biases side by side, [Nq + 2Nk, H] and [Nq + 2Nk]: see fuse_qkv().
        # Buffers, so that they follow the module to another device (the parameters then stop being views).
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)

    def fuse_qkv(self) -> None:
        """Move the q, k and v projections into one weight and one bias, the three projections' parameters
        becoming views of them, so that one GEMM computes all three. Called once the weights are loaded:
        the loader and tensor-parallel slicing keep filling the checkpoint's three tensors."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv_weight = torch.cat([p.weight for p in projections])
        self.qkv_bias = torch.cat([p.bias for p in projections])
        start = 0
        for p in projections:
            # Replacing .data frees the separate copy: no memory is held twice.
            p.weight.data = self.qkv_weight[start:start + p.out_features]
            p.bias.data = self.qkv_bias[start:start + p.out_features]
            start += p.out_features

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: AttentionBackend) -> torch.Tensor:
        T = x.shape[0]
        qkv = linear(x, self.qkv_weight, self.qkv_bias).view(T, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        out = attn.forward(self.layer_id, q, k, v, cos, sin, self.sinks, self.window, self.scale)
        return self.o_proj(out.reshape(T, self.num_heads * self.head_dim))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype, device: torch.device | str,
                 packed_mxfp4: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.self_attn = Attention(config, layer_id, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.mlp = MoE(config, dtype, device, packed_mxfp4)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                attn: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's MoE output, not yet added to the residual stream `residual` (the first
        layer: the embeddings, residual None). Returns this layer's MoE output and the stream before it:
        every add happens inside the norm that follows it, one kernel for both."""
        if residual is None:
            normed, residual = self.input_layernorm(x), x
        else:
            normed, residual = self.input_layernorm(x, residual=residual)
        attn_out = self.self_attn(normed, cos, sin, attn)
        normed, residual = self.post_attention_layernorm(attn_out, residual=residual)
        return self.mlp(normed), residual


class GptOssModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                 packed_mxfp4: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.embed_tokens.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype, device, packed_mxfp4)
                                    for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.rotary = RotaryEmbedding(config).to(device)


class GptOssForCausalLM(nn.Module):
    """forward() maps the packed tokens of a batch to final hidden states; compute_logits() projects
    only the rows the caller needs (usually each sequence's last token).

    `packed_mxfp4` keeps MXFP4 experts packed for the Triton MoE kernel; otherwise experts are dense
    matrices in the model dtype (the CPU path, and any bf16 checkpoint)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                 packed_mxfp4: bool = False) -> None:
        super().__init__()
        self.config = config
        self.packed_mxfp4 = packed_mxfp4
        self.model = GptOssModel(config, dtype, device, packed_mxfp4)
        self.lm_head = _linear(config.hidden_size, config.vocab_size, False, dtype, device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend) -> torch.Tensor:
        cos, sin = self.model.rotary.cos_sin(positions)
        x, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            x, residual = layer(x, residual, cos, sin, attn)
        hidden, _ = self.model.norm(x, residual=residual)
        return hidden

    def fuse_qkv(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.fuse_qkv()

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
