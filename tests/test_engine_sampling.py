"""Sampling, stop conditions, n > 1, logprobs and incremental detokenization."""
from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from oss_serve import LLM, SamplingParams
from oss_serve.engine.detokenizer import IncrementalDetokenizer
from oss_serve.engine.sampler import CDF_BLOCK, CUT_CANDIDATES, _cut_by_rank, _inverse_cdf, sample

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def llm(tiny_ckpt: Path) -> LLM:
    return LLM(str(tiny_ckpt), max_total_tokens=8192, page_size=4)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 100000) for _ in range(rng.randrange(3, 50))] for _ in range(count)]


@pytest.mark.parametrize("extra", [{}, {"top_p": 0.9}, {"top_k": 20, "min_p": 0.01}],
                         ids=["plain", "top_p", "top_k_min_p"])
def test_same_seed_same_tokens_alone_and_in_a_batch(llm: LLM, extra: dict) -> None:
    target = prompts(1, seed=1)[0]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1234, ignore_eos=True, **extra)
    alone = llm.generate([target], params)[0].token_ids
    others = [SamplingParams(max_new_tokens=12, temperature=1.0, ignore_eos=True) for _ in range(7)]
    batch = llm.generate(prompts(7, seed=2) + [target], others + [params])
    assert batch[-1].token_ids == alone
    assert llm.generate([target], params)[0].token_ids == alone
    other_seed = SamplingParams(max_new_tokens=12, temperature=1.0, seed=99, ignore_eos=True, **extra)
    assert llm.generate([target], other_seed)[0].token_ids != alone


def test_greedy_ignores_seed_and_top_k_one_is_greedy(llm: LLM) -> None:
    target = prompts(1, seed=3)[0]
    greedy = llm.generate([target], SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True))[0]
    top1 = llm.generate([target], SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, ignore_eos=True))[0]
    assert greedy.token_ids == top1.token_ids


def test_stop_string_across_token_boundary(llm: LLM) -> None:
    target = prompts(1, seed=4)[0]
    base = llm.generate([target], SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))[0]
    pieces = [llm.tokenizer.decode([t]) for t in base.token_ids]
    # A stop string made of the end of one token and the start of the next.
    index = next(i for i in range(2, len(pieces) - 1)
                 if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2 and pieces[i].isprintable()
                 and pieces[i + 1].isprintable() and "\ufffd" not in pieces[i] + pieces[i + 1])
    stop = pieces[index][-2:] + pieces[index + 1][:2]
    cut = base.text.find(stop)
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    out = llm.generate([target], params)[0]
    assert out.finish_reason == "stop" and out.matched_stop == stop
    assert out.text == base.text[:cut]
    assert len(out.token_ids) <= index + 2
    assert out.token_ids == base.token_ids[:len(out.token_ids)]
    kept = llm.generate([target], SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True, stop=[stop],
                                                 include_stop_str_in_output=True))[0]
    assert kept.text == base.text[:cut + len(stop)]


def test_stop_token_ids_and_eos(llm: LLM) -> None:
    target = prompts(1, seed=5)[0]
    base = llm.generate([target], SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True))[0]
    stop_token = base.token_ids[4]
    first = base.token_ids.index(stop_token)
    out = llm.generate([target], SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[stop_token]))[0]
    assert out.finish_reason == "stop" and out.matched_stop == stop_token
    assert out.token_ids == base.token_ids[:first + 1]
    assert set(llm.engine.eos_token_ids) >= {200002, 200012}


def test_n_samples(llm: LLM) -> None:
    target = prompts(1, seed=6)[0]
    out = llm.generate([target], SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7, ignore_eos=True))[0]
    assert len(out.samples) == 3 and out.samples[0] is out
    assert len({tuple(s.token_ids) for s in out.samples}) > 1
    again = llm.generate([target], SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7, ignore_eos=True))[0]
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in out.samples]


def test_logprobs_are_sane(llm: LLM) -> None:
    target = prompts(1, seed=8)[0]
    greedy = llm.generate([target], SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=True,
                                                   top_logprobs=5))[0]
    assert len(greedy.logprobs) == 6
    for token, entry in zip(greedy.token_ids, greedy.logprobs):
        assert entry.token_id == token and entry.logprob <= 0
        assert len(entry.top) == 5 and entry.top[0][0] == token  # greedy picks the most likely
        assert math.isclose(entry.top[0][1], entry.logprob, abs_tol=1e-6)
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1 + 1e-5
    sampled = llm.generate([target], SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, ignore_eos=True,
                                                    logprobs=True, top_logprobs=20))[0]
    for token, entry in zip(sampled.token_ids, sampled.logprobs):
        assert entry.token_id == token and entry.logprob <= 0
        assert sum(math.exp(lp) for _, lp in entry.top) <= 1 + 1e-5


def test_penalties_change_output_and_stay_deterministic(llm: LLM) -> None:
    target = [500] * 30
    plain = llm.generate([target], SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True))[0]
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True, repetition_penalty=1.5,
                            frequency_penalty=1.0, presence_penalty=1.0)
    first = llm.generate([target], params)[0]
    assert first.token_ids == llm.generate([target], params)[0].token_ids
    assert len(set(first.token_ids)) >= len(set(plain.token_ids))


def test_zero_max_new_tokens_and_defaults(llm: LLM) -> None:
    out = llm.generate([[1, 2, 3]], SamplingParams(max_new_tokens=0))[0]
    assert out.token_ids == [] and out.finish_reason == "length"
    defaults = llm.default_sampling_params()
    assert defaults.temperature == 1.0  # generation_config.json: do_sample true, no temperature
    text_out = llm.generate("Hello there", SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True))[0]
    assert text_out.prompt_token_ids == llm.tokenizer.encode("Hello there") and len(text_out.token_ids) == 3


