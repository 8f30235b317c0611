"""Loading a gpt-oss checkpoint in the Hugging Face layout: a folder or a hub id, sharded safetensors,
experts as bf16 matrices or MXFP4 blocks/scales, and random "dummy" weights from config.json alone.

Tensors stream one at a time from the memory-mapped shards into preallocated parameters, so the
transient host memory is one tensor (plus its dequantized form for MXFP4 on the torch path),
never a whole shard or model.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from oss_serve.kernels.reference import FP4_VALUES, SCALE_BIAS, dequantize_mxfp4
from oss_serve.model.config import ModelConfig
from oss_serve.model.gpt_oss import GptOssForCausalLM
from oss_serve.model.parallel import DiskSlice, TensorParallelShard
from oss_serve.model.rope import RotaryEmbedding

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16}
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]
FP4_RMS = math.sqrt(sum(v * v for v in FP4_VALUES) / len(FP4_VALUES))  # of a uniformly random fp4 code


class CheckpointError(ValueError):
    """The checkpoint does not match its config: names the tensor and what was expected."""


@dataclass
class LoadedModel:
    model: GptOssForCausalLM
    config: ModelConfig
    folder: Path
    device: torch.device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        # The checkpoints are bf16; CPUs without fast bf16 matmuls still run it correctly.
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, bfloat16 or float32")
    return DTYPES[dtype]


def resolve_model_path(model_path: str, revision: str | None = None) -> Path:
    """A local folder as is; anything else is a hub id, downloaded (with a progress bar) on first use."""
    local = Path(model_path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
        raise FileNotFoundError(f"--model-path {model_path!r} is neither a checkpoint folder nor a hub id like "
                                f"'openai/gpt-oss-20b'")
    from huggingface_hub import snapshot_download

    logger.info("Downloading %s from the Hugging Face hub", model_path)
    # The hub repo also carries the reference implementation's `original/` and `metal/` weights: skip them.
    return Path(snapshot_download(model_path, revision=revision, allow_patterns=HUB_PATTERNS,
                                  ignore_patterns=["original/*", "metal/*"]))


def use_packed_mxfp4(config: ModelConfig, device: torch.device, moe_backend: str) -> bool:
    """Keep MXFP4 experts packed for the Triton kernel (the GPU default), or dequantize them at load
    for the torch path (the CPU default, faster there than decoding every step)."""
    if moe_backend not in ("auto", "torch", "triton"):
        raise ValueError(f"unknown moe_backend {moe_backend!r}; choose auto, torch or triton")
    if moe_backend == "triton" and config.quant_method != "mxfp4":
        raise ValueError("--moe-backend triton needs a checkpoint with MXFP4 experts; this one stores them "
                         "unquantized: use --moe-backend torch")
    return config.quant_method == "mxfp4" and (moe_backend == "triton" or
                                               (moe_backend == "auto" and device.type == "cuda"))


def load_model(model_path: str, *, dtype: str = "auto", device: str = "auto",
               load_format: str = "auto", revision: str | None = None, seed: int = 0,
               moe_backend: str = "auto", shard: TensorParallelShard | None = None) -> LoadedModel:
    """With `shard`, builds and loads only that tensor-parallel rank's part (`model.config` is then
    the rank's local config); reading the checkpoint touches only that part."""
    folder = resolve_model_path(model_path, revision)
    config = ModelConfig.from_folder(folder)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    packed = use_packed_mxfp4(config, torch_device, moe_backend)
    local_config = config if shard is None else shard.local_config(config)
    # Built on the meta device then materialized uninitialized: every weight is overwritten next,
    # and torch's default init would cost time and, for the vocab-sized matrices, transient memory.
    model = GptOssForCausalLM(local_config, torch_dtype, "meta", packed).to_empty(device=torch_device)
    model.model.rotary = RotaryEmbedding(config).to(torch_device)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    elif load_format in ("auto", "safetensors"):
        load_safetensors(model, config, folder, shard)
    else:
        raise ValueError(f"unknown load_format {load_format!r}; choose auto, safetensors or dummy")
    if shard is not None:
        for name, param in model.named_parameters():
            if not shard.adds_bias(name):
                param.zero_()
    model.fuse_qkv()
    model.eval()
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    logger.info("Loaded %s: %d layers, %.2f GiB of weights in %s on %s", folder, config.num_layers,
                params_bytes / 2**30, str(torch_dtype).removeprefix("torch."), torch_device)
    return LoadedModel(model, local_config, folder, torch_device)


