"""Random-weight gpt-oss checkpoints in the exact hub layout of openai/gpt-oss-20b.

The real checkpoints cannot be downloaded here, so tests and benchmarks use these: same file
names, tensor names, dtypes and config fields as the hub, only smaller dimensions.

Experts are always drawn as MXFP4 (blocks + scales). A bf16 checkpoint stores exactly their
dequantized values, so the bf16 and MXFP4 checkpoints made with the same preset and seed hold
the same model: an MXFP4 loader can be checked against the bf16 one.

Usage: `python -m oss_serve.testing.make_checkpoint OUT --preset tiny|mini [--mxfp4] [--seed N]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from oss_serve.harmony.encoding import CALL, ENDOFTEXT, RETURN, STARTOFTEXT
from oss_serve.kernels.reference import FP4_VALUES, SCALE_BIAS, VALUES_PER_BLOCK, dequantize_mxfp4
from oss_serve.testing.tokenizer_json import cached_tokenizer_json

VOCAB_SIZE = 201088
# Root mean square of an fp4 value whose nibble is uniformly random.
FP4_UNIFORM_RMS = math.sqrt(sum(value * value for value in FP4_VALUES) / len(FP4_VALUES))


@dataclasses.dataclass(frozen=True)
class CheckpointPreset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    intermediate_size: int
    sliding_window: int


PRESETS: dict[str, CheckpointPreset] = {
    "tiny": CheckpointPreset(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=64,
                             sliding_window=8),
    "mini": CheckpointPreset(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                             head_dim=64, num_local_experts=16, num_experts_per_tok=4, intermediate_size=512,
                             sliding_window=128),
    # The real models' shapes, for `--config-only` folders that `--load-format dummy` fills with
    # random weights: benchmarks at full size without a download.
    "gpt-oss-20b": CheckpointPreset(hidden_size=2880, num_hidden_layers=24, num_attention_heads=64,
                                    num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4,
                                    intermediate_size=2880, sliding_window=128),
    "gpt-oss-120b": CheckpointPreset(hidden_size=2880, num_hidden_layers=36, num_attention_heads=64,
                                     num_key_value_heads=8, head_dim=64, num_local_experts=128, num_experts_per_tok=4,
                                     intermediate_size=2880, sliding_window=128),
}

MXFP4_MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def build_config(preset: CheckpointPreset, mxfp4: bool) -> dict:
    """config.json with the fields (and spellings) of the hub's gpt-oss-20b config."""
    layer_types = [
        "sliding_attention" if layer % 2 == 0 else "full_attention" for layer in range(preset.num_hidden_layers)
    ]
    config: dict = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": RETURN,
        "experts_per_token": preset.num_experts_per_tok,
        "head_dim": preset.head_dim,
        "hidden_act": "silu",
        "hidden_size": preset.hidden_size,
        "initial_context_length": 4096,
        "initializer_range": 0.02,
        "intermediate_size": preset.intermediate_size,
        "layer_types": layer_types,
        "max_position_embeddings": 131072,
        "model_type": "gpt_oss",
        "num_attention_heads": preset.num_attention_heads,
        "num_experts_per_tok": preset.num_experts_per_tok,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_key_value_heads": preset.num_key_value_heads,
        "num_local_experts": preset.num_local_experts,
        "output_router_logits": False,
        "pad_token_id": ENDOFTEXT,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": preset.sliding_window,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.55.0.dev0",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }
    if mxfp4:
        config["quantization_config"] = {
            "modules_to_not_convert": list(MXFP4_MODULES_NOT_CONVERTED),
            "quant_method": "mxfp4",
        }
    return config


def build_generation_config() -> dict:
    return {
        "bos_token_id": STARTOFTEXT,
        "do_sample": True,
        "eos_token_id": [RETURN, ENDOFTEXT, CALL],
        "pad_token_id": ENDOFTEXT,
        "transformers_version": "4.55.0.dev0",
    }


