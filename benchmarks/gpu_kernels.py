#!/usr/bin/env python3
"""Device check of the Triton kernels at gpt-oss-20b shapes: correctness against the torch reference and
time against the torch path, printed as ratios (torch time / triton time: above 1 means the kernel wins).

    python3 benchmarks/gpu_kernels.py [--out DIR] [--budget-s 150] [--only moe]

Needs only torch and triton (and this repository on disk). Cases run cheapest-first and are skipped once
the time budget is spent, so the whole run stays bounded; compile time counts against the budget.
Writes DIR/gpu_kernels.txt (the printed lines) and DIR/gpu_kernels.json (every figure).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from oss_serve.kernels.moe_mxfp4 import (  # noqa: E402
    DECODE_MAX_SLOTS,
    DEFAULT_GROUPED_TILES,
    GroupedTiles,
    moe_mxfp4,
    moe_mxfp4_reference,
    select_path,
)
from oss_serve.kernels.moe_mxfp4_decode import DEFAULT_DECODE_TILES, DecodeTiles  # noqa: E402
from oss_serve.kernels.paged_attention import paged_attention, paged_attention_reference  # noqa: E402
from oss_serve.kernels.reference import dequantize_mxfp4  # noqa: E402
from oss_serve.kernels.rms_norm import rms_norm, rms_norm_reference  # noqa: E402
from oss_serve.kernels.rope_store_kv import rope_store_kv, rope_store_kv_reference  # noqa: E402
from oss_serve.kernels.skinny_linear import BLOCK_K as SKINNY_BLOCK_K  # noqa: E402
from oss_serve.kernels.skinny_linear import BLOCK_N as SKINNY_BLOCK_N  # noqa: E402
from oss_serve.kernels.skinny_linear import MAX_ROWS as SKINNY_MAX_ROWS  # noqa: E402
from oss_serve.kernels.skinny_linear import skinny_linear  # noqa: E402
from oss_serve.model.moe import TorchExperts  # noqa: E402

# gpt-oss-20b
HIDDEN, INTER, EXPERTS, TOP_K = 2880, 2880, 32, 4
HEADS, KV_HEADS, HEAD_DIM, WINDOW = 64, 8, 64, 128
PAGE_SIZE = 16
DEVICE = "cuda"

SMOKE = False  # --smoke: tiny shapes on CPU under TRITON_INTERPRET=1, to check this script itself

# (block_n, block_k) of the small-batch linear kernel, timed besides its default at batch 1.
LINEAR_BLOCK_SWEEP = [(32, 256), (64, 128), (16, 512)]

LINES: list[str] = []
RESULTS: list[dict] = []


def report(kind: str, **fields) -> None:
    RESULTS.append({"kind": kind, **fields})
    text = kind + " " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    LINES.append(text)
    print(text, flush=True)


def bench_ms(fn) -> float:
    if SMOKE:
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3
    return do_bench(fn, warmup=10, rep=40)


def graph_bench_ms(fn) -> float:
    """Time per call replayed from a CUDA graph, as the engine's decode runs it (no launch overhead)."""
    if SMOKE:
        return bench_ms(fn)
    return do_bench_cudagraph(fn, rep=40)