def init_dummy_weights(model: GptOssForCausalLM, seed: int) -> None:
    """Random weights with scales that keep activations O(1), for benchmarking without a download.
    Drawn on the parameters' own device, so that a dummy 120b on a GPU costs no host memory."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith("_blocks"):
            param.random_(0, 256, generator=generator)
        elif name.endswith("_scales"):
            # Power-of-two scales that give the decoded weights an rms near 1/sqrt(fan_in).
            fan_in = param.shape[-1] * 32
            exponent = SCALE_BIAS + round(math.log2(1 / math.sqrt(fan_in) / FP4_RMS))
            param.random_(exponent - 1, exponent + 2, generator=generator)
        elif name.endswith(("sinks", "embed_tokens.weight")):
            param.normal_(0.0, 1.0, generator=generator)
        else:
            std = min(0.02, 1 / math.sqrt(param.shape[-1])) if param.dim() > 1 else 0.02
            param.normal_(0.0, std, generator=generator)


def _shard_files(folder: Path) -> dict[str, Path]:
    """tensor name -> shard file, from model.safetensors.index.json or a single model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if single.is_file():
        with _open_shard(single) as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"{folder} has no model.safetensors.index.json or model.safetensors")


def _open_shard(path: Path):
    if not path.is_file():
        raise CheckpointError(f"shard {path.name} named in the index is missing from {path.parent}")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def expected_checkpoint_tensors(model: GptOssForCausalLM, config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with the shape it must have on disk."""
    E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
    expected: dict[str, tuple[int, ...]] = {}
    for name, param in model.named_parameters():
        if ".mlp.experts." not in name:
            expected[name] = tuple(param.shape)
    for layer in range(config.num_layers):
        prefix = f"model.layers.{layer}.mlp.experts."
        if config.quant_method == "mxfp4":
            expected |= {
                prefix + "gate_up_proj_blocks": (E, 2 * I, H // 32, 16),
                prefix + "gate_up_proj_scales": (E, 2 * I, H // 32),
                prefix + "down_proj_blocks": (E, H, I // 32, 16),
                prefix + "down_proj_scales": (E, H, I // 32),
            }
        else:
            expected |= {prefix + "gate_up_proj": (E, H, 2 * I), prefix + "down_proj": (E, I, H)}
        expected |= {prefix + "gate_up_proj_bias": (E, 2 * I), prefix + "down_proj_bias": (E, H)}
    return expected


def load_safetensors(model: GptOssForCausalLM, config: ModelConfig, folder: Path,
                     shard: TensorParallelShard | None = None) -> None:
    """`config` is the checkpoint's (whole model's) config; with `shard`, `model` holds one rank's part."""
    files = _shard_files(folder)
    # The checkpoint holds the whole model; a rank's parameters are slices of it.
    whole_model = model if shard is None else GptOssForCausalLM(config, next(model.parameters()).dtype, "meta",
                                                                model.packed_mxfp4)
    expected = expected_checkpoint_tensors(whole_model, config)
    missing = sorted(set(expected) - set(files))
    if missing:
        raise CheckpointError(f"checkpoint {folder} lacks {len(missing)} tensor(s) that config.json implies, "
                              f"first {missing[0]!r} (expected shape {list(expected[missing[0]])})")
    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        logger.warning("checkpoint has %d tensor(s) this model does not use, e.g. %r", len(unexpected), unexpected[0])
    params = dict(model.named_parameters())
    by_shard: dict[Path, list[str]] = {}
    for name in expected:
        by_shard.setdefault(files[name], []).append(name)
    # Check every shape (headers only) before copying anything, so a bad checkpoint fails fast.
    for shard_path, names in sorted(by_shard.items()):
        with _open_shard(shard_path) as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"tensor {name!r} is listed in the index under {shard_path.name}, "
                                          f"but that file does not hold it (expected shape {list(expected[name])})")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise CheckpointError(f"tensor {name!r} in {shard_path.name} has shape {list(shape)}, "
                                          f"but config.json implies {list(expected[name])}")
    dequantized_bytes = 0
    for shard_path, names in sorted(by_shard.items()):
        with _open_shard(shard_path) as f:
            for name in sorted(names):
                if shard is not None and not shard.adds_bias(name):
                    continue  # zeroed by the caller
                part = None if shard is None else shard.slice_of(name, config)
                if model.packed_mxfp4 or not name.endswith(("_blocks", "_scales")):
                    _copy_in_row_chunks(f, name, shard_path, params[name], part,
                                        transposed=name.endswith(DENSE_EXPERT_WEIGHTS))
                elif name.endswith("_blocks"):  # dequantized with its scales for the torch path
                    base = name.removesuffix("_blocks")
                    if part is not None and part.start == part.stop:
                        params[base].zero_()  # a rank that holds only padding
                        continue
                    with _open_shard(files[base + "_scales"]) as g:
                        scales = _read(g, base + "_scales", files[base + "_scales"], part)
                    dense = dequantize_mxfp4(_read(f, name, shard_path, part), scales,
                                             dtype=params[base].dtype)  # [E, out, in]
                    _corner(params[base], dense.shape).copy_(dense)
                    dequantized_bytes += dense.numel() * dense.element_size()
                    del dense
    if dequantized_bytes:
        logger.info("MXFP4 experts dequantized for the torch path: %.2f GiB in %s (about 4x their packed size)",
                    dequantized_bytes / 2**30, str(next(model.parameters()).dtype).removeprefix("torch."))