def test_incremental_detokenizer_never_splits_a_character(llm: LLM) -> None:
    tokenizer = llm.tokenizer
    text = "naïve café 日本語 ok 🙂 done"
    ids = tokenizer.encode(text)
    byte_ids = [tokenizer.token_to_id(tokenizer.id_to_token(i)) for i in ids]
    assert byte_ids == ids
    detok = IncrementalDetokenizer(tokenizer, SamplingParams())
    pieces = [detok.feed([i]) for i in ids] + [detok.feed([], finished=True)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_incremental_detokenizer_holds_back_a_possible_stop(llm: LLM) -> None:
    tokenizer = llm.tokenizer
    ids = tokenizer.encode("alpha beta STOP gamma")
    detok = IncrementalDetokenizer(tokenizer, SamplingParams(stop=["STOP"]))
    streamed = "".join(detok.feed([i]) for i in ids) + detok.feed([], finished=True, matched_stop="STOP")
    assert streamed == "alpha beta "


def fake_requests(count: int, seed: int = 0, **params) -> list:
    """What the sampler reads of a request: its params and generator."""
    return [SimpleNamespace(params=SamplingParams(**params), rng=random.Random(seed + i), step_masks=None,
                            token_ids=[], output_counts=None) for i in range(count)]


def test_inverse_cdf_finds_the_token_where_the_uniform_falls() -> None:
    vocab = 2 * CDF_BLOCK + 37  # whole blocks and a tail
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(3, vocab, generator=gen)
    weights[weights < 0.3] = 0.0
    weights[1, CDF_BLOCK:] = 0.0  # nothing after the first block
    weights[2, :-5] = 0.0  # weight only in the tail
    uniforms = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.999, 1 - 2 ** -53], dtype=torch.float64)
    for row in range(3):
        picks = _inverse_cdf(weights[row].expand(len(uniforms), -1), uniforms).tolist()
        running = np.cumsum(weights[row].double().numpy())
        want = np.minimum(np.searchsorted(running, uniforms.numpy() * running[-1], side="right"), vocab - 1)
        assert all(weights[row, pick] > 0 for pick in picks)  # never a zero-weight token, even at u -> 1
        assert picks[:-1] == want[:-1].tolist()


@pytest.mark.parametrize("params", [{"temperature": 1.0}, {"temperature": 0.7, "min_p": 0.1},
                                    {"temperature": 1.0, "top_k": 5}, {"temperature": 1.3, "top_p": 0.8}],
                         ids=["plain", "min_p", "top_k", "top_p"])
def test_draws_follow_the_filtered_distribution(params: dict) -> None:
    vocab, draws = 2 * CDF_BLOCK + 37, 4000
    logits = torch.full((vocab,), -30.0)
    likely = [3, 700, CDF_BLOCK + 1, 2 * CDF_BLOCK - 1, 2 * CDF_BLOCK + 30]  # in each block and the tail
    logits[likely] = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.2])
    logits[likely[0] + 1] = -1.0  # below min-p 0.1 at temperature 0.7; outside top-5 and top-p 0.8
    requests = fake_requests(draws, **params)
    tokens, _ = sample(logits.expand(draws, -1).clone(), requests).resolve()
    # The reference: softmax at the temperature, the filter, renormalized.
    probs = torch.softmax(logits.double() / params["temperature"], dim=-1)
    keep = probs >= params.get("min_p", 0.0) * probs.max()
    if "top_k" in params:
        keep &= probs >= probs.topk(params["top_k"]).values[-1]
    if "top_p" in params:
        ordered, order = probs.sort(descending=True)
        kept = (ordered.cumsum(0) - ordered) < params["top_p"]
        keep &= torch.zeros_like(keep).scatter(0, order, kept)
    probs = torch.where(keep, probs, 0.0)
    probs /= probs.sum()
    counts = torch.bincount(torch.tensor(tokens), minlength=vocab).double() / draws
    assert set(tokens) <= set(torch.nonzero(probs).flatten().tolist())
    tolerance = 5 * torch.sqrt(probs * (1 - probs) / draws) + 1e-3
    assert torch.all((counts - probs).abs() <= tolerance), (counts[likely], probs[likely])


def stable_sort_cut(weights: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The definition: rank by weight with equal weights in token order, keep the first top_k, then the
    shortest prefix whose mass reaches top_p of what is left."""
    ordered, order = torch.sort(weights, descending=True, stable=True)
    if top_k > 0:
        ordered[top_k:] = 0.0
    kept = torch.ones_like(ordered, dtype=torch.bool)
    if top_p < 1.0:
        kept = (ordered.cumsum(0) - ordered) < top_p * ordered.sum()
    kept[0] = True
    return torch.zeros_like(weights).scatter(0, order, torch.where(kept, ordered, 0.0))


@pytest.mark.parametrize("vocab", [50, 3 * CUT_CANDIDATES + 5])
def test_top_k_top_p_cut_keeps_a_stable_sorts_prefix(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    # Few distinct weights: ties at every cut.
    weights = torch.randint(0, 6, (20, vocab), generator=gen).float()  # whole numbers: every sum exact
    settings = [(k, p) for k in (-1, 1, 3, 40, vocab) for p in (1.0, 0.3, 0.5, 0.95)]
    requests = [SimpleNamespace(params=SamplingParams(top_k=k, top_p=p)) for k, p in settings]
    got = _cut_by_rank(weights.clone(), requests)
    for row, (k, p) in enumerate(settings):
        assert torch.equal(got[row], stable_sort_cut(weights[row], k, p)), (k, p)
