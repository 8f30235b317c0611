"""Continuous batching, chunked prefill, the prefix cache, sliding-window memory and KV pressure."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from contiguous_reference import generate_ids

from oss_serve import LLM, SamplingParams
from oss_serve.engine.radix_cache import NO_PAGE

GREEDY = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def random_prompts(count: int, low: int, high: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 100000) for _ in range(rng.randrange(low, high))] for _ in range(count)]


@pytest.mark.parametrize("engine_args", [
    {},
    {"disable_radix_cache": True},
    {"chunked_prefill_size": 16},
    {"dtype": "float32"},
], ids=["default", "no-radix", "chunk16", "fp32"])
def test_batch_invariance(tiny_ckpt: Path, engine_args: dict) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=8192, page_size=4, **engine_args)
    # Mixed lengths, some sharing a prefix so the radix cache has something to share.
    prompts = random_prompts(28, 2, 90) + [[7] * 40 + p for p in random_prompts(4, 1, 30, seed=1)]
    together = llm.generate(prompts, GREEDY)
    alone = [llm.generate([p], GREEDY)[0] for p in prompts]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert all(o.finish_reason == "length" and len(o.token_ids) == 8 for o in together)
    # And against the simplest backend (contiguous per-sequence KV) for a few.
    for prompt, output in list(zip(prompts, together))[:4]:
        assert generate_ids(llm.engine.model, prompt, 8) == output.token_ids


def test_prefix_cache_reports_cached_tokens_and_keeps_output(tiny_ckpt: Path) -> None:
    shared = random_prompts(1, 200, 201, seed=3)[0]
    first, second = shared + [11, 12, 13], shared + [21, 22, 23, 24, 25]
    cached = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=16)
    plain = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=16, disable_radix_cache=True)
    out_first = cached.generate([first], GREEDY)[0]
    out_second = cached.generate([second], GREEDY)[0]
    assert out_first.num_cached_tokens == 0
    assert out_second.num_cached_tokens == 192  # whole pages of the 200-token prefix
    assert out_second.token_ids == plain.generate([second], GREEDY)[0].token_ids
    assert plain.generate([second], GREEDY)[0].num_cached_tokens == 0
    # A repeat of the same prompt reuses everything but the last token's page.
    assert cached.generate([second], GREEDY)[0].num_cached_tokens == 192


def test_prefix_reuse_is_limited_by_the_sliding_window(tiny_ckpt: Path) -> None:
    """A cached prefix whose sliding pages were evicted is reused only as far as the window allows,
    and the output stays right."""
    llm = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=4)
    plain = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=4, disable_radix_cache=True)
    prompt = random_prompts(1, 60, 61, seed=5)[0]
    llm.generate([prompt], GREEDY)
    cache = llm.engine.scheduler.prefix_cache
    cache.evict(0, llm.engine.scheduler.sliding_pool.num_pages)  # drop every cached sliding page
    longer = prompt + [5, 6, 7]
    output = llm.generate([longer], GREEDY)[0]
    window = llm.engine.scheduler.window
    # With no sliding pages left, only a prefix shorter than the window can be reused.
    assert output.num_cached_tokens < window
    assert output.token_ids == plain.generate([longer], GREEDY)[0].token_ids


def test_sliding_layers_hold_about_a_window(tiny_ckpt: Path) -> None:
    page_size = 4
    llm = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=page_size, chunked_prefill_size=64,
              disable_radix_cache=True)
    engine = llm.engine
    scheduler = engine.scheduler
    window = scheduler.window
    prompt = random_prompts(1, 2000, 2001, seed=2)[0]
    engine.add_request("long", prompt, SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True))
    peak_decode_sliding = 0
    while engine.has_work:
        engine.step()
        request = engine._requests.get("long")
        if request is None:
            break
        held = sum(1 for page in request.sliding_pages if page != NO_PAGE)
        assert scheduler.sliding_pool.num_used == held
        # A prefill chunk of 64 needs its own pages plus the window before it.
        assert held <= 64 // page_size + window // page_size + 2
        if not request.is_prefilling:
            peak_decode_sliding = max(peak_decode_sliding, scheduler.sliding_pool.num_used)
            full_pages = -(-request.num_computed // page_size)
            assert scheduler.full_pool.num_used >= full_pages
    assert 0 < peak_decode_sliding <= window // page_size + 1
    assert scheduler.full_pool.num_used == 0 and scheduler.sliding_pool.num_used == 0


def test_pressure_many_requests_small_pool(tiny_ckpt: Path) -> None:
    prompts = random_prompts(200, 8, 24, seed=7)
    roomy = LLM(str(tiny_ckpt), max_total_tokens=16384, page_size=4)
    expected = [o.token_ids for o in roomy.generate(prompts, GREEDY)]
    # Each request needs up to 31 tokens = 8 pages: the pool holds about ten at a time.
    tight = LLM(str(tiny_ckpt), max_total_tokens=320, page_size=4)
    outputs = tight.generate(prompts, GREEDY)
    assert [o.token_ids for o in outputs] == expected
    stats = tight.engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_preemptions > 0  # the pool really was too small for everyone at once


def test_cancelled_requests_leave_the_pool_as_before(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4, disable_radix_cache=True)
    engine, scheduler = llm.engine, llm.engine.scheduler
    before = (scheduler.full_pool.num_free, scheduler.sliding_pool.num_free)
    prompts = random_prompts(100, 4, 30, seed=9)
    params = SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    for _ in range(4):
        engine.step()
    assert scheduler.full_pool.num_free < before[0]
    finals = [engine.abort(f"r{i}") for i in range(100)]
    assert all(f is not None and f.finished and f.finish_reason == "abort" for f in finals)
    assert (scheduler.full_pool.num_free, scheduler.sliding_pool.num_free) == before
    assert not engine.has_work


def test_cancel_with_prefix_cache_frees_request_pages(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4)
    engine, scheduler = llm.engine, llm.engine.scheduler
    for i, prompt in enumerate(random_prompts(20, 10, 40, seed=4)):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))
    for _ in range(3):
        engine.step()
    for i in range(20):
        engine.abort(f"r{i}")
    # Only the prefix cache holds pages now; dropping it empties the pools.
    scheduler.prefix_cache.clear()
    assert scheduler.full_pool.num_used == 0 and scheduler.sliding_pool.num_used == 0


def test_prompt_longer_than_context_is_rejected(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=1024, context_length=64)
    with pytest.raises(ValueError, match=r"65 tokens.*64"):
        llm.generate([[5] * 65], GREEDY)
    output = llm.generate([[5] * 60], SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True))[0]
    assert len(output.token_ids) == 4 and output.finish_reason == "length"


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_cache(tiny_ckpt: Path, kv_cache_dtype: str) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4, kv_cache_dtype=kv_cache_dtype)
    assert llm.engine.cache.k[0].dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    prompts = random_prompts(6, 5, 40, seed=11)
    together = llm.generate(prompts, GREEDY)
    alone = [llm.generate([p], GREEDY)[0] for p in prompts]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert all(len(o.token_ids) == 8 for o in together)