ROWS_PER_READ_BYTES = 32 * 2**20
# Dense expert matrices are stored [E, in, out] on disk and kept [E, out, in] in memory (see TorchExperts).
DENSE_EXPERT_WEIGHTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def _disk_index(shape: list[int], part: DiskSlice | None) -> list[slice]:
    index = [slice(0, n) for n in shape]
    if part is not None:
        index[part.dim] = slice(part.start, part.stop)
    return index


def _corner(target: torch.Tensor, shape: list[int] | torch.Size) -> torch.Tensor:
    """Where a tensor-parallel rank's slice of `shape` goes in its parameter: from index 0 on, with what
    it leaves (padding) zeroed."""
    if list(shape) != list(target.shape):
        target.zero_()
    return target[tuple(slice(0, n) for n in shape)]


def _copy_in_row_chunks(f, name: str, shard: Path, target: torch.Tensor, part: DiskSlice | None = None,
                        transposed: bool = False) -> None:
    """Copy a tensor (or a tensor-parallel rank's `part` of it) into its parameter a slab of rows at a
    time, so that reading the embedding or lm_head (the largest tensors) never holds a second full
    copy in memory. `transposed`: the parameter holds the tensor with its last two dims swapped."""
    if transposed:
        target = target.transpose(-1, -2)
    try:
        view = f.get_slice(name)
        index = _disk_index(view.get_shape(), part)
        region = [s.stop - s.start for s in index]
        if 0 in region:
            target.zero_()  # a rank that holds only padding
            return
        dest = _corner(target, region)
        row_bytes = max(1, dest[0].numel() * dest.element_size())
        step = max(1, ROWS_PER_READ_BYTES // row_bytes)
        first = index[0].start
        for start in range(0, region[0], step):
            stop = min(start + step, region[0])
            dest[start:stop].copy_(view[(slice(first + start, first + stop), *index[1:])])
    except SafetensorError as e:
        raise CheckpointError(f"tensor {name!r} in {shard.name} cannot be read (truncated file?): {e}") from e


def _read(f, name: str, shard: Path, part: DiskSlice | None = None) -> torch.Tensor:
    try:
        view = f.get_slice(name)
        return view[tuple(_disk_index(view.get_shape(), part))]
    except SafetensorError as e:
        raise CheckpointError(f"tensor {name!r} in {shard.name} cannot be read (truncated file?): {e}") from e