def linear_case(name: str, out_features: int, in_features: int, bias: bool, num_tokens: int,
                blocks: list[tuple[int, int]] | None = None) -> None:
    """cuBLAS (F.linear, bf16) at a decode shape of the model, graph-replayed, as the weight bytes it moves per
    microsecond (the batch-1 step spent ~0.7 ms in these); up to MAX_ROWS tokens also the small-batch kernel
    (kernels/skinny_linear.py) with its default blocks and each of `blocks` (block_n, block_k), checked
    against cuBLAS. ratio = cuBLAS time / kernel time (the engine takes the kernel above 1.15)."""
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    weight = torch.randn(out_features, in_features, device=DEVICE, dtype=torch.bfloat16, generator=generator)
    weight /= in_features ** 0.5
    b = torch.randn(out_features, device=DEVICE, dtype=torch.bfloat16, generator=generator) if bias else None
    x = torch.randn(num_tokens, in_features, device=DEVICE, dtype=torch.bfloat16, generator=generator)
    ms = graph_bench_ms(lambda: torch.nn.functional.linear(x, weight, b))
    report("linear", name=name, tokens=num_tokens, out_features=out_features, in_features=in_features, ms=ms,
           weight_GBps=weight.numel() * 2 / ms / 1e6)
    if num_tokens > SKINNY_MAX_ROWS:
        return
    expected = torch.nn.functional.linear(x.float(), weight.float(), None if b is None else b.float())
    for block_n, block_k in [(SKINNY_BLOCK_N, SKINNY_BLOCK_K), *(blocks or [])]:
        def run(n: int = block_n, k: int = block_k) -> torch.Tensor:
            return skinny_linear(x, weight, b, block_n=n, block_k=k)
        error = (run().float() - expected).abs().max().item()
        skinny_ms = graph_bench_ms(run)
        report("linear skinny", name=name, tokens=num_tokens, block_n=block_n, block_k=block_k, ms=skinny_ms,
               weight_GBps=weight.numel() * 2 / skinny_ms / 1e6, ratio=ms / skinny_ms, max_abs_error=error)


def length(n: int) -> int:
    """Token counts and contexts as written for the GPU; shrunk in a smoke run."""
    return max(1, n // 128) if SMOKE else n


# ---------------------------------------------------------------- attention

def make_paged(q_lens: list[int], seq_lens: list[int], kv_dtype: torch.dtype, seed: int = 0) -> dict:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    pages_per_seq = [math.ceil(n / PAGE_SIZE) for n in seq_lens]
    num_pages = sum(pages_per_seq)
    perm = torch.randperm(num_pages, device=DEVICE, generator=gen).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(pages_per_seq), dtype=torch.int32, device=DEVICE)
    start = 0
    for seq, n in enumerate(pages_per_seq):
        table[seq, :n] = perm[start:start + n]
        start += n
    shape = (num_pages, PAGE_SIZE, KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device=DEVICE, generator=gen).to(kv_dtype)
    v_cache = torch.randn(shape, device=DEVICE, generator=gen).to(kv_dtype)
    q = torch.randn(sum(q_lens), HEADS, HEAD_DIM, device=DEVICE, generator=gen).to(torch.bfloat16)
    cu = torch.tensor([0] + q_lens, device=DEVICE).cumsum(0).to(torch.int32)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, page_table=table, cu_q_lens=cu,
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
                sinks=torch.randn(HEADS, device=DEVICE, generator=gen), scale=HEAD_DIM ** -0.5)


