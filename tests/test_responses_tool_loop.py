"""/v1/responses tool loops, driven deterministically, in process (httpx ASGI transport + the SDK).

`ScriptedModelDouble` is a test double of the *model's output only*: each engine request (one
loop step) "generates" the next hand-written harmony script. A random-weight model cannot be made
to call a tool, so this is how the loop is checked. Everything else is real: the python tool
(sandbox / uv backend), the browser tool against the Exa test double of test_tools_browser.py, a
local MCP server built with the `mcp` package. The double also plays the engine's prefix cache
(cached = longest prefix shared with an earlier request's prompt + output), which checks that each
loop step's prompt continues the previous one token for token.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from test_tools_browser import API_KEY as EXA_KEY
from test_tools_browser import ExaDouble
from test_tools_mcp import SERVER_SCRIPT, free_port, start_server, stop_server

from oss_serve.api.app import build_app
from oss_serve.api.engine_client import Generator
from oss_serve.api.responses.service import ResponsesService
from oss_serve.api.responses.store import ResponseStore
from oss_serve.api.state import ServingState
from oss_serve.engine.outputs import StreamOutput
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs
from oss_serve.tools.base import ToolServer
from oss_serve.tools.browser_backends import ExaBackend
from oss_serve.tools.browser_tool import BrowserToolServer
from oss_serve.tools.python_backends import SandboxBackend, UvBackend
from oss_serve.tools.python_tool import PythonToolServer
from oss_serve.tools.tool_group import ToolServerGroup

MODEL = "scripted-gpt-oss"
CONTEXT_LENGTH = 8192
VOCAB_SIZE = 201088  # o200k_harmony
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "Gets the weather",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}

PYTHON_CALL = ("<|channel|>analysis<|message|>Compute it.<|end|>"
               "<|start|>assistant<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>")
FINAL_42 = "<|channel|>final<|message|>The answer is 42.<|return|>"
FUNCTION_CALL_ONLY = ('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
                      '{"location": "Oslo"}<|call|>')


class ScriptedModelDouble:
    """Engine stand-in whose 'model' writes the given harmony scripts, one per request."""

    def __init__(self, encoding: Any, scripts: list[str]) -> None:
        self.encoding = encoding
        self.scripts = list(scripts)
        self.prompts: list[list[int]] = []
        self.params: list[SamplingParams] = []
        self.sequences: list[list[int]] = []  # prompt + output of every request: the "prefix cache"

    def _cached(self, prompt: list[int]) -> int:
        best = 0
        for sequence in self.sequences:
            shared = 0
            for a, b in zip(sequence, prompt):
                if a != b:
                    break
                shared += 1
            best = max(best, shared)
        return min(best, len(prompt) - 1)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
                       detokenize: bool = True) -> AsyncIterator[StreamOutput]:
        self.prompts.append(list(prompt_ids))
        self.params.append(params)
        cached = self._cached(prompt_ids)
        script = self.scripts.pop(0) if self.scripts else FINAL_42
        script_ids = self.encoding.encode(script, allowed_special="all")
        produced: list[int] = []
        try:
            for position in range(0, len(script_ids), 2):
                await asyncio.sleep(0)
                chunk: list[int] = []
                finish = None
                for token_id in script_ids[position:position + 2]:
                    chunk.append(token_id)
                    produced.append(token_id)
                    if token_id in params.stop_token_ids:
                        finish = "stop"
                        break
                    if params.max_new_tokens is not None and len(produced) >= params.max_new_tokens:
                        finish = "length"
                        break
                if finish is None and len(produced) == len(script_ids):
                    finish = "stop"
                yield StreamOutput(request_id, chunk, "", None, len(prompt_ids), len(produced), cached,
                                   finished=finish is not None, finish_reason=finish)  # type: ignore[arg-type]
                if finish is not None:
                    return
        finally:
            self.sequences.append(list(prompt_ids) + produced)

    async def abort(self, request_id: str) -> None:
        return None

    def stats(self) -> dict[str, float]:
        return {}


def make_app(encoding: Any, scripts: list[str], tool_server: ToolServer | None = None,
             store: ResponseStore | None = None) -> tuple[Any, ScriptedModelDouble]:
    engine = ScriptedModelDouble(encoding, scripts)
    args = ServerArgs(model_path="/models/gpt-oss", served_model_name=MODEL, response_store=":memory:")
    state = ServingState(server_args=args, engine=engine, generator=Generator(engine), tokenizer=None,  # type: ignore[arg-type]
                         context_length=CONTEXT_LENGTH, model_name=MODEL, vocab_size=VOCAB_SIZE,
                         ready=True)
    app = build_app(state)
    # The route set is the real one; the service gets the test's tools (started here) and store.
    app.state.responses.tool_server = tool_server
    app.state.responses.store = store or ResponseStore(":memory:")
    return app, engine


def sdk_for(app: Any) -> tuple[httpx.AsyncClient, openai.AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)
    return http, openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=http, max_retries=0)


async def sse_payloads(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The SSE stream's events as sent, each checked against its `event:` line."""
    payloads = []
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, await reply.aread()
        event_name = None
        async for line in reply.aiter_lines():
            if line.startswith("event: "):
                event_name = line[len("event: "):]
            elif line.startswith("data: "):
                payloads.append(json.loads(line[len("data: "):]))
                assert payloads[-1]["type"] == event_name
    return payloads


