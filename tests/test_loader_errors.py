"""A checkpoint that does not match its config stops with an error naming the tensor, not a torch traceback."""
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from oss_serve.model.loader import CheckpointError, load_model


@pytest.fixture
def broken_copy(tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


def shard_holding(folder, name):
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return folder / weight_map[name]


def rewrite_shard(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_truncated_shard(broken_copy):
    shard = shard_holding(broken_copy, "model.norm.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(str(broken_copy), device="cpu")


def test_missing_tensor(broken_copy):
    name = "model.layers.1.self_attn.sinks"
    rewrite_shard(shard_holding(broken_copy, name), lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.sinks"):
        load_model(str(broken_copy), device="cpu")


def test_missing_from_index(broken_copy):
    index = broken_copy / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["lm_head.weight"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        load_model(str(broken_copy), device="cpu")


def test_wrong_shape_names_tensor_and_both_shapes(broken_copy):
    name = "model.layers.0.self_attn.q_proj.weight"

    def shrink(tensors):
        tensors[name] = tensors[name][:-1].contiguous()

    rewrite_shard(shard_holding(broken_copy, name), shrink)
    with pytest.raises(CheckpointError) as err:
        load_model(str(broken_copy), device="cpu")
    message = str(err.value)
    assert name in message and "[63, 64]" in message and "[64, 64]" in message


def test_unknown_quant_method(broken_copy):
    config_path = broken_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "awq"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="awq"):
        load_model(str(broken_copy), device="cpu")


def test_not_a_folder_nor_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder nor a hub id"):
        load_model(str(tmp_path / "nope"), device="cpu")
