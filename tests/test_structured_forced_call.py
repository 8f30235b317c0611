"""A forced tool call (tool_choice named or required): the grammar of the whole reply, checked
token by token with the real tokenizer, and the engine on the tiny random-weight checkpoint,
whose replies must be reasoning and then one well-formed call that ends the generation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from structured_schemas import SCHEMAS

from oss_serve import LLM, SamplingParams
from oss_serve.engine.structured.call_grammar import CallTarget, forced_call_grammar, loose_arguments_schema
from oss_serve.engine.structured.grammar import load_tokenizer, new_matcher
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony import render
from oss_serve.harmony.parse import HarmonyOutputParser

WEATHER_PARAMETERS = {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}
WEATHER = CallTarget("functions.get_weather", "commentary", json.dumps(loose_arguments_schema(WEATHER_PARAMETERS)))
LOOKUP = CallTarget("functions.lookup", "commentary", json.dumps(SCHEMAS["flat"]))
PYTHON = CallTarget("python", "analysis", None)
CALL_HEADER = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
REASONING = "<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_json_path: Path):
    return load_tokenizer(tokenizer_json_path, harmony_ids.LAST_SPECIAL_ID + 1)


def accepts(tokenizer, targets: list[CallTarget], reply: str, *, reasoning: bool = True) -> bool:
    """Whether the grammar takes `reply` whole and then allows only the call's end."""
    matcher = new_matcher(tokenizer, forced_call_grammar(targets, reasoning=reasoning))
    return matcher.consume_tokens(tokenizer.tokenize_str(reply, parse_special=True)) and matcher.is_accepting()


@pytest.mark.parametrize("reply, ok", [
    (REASONING + CALL_HEADER + '{"location":"Paris"}', True),
    (CALL_HEADER + '{"location":"Oslo","unit":"c"}', True),
    (CALL_HEADER + '{"location":"Paris"', False),  # not finished: the call cannot end here
    (CALL_HEADER + '{"city":"Paris"}', False),  # a key the tool does not have
    ("<|channel|>commentary to=functions.send_email <|constrain|>json<|message|>{}", False),  # not offered
    ("<|channel|>final<|message|>It is sunny.", False),  # an answer instead of the call
    (REASONING + REASONING + CALL_HEADER + "{}", False),  # one reasoning message, then the call
    ('<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"name":"ab","age":7,"admin":true}', True),
    ('<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"name":"ab"}', False),  # strict
    ("<|channel|>analysis to=python code<|message|>print(6 * 7)", True),
])
def test_grammar_takes_reasoning_then_one_allowed_call(tokenizer, reply: str, ok: bool) -> None:
    assert accepts(tokenizer, [WEATHER, LOOKUP, PYTHON], reply) is ok


def test_without_reasoning_the_reply_starts_with_the_call(tokenizer) -> None:
    assert accepts(tokenizer, [WEATHER], CALL_HEADER + "{}", reasoning=False)
    assert not accepts(tokenizer, [WEATHER], REASONING + CALL_HEADER + "{}", reasoning=False)


def test_loose_schema_keeps_the_keys_or_any_object() -> None:
    assert loose_arguments_schema(WEATHER_PARAMETERS) == {
        "type": "object", "properties": {"location": {}, "unit": {}}, "additionalProperties": False}
    assert loose_arguments_schema(None) == {"type": "object"}
    assert loose_arguments_schema({"type": "object"}) == {"type": "object"}


@pytest.fixture(scope="module")
def llm(tiny_ckpt: Path) -> LLM:
    return LLM(str(tiny_ckpt), max_total_tokens=16384, page_size=16)


def calls_of(token_ids: list[int]) -> list:
    parser = HarmonyOutputParser(function_names=["get_weather", "lookup"])
    parser.start_assistant_reply()
    parser.feed(token_ids)
    parser.finish()
    return parser.messages


@pytest.mark.parametrize("budget", [0, 6, None], ids=["no-reasoning", "reasoning-6", "half-budget"])
def test_engine_replies_are_reasoning_then_one_json_call(llm: LLM, budget: int | None) -> None:
    """Random weights write unbounded strings: a reply may be cut by max_new_tokens inside the
    arguments, but every reply that ends, ends in a call with JSON arguments, and some do."""
    prompt = render.render_prompt([render.user_message("weather?")], render.PromptSettings())
    spec = StructuredOutput(forced_call=forced_call_grammar([WEATHER, LOOKUP], reasoning=budget != 0),
                            reasoning_budget=budget)
    params = [SamplingParams(max_new_tokens=48, temperature=1.0, seed=seed, structured=spec,
                             stop_token_ids=[harmony_ids.RETURN, harmony_ids.CALL], skip_special_tokens=False)
              for seed in range(8)]
    finished = 0
    for output in llm.generate([prompt] * len(params), params):
        messages = calls_of(output.token_ids)
        call = messages[-1]
        assert call.function_name in ("get_weather", "lookup"), messages
        assert all(message.channel == "analysis" and message.recipient is None for message in messages[:-1])
        assert len(messages) <= (1 if budget == 0 else 2)
        if budget and len(messages) == 2:  # the engine ends the reasoning once the budget is spent
            assert output.token_ids.index(harmony_ids.END) <= max(budget, 3)
        if output.finish_reason == "stop":
            finished += 1
            assert output.token_ids[-1] == harmony_ids.CALL and call.terminator == "call"
            arguments = json.loads(call.text)
            allowed = (WEATHER_PARAMETERS["properties"] if call.function_name == "get_weather"
                       else SCHEMAS["flat"]["properties"])
            assert set(arguments) <= set(allowed)
        else:
            assert output.finish_reason == "length" and len(output.token_ids) == 48
    assert finished >= 2
