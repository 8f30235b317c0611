"""The HTTP layer on a scripted token source, in process (httpx ASGI transport + the openai SDK).

`ScriptedTokenSource` is a test double of the engine that replays hand-written harmony output:
a random-weight model cannot be made to call a tool, so this is how the tool_calls paths are
checked end to end. The real engine path is tested in test_api_server.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from oss_serve.api.app import build_app
from oss_serve.api.engine_client import Generator
from oss_serve.api.metrics import ServerMetrics
from oss_serve.api.state import ServingState
from oss_serve.engine.messages import EngineStats
from oss_serve.engine.outputs import StreamOutput, TokenLogprob
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs

MODEL = "scripted-gpt-oss"
CONTEXT_LENGTH = 4096
VOCAB_SIZE = 201088  # o200k_harmony
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
RESPONSES_WEATHER = {"type": "function", **WEATHER_TOOL["function"]}
REASONED_ANSWER = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
                   "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|>")
TOOL_CALL = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
             "to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"Paris\"}<|call|>")


class HarmonyTextTokenizer:
    def __init__(self, encoding) -> None:
        self.encoding = encoding

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode([token_id]).encode()  # the scripts are ASCII: no partial characters


class ScriptedTokenSource:
    """Engine test double: every request 'generates' the script's tokens, a few at a time."""

    def __init__(self, encoding, script: str = REASONED_ANSWER) -> None:
        self.encoding = encoding
        self.script = script
        self.aborted: list[str] = []
        self.seen_prompts: list[list[int]] = []
        self.seen_params: list[SamplingParams] = []

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
                       detokenize: bool = True) -> AsyncIterator[StreamOutput]:
        """As the engine: no text unless asked (so a route that forgot to parse would show it), and a
        stream closed before its last output aborts the request."""
        self.seen_prompts.append(list(prompt_ids))
        self.seen_params.append(params)
        script_ids = self.encoding.encode(self.script, allowed_special="all")
        produced: list[int] = []
        finish = None
        try:
            for position in range(0, len(script_ids), 3):
                await asyncio.sleep(0)
                chunk = []
                matched = None
                for token_id in script_ids[position:position + 3]:
                    chunk.append(token_id)
                    produced.append(token_id)
                    if token_id in params.stop_token_ids:
                        finish, matched = "stop", token_id
                        break
                    if len(produced) >= (params.max_new_tokens or 1 << 30):
                        finish = "length"
                        break
                if finish is None and len(produced) == len(script_ids):
                    finish = "stop"
                shown = [t for t in chunk if not (params.skip_special_tokens and t >= 199998)]
                yield StreamOutput(request_id, chunk, self.encoding.decode(shown) if detokenize else "",
                                   [TokenLogprob(t, -0.5, ((t, -0.5),)) for t in chunk] if params.logprobs else None,
                                   len(prompt_ids), len(produced), 0, finished=finish is not None,
                                   finish_reason=finish, matched_stop=matched)
                if finish is not None:
                    return
        finally:
            if finish is None:
                self.aborted.append(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def flush_cache(self) -> bool:
        return True

    def stats(self) -> EngineStats:
        return EngineStats()


def _app(encoding, script: str = REASONED_ANSWER, api_key: str | None = None):
    engine = ScriptedTokenSource(encoding, script)
    args = ServerArgs(model_path="/models/gpt-oss", served_model_name=MODEL, api_key=api_key, enable_metrics=True)
    state = ServingState(server_args=args, engine=engine, generator=Generator(engine),
                         tokenizer=HarmonyTextTokenizer(encoding), context_length=CONTEXT_LENGTH,
                         model_name=MODEL, vocab_size=VOCAB_SIZE, ready=True)
    metrics = ServerMetrics(engine.stats)
    state.generator.observers.append(metrics)
    return build_app(state, metrics), engine


def _clients(app, api_key: str = "none") -> tuple[httpx.AsyncClient, openai.AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key=api_key, http_client=http, max_retries=0)
    return http, sdk


def run(coro):
    return asyncio.run(coro)


def test_chat_splits_reasoning_and_content(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        _, sdk = _clients(app)
        reply = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        message = reply.choices[0].message
        assert message.content == "Hello there!"
        assert message.model_extra["reasoning_content"] == "The user greets me."
        assert message.model_extra["reasoning"] == "The user greets me."
        assert reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].model_extra["matched_stop"] == 200002
        reasoning_tokens = len(harmony_encoding.encode("The user greets me."))
        assert reply.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
        assert reply.usage.prompt_tokens_details.cached_tokens == 0
        assert reply.metadata == {"weight_version": "default"}
    run(go())


def test_chat_tool_call_non_streaming_and_streaming(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, TOOL_CALL)

    async def go():
        _, sdk = _clients(app)
        request = dict(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
        reply = await sdk.chat.completions.create(**request)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_") and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"location": "Paris"}

        stream = await sdk.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        names, arguments, reasoning, finish, usage = [], "", "", None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for delta_choice in chunk.choices:
                delta = delta_choice.delta
                reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                for tool_call in delta.tool_calls or []:
                    if tool_call.function.name:
                        names.append(tool_call.function.name)
                    arguments += tool_call.function.arguments or ""
                finish = delta_choice.finish_reason or finish
        assert names == ["get_weather"] and arguments == call.function.arguments
        assert reasoning == "Need weather." and finish == "tool_calls"
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    run(go())


def test_named_tool_choice_is_constrained_and_reported(harmony_encoding) -> None:
    app, engine = _app(harmony_encoding, TOOL_CALL)

    async def go():
        _, sdk = _clients(app)
        reply = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        call = reply.choices[0].message.tool_calls[0]
        assert (call.function.name, call.function.arguments) == ("get_weather", "{\"location\": \"Paris\"}")
        assert reply.choices[0].message.reasoning_content == "Need weather."
        assert reply.choices[0].finish_reason == "tool_calls"
        forced = engine.seen_params[-1].structured.forced_call
        assert forced is not None and "to=functions.get_weather" in forced.source
        assert harmony_encoding.decode(engine.seen_prompts[-1]).endswith("<|start|>assistant")
    run(go())


def test_streamed_chat_reassembles_to_non_streamed(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        _, sdk = _clients(app)
        request = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, temperature=0)
        whole = await sdk.chat.completions.create(**request)
        content = {0: "", 1: ""}
        reasoning = {0: "", 1: ""}
        async for chunk in await sdk.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                content[choice.index] += choice.delta.content or ""
                reasoning[choice.index] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
        for choice in whole.choices:
            assert content[choice.index] == choice.message.content
            assert reasoning[choice.index] == choice.message.model_extra["reasoning_content"]
    run(go())


def test_separate_reasoning_false_inlines_reasoning(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        http, _ = _clients(app)
        body = {"messages": [{"role": "user", "content": "hi"}], "separate_reasoning": False}
        reply = (await http.post("/v1/chat/completions", json=body)).json()
        assert reply["choices"][0]["message"]["content"] == "The user greets me.Hello there!"
        assert "reasoning_content" not in reply["choices"][0]["message"]
    run(go())


def test_chat_logprobs_cover_the_content_tokens_only(harmony_encoding) -> None:
    """No harmony markup, header or reasoning token in `logprobs.content`, streamed or not; with
    reasoning inlined into content, its tokens count as content."""
    app, _ = _app(harmony_encoding)

    def text_of(entries) -> str:
        return b"".join(bytes(entry.bytes) for entry in entries).decode()

    async def go():
        _, sdk = _clients(app)
        request = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=1)
        reply = await sdk.chat.completions.create(**request)
        entries = reply.choices[0].logprobs.content
        assert text_of(entries) == reply.choices[0].message.content == "Hello there!"
        assert len(entries) == len(harmony_encoding.encode("Hello there!"))
        assert all(len(entry.top_logprobs) == 1 for entry in entries)
        streamed = []
        async for chunk in await sdk.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                streamed += choice.logprobs.content if choice.logprobs else []
        assert text_of(streamed) == "Hello there!"
        inline = await sdk.chat.completions.create(**request, extra_body={"separate_reasoning": False})
        assert text_of(inline.choices[0].logprobs.content) == "The user greets me.Hello there!"
    run(go())


def test_completions_echo_logprobs_n_and_usage_chunk(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, "Paris is nice.")

    async def go():
        _, sdk = _clients(app)
        reply = await sdk.completions.create(model=MODEL, prompt=["The capital", "Hi"], n=2, echo=True, logprobs=1,
                                             max_tokens=50)
        assert [c.index for c in reply.choices] == [0, 1, 2, 3]
        assert reply.choices[0].text == "The capitalParis is nice."
        assert reply.choices[2].text == "HiParis is nice."
        assert reply.choices[0].logprobs.token_logprobs[0] == -0.5
        assert reply.usage.prompt_tokens == 2 * (2 + 1)
        assert reply.model_extra["metadata"]["weight_version"] == "default"
        text, usage = "", None
        async for chunk in await sdk.completions.create(model=MODEL, prompt=[1, 2, 3], stream=True, max_tokens=50,
                                                       stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            text += "".join(c.text for c in chunk.choices)
        assert text == "Paris is nice." and usage.completion_tokens == len(harmony_encoding.encode("Paris is nice."))
    run(go())


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": "nope"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"},
     "tool_choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": "word " * 5000}, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 0}, "n"),
    ("/generate", {"text": "x", "sampling_params": {"temperature": "hot"}}, "sampling_params.temperature"),
])
def test_bad_requests_get_400_naming_the_field(harmony_encoding, path: str, body: dict, param: str) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        http, _ = _clients(app)
        response = await http.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param, error
    run(go())