async def raw_events(http: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    """The SSE stream, each event checked against the openai schema."""
    return [EVENT.validate_python(payload) for payload in await sse_payloads(http, body)]


def check_event_order(events: list[Any]) -> None:
    """Numbering, framing and per-item nesting of a complete stream."""
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type in ("response.completed", "response.incomplete", "response.failed")
    open_items: set[int] = set()
    done_items: set[int] = set()
    for event in events[2:-1]:
        index = getattr(event, "output_index", None)
        if event.type == "response.output_item.added":
            assert index not in open_items and index not in done_items
            open_items.add(index)
        elif event.type == "response.output_item.done":
            open_items.remove(index)
            done_items.add(index)
        else:
            assert index in open_items, event.type
    assert not open_items
    final = events[-1].response
    assert len(final.output) == len(done_items)


def python_tool() -> PythonToolServer:
    for backend_class in (SandboxBackend, UvBackend):
        if backend_class.unavailable_reason() is None:
            return PythonToolServer(backend_class(), timeout_s=20)
    pytest.skip("no python tool backend (sandbox or uv) on this machine")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- python (code_interpreter) ---

def test_python_loop_items_events_usage_and_prefix_reuse(harmony_encoding: Any) -> None:
    app, engine = make_app(harmony_encoding, [PYTHON_CALL, FINAL_42], python_tool())
    body = {"model": MODEL, "input": "What is 6*7?",
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            "include": ["code_interpreter_call.outputs"]}

    async def go() -> tuple[Response, list[Any]]:
        http, sdk = sdk_for(app)
        response = await sdk.responses.create(**body)
        engine.scripts = [PYTHON_CALL, FINAL_42]
        return response, await raw_events(http, body)

    response, events = run(go())
    Response.model_validate(response.model_dump())
    assert [item.type for item in response.output] == ["reasoning", "code_interpreter_call", "message"]
    reasoning, call, message = response.output
    assert reasoning.content[0].text == "Compute it."
    assert call.code == "print(6 * 7)" and call.status == "completed"
    assert call.outputs[0].type == "logs" and call.outputs[0].logs.strip() == "42"
    assert response.output_text == "The answer is 42." and response.status == "completed"
    assert len({item.id for item in response.output}) == 3

    # Step 2's prompt is step 1's prompt + its output + the tool message: all of it cached.
    first_prompt, second_prompt = engine.prompts[0], engine.prompts[1]
    step_one_output = harmony_encoding.encode(PYTHON_CALL, allowed_special="all")
    assert second_prompt[:len(first_prompt) + len(step_one_output)] == first_prompt + step_one_output
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42" in harmony_encoding.decode(second_prompt)
    usage = response.usage
    final_output = harmony_encoding.encode(FINAL_42, allowed_special="all")
    assert usage.input_tokens == len(first_prompt) + len(second_prompt)
    assert usage.input_tokens_details.cached_tokens == len(first_prompt) + len(step_one_output)
    assert usage.output_tokens == len(step_one_output) + len(final_output)
    assert usage.output_tokens_details.reasoning_tokens == (len(harmony_encoding.encode("Compute it."))
                                                            + len(harmony_encoding.encode("print(6 * 7)")))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    check_event_order(events)
    kinds = [event.type for event in events]
    code_events = [k for k in kinds if k.startswith("response.code_interpreter_call")]
    assert code_events[0] == "response.code_interpreter_call.in_progress"
    assert code_events[-3:] == ["response.code_interpreter_call_code.done",
                                "response.code_interpreter_call.interpreting",
                                "response.code_interpreter_call.completed"]
    assert "".join(e.delta for e in events if e.type == "response.code_interpreter_call_code.delta") == "print(6 * 7)"
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Compute it."
    assert events[-1].response.usage.output_tokens == usage.output_tokens


def test_tool_failure_becomes_tool_output_and_loop_goes_on(harmony_encoding: Any) -> None:
    failing = ("<|channel|>analysis to=python code<|message|>raise ValueError('boom')<|call|>")
    app, engine = make_app(harmony_encoding, [failing, FINAL_42], python_tool())

    async def go() -> Response:
        _, sdk = sdk_for(app)
        return await sdk.responses.create(model=MODEL, input="x",
                                          tools=[{"type": "code_interpreter", "container": "auto"}],
                                          include=["code_interpreter_call.outputs"])

    response = run(go())
    assert response.status == "completed" and response.output_text == "The answer is 42."
    assert "ValueError: boom" in response.output[0].outputs[0].logs
    assert "ValueError: boom" in harmony_encoding.decode(engine.prompts[1])


def test_max_tool_calls_tells_the_model_then_ends_incomplete(harmony_encoding: Any) -> None:
    call = "<|channel|>analysis to=python code<|message|>print(1)<|call|>"
    app, engine = make_app(harmony_encoding, [call, call, call, FINAL_42], python_tool())

    async def go() -> Response:
        _, sdk = sdk_for(app)
        return await sdk.responses.create(model=MODEL, input="x",
                                          tools=[{"type": "code_interpreter", "container": "auto"}],
                                          max_tool_calls=1)

    response = run(go())
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_messages"
    assert len(engine.prompts) == 3
    assert "Tool call limit reached" in harmony_encoding.decode(engine.prompts[2])
    assert [item.status for item in response.output] == ["completed", "incomplete", "incomplete"]


def test_max_output_tokens_ends_incomplete(harmony_encoding: Any) -> None:
    app, _ = make_app(harmony_encoding, [FINAL_42])

    async def go() -> Response:
        _, sdk = sdk_for(app)
        return await sdk.responses.create(model=MODEL, input="x", max_output_tokens=5)

    response = run(go())
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5 and response.output[0].status == "incomplete"


# --- browser (web_search) ---

@pytest.fixture(scope="module")
def exa_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ExaDouble)
    server.requests = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_browser_loop_web_search_items_and_url_citations(harmony_encoding: Any, exa_url: str) -> None:
    browser = BrowserToolServer(ExaBackend(EXA_KEY, base_url=exa_url), allow_private=True, timeout_s=5)
    scripts = [
        '<|channel|>analysis to=browser.search <|constrain|>json<|message|>{"query": "sea otters"}<|call|>',
        '<|channel|>analysis to=browser.open <|constrain|>json<|message|>{"id": 0, "cursor": 0}<|call|>',
        '<|channel|>analysis to=browser.find <|constrain|>json<|message|>{"pattern": "urchins"}<|call|>',
        "<|channel|>final<|message|>Sea otters eat urchins 【1†L3-L4】 and more.<|return|>",
    ]
    app, _ = make_app(harmony_encoding, list(scripts), browser)
    body = {"model": MODEL, "input": "What do otters eat?", "tools": [{"type": "web_search_preview"}]}

    async def go() -> tuple[Response, list[Any]]:
        http, sdk = sdk_for(app)
        response = await sdk.responses.create(**body)
        app.state.responses.state.engine.scripts = list(scripts)
        return response, await raw_events(http, body)

    response, events = run(go())
    assert [item.type for item in response.output] == ["web_search_call"] * 3 + ["message"]
    search, opened, found, message = response.output
    assert search.action.type == "search" and search.action.query == "sea otters"
    assert opened.action.type == "open_page" and opened.action.url.endswith("/pages/otters.html")
    assert found.action.type == "find_in_page" and found.action.pattern == "urchins"
    text = message.content[0]
    assert "【" not in text.text and "/pages/otters.html" in text.text
    annotation = text.annotations[0]
    assert annotation.type == "url_citation" and annotation.title == "Sea otters"
    assert text.text[annotation.start_index:annotation.end_index].endswith("/pages/otters.html))")

    check_event_order(events)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert all("【" not in delta for delta in deltas) and "".join(deltas) == text.text
    assert [e.type for e in events if e.type.startswith("response.web_search_call")] == [
        "response.web_search_call.in_progress", "response.web_search_call.searching",
        "response.web_search_call.completed"] * 3
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert len(added) == 1 and added[0].annotation.url == annotation.url


