"""Tensor parallelism on CPU (gloo) through the offline LLM API: TP=2 computes what TP=1 computes.

Compared in float32: in bf16 the two ranks' partial sums are rounded before they are added, so
TP=1 and TP=2 differ by bf16 rounding, as in every tensor-parallel engine, and a near-tie in the
random tiny model's logits can flip a greedy token."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from oss_serve import LLM, SamplingParams
from oss_serve.model.config import ModelConfig
from oss_serve.model.parallel import DiskSlice, TensorParallelShard
from oss_serve.testing import make_checkpoint as checkpoints

PROMPTS = [[11, 2, 33, 4, 55, 6, 77, 8, 99, 10, 1111, 12, 13, 14, 15, 16, 17, 18, 19, 20], [100, 200, 300],
           [5] * 37]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
LOGITS_TOLERANCE = 1e-4


def run(checkpoint: Path, tp: int, overlap: bool = False, **engine_args
        ) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy outputs and every step's fp32 logits (rank 0's) for PROMPTS."""
    llm = LLM(str(checkpoint), tp_size=tp, device="cpu", dtype="float32", max_total_tokens=2048, page_size=4,
              **engine_args)
    llm.engine.overlap = overlap  # on by default on a GPU only; the same code path here
    try:
        logits: list[torch.Tensor] = []
        compute_logits = llm.engine.model.compute_logits

        def recording(hidden: torch.Tensor) -> torch.Tensor:
            out = compute_logits(hidden)
            logits.append(out.clone())
            return out

        llm.engine.model.compute_logits = recording
        outputs = llm.generate(PROMPTS, GREEDY)
        return [o.token_ids for o in outputs], logits
    finally:
        llm.engine.close()


def assert_same(checkpoint: Path, overlap: bool = False, **engine_args) -> None:
    ids_1, logits_1 = run(checkpoint, 1, **engine_args)
    ids_2, logits_2 = run(checkpoint, 2, overlap, **engine_args)
    assert ids_2 == ids_1
    assert len(logits_2) == len(logits_1)
    for step_1, step_2 in zip(logits_1, logits_2):
        torch.testing.assert_close(step_2, step_1, atol=LOGITS_TOLERANCE, rtol=0)


def test_tp2_matches_tp1_bf16_experts(tiny_ckpt: Path) -> None:
    assert_same(tiny_ckpt)


def test_tp2_matches_tp1_packed_mxfp4(tiny_mxfp4_ckpt: Path) -> None:
    # Packed MXFP4 experts (the GPU layout) run through the kernel's reference path on CPU; the
    # dequantized-at-load path is covered with padding below.
    assert_same(tiny_mxfp4_ckpt, moe_backend="triton")


def test_tp2_overlapped_schedule_matches_tp1(tiny_mxfp4_ckpt: Path) -> None:
    # Decode inputs are still on the device when rank 0 sends the plan: workers take them from rank 0's
    # draws, broadcast device to device.
    assert_same(tiny_mxfp4_ckpt, overlap=True, moe_backend="triton")


@pytest.fixture(scope="module")
def three_block_ckpt(tmp_path_factory: pytest.TempPathFactory, tokenizer_json_path: Path) -> Path:
    """Intermediate 96 = 3 MXFP4 blocks: two ranks hold 2 blocks each, the last one zero padding."""
    preset = dataclasses.replace(checkpoints.PRESETS["tiny"], intermediate_size=96)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(checkpoints.PRESETS, "tiny-3-blocks", preset)
        return checkpoints.make_checkpoint(tmp_path_factory.mktemp("three_blocks"), preset="tiny-3-blocks",
                                           mxfp4=True, seed=1)


@pytest.mark.parametrize("moe_backend", ["torch", "triton"])
def test_tp2_pads_mxfp4_blocks(three_block_ckpt: Path, moe_backend: str) -> None:
    assert_same(three_block_ckpt, moe_backend=moe_backend)


def test_slices_of_gpt_oss_20b_at_tp4() -> None:
    config = ModelConfig.from_dict({**checkpoints.build_config(checkpoints.PRESETS["gpt-oss-20b"], mxfp4=True),
                                    "vocab_size": 201088})
    last = TensorParallelShard(3, 4)
    # 2880 = 90 blocks: padded to 92, 23 blocks (736 units) per rank; the last rank holds 21 real ones.
    assert last.local_config(config).intermediate_size == 736
    assert last.slice_of("model.layers.0.mlp.experts.down_proj_blocks", config) == DiskSlice(2, 69, 90)
    assert last.slice_of("model.layers.0.mlp.experts.gate_up_proj_blocks", config) == DiskSlice(1, 4416, 5760)
    assert last.slice_of("model.layers.0.self_attn.k_proj.weight", config) == DiskSlice(0, 6 * 64, 8 * 64)
    assert last.slice_of("model.layers.0.self_attn.o_proj.weight", config) == DiskSlice(1, 48 * 64, 64 * 64)
    assert last.slice_of("model.layers.0.mlp.router.weight", config) is None
    assert not last.adds_bias("model.layers.0.mlp.experts.down_proj_bias")
    assert TensorParallelShard(0, 4).adds_bias("model.layers.0.self_attn.o_proj.bias")


def test_tp_must_divide_kv_heads(tiny_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="must divide the model's 2 KV heads"):
        LLM(str(tiny_ckpt), tp_size=4, device="cpu")


def test_dead_worker_is_an_error(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), tp_size=2, device="cpu", max_total_tokens=2048)
    try:
        worker = llm.engine.tp.workers[1]
        worker.kill()
        worker.wait()
        with pytest.raises(RuntimeError, match="tensor-parallel rank 1 exited"):
            llm.generate(PROMPTS, GREEDY)
    finally:
        llm.engine.close()


def test_multi_node_flags() -> None:
    from oss_serve.engine.tp_topology import Topology
    from oss_serve.launch_server import parse_server_args

    args = parse_server_args(["--model-path", "m", "--tp", "8", "--nnodes", "2", "--node-rank", "1",
                              "--dist-init-addr", "10.0.0.1:5000", "--device", "cuda"])
    topology = Topology.from_args(args)
    assert (topology.init_host, topology.init_port, topology.backend) == ("10.0.0.1", 5000, "nccl")
    assert list(topology.node_ranks) == [4, 5, 6, 7] and topology.device_of(6) == "cuda:2"
    for bad in (["--nnodes", "2"], ["--tp", "3", "--nnodes", "2", "--dist-init-addr", "h:1"],
                ["--nnodes", "2", "--node-rank", "2", "--dist-init-addr", "h:1"]):
        with pytest.raises(SystemExit):
            parse_server_args(["--model-path", "m", "--tp", "2", *bad])
