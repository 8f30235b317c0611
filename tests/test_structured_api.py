"""Structured outputs through the real server on the tiny random-weight checkpoint: chat
completions `response_format`, Responses `text.format`, strict tools and /generate's
json_schema / regex / ebnf; streamed and not; bad schemas are 400s naming the problem."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from server_process import ServerProcess
from structured_schemas import SCHEMAS

MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def base_url(tiny_ckpt: Path) -> Iterator[str]:
    server = ServerProcess(tiny_ckpt, ["--device", "cpu", "--served-model-name", "x", "--context-length", "2048",
                                       "--max-total-tokens", "16384"], startup_timeout=240)
    yield server.base_url
    server.stop(timeout=60)


@pytest.fixture(scope="module")
def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)


def json_schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


@pytest.mark.parametrize("name, budget", [("nested", 0), ("tagged_union", 6), ("array_of_objects", None)])
def test_chat_answer_validates(sdk: openai.OpenAI, name: str, budget: int | None) -> None:
    extra = {} if budget is None else {"max_reasoning_tokens": budget}
    reply = sdk.chat.completions.create(model="x", messages=MESSAGES, response_format=json_schema_format(name),
                                        max_tokens=160, seed=1, extra_body=extra)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])
    assert "<|" not in choice.message.content


def test_chat_stream_reassembles_to_valid_json_for_n_choices(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model="x", messages=MESSAGES, response_format=json_schema_format("refs"),
                                         max_tokens=120, n=3, temperature=1.0, seed=7, stream=True,
                                         extra_body={"max_reasoning_tokens": 4})
    content = ["", "", ""]
    for chunk in stream:
        for choice in chunk.choices:
            content[choice.index] += choice.delta.content or ""
    for text in content:
        jsonschema.validate(json.loads(text), SCHEMAS["refs"])


def test_chat_json_object(sdk: openai.OpenAI) -> None:
    # Keys are unbounded strings, which a random model never closes here: its reply is cut by
    # max_tokens ("length"). Any reply that ends on its own is a JSON object.
    for seed in range(3):
        reply = sdk.chat.completions.create(model="x", messages=MESSAGES, response_format={"type": "json_object"},
                                            max_tokens=40, seed=seed, extra_body={"max_reasoning_tokens": 0})
        choice = reply.choices[0]
        assert choice.message.content.startswith('{"') or choice.message.content == "{}"
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)


def test_chat_strict_tool_arguments_validate(sdk: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMAS["flat"], "strict": True}}
    for seed in range(2):
        reply = sdk.chat.completions.create(model="x", messages=MESSAGES, tools=[tool], seed=seed, max_tokens=80,
                                            tool_choice={"type": "function", "function": {"name": "lookup"}})
        call = reply.choices[0].message.tool_calls[0]
        assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS["flat"])


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_text_format(sdk: openai.OpenAI, stream: bool) -> None:
    text_format = {"format": {"type": "json_schema", "name": "person", "schema": SCHEMAS["flat"], "strict": True}}
    if stream:
        deltas = "".join(event.delta for event in sdk.responses.create(
            model="x", input="Describe a person.", text=text_format, max_output_tokens=120, stream=True,
            extra_body={"max_reasoning_tokens": 3}) if event.type == "response.output_text.delta")
        jsonschema.validate(json.loads(deltas), SCHEMAS["flat"])
    else:
        response = sdk.responses.create(model="x", input="Describe a person.", text=text_format,
                                        max_output_tokens=120, extra_body={"max_reasoning_tokens": 3})
        assert response.status == "completed"
        jsonschema.validate(json.loads(response.output_text), SCHEMAS["flat"])


@pytest.mark.parametrize("key, value, check", [
    ("json_schema", json.dumps(SCHEMAS["optional_fields"]),
     lambda text: jsonschema.validate(json.loads(text), SCHEMAS["optional_fields"]) is None),
    ("regex", r"(cat|dog)-[0-9]{3}", lambda text: text[:3] in ("cat", "dog") and len(text) == 7),
    ("ebnf", 'root ::= "[" digit ("," digit)* "]"\ndigit ::= [0-9]', lambda text: text[0] == "["),
])
def test_generate_grammar_params(base_url: str, key: str, value: str, check) -> None:
    body = {"text": "Answer:", "sampling_params": {key: value, "max_new_tokens": 64, "temperature": 0.8, "seed": 3}}
    reply = httpx.post(f"{base_url}/generate", json=body, timeout=120).json()
    assert reply["meta_info"]["finish_reason"]["type"] == "stop"
    assert check(reply["text"]), reply["text"]


@pytest.mark.parametrize("path, body, param, fragment", [
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "name"}}}},
     "response_format.json_schema.schema", "required"),
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}},
     "response_format.json_schema.schema", "missing"),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": {"type": "object", "properties": {"a": {"type": "strin"}}}}}]},
     "tools[0].function.parameters", "strin"),
    ("/v1/responses", {"input": "x", "text": {"format": {"type": "json_schema", "name": "x",
                                                         "schema": {"type": "array", "minItems": -1}}}},
     "text.format.schema", "minItems"),
    ("/generate", {"text": "x", "sampling_params": {"regex": "(unclosed"}}, "sampling_params.regex", "unclosed"),
    ("/generate", {"text": "x", "sampling_params": {"regex": "a", "ebnf": 'root ::= "a"'}}, "sampling_params.ebnf",
     "only one"),
])
def test_bad_schemas_are_400_naming_the_problem(base_url: str, path: str, body: dict, param: str,
                                                fragment: str) -> None:
    reply = httpx.post(f"{base_url}{path}", json={"model": "x", **body}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


# A forced call (tool_choice named or required) to a tool without `strict`: the arguments are still
# one JSON object with the tool's keys, the call ends the reply. Random weights write unbounded
# strings, so a reply may be cut inside the arguments by max_tokens ("length"); every reply that
# ends is a finished call, and some do.
LOOSE_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}}}
STRICT_LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": SCHEMAS["flat"], "strict": True}}
WEATHER_KEYS = {"location", "unit"}
FORCED_SEEDS = (9, 10)


def streamed_chat_call(sdk: openai.OpenAI, **kwargs) -> tuple[str, str, str]:
    """(name, arguments, finish_reason) from the chunks of a streamed chat completion."""
    name = arguments = finish = ""
    for chunk in sdk.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return name, arguments, finish


@pytest.mark.parametrize("choice, stream", [({"type": "function", "function": {"name": "get_weather"}}, False),
                                            ("required", True)], ids=["named", "required-stream"])
def test_chat_forced_call_is_json_and_ends_the_reply(sdk: openai.OpenAI, choice, stream: bool) -> None:
    finished = 0
    for seed in FORCED_SEEDS:
        kwargs = dict(model="x", messages=MESSAGES, tools=[LOOSE_WEATHER, STRICT_LOOKUP], tool_choice=choice,
                      seed=seed, max_tokens=40, extra_body={"max_reasoning_tokens": 6})
        if stream:
            name, arguments, finish = streamed_chat_call(sdk, **kwargs)
        else:
            reply = sdk.chat.completions.create(**kwargs)
            call = reply.choices[0].message.tool_calls[0]
            name, arguments, finish = call.function.name, call.function.arguments, reply.choices[0].finish_reason
        assert name == "get_weather" if choice != "required" else name in ("get_weather", "lookup")
        assert finish in ("tool_calls", "length")
        if finish == "tool_calls":
            finished += 1
            parsed = json.loads(arguments)
            if name == "lookup":
                jsonschema.validate(parsed, SCHEMAS["flat"])
            else:
                assert set(parsed) <= WEATHER_KEYS
    assert finished >= 1


def test_chat_forced_call_without_max_tokens_stops_at_the_call(sdk: openai.OpenAI) -> None:
    # Seed 9 is one whose random-weight reply closes the arguments (see the test above).
    reply = sdk.chat.completions.create(model="x", messages=MESSAGES, tools=[LOOSE_WEATHER, STRICT_LOOKUP], seed=9,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        extra_body={"max_reasoning_tokens": 6})
    assert reply.choices[0].finish_reason == "tool_calls" and reply.usage.completion_tokens < 64
    assert set(json.loads(reply.choices[0].message.tool_calls[0].function.arguments)) <= WEATHER_KEYS


@pytest.mark.parametrize("choice, stream", [({"type": "function", "name": "get_weather"}, True),
                                            ("required", False)], ids=["named-stream", "required"])
def test_responses_forced_call_is_json_and_ends_the_reply(sdk: openai.OpenAI, choice, stream: bool) -> None:
    tools = [{"type": "function", **tool["function"]} for tool in (LOOSE_WEATHER, STRICT_LOOKUP)]
    finished = 0
    for seed in FORCED_SEEDS:
        kwargs = dict(model="x", input=MESSAGES[0]["content"], tools=tools, tool_choice=choice,
                      max_output_tokens=40, extra_body={"max_reasoning_tokens": 6, "seed": seed})
        if stream:
            events = list(sdk.responses.create(stream=True, **kwargs))
            response = events[-1].response
            done = [event.item for event in events if event.type == "response.output_item.done"]
            assert done[-1] == response.output[-1]  # the call is done in the stream too, complete or cut
        else:
            response = sdk.responses.create(**kwargs)
        call = response.output[-1]
        assert call.type == "function_call" and [item.type for item in response.output[:-1]] in ([], ["reasoning"])
        assert call.name == "get_weather" if choice != "required" else call.name in ("get_weather", "lookup")
        if response.status == "completed":
            finished += 1
            assert call.status == "completed"
            parsed = json.loads(call.arguments)
            assert set(parsed) <= (WEATHER_KEYS if call.name == "get_weather" else set(SCHEMAS["flat"]["properties"]))
        else:
            assert (response.status, call.status) == ("incomplete", "incomplete") and call.arguments
    assert finished >= 1