# --- MCP ---

@pytest.fixture(scope="module")
def calc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    script = tmp_path_factory.mktemp("mcp") / "calc_server.py"
    script.write_text(SERVER_SCRIPT)
    port = free_port()
    process = start_server(script, port)
    yield f"http://127.0.0.1:{port}/sse"
    stop_server(process)


def test_request_level_mcp_tool_calls_and_errors(harmony_encoding: Any, calc_url: str) -> None:
    scripts = ['<|channel|>commentary to=calc.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>',
               '<|channel|>commentary to=calc.explode <|constrain|>json<|message|>{}<|call|>',
               FINAL_42]
    app, engine = make_app(harmony_encoding, list(scripts))
    body = {"model": MODEL, "input": "add", "tools": [{"type": "mcp", "server_label": "calc", "server_url": calc_url,
                                                       "require_approval": "never"}]}

    async def go() -> tuple[Response, list[Any]]:
        http, sdk = sdk_for(app)
        response = await sdk.responses.create(**body)
        engine.scripts = list(scripts)
        return response, await raw_events(http, body)

    response, events = run(go())
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    listed, added, exploded, _ = response.output
    assert {tool.name for tool in listed.tools} == {"add", "explode", "slow"}
    assert (added.server_label, added.name, json.loads(added.arguments), added.output) == (
        "calc", "add", {"a": 2, "b": 3}, "sum: 5")
    assert exploded.status == "failed" and exploded.error is not None and exploded.output is None
    assert "calc" in harmony_encoding.decode(engine.prompts[0])  # the namespace was shown to the model
    check_event_order(events)
    mcp_kinds = [e.type for e in events if e.type.startswith("response.mcp_call")]
    assert mcp_kinds[:2] == ["response.mcp_call.in_progress", "response.mcp_call_arguments.delta"]
    assert "response.mcp_call.completed" in mcp_kinds and mcp_kinds[-1] == "response.mcp_call.failed"