def build_tokenizer_config() -> dict:
    return {
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|return|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


class _WeightSampler:
    """Seeded random tensors at scales that keep activations O(1) through the network."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        values = torch.randn(shape, generator=self.generator, dtype=torch.float32) * std + mean
        return values.to(torch.bfloat16)

    def linear(self, out_features: int, in_features: int) -> torch.Tensor:
        # 1/sqrt(fan_in) keeps each output's variance near its input's.
        return self.normal((out_features, in_features), std=1.0 / math.sqrt(in_features))

    def bias(self, size: int) -> torch.Tensor:
        return self.normal((size,), std=0.02)

    def norm_weight(self, size: int) -> torch.Tensor:
        return self.normal((size,), std=0.05, mean=1.0)

    def mxfp4(self, num_experts: int, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks [E, out, in/32, 16] and scales [E, out, in/32] for weights of rms ~1/sqrt(in)."""
        if in_features % VALUES_PER_BLOCK:
            raise ValueError(f"MXFP4 input dimension {in_features} is not a multiple of {VALUES_PER_BLOCK}")
        groups = in_features // VALUES_PER_BLOCK
        blocks = torch.randint(
            0, 256, (num_experts, out_features, groups, VALUES_PER_BLOCK // 2), generator=self.generator
        ).to(torch.uint8)
        target_rms = 1.0 / math.sqrt(in_features)
        base_exponent = SCALE_BIAS + round(math.log2(target_rms / FP4_UNIFORM_RMS))
        # +-1 around the base so that blocks differ in scale, as in a real checkpoint.
        jitter = torch.randint(-1, 2, (num_experts, out_features, groups), generator=self.generator)
        scales = (base_exponent + jitter).to(torch.uint8)
        return blocks, scales


def _layer_tensors(
    sampler: _WeightSampler, preset: CheckpointPreset, layer: int, mxfp4: bool
) -> dict[str, torch.Tensor]:
    hidden = preset.hidden_size
    q_size = preset.num_attention_heads * preset.head_dim
    kv_size = preset.num_key_value_heads * preset.head_dim
    experts = preset.num_local_experts
    intermediate = preset.intermediate_size
    prefix = f"model.layers.{layer}."
    tensors: dict[str, torch.Tensor] = {
        "input_layernorm.weight": sampler.norm_weight(hidden),
        "post_attention_layernorm.weight": sampler.norm_weight(hidden),
        "self_attn.q_proj.weight": sampler.linear(q_size, hidden),
        "self_attn.q_proj.bias": sampler.bias(q_size),
        "self_attn.k_proj.weight": sampler.linear(kv_size, hidden),
        "self_attn.k_proj.bias": sampler.bias(kv_size),
        "self_attn.v_proj.weight": sampler.linear(kv_size, hidden),
        "self_attn.v_proj.bias": sampler.bias(kv_size),
        "self_attn.o_proj.weight": sampler.linear(hidden, q_size),
        "self_attn.o_proj.bias": sampler.bias(hidden),
        "self_attn.sinks": sampler.normal((preset.num_attention_heads,), std=1.0),
        "mlp.router.weight": sampler.linear(experts, hidden),
        "mlp.router.bias": sampler.bias(experts),
    }
    gate_up_blocks, gate_up_scales = sampler.mxfp4(experts, 2 * intermediate, hidden)
    gate_up_bias = sampler.normal((experts, 2 * intermediate), std=0.02)
    down_blocks, down_scales = sampler.mxfp4(experts, hidden, intermediate)
    down_bias = sampler.normal((experts, hidden), std=0.02)
    if mxfp4:
        tensors["mlp.experts.gate_up_proj_blocks"] = gate_up_blocks
        tensors["mlp.experts.gate_up_proj_scales"] = gate_up_scales
        tensors["mlp.experts.down_proj_blocks"] = down_blocks
        tensors["mlp.experts.down_proj_scales"] = down_scales
    else:
        # MXFP4 blocks are [out, in]; the bf16 layout is [in, out]. fp4 * 2^k is exact in bf16.
        gate_up = dequantize_mxfp4(gate_up_blocks, gate_up_scales, torch.float32).transpose(1, 2)
        down = dequantize_mxfp4(down_blocks, down_scales, torch.float32).transpose(1, 2)
        tensors["mlp.experts.gate_up_proj"] = gate_up.contiguous().to(torch.bfloat16)
        tensors["mlp.experts.down_proj"] = down.contiguous().to(torch.bfloat16)
    tensors["mlp.experts.gate_up_proj_bias"] = gate_up_bias
    tensors["mlp.experts.down_proj_bias"] = down_bias
    return {prefix + name: tensor for name, tensor in tensors.items()}


def _shard_layer_groups(num_layers: int) -> list[list[int]]:
    """Contiguous layer ranges, one per shard; always at least two shards."""
    num_shards = max(2, min(num_layers, 3))
    per_shard = math.ceil(num_layers / num_shards)
    groups = [list(range(start, min(start + per_shard, num_layers))) for start in range(0, num_layers, per_shard)]
    while len(groups) < 2:
        groups.append([])
    return groups


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def write_metadata_files(out_dir: Path, dims: CheckpointPreset, mxfp4: bool) -> None:
    """config.json, generation_config.json and the tokenizer files: all but the weights."""
    _write_json(out_dir / "config.json", build_config(dims, mxfp4))
    _write_json(out_dir / "generation_config.json", build_generation_config())
    _write_json(out_dir / "tokenizer_config.json", build_tokenizer_config())
    shutil.copyfile(cached_tokenizer_json(), out_dir / "tokenizer.json")


def make_checkpoint(out_dir: str | Path, preset: str = "tiny", mxfp4: bool = False, seed: int = 0,
                    config_only: bool = False) -> Path:
    """Write a random gpt-oss checkpoint to `out_dir` (created if missing); returns its path.
    `config_only` writes everything but the weights (for `--load-format dummy`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    dims = PRESETS[preset]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config_only:
        write_metadata_files(out_dir, dims, mxfp4)
        return out_dir
    sampler = _WeightSampler(seed)

    # Draw in a fixed order so a seed always gives the same weights, whatever the format.
    embed_tokens = sampler.normal((VOCAB_SIZE, dims.hidden_size), std=1.0)
    layer_tensors = [_layer_tensors(sampler, dims, layer, mxfp4) for layer in range(dims.num_hidden_layers)]
    final_norm = sampler.norm_weight(dims.hidden_size)
    # Logits with a std of about 2 so that greedy decoding moves between tokens.
    lm_head = sampler.normal((VOCAB_SIZE, dims.hidden_size), std=2.0 / math.sqrt(dims.hidden_size))

    shards = [{name: tensor for layer in layers for name, tensor in layer_tensors[layer].items()}
              for layers in _shard_layer_groups(dims.num_hidden_layers)]
    shards[0] = {"model.embed_tokens.weight": embed_tokens, **shards[0]}
    shards[-1].update({"model.norm.weight": final_norm, "lm_head.weight": lm_head})

    weight_map: dict[str, str] = {}
    total_size = 0
    for shard_index, shard in enumerate(shards):
        file_name = f"model-{shard_index + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / file_name), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = file_name
            total_size += tensor.numel() * tensor.element_size()
    _write_json(
        out_dir / "model.safetensors.index.json",
        {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
    )
    write_metadata_files(out_dir, dims, mxfp4)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a random-weight gpt-oss checkpoint in the hub layout.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--mxfp4", action="store_true", help="store experts as MXFP4 blocks and scales")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-only", action="store_true",
                        help="write config and tokenizer but no weights, for --load-format dummy")
    args = parser.parse_args()
    print(make_checkpoint(args.out, preset=args.preset, mxfp4=args.mxfp4, seed=args.seed,
                          config_only=args.config_only))


if __name__ == "__main__":
    main()
