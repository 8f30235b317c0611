"""The overlapped schedule (step N+1 prepared while the device runs step N; on by default on a GPU) gives
the outputs of the plain one. Run here on CPU, where every op is synchronous but the engine takes the same
path: tokens read one step late, the next step's inputs filled in from the device tensor of draws,
requests ending (stops, length, abort, preemption) while a step that includes them is still in flight."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_engine_batching import random_prompts

from oss_serve import LLM, SamplingParams
from oss_serve.engine.request import PENDING_TOKEN
from oss_serve.engine.structured.spec import GrammarSpec, StructuredOutput

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def generate(llm: LLM, overlap: bool, prompts: list[list[int]], params: list[SamplingParams]) -> list:
    llm.engine.overlap = overlap
    outputs = llm.generate(prompts, params)
    assert not llm.engine.has_work  # nothing left in flight either
    return outputs


def summary(outputs: list) -> list[tuple]:
    return [(o.token_ids, o.finish_reason, o.matched_stop, o.num_cached_tokens, o.logprobs,
             [s.token_ids for s in o.samples]) for o in outputs]


def test_same_outputs_as_the_plain_schedule(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=8192, page_size=4)
    # Half share a 40-token prefix: the second round is served partly from the prefix cache.
    prompts = random_prompts(8, 3, 40, seed=1) + [[7] * 40 + p for p in random_prompts(8, 1, 20, seed=2)]
    probe = generate(llm, False, prompts, [GREEDY] * len(prompts))
    schema = {"type": "object", "properties": {"a": {"enum": ["yes", "no"]}}, "required": ["a"],
              "additionalProperties": False}
    kinds = [
        GREEDY,
        SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=5),
        SamplingParams(max_new_tokens=9, temperature=1.0, seed=6, n=2),
        SamplingParams(max_new_tokens=8, temperature=0, logprobs=True, top_logprobs=3),
        SamplingParams(max_new_tokens=1, temperature=0),
        SamplingParams(max_new_tokens=10, temperature=0.7, repetition_penalty=1.3, frequency_penalty=0.5, seed=7),
        SamplingParams(max_new_tokens=24, temperature=0, structured=StructuredOutput(
            answer=GrammarSpec("json_schema", json.dumps(schema)), harmony=False)),
    ]
    params = []
    for i, output in enumerate(probe):
        if i % 8 == 7:  # stop early on a token, or on text, that the greedy run produced
            params.append(replace(GREEDY, stop_token_ids=[output.token_ids[4]]) if i < 8
                          else replace(GREEDY, stop=[output.text[6:9]]))
        else:
            params.append(kinds[i % len(kinds)])
    for _ in range(2):  # the second round hits the prefix cache
        plain = generate(llm, False, prompts, params)
        overlapped = generate(llm, True, prompts, params)
        assert summary(overlapped) == summary(plain)
    assert llm.engine.stats().num_preemptions == 0  # the pool is roomy: nothing was requeued
    assert any(o.finish_reason == "stop" for o in plain)
    assert any(o.num_cached_tokens > 0 for o in plain)
    constrained = [o for i, o in enumerate(plain) if i % 8 != 7 and i % len(kinds) == len(kinds) - 1]
    assert constrained and all(json.loads(o.text)["a"] in ("yes", "no") for o in constrained)


def test_preemption_with_draws_in_flight(tiny_ckpt: Path) -> None:
    prompts = random_prompts(60, 8, 24, seed=7)
    expected = [o.token_ids for o in LLM(str(tiny_ckpt), max_total_tokens=16384, page_size=4).generate(
        prompts, GREEDY)]
    tight = LLM(str(tiny_ckpt), max_total_tokens=256, page_size=4)
    assert [o.token_ids for o in generate(tight, True, prompts, [GREEDY] * len(prompts))] == expected
    assert tight.engine.stats().num_preemptions > 0


def test_abort_while_a_draw_is_in_flight(tiny_ckpt: Path) -> None:
    llm = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4, disable_radix_cache=True)
    engine, scheduler = llm.engine, llm.engine.scheduler
    engine.overlap = True
    before = (scheduler.full_pool.num_free, scheduler.sliding_pool.num_free)
    streamed: dict[str, list[int]] = {f"r{i}": [] for i in range(6)}
    for i, prompt in enumerate(random_prompts(6, 4, 30, seed=9)):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True))
    for _ in range(5):
        for delta in engine.step():
            streamed[delta.request_id] += delta.new_token_ids
    assert engine._requests["r0"].awaits_token  # its next token is still being drawn
    final = engine.abort("r0")
    assert PENDING_TOKEN not in final.new_token_ids and final.finish_reason == "abort"
    assert final.completion_tokens == len(streamed["r0"] + final.new_token_ids) > 0
    while engine.has_work:
        for delta in engine.step():
            streamed[delta.request_id] += delta.new_token_ids
            assert delta.request_id != "r0"
    assert all(len(streamed[f"r{i}"]) == 40 for i in range(1, 6))
    assert (scheduler.full_pool.num_free, scheduler.sliding_pool.num_free) == before
