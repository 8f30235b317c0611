"""Benchmark prompts: exact token lengths in the model's tokenizer, seeded lengths and arrivals."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from oss_serve.bench.arrivals import arrival_offsets
from oss_serve.bench.datasets import (
    generated_shared_prefix_dataset,
    random_dataset,
    random_ids_dataset,
    sample_lengths,
    sharegpt_dataset,
)
from oss_serve.bench.tokenizer import HFTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tokenizer_json_path: Path) -> HFTokenizer:
    """The checkpoints' own tokenizer.json (o200k_harmony), as the server loads it."""
    return HFTokenizer(tokenizer_json_path)


def test_lengths_are_uniform_in_the_ratio_range() -> None:
    lengths = sample_lengths(np.random.default_rng(0), 100, 0.5, 2000)
    assert min(lengths) == 50 and max(lengths) == 100
    assert sample_lengths(np.random.default_rng(0), 7, 1.0, 5) == [7] * 5
    assert set(sample_lengths(np.random.default_rng(0), 3, 0.0, 200)) == {1, 2, 3}


def test_random_prompts_have_exact_token_lengths(tokenizer: HFTokenizer) -> None:
    requests = random_dataset(tokenizer, num_prompts=12, input_len=300, output_len=40, range_ratio=0.25, seed=3)
    assert len(requests) == 12
    for request in requests:
        assert isinstance(request.prompt, str)
        assert len(tokenizer.encode(request.prompt)) == request.prompt_len
        assert 75 <= request.prompt_len <= 300 and 10 <= request.output_len <= 40
    assert len({request.prompt_len for request in requests}) > 1


def test_random_with_ratio_one_is_exact_everywhere(tokenizer: HFTokenizer) -> None:
    requests = random_dataset(tokenizer, num_prompts=5, input_len=1024, output_len=1024, range_ratio=1.0, seed=0)
    assert [len(tokenizer.encode(r.prompt)) for r in requests] == [1024] * 5
    assert [r.output_len for r in requests] == [1024] * 5


def test_random_is_reproducible_with_the_seed(tokenizer: HFTokenizer) -> None:
    first = random_dataset(tokenizer, 3, 50, 5, 0.0, seed=7)
    again = random_dataset(tokenizer, 3, 50, 5, 0.0, seed=7)
    other = random_dataset(tokenizer, 3, 50, 5, 0.0, seed=8)
    assert first == again and first != other


def test_harmony_and_tokenizer_json_agree_on_lengths(tokenizer: HFTokenizer, harmony_encoding) -> None:
    harmony_tokenizer = load_tokenizer("openai/gpt-oss-120b")  # offline: no hub, harmony's encoding
    for request in random_dataset(harmony_tokenizer, 4, 200, 8, 0.5, seed=1):
        assert len(tokenizer.encode(request.prompt)) == request.prompt_len


def test_random_ids_are_ordinary_tokens(tokenizer: HFTokenizer) -> None:
    requests = random_ids_dataset(tokenizer, 4, 64, 8, 1.0, seed=0)
    for request in requests:
        assert isinstance(request.prompt, list) and len(request.prompt) == request.prompt_len == 64
        assert max(request.prompt) < 199998  # below the first special token


def test_sharegpt_takes_first_turns_and_filters(tmp_path: Path, tokenizer: HFTokenizer) -> None:
    long_reply = " word" * 30
    entries = [
        {"id": "a", "conversations": [{"from": "human", "value": "Tell me about the sea and the sky."},
                                      {"from": "gpt", "value": "The sea is wide and the sky is blue." + long_reply}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Only one turn here."}]},
        {"id": "d", "conversations": [{"from": "human", "value": "Name three prime numbers please."},
                                      {"from": "gpt", "value": "Two, three and five are prime numbers."}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    requests = sharegpt_dataset(tokenizer, str(path), num_prompts=2, seed=0)
    assert sorted(r.prompt for r in requests) == ["Name three prime numbers please.",
                                                  "Tell me about the sea and the sky."]
    for request in requests:
        assert request.prompt_len == len(tokenizer.encode(request.prompt))
    fixed = sharegpt_dataset(tokenizer, str(path), num_prompts=2, seed=0, fixed_output_len=17)
    assert {r.output_len for r in fixed} == {17}
    with pytest.raises(ValueError, match="only 2 usable"):
        sharegpt_dataset(tokenizer, str(path), num_prompts=3, seed=0)
    with pytest.raises(FileNotFoundError, match="--dataset-path"):
        sharegpt_dataset(tokenizer, str(tmp_path / "missing.json"), num_prompts=1, seed=0)


def test_generated_shared_prefix_groups_share_the_system_prompt(tokenizer: HFTokenizer) -> None:
    requests = generated_shared_prefix_dataset(tokenizer, num_groups=3, prompts_per_group=4, system_prompt_len=64,
                                               question_len=16, output_len=9, seed=0)
    assert len(requests) == 12
    prefixes = {r.prompt.split("\n\n")[0] for r in requests}
    assert len(prefixes) == 3
    for prefix in prefixes:
        assert len(tokenizer.encode(prefix)) == 64
        assert sum(r.prompt.startswith(prefix) for r in requests) == 4
    assert {r.output_len for r in requests} == {9}
    assert all(r.prompt_len == len(tokenizer.encode(r.prompt)) for r in requests)


def test_poisson_arrivals_are_seeded_with_the_right_mean_gap() -> None:
    offsets = arrival_offsets(4001, request_rate=8.0, seed=5)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets == arrival_offsets(4001, request_rate=8.0, seed=5)
    assert offsets != arrival_offsets(4001, request_rate=8.0, seed=6)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / 8.0, rel=0.1)
    assert gaps.std() == pytest.approx(1 / 8.0, rel=0.1)  # exponential: std equals mean


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(3, math.inf, seed=0) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        arrival_offsets(3, 0.0, seed=0)
