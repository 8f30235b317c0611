"""ModelConfig: the architecture facts of a gpt-oss checkpoint, read from its config.json."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_QUANT_METHODS = (None, "mxfp4")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    experts_per_token: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float
    swiglu_limit: float
    swiglu_alpha: float
    max_position_embeddings: int
    rope_theta: float
    # YaRN; rope_factor 1.0 means plain RoPE.
    rope_factor: float
    rope_beta_fast: float
    rope_beta_slow: float
    rope_original_max_position: int
    rope_truncate: bool
    quant_method: str | None
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("model_type") not in (None, "gpt_oss"):
            raise ValueError(f"config.json has model_type {d.get('model_type')!r}; oss-serve runs 'gpt_oss' models")
        num_layers = d["num_hidden_layers"]
        layer_types = tuple(d.get("layer_types") or
                            ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)])
        if len(layer_types) != num_layers:
            raise ValueError(f"config.json: layer_types has {len(layer_types)} entries for {num_layers} layers")
        # Checkpoints write `rope_scaling`; newer transformers write `rope_parameters`. Missing both
        # while rope_type is yarn would silently disable YaRN, so read either.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        yarn = rope.get("rope_type", rope.get("type")) == "yarn"
        quant = (d.get("quantization_config") or {}).get("quant_method")
        if quant not in SUPPORTED_QUANT_METHODS:
            raise ValueError(f"config.json: unknown quantization_config.quant_method {quant!r}; "
                             f"supported: {[q for q in SUPPORTED_QUANT_METHODS if q]}")
        eos = d.get("eos_token_id", 200002)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=num_layers,
            num_heads=d["num_attention_heads"],
            num_kv_heads=d["num_key_value_heads"],
            head_dim=d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"],
            num_experts=d.get("num_local_experts", d.get("num_experts")),
            experts_per_token=d.get("num_experts_per_tok", d.get("experts_per_token", 4)),
            sliding_window=d.get("sliding_window") or 128,
            layer_types=layer_types,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            swiglu_limit=d.get("swiglu_limit", 7.0),
            swiglu_alpha=d.get("swiglu_alpha", 1.702),
            max_position_embeddings=d.get("max_position_embeddings", 131072),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 150000.0)),
            rope_factor=float(rope.get("factor", 1.0)) if yarn else 1.0,
            rope_beta_fast=float(rope.get("beta_fast", 32.0)),
            rope_beta_slow=float(rope.get("beta_slow", 1.0)),
            rope_original_max_position=int(rope.get("original_max_position_embeddings",
                                                    d.get("initial_context_length", 4096))),
            rope_truncate=bool(rope.get("truncate", True)),
            quant_method=quant,
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a gpt-oss checkpoint folder needs a config.json")
        return cls.from_dict(json.loads(path.read_text()))

    def window_of(self, layer_id: int) -> int | None:
        """Keys visible to a query on this layer, counting its own position; None for full attention."""
        return self.sliding_window if self.layer_types[layer_id] == "sliding_attention" else None