def test_prompt_too_long_message_gives_both_numbers(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        http, _ = _clients(app)
        error = (await http.post("/v1/completions", json={"prompt": list(range(1, 5001))})).json()["error"]
        assert "5000" in error["message"] and str(CONTEXT_LENGTH) in error["message"]
        malformed = await http.post("/v1/completions", content=b"{not json",
                                    headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
    run(go())


def test_sdk_raises_bad_request_for_unknown_model(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding)

    async def go():
        _, sdk = _clients(app)
        with pytest.raises(openai.BadRequestError):
            await sdk.completions.create(model="nope", prompt="x")
    run(go())


def test_api_key_guards_every_route_but_health(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, api_key="sekret")

    async def go():
        http, _ = _clients(app)
        assert (await http.get("/health")).status_code == 200
        for path in ("/v1/models", "/get_model_info", "/metrics", "/get_server_info"):
            response = await http.get(path)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
            assert (await http.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get(path, headers={"Authorization": "Bearer sekret"})).status_code == 200
        assert (await http.post("/generate", json={"text": "x"})).status_code == 401
        _, sdk = _clients(app, api_key="sekret")
        assert (await sdk.models.list()).data[0].id == MODEL
    run(go())


def test_native_endpoints(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, "Paris.")

    async def go():
        http, _ = _clients(app)
        result = (await http.post("/generate", json={"text": "The capital of France is",
                                                     "sampling_params": {"max_new_tokens": 2}})).json()
        assert result["meta_info"]["finish_reason"] == {"type": "length", "matched": None}
        assert result["meta_info"]["completion_tokens"] == 2 == len(result["output_ids"])
        lines = [line async for line in (await http.post("/generate", json={"input_ids": [1, 2], "stream": True}))
                 .aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        last = json.loads(lines[-2][5:])
        assert last["text"] == "Paris." and last["meta_info"]["finish_reason"]["type"] == "stop"
        split = (await http.post("/separate_reasoning", json={
            "text": "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final<|message|>ok",
            "reasoning_parser": "gpt-oss"})).json()
        assert split == {"reasoning_text": "hmm", "text": "ok"}
        calls = (await http.post("/parse_function_call", json={
            "text": "<|channel|>commentary to=get_weather<|message|>{}<|call|>", "tool_call_parser": "gpt-oss",
            "tools": [WEATHER_TOOL]})).json()
        assert calls == {"normal_text": "", "calls": [{"tool_index": 0, "name": "get_weather", "parameters": "{}"}]}
        info = (await http.get("/get_model_info")).json()
        assert info["served_model_name"] == MODEL and info["context_length"] == CONTEXT_LENGTH
        metrics = (await http.get("/metrics")).text
        assert "oss_serve:generation_tokens_total" in metrics and "time_to_first_token_seconds" in metrics
    run(go())


def test_metrics_route_label_is_the_route_template(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, api_key="sekret")
    auth = {"Authorization": "Bearer sekret"}

    async def go() -> str:
        http, _ = _clients(app)
        assert (await http.get("/v1/responses/resp_abc123", headers=auth)).status_code == 404
        assert (await http.get("/random-scan-path-1", headers=auth)).status_code == 404
        assert (await http.get("/random-scan-path-2")).status_code == 401
        return (await http.get("/metrics", headers=auth)).text

    metrics = run(go())
    assert 'route="/v1/responses/{response_id}",status="404"' in metrics
    assert 'route="other",status="404"' in metrics and 'route="other",status="401"' in metrics
    assert "resp_abc123" not in metrics and "random-scan-path" not in metrics


def test_cut_tool_call_keeps_the_engine_finish_reason(harmony_encoding) -> None:
    app, _ = _app(harmony_encoding, TOOL_CALL)
    cut = len(harmony_encoding.encode(TOOL_CALL, allowed_special="all")) - 2  # before `<|call|>`

    async def go():
        _, sdk = _clients(app)
        return await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                 tools=[WEATHER_TOOL], max_tokens=cut)

    assert run(go()).choices[0].finish_reason == "length"


class FailingTokenSource(ScriptedTokenSource):
    """Produces one chunk, then fails as an engine bug would."""

    async def generate(self, prompt_ids, params, request_id, *, detokenize=True):
        async for output in super().generate(prompt_ids, params, request_id, detokenize=detokenize):
            yield dataclasses.replace(output, finished=False, finish_reason=None)
            raise RuntimeError("engine exploded")


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}),
    ("/generate", {"text": "hi", "stream": True}),
])
def test_stream_ends_with_an_error_event_on_unexpected_failure(harmony_encoding, path: str, body: dict) -> None:
    app, _ = _app(harmony_encoding)
    app.state.serving.generator.engine = FailingTokenSource(harmony_encoding)

    async def go() -> list[str]:
        http, _ = _clients(app)
        reply = await http.post(path, json=body)
        return [line async for line in reply.aiter_lines() if line.startswith("data:")]

    lines = run(go())
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][5:])["error"]
    assert error["type"] == "server_error" and error["code"] == 500 and "engine exploded" in error["message"]