# --- generation cut off inside a call ---

CUT_CALLS = {  # kind -> (tools, item type, header, the call's text, the item field that carries the text)
    "python": ([{"type": "code_interpreter", "container": {"type": "auto"}}], "code_interpreter_call",
               "<|channel|>analysis to=python code<|message|>", "import math\nprint(math.factorial(20) % 97)", "code"),
    "mcp": ([{"type": "mcp", "server_label": "calc", "require_approval": "never"}], "mcp_call",
            "<|channel|>commentary to=calc.add <|constrain|>json<|message|>", '{"a": 1234567, "b": 7654321}',
            "arguments"),
    "function": ([WEATHER], "function_call",
                 "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
                 '{"location": "San Francisco, California"}', "arguments"),
}


@pytest.mark.parametrize("kind", list(CUT_CALLS))
def test_call_cut_by_max_output_tokens_ends_incomplete_with_its_text(harmony_encoding: Any, kind: str,
                                                                    request: pytest.FixtureRequest) -> None:
    tools, item_type, header, text, field = CUT_CALLS[kind]
    if kind == "python":
        tool_server: ToolServer | None = python_tool()
    elif kind == "mcp":
        tools = [{**tools[0], "server_url": request.getfixturevalue("calc_url")}]
        tool_server = None
    else:
        tool_server = None
    header_tokens = len(harmony_encoding.encode(header, allowed_special="all"))
    kept_tokens = 4  # of the call's text, before max_output_tokens cuts it
    kept = harmony_encoding.decode(harmony_encoding.encode(text, allowed_special="all")[:kept_tokens])
    app, engine = make_app(harmony_encoding, [header + text + "<|call|>"] * 2, tool_server)
    body = {"model": MODEL, "input": "x", "tools": tools, "max_output_tokens": header_tokens + kept_tokens}

    async def go() -> tuple[Response, Response, list[dict[str, Any]]]:
        http, sdk = sdk_for(app)
        response = await sdk.responses.create(**body)
        return response, await sdk.responses.retrieve(response.id), await sse_payloads(http, body)

    response, stored, payloads = run(go())
    events = [EVENT.validate_python(payload) for payload in payloads]
    check_event_order(events)  # every item added is done
    assert events[-1].type == "response.incomplete"
    for final in (response, stored, events[-1].response):
        assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
        item = final.output[-1]
        assert (item.type, item.status, getattr(item, field)) == (item_type, "incomplete", kept)
    done = [event.item for event in events if event.type == "response.output_item.done"][-1]
    assert (done.type, done.status, getattr(done, field)) == (item_type, "incomplete", kept)
    assert "".join(getattr(event, "delta", "") for event in events if event.type.endswith("delta")) == kept
    assert len(engine.prompts) == 2  # one step per request: the cut call never ran


