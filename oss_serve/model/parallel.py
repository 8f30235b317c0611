"""Tensor parallelism of the gpt-oss model: which slice of each checkpoint tensor a rank holds, and
where the partial results are summed across ranks.

Split (Megatron style, two all-reduces per decoder layer):
- attention: query heads and KV heads split into contiguous groups (rank r holds KV heads
  r*Hkv/N.. and exactly the query heads that read them), q/k/v/sinks sliced by head, o_proj sliced
  along its input; its output is a partial sum, reduced once. The o_proj bias is added on rank 0 only.
- experts: the intermediate dimension split; gate_up keeps each (gate, up) pair of interleaved
  columns on one rank, down is sliced along its input; the MoE output is reduced once. The down
  bias is added on rank 0 only (the MXFP4 kernel always adds it, so other ranks hold zeros).
- router, norms, embedding and lm_head are replicated: every rank computes the same residual stream.

The attention and MoE reductions cannot be fused into one: the MoE's input norm needs the whole
residual, attention output included.

MXFP4 experts store 32 values of the down projection's input per block, so a rank's share of the
intermediate dimension must be whole blocks. When N does not divide the block count (gpt-oss has
2880 = 90 blocks, so N = 4 or 8), the dimension is padded up to a multiple of 32*N with zero
weights and biases. A padded unit computes swiglu(0, 0) = 0 and adds 0 through down, so padding
changes no result.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from oss_serve.kernels.reference import VALUES_PER_BLOCK
from oss_serve.model.config import ModelConfig

# Checkpoint tensors (by name suffix) that a row-parallel projection adds after the reduction: only rank 0 keeps them.
BIASES_ADDED_ONCE = ("self_attn.o_proj.bias", "mlp.experts.down_proj_bias")


@dataclass(frozen=True)
class DiskSlice:
    """Part of a checkpoint tensor along one dimension: [start, stop) of `dim`. The stop is clipped
    to the tensor, so on the rank that holds padding the slice is shorter than its parameter."""
    dim: int
    start: int
    stop: int


@dataclass(frozen=True)
class TensorParallelShard:
    rank: int
    size: int

    def check(self, config: ModelConfig) -> None:
        if config.num_kv_heads % self.size:
            raise ValueError(f"--tp {self.size} must divide the model's {config.num_kv_heads} KV heads "
                             f"(each rank holds whole KV heads and the query heads that read them)")

    def intermediate_per_rank(self, config: ModelConfig) -> int:
        """Experts' intermediate units per rank, padded to whole MXFP4 blocks for a quantized checkpoint."""
        unit = VALUES_PER_BLOCK if config.quant_method == "mxfp4" else 1
        return -(-config.intermediate_size // (unit * self.size)) * unit

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The config of this rank's part: building the model from it gives the sharded parameter shapes,
        and the KV cache built from it holds only this rank's KV heads."""
        self.check(config)
        return dataclasses.replace(config, num_heads=config.num_heads // self.size,
                                   num_kv_heads=config.num_kv_heads // self.size,
                                   intermediate_size=self.intermediate_per_rank(config))

    def adds_bias(self, name: str) -> bool:
        return self.rank == 0 or not name.endswith(BIASES_ADDED_ONCE)

    def slice_of(self, name: str, config: ModelConfig) -> DiskSlice | None:
        """This rank's part of checkpoint tensor `name` (hub layout), or None when it is replicated."""
        head_dim = config.head_dim
        heads = config.num_heads // self.size
        kv_heads = config.num_kv_heads // self.size
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            return self._part(0, heads * head_dim, config.num_heads * head_dim)
        if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias",
                          "self_attn.v_proj.weight", "self_attn.v_proj.bias")):
            return self._part(0, kv_heads * head_dim, config.num_kv_heads * head_dim)
        if name.endswith("self_attn.o_proj.weight"):
            return self._part(1, heads * head_dim, config.num_heads * head_dim)
        if name.endswith("self_attn.sinks"):
            return self._part(0, heads, config.num_heads)
        units, total = self.intermediate_per_rank(config), config.intermediate_size
        if name.endswith("mlp.experts.gate_up_proj"):  # bf16 [E, H, 2I]: pairs of interleaved columns
            return self._part(2, 2 * units, 2 * total)
        if name.endswith(("mlp.experts.gate_up_proj_bias", "mlp.experts.gate_up_proj_blocks",
                          "mlp.experts.gate_up_proj_scales")):  # [E, 2I, ...]
            return self._part(1, 2 * units, 2 * total)
        if name.endswith("mlp.experts.down_proj"):  # bf16 [E, I, H]
            return self._part(1, units, total)
        if name.endswith(("mlp.experts.down_proj_blocks", "mlp.experts.down_proj_scales")):  # [E, H, I/32, ...]
            return self._part(2, units // VALUES_PER_BLOCK, total // VALUES_PER_BLOCK)
        return None

    def _part(self, dim: int, per_rank: int, total: int) -> DiskSlice:
        start = min(self.rank * per_rank, total)
        return DiskSlice(dim, start, min(start + per_rank, total))


def attach_all_reduces(model: nn.Module, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Sum the partial outputs of every layer's o_proj and MoE across ranks, right where they are produced.

    Forward hooks leave the model code and its parameter names (the checkpoint's) untouched."""
    def reduce_output(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return all_reduce(output)

    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(reduce_output)
        layer.mlp.register_forward_hook(reduce_output)