BROKEN_ARGUMENTS = '{"location": Paris'
BROKEN_CALL = ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
               + BROKEN_ARGUMENTS + "<|call|>")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_unforced_call_with_non_json_arguments_is_returned_as_written(harmony_encoding, stream: bool) -> None:
    """Under tool_choice auto nothing constrains the arguments (as with OpenAI): what the model
    wrote comes back, on both APIs, and goes back into the next turn without an error."""
    app, _ = _app(harmony_encoding, BROKEN_CALL)
    messages = [{"role": "user", "content": "weather?"}]

    async def go():
        _, sdk = _clients(app)
        if stream:
            chunks = [chunk async for chunk in await sdk.chat.completions.create(
                model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True)]
            arguments = "".join(call.function.arguments or "" for chunk in chunks for choice in chunk.choices
                                for call in choice.delta.tool_calls or [])
            done = [event async for event in await sdk.responses.create(
                model=MODEL, input="weather?", tools=[RESPONSES_WEATHER], stream=True)
                if event.type == "response.function_call_arguments.done"]
            assert arguments == BROKEN_ARGUMENTS and done[0].arguments == BROKEN_ARGUMENTS
            return
        reply = await sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.arguments == BROKEN_ARGUMENTS and reply.choices[0].finish_reason == "tool_calls"
        follow_up = messages + [reply.choices[0].message.model_dump(exclude_none=True),
                                {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        await sdk.chat.completions.create(model=MODEL, messages=follow_up, tools=[WEATHER_TOOL])
        response = await sdk.responses.create(model=MODEL, input="weather?", tools=[RESPONSES_WEATHER])
        assert response.output[-1].arguments == BROKEN_ARGUMENTS and response.output[-1].status == "completed"
        await sdk.responses.create(model=MODEL, previous_response_id=response.id, tools=[RESPONSES_WEATHER], input=[
            {"type": "function_call_output", "call_id": response.output[-1].call_id, "output": "sunny"}])
    run(go())


def test_leaving_a_stream_early_aborts_its_requests_at_once(harmony_encoding) -> None:
    """A client gone mid-stream or a cancelled handler frees the requests' KV pages right away (the engine's
    streams are closed then, not when they are garbage collected), and metrics count them as aborted."""
    engine = ScriptedTokenSource(harmony_encoding)
    metrics = ServerMetrics(engine.stats)
    generator = Generator(engine, [metrics])
    params = SamplingParams(max_new_tokens=100)

    async def go() -> tuple[list[str], list[str]]:
        left = generator.merged([([1, 2], params, "left")], detokenize=False)
        await anext(left)
        await left.aclose()
        aborted_on_close = list(engine.aborted)

        async def consume() -> None:
            async for _ in generator.merged([([1], params, "a"), ([2], params, "b")]):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return aborted_on_close, list(engine.aborted)

    aborted_on_close, aborted = run(go())
    assert aborted_on_close == ["left"]
    assert sorted(aborted) == ["a", "b", "left"]
    assert 'requests_finished_total{finish_reason="abort"} 3.0' in metrics.render().decode()