def test_function_call_arguments_done_has_only_openai_fields(harmony_encoding: Any) -> None:
    app, _ = make_app(harmony_encoding, [FUNCTION_CALL_ONLY])

    async def go() -> list[dict[str, Any]]:
        http, _ = sdk_for(app)
        return await sse_payloads(http, {"model": MODEL, "input": "x", "tools": [WEATHER]})

    done = [payload for payload in run(go()) if payload["type"] == "response.function_call_arguments.done"]
    assert len(done) == 1 and set(done[0]) == {"type", "sequence_number", "item_id", "output_index", "arguments"}


# --- function tools, conversation, tool_choice, validation ---

FUNCTION_CALL = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
                 'to=functions.get_weather <|constrain|>json<|message|>{"location": "Paris"}<|call|>')


def test_function_call_roundtrip_with_previous_response_id(harmony_encoding: Any) -> None:
    app, engine = make_app(harmony_encoding, [FUNCTION_CALL, "<|channel|>final<|message|>Sunny.<|return|>"])
    body = {"model": MODEL, "input": "Weather in Paris?", "tools": [WEATHER]}

    async def go() -> tuple[Response, Response, list[Any]]:
        http, sdk = sdk_for(app)
        first = await sdk.responses.create(**body)
        call = first.output[-1]
        second = await sdk.responses.create(model=MODEL, previous_response_id=first.id, tools=[WEATHER],
                                            input=[{"type": "function_call_output", "call_id": call.call_id,
                                                    "output": "sunny, 24C"}])
        engine.scripts = [FUNCTION_CALL]
        return first, second, await raw_events(http, body)

    first, second, events = run(go())
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id.startswith("call_") and call.status == "completed" and first.status == "completed"
    assert second.output_text == "Sunny."
    second_prompt = harmony_encoding.decode(engine.prompts[1])
    tool_turn = "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny, 24C<|end|>"
    assert tool_turn in second_prompt
    assert "Need weather." in second_prompt  # the turn is not finished: its reasoning stays
    check_event_order(events)
    arguments = [e for e in events if e.type.startswith("response.function_call_arguments")]
    assert "".join(e.delta for e in arguments[:-1]) == '{"location": "Paris"}'
    assert arguments[-1].type == "response.function_call_arguments.done"
    assert arguments[-1].arguments == '{"location": "Paris"}'