def torch_attention_uniform(batch: dict, q_len: int, seq_len: int, window: int) -> torch.Tensor:
    """A batched torch path for B sequences of equal shape: gather the visible pages, bf16 matmuls,
    fp32 softmax with the sink column. What an engine without the kernel would run."""
    q, k_cache, v_cache, table = batch["q"], batch["k_cache"], batch["v_cache"], batch["page_table"]
    num_seqs = table.shape[0]
    key_begin = max(0, seq_len - q_len - window + 1) if window else 0
    key_pos = torch.arange(key_begin, seq_len, device=DEVICE)
    pages = table[:, key_pos // PAGE_SIZE].long()
    k = k_cache[pages, key_pos % PAGE_SIZE].to(q.dtype)  # [B, L, Hkv, D]
    v = v_cache[pages, key_pos % PAGE_SIZE].to(q.dtype)
    qb = q.view(num_seqs, q_len, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)
    scores = torch.einsum("bqhgd,blhd->bhgql", qb, k).float() * batch["scale"]
    q_pos = torch.arange(seq_len - q_len, seq_len, device=DEVICE)
    visible = key_pos[None, :] <= q_pos[:, None]
    if window:
        visible &= key_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    sinks = batch["sinks"].view(1, KV_HEADS, HEADS // KV_HEADS, 1, 1).expand(num_seqs, -1, -1, q_len, 1)
    probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1].to(q.dtype)
    out = torch.einsum("bhgql,blhd->bqhgd", probs, v)
    return out.reshape(num_seqs * q_len, HEADS, HEAD_DIM)


def attention_correctness() -> None:
    q_lens, seq_lens = [1, 1, 37, 300, 1], [1500, 130, 37, 812, 17]
    if SMOKE:
        q_lens, seq_lens = [1, 1, 3, 5, 1], [20, 13, 3, 9, 17]
    for window in (0, WINDOW):
        for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
            batch = make_paged(q_lens, seq_lens, kv_dtype)
            expected = paged_attention_reference(**batch, sliding_window=window).float()
            actual = paged_attention(**batch, sliding_window=window).float()
            split = paged_attention(**batch, sliding_window=window, num_kv_splits=8).float()
            report("attention_correct", window=window, kv=str(kv_dtype).split(".")[-1],
                   max_err=(actual - expected).abs().max().item(), split8_max_err=(split - expected).abs().max().item(),
                   ok=bool((actual - expected).abs().max().item() < 3e-2 and (split - expected).abs().max() < 3e-2))
    decode = make_paged([1] * 4, [length(n) for n in (700, 1, 64, 2000)], torch.bfloat16, seed=1)
    for window in (0, WINDOW):
        expected = paged_attention_reference(**decode, sliding_window=window).float()
        actual = paged_attention(**decode, sliding_window=window).float()  # auto splits (small decode batch)
        report("attention_correct_decode_auto_split", window=window, max_err=(actual - expected).abs().max().item(),
               ok=bool((actual - expected).abs().max().item() < 3e-2))


def attention_timing(num_seqs: int, q_len: int, seq_len: int, window: int, kv_dtype: torch.dtype,
                     with_torch: bool, splits: int | None = None) -> None:
    batch = make_paged([q_len] * num_seqs, [seq_len] * num_seqs, kv_dtype)
    kernel_ms = bench_ms(lambda: paged_attention(**batch, sliding_window=window, num_kv_splits=splits))
    keys = min(seq_len, window + q_len - 1) if window else seq_len
    kv_bytes = 2 * num_seqs * keys * KV_HEADS * HEAD_DIM * batch["k_cache"].element_size()
    fields = dict(B=num_seqs, q_len=q_len, ctx=seq_len, window=window, kv=str(kv_dtype).split(".")[-1],
                  splits=splits or "auto", triton_ms=kernel_ms, kv_GBps=kv_bytes / kernel_ms / 1e6)
    if with_torch:
        torch_ms = bench_ms(lambda: torch_attention_uniform(batch, q_len, seq_len, window))
        got = paged_attention(**batch, sliding_window=window, num_kv_splits=splits).float()
        ref = torch_attention_uniform(batch, q_len, seq_len, window).float()
        fields.update(torch_ms=torch_ms, speedup=torch_ms / kernel_ms, max_err_vs_torch=(got - ref).abs().max().item())
    report("attention_time", **fields)


# ---------------------------------------------------------------- MoE

def make_experts(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (EXPERTS, rows, cols // 32, 16), device=DEVICE, generator=gen,
                               dtype=torch.uint8)
        scales = torch.randint(118, 123, (EXPERTS, rows, cols // 32), device=DEVICE, generator=gen,
                               dtype=torch.uint8)
        return blocks, scales

    gu_blocks, gu_scales = packed(2 * INTER, HIDDEN)
    d_blocks, d_scales = packed(HIDDEN, INTER)
    return dict(gate_up_blocks=gu_blocks, gate_up_scales=gu_scales,
                gate_up_bias=(0.1 * torch.randn(EXPERTS, 2 * INTER, device=DEVICE, generator=gen)).bfloat16(),
                down_blocks=d_blocks, down_scales=d_scales,
                down_bias=(0.1 * torch.randn(EXPERTS, HIDDEN, device=DEVICE, generator=gen)).bfloat16())


def make_tokens(num_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(num_tokens, HIDDEN, device=DEVICE, generator=gen).bfloat16()
    logits = torch.randn(num_tokens, EXPERTS, device=DEVICE, generator=gen)
    top, ids = torch.topk(logits, TOP_K, dim=-1)
    return x, ids, torch.softmax(top, dim=-1)


def dense_torch_experts(experts: dict[str, torch.Tensor]) -> TorchExperts:
    config = SimpleNamespace(num_experts=EXPERTS, hidden_size=HIDDEN, intermediate_size=INTER, swiglu_limit=7.0,
                             swiglu_alpha=1.702)
    dense = TorchExperts(config, torch.bfloat16, DEVICE)
    for expert in range(EXPERTS):  # one expert at a time keeps the fp32 intermediates small
        for name, prefix in (("gate_up_proj", "gate_up"), ("down_proj", "down")):
            weight = dequantize_mxfp4(experts[f"{prefix}_blocks"][expert], experts[f"{prefix}_scales"][expert])
            getattr(dense, name)[expert].copy_(weight)  # TorchExperts holds [out, in], like the blocks
    dense.gate_up_proj_bias.copy_(experts["gate_up_bias"])
    dense.down_proj_bias.copy_(experts["down_bias"])
    return dense


# Variants timed side by side: "default" is what moe_mxfp4 runs with no options (path by T * k).
MOE_VARIANTS: dict[str, dict] = {
    "default": {},
    "decode": dict(path="decode"),
    "grouped": dict(path="grouped"),
    "word": dict(path="decode", decode_tiles=DecodeTiles(8, 8, 512, 4, word_decode=True)),
    "word_grouped": dict(path="grouped", grouped_tiles=GroupedTiles(word_decode=True)),
}


def describe_moe_defaults() -> None:
    report("moe_default", decode_path_up_to_slots=DECODE_MAX_SLOTS, decode_tiles=str(DEFAULT_DECODE_TILES),
           grouped_tiles=str(DEFAULT_GROUPED_TILES),
           rule=f"path=decode if T*k<={DECODE_MAX_SLOTS} else grouped "
                f"(k={TOP_K}: decode for T<={DECODE_MAX_SLOTS // TOP_K})")


def moe_correctness(experts: dict[str, torch.Tensor]) -> None:
    for num_tokens, variant in ((1, "decode"), (8, "decode"), (length(32), "decode"), (33, "grouped"),
                                (length(256), "grouped"), (1, "word"), (8, "word"), (1, "word_grouped"),
                                (33, "word_grouped"), (length(256), "word_grouped")):
        x, ids, weights = make_tokens(num_tokens, seed=num_tokens)
        expected = moe_mxfp4_reference(x.float(), ids, weights, **experts)
        actual = moe_mxfp4(x, ids, weights, **experts, **MOE_VARIANTS[variant])
        again = moe_mxfp4(x, ids, weights, **experts, **MOE_VARIANTS[variant])
        rel = ((actual.float() - expected).abs().max() / expected.abs().max()).item()
        report("moe_correct", T=num_tokens, variant=variant, rel_err_vs_fp32_ref=rel,
               deterministic=bool(torch.equal(actual, again)), ok=bool(rel < 1.5e-2))


def moe_timing(experts: dict[str, torch.Tensor], dense: TorchExperts | None, num_tokens: int,
               variant: str = "default", block_m: int | None = None, **options) -> None:
    """One moe_time line; `options` (path, grouped_tiles, decode_tiles) override the variant's."""
    x, ids, weights = make_tokens(num_tokens, seed=7)
    call = {**MOE_VARIANTS[variant], **options, "block_m": block_m}
    kernel_ms = graph_bench_ms(lambda: moe_mxfp4(x, ids, weights, **experts, **call))
    touched = torch.unique(ids).numel()
    per_expert_bytes = sum(experts[n][0].numel() for n in ("gate_up_blocks", "gate_up_scales", "down_blocks",
                                                             "down_scales"))
    path = call.get("path") or select_path(num_tokens, TOP_K)
    tiles = call.get("decode_tiles") if path == "decode" else call.get("grouped_tiles")
    fields = dict(T=num_tokens, variant=variant, path=path, block_m=block_m or "auto",
                  tiles=str(tiles).replace(" ", "") if tiles else "default", experts_touched=touched,
                  triton_ms=kernel_ms, weight_GBps=touched * per_expert_bytes / kernel_ms / 1e6,
                  TFLOPs=6 * num_tokens * TOP_K * HIDDEN * INTER / kernel_ms / 1e9)
    if dense is not None:
        torch_ms = bench_ms(lambda: dense(x, ids, weights))
        got, ref = moe_mxfp4(x, ids, weights, **experts, **call).float(), dense(x, ids, weights).float()
        fields.update(torch_bf16_dense_ms=torch_ms, speedup=torch_ms / kernel_ms,
                      rel_err_vs_torch=((got - ref).abs().max() / ref.abs().max()).item())
    report("moe_time", **fields)


def moe_cases(experts: dict[str, torch.Tensor], dense: list[TorchExperts]) -> list[tuple[str, object]]:
    """Most telling first (the budget cuts from the end): the defaults at each T, then tile sweeps."""
    def torch_dense(num_tokens: int) -> TorchExperts | None:
        return dense[0] if dense and num_tokens in (1, 64, 4096) else None

    cases: list[tuple[str, object]] = []
    for num_tokens in (1, 4, 16, 64, 256, 1024, 4096):
        cases.append((f"moe T={num_tokens}", lambda t=num_tokens: moe_timing(experts, torch_dense(t), length(t))))
        word = "word" if num_tokens * TOP_K <= DECODE_MAX_SLOTS else "word_grouped"
        cases.append((f"moe T={num_tokens} {word}",
                      lambda t=num_tokens, v=word: moe_timing(experts, None, length(t), v)))
    cases.append(("moe cuda graph", lambda: moe_graph_check(experts)))
    sweeps: list[tuple[int, str, object]] = []
    # T=64 / 256 (16- / 32-row tiles) are latency-bound: the default tiles keep 8-12 warps per SM in flight
    # (`python benchmarks/kernel_sass.py --occupancy`); narrower tiles keep 16-36, byte and word decode.
    for num_tokens, block_m in ((256, 32), (64, 16)):
        for block_n, block_k, stages in ((32, 64, 3), (64, 64, 3), (32, 128, 3), (32, 64, 4)):
            for word in (False, True):
                sweeps.append((num_tokens, "grouped", GroupedTiles(block_m=block_m, block_n=block_n, block_k=block_k,
                                                                   num_warps=4, num_stages=stages, word_decode=word)))
    for tiles in (DecodeTiles(8, 8, 256, 2, word_decode=True), DecodeTiles(16, 8, 512, 4, word_decode=True),
                  DecodeTiles(8, 4, 512, 4, word_decode=True), DecodeTiles(4, 4, 512, 2, word_decode=True)):
        sweeps += [(1, "decode", tiles), (4, "decode", tiles)]
    for block_m, block_n, block_k, warps in ((16, 32, 128, 4), (16, 64, 128, 4), (16, 64, 256, 4)):
        tiles = GroupedTiles(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps, word_decode=True)
        sweeps += [(1, "grouped", tiles), (4, "grouped", tiles), (16, "grouped", tiles)]
    for block_m, block_n, block_k, warps in ((16, 64, 128, 4), (32, 64, 128, 4), (64, 64, 128, 4),
                                             (64, 128, 128, 8), (64, 64, 256, 4), (128, 64, 128, 8)):
        tiles = GroupedTiles(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps, word_decode=True)
        sweeps += [(64, "grouped", tiles), (256, "grouped", tiles)]
    for block_m, block_n, block_k, warps, stages in ((128, 64, 128, 8, 3), (128, 128, 64, 8, 3), (64, 128, 128, 4, 3),
                                                     (128, 64, 64, 4, 4)):
        tiles = GroupedTiles(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages,
                             word_decode=True)
        sweeps += [(1024, "grouped", tiles), (4096, "grouped", tiles)]
    for num_tokens, path, tiles in sweeps:
        option = "decode_tiles" if path == "decode" else "grouped_tiles"
        cases.append((f"moe sweep T={num_tokens} {tiles}",
                      lambda t=num_tokens, p=path, o=option, g=tiles: moe_timing(experts, None, length(t), p,
                                                                                 **{o: g})))
    return cases


def moe_graph_check(experts: dict[str, torch.Tensor]) -> None:
    for num_tokens in (1, 8, 64):
        x, ids, weights = make_tokens(num_tokens, seed=3)
        graph_case(f"moe_T{num_tokens}_{select_path(num_tokens, TOP_K)}",
                   lambda x=x, ids=ids, weights=weights: moe_mxfp4(x, ids, weights, **experts))


# ---------------------------------------------------------------- RMSNorm

def rms_norm_case(num_rows: int) -> None:
    x = torch.randn(num_rows, HIDDEN, device=DEVICE).bfloat16()
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, device=DEVICE).bfloat16()
    got, summed = rms_norm(x, weight, 1e-5, residual)
    ref, ref_summed = rms_norm_reference(x, weight, 1e-5, residual)
    kernel_ms = bench_ms(lambda: rms_norm(x, weight, 1e-5, residual))
    torch_ms = bench_ms(lambda: rms_norm_reference(x, weight, 1e-5, residual))
    report("rms_norm_add", T=num_rows, triton_ms=kernel_ms, torch_ms=torch_ms, speedup=torch_ms / kernel_ms,
           max_err=max((got.float() - ref.float()).abs().max().item(),
                       (summed.float() - ref_summed.float()).abs().max().item()))


def graph_case(name: str, fn) -> None:
    """The kernels' host code never reads device values, so a decode step can be captured: replay must equal
    eager, and replay time shows the launch-free cost."""
    if SMOKE:
        return
    eager = fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm up (compile) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn()
    graph.replay()
    torch.cuda.synchronize()
    replay_ms = bench_ms(graph.replay)
    report("cuda_graph", case=name, replay_equals_eager=bool(torch.equal(captured, eager)), replay_ms=replay_ms,
           eager_ms=bench_ms(fn))


def graph_check() -> None:
    batch = make_paged([1] * 64, [1536] * 64, torch.bfloat16)
    graph_case("attention_decode_B64", lambda: paged_attention(**batch, sliding_window=0))
    graph_case("attention_decode_B1_split", lambda: paged_attention(**{**batch, **make_one(batch)}, sliding_window=0))


def make_one(batch: dict) -> dict:
    """The first sequence of a decode batch on its own (B=1 takes the split-KV path)."""
    return dict(q=batch["q"][:1], page_table=batch["page_table"][:1], cu_q_lens=batch["cu_q_lens"][:2],
                seq_lens=batch["seq_lens"][:1])


def rope_store_case(num_tokens: int, cache_dtype: torch.dtype) -> None:
    qkv = torch.randn(num_tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device=DEVICE).bfloat16()
    q, k, v = qkv.split([HEADS, KV_HEADS, KV_HEADS], dim=1)
    angles = torch.rand(num_tokens, HEAD_DIM // 2, device=DEVICE) * 6.28
    cos, sin = 1.35 * angles.cos(), 1.35 * angles.sin()
    caches = [torch.zeros(max(64, num_tokens), PAGE_SIZE, KV_HEADS, HEAD_DIM, device=DEVICE).to(cache_dtype)
              for _ in range(4)]
    slots = torch.randperm(caches[0].shape[0] * PAGE_SIZE, device=DEVICE)[:num_tokens]
    got = rope_store_kv(q, k, v, cos, sin, caches[0], caches[1], slots)
    want = rope_store_kv_reference(q, k, v, cos, sin, caches[2], caches[3], slots)
    err = max((got.float() - want.float()).abs().max().item(),
              (caches[0].float() - caches[2].float()).abs().max().item(),
              (caches[1].float() - caches[3].float()).abs().max().item())
    kernel_ms = bench_ms(lambda: rope_store_kv(q, k, v, cos, sin, caches[0], caches[1], slots))
    torch_ms = bench_ms(lambda: rope_store_kv_reference(q, k, v, cos, sin, caches[2], caches[3], slots))
    report("rope_store_kv", T=num_tokens, cache=str(cache_dtype).split(".")[-1], triton_ms=kernel_ms,
           torch_ms=torch_ms, speedup=torch_ms / kernel_ms, max_err=err)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    parser.add_argument("--budget-s", type=float, default=150.0)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (run with TRITON_INTERPRET=1)")
    parser.add_argument("--only", default="", help="run only cases whose name contains this (e.g. moe, attn)")
    args = parser.parse_args()
    if args.smoke:
        global SMOKE, HIDDEN, INTER, EXPERTS, TOP_K, HEADS, KV_HEADS, HEAD_DIM, WINDOW, PAGE_SIZE, DEVICE
        SMOKE, DEVICE = True, "cpu"
        HIDDEN, INTER, EXPERTS, TOP_K = 64, 32, 4, 2
        HEADS, KV_HEADS, HEAD_DIM, WINDOW, PAGE_SIZE = 8, 2, 16, 8, 4
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    if SMOKE:
        report("device", name="cpu-interpreter-smoke", torch=torch.__version__)
    else:
        props = torch.cuda.get_device_properties(0)
        report("device", name=props.name, sms=props.multi_processor_count, torch=torch.__version__,
               triton=__import__("triton").__version__)

    experts: dict[str, torch.Tensor] = {}
    dense: list[TorchExperts] = []

    def moe_setup() -> None:
        describe_moe_defaults()
        experts.update(make_experts())

    def moe_dense_setup() -> None:
        dense.append(dense_torch_experts(experts))

    cases = [
        ("attention correctness", attention_correctness),
        ("rmsnorm", lambda: [rms_norm_case(length(n)) for n in (1, 256, 4096)]),
        ("rope+store", lambda: [rope_store_case(length(n), d) for n in (1, 256, 4096)
                                for d in (torch.bfloat16, torch.float8_e4m3fn)]),
        ("linear cublas and skinny", lambda: [
            linear_case(name, n, k, bias, t, LINEAR_BLOCK_SWEEP if name in ("qkv", "o_proj") and t == 1 else None)
            for name, n, k, bias in (("qkv", (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN, True),
                                     ("o_proj", HIDDEN, HEADS * HEAD_DIM, True),
                                     ("router", EXPERTS, HIDDEN, True),
                                     ("lm_head", 201088 if not SMOKE else 512, HIDDEN, False))
            for t in (1, 4, 64)]),
        ("moe setup", moe_setup),
        ("moe correctness", lambda: moe_correctness(experts)),
        ("moe dense torch setup", moe_dense_setup),
    ]
    for num_seqs in (1, 64, 256):
        for window in (0, WINDOW):
            for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):  # torch timed once, on the bf16 cache
                cases.append((f"attn decode B={num_seqs} w={window} {kv_dtype}",
                              lambda b=num_seqs, w=window, d=kv_dtype: attention_timing(
                                  b, 1, length(1536), w, d, d == torch.bfloat16)))
    cases += moe_cases(experts, dense)
    for window in (0, WINDOW):
        cases.append((f"attn prefill 2048 w={window}",
                      lambda w=window: attention_timing(1, length(2048), length(2048), w, torch.bfloat16, True)))
        cases.append((f"attn extend 512 on 1536 w={window}",
                      lambda w=window: attention_timing(4, length(512), length(2048), w, torch.bfloat16, True)))
    # Tuning leads for the next session: split counts around the defaults.
    cases.append(("attn cuda graph capture", graph_check))
    for splits in (1, 4, 16, 32):
        cases.append((f"attn decode B=1 splits={splits}",
                      lambda s=splits: attention_timing(1, 1, length(8192), 0, torch.bfloat16, False, s)))

    torch.set_grad_enabled(False)
    cases = [(name, case) for name, case in cases if args.only in name]
    for name, case in cases:
        elapsed = time.monotonic() - started
        if elapsed > args.budget_s:
            report("skipped", case=name.replace(" ", "_"), reason=f"budget_{args.budget_s:.0f}s_spent")
            continue
        try:
            case()
            if not SMOKE:
                torch.cuda.synchronize()  # inside the try: an asynchronous kernel fault surfaces here
        except Exception as error:  # keep going: one broken case must not cost the rest of the run
            report("error", case=name.replace(" ", "_"), error=repr(error)[:300])
            traceback.print_exc()
    report("done", elapsed_s=time.monotonic() - started)
    with open(os.path.join(args.out, "gpu_kernels.txt"), "w") as handle:
        handle.write("\n".join(LINES) + "\n")
    with open(os.path.join(args.out, "gpu_kernels.json"), "w") as handle:
        json.dump(RESULTS, handle, indent=1)


if __name__ == "__main__":
    main()
