"""Random gpt-oss checkpoints: hub layout, shapes, dtypes, and loading with transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from oss_serve.kernels.reference import dequantize_mxfp4
from oss_serve.testing.make_checkpoint import PRESETS, build_config, make_checkpoint

TINY = PRESETS["tiny"]


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for file_name in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / file_name), framework="pt") as shard:
            for name in shard.keys():
                tensors[name] = shard.get_tensor(name)
    return tensors


def expected_shapes(mxfp4: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    hidden, vocab = TINY.hidden_size, 201088
    q_size = TINY.num_attention_heads * TINY.head_dim
    kv_size = TINY.num_key_value_heads * TINY.head_dim
    experts, intermediate = TINY.num_local_experts, TINY.intermediate_size
    bf16, uint8 = torch.bfloat16, torch.uint8
    shapes = {
        "model.embed_tokens.weight": ((vocab, hidden), bf16),
        "model.norm.weight": ((hidden,), bf16),
        "lm_head.weight": ((vocab, hidden), bf16),
    }
    for layer in range(TINY.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        per_layer = {
            "input_layernorm.weight": ((hidden,), bf16),
            "post_attention_layernorm.weight": ((hidden,), bf16),
            "self_attn.q_proj.weight": ((q_size, hidden), bf16),
            "self_attn.q_proj.bias": ((q_size,), bf16),
            "self_attn.k_proj.weight": ((kv_size, hidden), bf16),
            "self_attn.k_proj.bias": ((kv_size,), bf16),
            "self_attn.v_proj.weight": ((kv_size, hidden), bf16),
            "self_attn.v_proj.bias": ((kv_size,), bf16),
            "self_attn.o_proj.weight": ((hidden, q_size), bf16),
            "self_attn.o_proj.bias": ((hidden,), bf16),
            "self_attn.sinks": ((TINY.num_attention_heads,), bf16),
            "mlp.router.weight": ((experts, hidden), bf16),
            "mlp.router.bias": ((experts,), bf16),
            "mlp.experts.gate_up_proj_bias": ((experts, 2 * intermediate), bf16),
            "mlp.experts.down_proj_bias": ((experts, hidden), bf16),
        }
        if mxfp4:
            per_layer |= {
                "mlp.experts.gate_up_proj_blocks": ((experts, 2 * intermediate, hidden // 32, 16), uint8),
                "mlp.experts.gate_up_proj_scales": ((experts, 2 * intermediate, hidden // 32), uint8),
                "mlp.experts.down_proj_blocks": ((experts, hidden, intermediate // 32, 16), uint8),
                "mlp.experts.down_proj_scales": ((experts, hidden, intermediate // 32), uint8),
            }
        else:
            per_layer |= {
                "mlp.experts.gate_up_proj": ((experts, hidden, 2 * intermediate), bf16),
                "mlp.experts.down_proj": ((experts, intermediate, hidden), bf16),
            }
        shapes |= {prefix + name: spec for name, spec in per_layer.items()}
    return shapes


@pytest.mark.parametrize("mxfp4", [False, True], ids=["bf16", "mxfp4"])
def test_tensor_names_shapes_dtypes(mxfp4: bool, tiny_ckpt: Path, tiny_mxfp4_ckpt: Path) -> None:
    tensors = read_checkpoint(tiny_mxfp4_ckpt if mxfp4 else tiny_ckpt)
    expected = expected_shapes(mxfp4)
    assert set(tensors) == set(expected)
    for name, (shape, dtype) in expected.items():
        assert tuple(tensors[name].shape) == shape, name
        assert tensors[name].dtype == dtype, name


@pytest.mark.parametrize("mxfp4", [False, True], ids=["bf16", "mxfp4"])
def test_files_and_index(mxfp4: bool, tiny_ckpt: Path, tiny_mxfp4_ckpt: Path) -> None:
    folder = tiny_mxfp4_ckpt if mxfp4 else tiny_ckpt
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard_files = sorted(path.name for path in folder.glob("*.safetensors"))
    assert len(shard_files) >= 2
    assert shard_files == [f"model-{i:05d}-of-{len(shard_files):05d}.safetensors"
                           for i in range(1, len(shard_files) + 1)]
    assert sorted(set(index["weight_map"].values())) == shard_files
    total_size = 0
    for file_name in shard_files:
        with safe_open(str(folder / file_name), framework="pt") as shard:
            assert shard.metadata() == {"format": "pt"}
            for name in shard.keys():
                assert index["weight_map"][name] == file_name
                tensor = shard.get_tensor(name)
                total_size += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total_size
    # Sharded by layer: one layer never spans two files.
    for layer in range(TINY.num_hidden_layers):
        files = {file for name, file in index["weight_map"].items() if name.startswith(f"model.layers.{layer}.")}
        assert len(files) == 1
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file()


def test_config_fields(tiny_ckpt: Path, tiny_mxfp4_ckpt: Path) -> None:
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert config["model_type"] == "gpt_oss"
    assert config["architectures"] == ["GptOssForCausalLM"]
    assert config["vocab_size"] == 201088
    assert config["rope_theta"] == 150000
    assert config["rope_scaling"] == {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    }
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["sliding_window"] == 8
    assert config["num_local_experts"] == 4
    assert config["num_experts_per_tok"] == config["experts_per_token"] == 2
    assert config["head_dim"] == 16
    assert config["swiglu_limit"] == 7.0
    assert config["rms_norm_eps"] == 1e-5
    assert config["attention_bias"] is True
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] == 131072
    assert config["initial_context_length"] == 4096
    assert config["eos_token_id"] == 200002
    assert config["pad_token_id"] == 199999
    assert config["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in config
    quantized = json.loads((tiny_mxfp4_ckpt / "config.json").read_text())
    assert quantized["quantization_config"] == {
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
        "quant_method": "mxfp4",
    }
    generation = json.loads((tiny_ckpt / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 199998
    assert generation["eos_token_id"] == [200002, 199999, 200012]
    assert generation["pad_token_id"] == 199999
    assert generation["do_sample"] is True


def test_mini_preset_config() -> None:
    config = build_config(PRESETS["mini"], mxfp4=True)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (512, 8, 8)
    assert (config["num_key_value_heads"], config["head_dim"], config["intermediate_size"]) == (2, 64, 512)
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["sliding_window"]) == (16, 4, 128)
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 4


def test_mxfp4_scales_are_sensible(tiny_mxfp4_ckpt: Path) -> None:
    tensors = read_checkpoint(tiny_mxfp4_ckpt)
    scales = tensors["model.layers.0.mlp.experts.gate_up_proj_scales"]
    assert 118 <= int(scales.min()) and int(scales.max()) <= 126
    assert len(scales.unique()) > 1
    assert len(tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"].unique()) > 200


def test_bf16_experts_are_the_dequantized_mxfp4_experts(tiny_ckpt: Path, tiny_mxfp4_ckpt: Path) -> None:
    dense, quantized = read_checkpoint(tiny_ckpt), read_checkpoint(tiny_mxfp4_ckpt)
    prefix = "model.layers.1.mlp.experts."
    gate_up = dequantize_mxfp4(quantized[prefix + "gate_up_proj_blocks"], quantized[prefix + "gate_up_proj_scales"],
                               torch.float32)
    assert torch.equal(gate_up.transpose(1, 2).to(torch.bfloat16), dense[prefix + "gate_up_proj"])
    down = dequantize_mxfp4(quantized[prefix + "down_proj_blocks"], quantized[prefix + "down_proj_scales"],
                            torch.float32)
    assert torch.equal(down.transpose(1, 2).to(torch.bfloat16), dense[prefix + "down_proj"])
    for name in dense.keys() & quantized.keys():
        assert torch.equal(dense[name], quantized[name]), name


def test_seed_determines_weights(tiny_ckpt: Path, tmp_path: Path) -> None:
    again = make_checkpoint(tmp_path / "again", preset="tiny", seed=0)
    other = make_checkpoint(tmp_path / "other", preset="tiny", seed=1)
    original, same, different = read_checkpoint(tiny_ckpt), read_checkpoint(again), read_checkpoint(other)
    assert all(torch.equal(original[name], same[name]) for name in original)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(original[q_proj], different[q_proj])


def test_command_line(tmp_path: Path, tokenizer_json_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "oss_serve.testing.make_checkpoint", str(out),
         "--preset", "tiny", "--mxfp4", "--seed", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(result.stdout.strip()) == out
    assert "quantization_config" in json.loads((out / "config.json").read_text())


def test_transformers_loads_both_formats_as_the_same_model(tiny_ckpt: Path, tiny_mxfp4_ckpt: Path) -> None:
    transformers = pytest.importorskip("transformers")
    dense, dense_info = transformers.GptOssForCausalLM.from_pretrained(tiny_ckpt, output_loading_info=True)
    quantized, quantized_info = transformers.GptOssForCausalLM.from_pretrained(
        tiny_mxfp4_ckpt,
        output_loading_info=True,
        quantization_config=transformers.Mxfp4Config(dequantize=True),
    )
    for info in (dense_info, quantized_info):
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert dense.config.rope_parameters["rope_type"] == "yarn"
    assert dense.config.rope_parameters["factor"] == 32.0
    dense_state, quantized_state = dense.state_dict(), quantized.state_dict()
    assert dense_state.keys() == quantized_state.keys()
    for name, tensor in dense_state.items():
        assert torch.equal(tensor, quantized_state[name]), name

    prompt = torch.tensor([[200006, 1000, 2000, 3000]])
    with torch.no_grad():
        logits = dense(prompt).logits.float()
        generated = dense.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 0.5
    new_tokens = generated[0, prompt.shape[1] :].tolist()
    assert len(set(new_tokens)) > 3, new_tokens