def test_finished_turn_reasoning_is_dropped_on_continuation(harmony_encoding: Any) -> None:
    first_script = "<|channel|>analysis<|message|>Secret thoughts.<|end|><|start|>assistant" + FINAL_42
    app, engine = make_app(harmony_encoding, [first_script, FINAL_42])

    async def go() -> None:
        _, sdk = sdk_for(app)
        first = await sdk.responses.create(model=MODEL, input="q1")
        await sdk.responses.create(model=MODEL, input="q2", previous_response_id=first.id)

    run(go())
    second_prompt = harmony_encoding.decode(engine.prompts[1])
    assert "Secret thoughts." not in second_prompt
    assert "q1" in second_prompt and "The answer is 42." in second_prompt and "q2" in second_prompt


def test_tool_choice_forces_the_first_reply_only(harmony_encoding: Any) -> None:
    app, engine = make_app(harmony_encoding, [
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location": "Oslo"}<|call|>',
        FINAL_42])
    async def go() -> tuple[Response, Response]:
        _, sdk = sdk_for(app)
        named = await sdk.responses.create(model=MODEL, input="x", tools=[WEATHER],
                                           tool_choice={"type": "function", "name": "get_weather"})
        none = await sdk.responses.create(model=MODEL, input="x", tools=[WEATHER], tool_choice="none")
        return named, none

    named, _ = run(go())
    forced = engine.params[0].structured.forced_call
    assert forced is not None and "to=functions.get_weather" in forced.source
    assert harmony_encoding.decode(engine.prompts[0]).endswith("<|start|>assistant")
    assert named.output[0].type == "function_call" and named.output[0].arguments == '{"location": "Oslo"}'
    assert engine.params[1].structured is None
    assert "get_weather" not in harmony_encoding.decode(engine.prompts[1])


def test_reasoning_effort_three_ways(harmony_encoding: Any) -> None:
    app, engine = make_app(harmony_encoding, [FINAL_42] * 4)

    async def go() -> None:
        _, sdk = sdk_for(app)
        await sdk.responses.create(model=MODEL, input="x", reasoning={"effort": "high"})
        await sdk.responses.create(model=MODEL, input="x", extra_body={"reasoning_effort": "low"})
        await sdk.responses.create(model=MODEL, input="x", instructions="Be brief.\nReasoning: high")
        await sdk.responses.create(model=MODEL, input="x")

    run(go())
    prompts = [harmony_encoding.decode(prompt) for prompt in engine.prompts]
    assert "Reasoning: high" in prompts[0] and "Reasoning: low" in prompts[1]
    assert "Reasoning: high" in prompts[2] and "Be brief." in prompts[2] and "Reasoning: high" not in prompts[2].split(
        "# Instructions")[-1]
    assert "Reasoning: medium" in prompts[3]


@pytest.mark.parametrize("demo_tools, backend, key", [(True, None, "EXA_API_KEY or YDC_API_KEY"),
                                                       (False, "you", "YDC_API_KEY")], ids=["demo-on", "no-tools"])
def test_web_search_without_a_key_is_refused_naming_the_key(harmony_encoding: Any, monkeypatch: pytest.MonkeyPatch,
                                                            demo_tools: bool, backend: str | None, key: str) -> None:
    if backend:
        monkeypatch.setenv("BROWSER_BACKEND", backend)
    app, _ = make_app(harmony_encoding, [], python_tool() if demo_tools else None)

    async def go() -> openai.BadRequestError:
        _, sdk = sdk_for(app)
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.responses.create(model=MODEL, input="x", tools=[{"type": "web_search_preview"}])
        return caught.value

    error = run(go())
    assert f"set {key} in the server's environment" in error.message
    assert ("--tool-server demo" in error.message) is not demo_tools  # the flag only where it is missing too
    assert error.body["param"] == "tools[0].type" and error.body["code"] == "tool_not_enabled"


@pytest.mark.parametrize("body, fragment", [
    ({"tools": [{"type": "code_interpreter", "container": "auto"}]}, "--tool-server"),
    ({"tools": [{"type": "web_search_preview"}]}, "'web_search_preview'"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "strin"}}}}, "text.format.schema"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "nope"),
    ({"previous_response_id": "resp_missing"}, "resp_missing"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}, "call_id"),
])
def test_bad_requests_are_400_naming_the_problem(harmony_encoding: Any, body: dict, fragment: str) -> None:
    app, _ = make_app(harmony_encoding, [])

    async def go() -> httpx.Response:
        http, _ = sdk_for(app)
        return await http.post("/v1/responses", json={"model": MODEL, "input": "x", **body})

    reply = run(go())
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_store_survives_a_new_app_on_the_same_file(harmony_encoding: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "responses.sqlite3")
    app, _ = make_app(harmony_encoding, [FINAL_42], store=ResponseStore(path))

    async def create() -> str:
        _, sdk = sdk_for(app)
        return (await sdk.responses.create(model=MODEL, input="x")).id

    response_id = run(create())
    app.state.responses.store.close()
    reopened, _ = make_app(harmony_encoding, [], store=ResponseStore(path))

    async def read() -> tuple[Response, list[Any]]:
        _, sdk = sdk_for(reopened)
        response = await sdk.responses.retrieve(response_id)
        items = await sdk.responses.input_items.list(response_id)
        return response, items.data

    response, items = run(read())
    assert response.output_text == "The answer is 42." and items[0].content[0].text == "x"


def test_store_ttl_and_cap_evict() -> None:
    store = ResponseStore(":memory:", max_responses=2)
    for number in range(3):
        store.save(f"r{number}", float(number) + 1e9, "{}", "[]", "{}")
    assert store.get("r0") is None and store.get("r2") is not None and store.count() == 2
    expiring = ResponseStore(":memory:", ttl_seconds=60)
    expiring.save("old", 1.0, "{}", "[]", "{}")
    assert expiring.get("old") is None


def test_background_cancel_stops_the_loop(harmony_encoding: Any) -> None:
    slow = "<|channel|>analysis to=python code<|message|>import time; time.sleep(30)<|call|>"
    app, _ = make_app(harmony_encoding, [slow], python_tool())

    async def go() -> tuple[Response, Response, Response]:
        _, sdk = sdk_for(app)
        queued = await sdk.responses.create(model=MODEL, input="x", background=True,
                                            tools=[{"type": "code_interpreter", "container": "auto"}])
        for _ in range(200):
            if (await sdk.responses.retrieve(queued.id)).status == "in_progress":
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        cancelled = await sdk.responses.cancel(queued.id)
        return queued, cancelled, await sdk.responses.retrieve(queued.id)

    queued, cancelled, retrieved = run(go())
    assert queued.status == "queued" and queued.background is True
    assert cancelled.status == "cancelled" and retrieved.status == "cancelled"
    call = retrieved.output[-1]  # cancelled while its code ran: it ends incomplete, with the code
    assert (call.type, call.status, call.code) == ("code_interpreter_call", "incomplete", "import time; time.sleep(30)")
    assert isinstance(app.state.responses, ResponsesService)


def test_tool_group_shows_only_the_requested_namespaces(harmony_encoding: Any, exa_url: str) -> None:
    group = ToolServerGroup([python_tool(), BrowserToolServer(ExaBackend(EXA_KEY, base_url=exa_url))])
    app, engine = make_app(harmony_encoding, [FINAL_42], group)

    async def go() -> None:
        _, sdk = sdk_for(app)
        await sdk.responses.create(model=MODEL, input="x", tools=[{"type": "code_interpreter", "container": "auto"}])

    run(go())
    prompt = harmony_encoding.decode(engine.prompts[0])
    assert "## python" in prompt and "## browser" not in prompt


# --- lifecycle: delete, tool server start failures, request MCP cleanup, echoes ---

class _StubTools(ToolServer):
    """A tool server that records start/aclose; `fail` makes start() raise."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.started = self.closed = False

    def namespaces(self) -> list[Any]:
        return []

    def has_tool(self, recipient: str) -> bool:
        return False

    async def start(self) -> None:
        await asyncio.sleep(0.01 if self.fail else 0)
        if self.fail:
            raise RuntimeError("no backend")
        self.started = True

    async def open_session(self) -> Any:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        self.closed = True


def test_deleting_a_running_background_response_keeps_it_deleted(harmony_encoding: Any) -> None:
    app, engine = make_app(harmony_encoding, [FINAL_42])
    inner = engine.generate

    async def slow_generate(*args: Any) -> AsyncIterator[StreamOutput]:
        await asyncio.sleep(30)  # still running when it is deleted
        async for output in inner(*args):
            yield output

    engine.generate = slow_generate  # type: ignore[method-assign]

    async def go() -> int:
        http, sdk = sdk_for(app)
        queued = await sdk.responses.create(model=MODEL, input="x", background=True)
        for _ in range(200):
            if (await sdk.responses.retrieve(queued.id)).status == "in_progress":
                break
            await asyncio.sleep(0.01)
        assert (await http.delete(f"/v1/responses/{queued.id}")).status_code == 200
        await asyncio.sleep(0.05)
        assert app.state.responses.store.get(queued.id) is None
        return (await http.get(f"/v1/responses/{queued.id}")).status_code

    assert run(go()) == 404


def test_tool_group_start_failure_closes_the_started_servers() -> None:
    good, bad = _StubTools(), _StubTools(fail=True)
    with pytest.raises(RuntimeError, match="no backend"):
        run(ToolServerGroup([good, bad]).start())
    assert good.started and good.closed and bad.closed


def test_tool_server_start_failure_is_closed_and_503(harmony_encoding: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app(harmony_encoding, [])
    built: list[_StubTools] = []
    monkeypatch.setattr("oss_serve.api.responses.service.build_tool_server",
                        lambda args: built.append(_StubTools(fail=True)) or built[-1])
    app.state.responses._tools_started = False

    async def go() -> list[int]:
        http, _ = sdk_for(app)
        return [(await http.post("/v1/responses", json={"model": MODEL, "input": "x"})).status_code
                for _ in range(2)]

    assert run(go()) == [503, 503]
    assert len(built) == 2 and all(server.closed for server in built)
    store = app.state.responses.store
    run(app.state.responses.aclose())
    assert app.state.responses._store is None and store is not None


class _StubMcp:
    instances: list[_StubMcp] = []

    def __init__(self, url: str, **_: Any) -> None:
        self.url = url
        self.started = self.closed = False
        _StubMcp.instances.append(self)

    async def start(self) -> None:
        from oss_serve.tools.mcp_client import McpConnectError
        self.started = True
        raise McpConnectError("half-connected, then refused")

    async def aclose(self) -> None:
        self.closed = True


def test_request_mcp_server_is_closed_when_start_fails_or_the_request_is_bad(
        harmony_encoding: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app(harmony_encoding, [])
    monkeypatch.setattr("oss_serve.api.responses.tool_setup.McpToolServer", _StubMcp)
    _StubMcp.instances = []
    mcp = {"type": "mcp", "server_label": "calc", "server_url": "http://127.0.0.1:1/sse"}

    async def go(extra: dict[str, Any]) -> httpx.Response:
        http, _ = sdk_for(app)
        return await http.post("/v1/responses", json={"model": MODEL, "input": "x", "tools": [mcp], **extra})

    reply = run(go({}))
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "mcp_connection_failed"
    assert [server.closed for server in _StubMcp.instances] == [True]
    reply = run(go({"max_reasoning_tokens": -1}))  # rejected before any MCP server is connected
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "max_reasoning_tokens"
    assert len(_StubMcp.instances) == 1


def test_text_format_is_echoed(harmony_encoding: Any) -> None:
    app, _ = make_app(harmony_encoding, ['<|channel|>final<|message|>{"a": 1}<|return|>', FINAL_42])
    schema_format = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}

    async def go() -> tuple[Response, Response]:
        _, sdk = sdk_for(app)
        shaped = await sdk.responses.create(model=MODEL, input="x", text={"format": schema_format})
        return shaped, await sdk.responses.create(model=MODEL, input="x")

    shaped, plain = run(go())
    assert shaped.text.format.type == "json_schema" and shaped.text.format.name == "answer"
    assert shaped.text.format.schema_ == {"type": "object"}
    assert plain.text.format.type == "text"
