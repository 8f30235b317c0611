"""The real server (`python -m oss_serve.launch_server`) on the tiny random-weight checkpoint,
driven with the openai SDK."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_process import ServerProcess

API_KEY = "test-key"
MODEL = "tiny-gpt-oss"
CONTEXT_LENGTH = 1024
READY_LINE = "The server is fired up and ready to roll!"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tiny_ckpt, [
        "--api-key", API_KEY, "--served-model-name", MODEL, "--enable-metrics", "--context-length", str(CONTEXT_LENGTH),
        "--reasoning-parser", "gpt-oss", "--tool-call-parser", "gpt-oss", "--device", "cpu",
        "--max-total-tokens", "16384"], startup_timeout=240)
    yield running
    assert running.stop(timeout=60) == 0, running.log_tail()


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=120) as client:
        yield client


def test_ready_line_and_health(server: ServerProcess, http: httpx.Client) -> None:
    assert any(line.rstrip().endswith(READY_LINE) for line in server.log_text().splitlines())
    assert httpx.get(server.base_url + "/health").status_code == 200  # no key needed
    assert http.get("/health_generate").status_code == 200
    assert http.get("/get_model_info").json()["served_model_name"] == MODEL
    assert "num_running" in json.dumps(http.get("/get_server_info").json())


def test_completions_stream_reassembles_to_non_stream(sdk: openai.OpenAI) -> None:
    request = dict(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    whole = sdk.completions.create(**request)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens_details.cached_tokens >= 0
    streamed, usage = "", None
    for chunk in sdk.completions.create(**request, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        streamed += "".join(choice.text for choice in chunk.choices)
    assert streamed == whole.choices[0].text
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n2_echo_token_prompt(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=MODEL, prompt=[[1000, 2000, 3000]], n=2, max_tokens=4, seed=1,
                                   temperature=1.0, echo=True, logprobs=2)
    assert len(reply.choices) == 2
    assert all(len(choice.logprobs.token_logprobs) == reply.usage.completion_tokens // 2 for choice in reply.choices)


def test_chat_stream_reassembles_to_non_stream(sdk: openai.OpenAI) -> None:
    request = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 2+2?"}],
                   max_tokens=24, temperature=0, reasoning_effort="low")
    whole = sdk.chat.completions.create(**request)
    message = whole.choices[0].message
    assert "<|" not in (message.content or "")
    content, reasoning = "", ""
    for chunk in sdk.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert content == (message.content or "")
    assert reasoning == (message.model_extra.get("reasoning_content") or "")


def test_chat_with_tools_n2(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                        tools=[WEATHER_TOOL], n=2, max_tokens=16, temperature=0.8, seed=3)
    assert len(reply.choices) == 2
    assert all(choice.finish_reason in ("stop", "length", "tool_calls") for choice in reply.choices)


def test_named_tool_choice_always_calls_that_function(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER_TOOL], max_tokens=24, temperature=0,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        extra_body={"max_reasoning_tokens": 0})  # the call header comes first
    choice = reply.choices[0]
    # "tool_calls" only for a finished call; max_tokens may cut the (random-weight) arguments short.
    assert choice.finish_reason in ("tool_calls", "length")
    assert choice.message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize("call", [
    lambda sdk: sdk.chat.completions.create(model="not-this-model", messages=[{"role": "user", "content": "x"}]),
    lambda sdk: sdk.chat.completions.create(model=MODEL, messages=[]),
    lambda sdk: sdk.completions.create(model=MODEL, prompt=[5, 201088]),
    lambda sdk: sdk.completions.create(model=MODEL, prompt=[5] * (CONTEXT_LENGTH + 10)),
    lambda sdk: sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                            tools=[WEATHER_TOOL], tool_choice="maybe"),
    lambda sdk: sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                            response_format={"type": "json_schema", "json_schema": {
                                                "name": "x", "schema": {"type": "strin"}}}),
], ids=["unknown-model", "empty-messages", "token-id-past-the-vocabulary", "prompt-too-long", "bad-tool-choice",
        "response-format"])
def test_errors_are_400(sdk: openai.OpenAI, call) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        call(sdk)
    assert raised.value.status_code == 400
    assert set(raised.value.body) >= {"message", "type", "param", "code"}


def test_max_tokens_past_the_context_is_clamped(sdk: openai.OpenAI) -> None:
    """As SGLang: the output budget is what the context leaves (gpt_oss.evals asks for 131,072 tokens)."""
    reply = sdk.completions.create(model=MODEL, prompt=[5] * (CONTEXT_LENGTH - 3), max_tokens=CONTEXT_LENGTH * 2,
                                   extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_malformed_json_and_missing_key(server: ServerProcess, http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()
    assert httpx.get(server.base_url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_generate_native_shape(http: httpx.Client) -> None:
    result = http.post("/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 5,
                                                                                "temperature": 0}}).json()
    assert set(result) == {"text", "output_ids", "meta_info"}
    assert result["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert result["meta_info"]["completion_tokens"] == len(result["output_ids"])


def test_generate_return_logprob(http: httpx.Client) -> None:
    """SGLang's return_logprob: [logprob, token id, text] per output token, the greedy token the most likely
    of its top alternatives; a bad top_logprobs_num is a 400 naming it."""
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": 0}, "return_logprob": True,
            "top_logprobs_num": 3, "return_text_in_logprobs": True}
    meta = http.post("/generate", json=body).json()["meta_info"]
    chosen, top = meta["output_token_logprobs"], meta["output_top_logprobs"]
    assert len(chosen) == len(top) == meta["completion_tokens"]
    for (logprob, token_id, text), alternatives in zip(chosen, top):
        assert logprob <= 0 and isinstance(text, str) and len(alternatives) == 3
        assert alternatives[0][1] == token_id and alternatives[0][0] == pytest.approx(logprob, abs=1e-4)
    bad = http.post("/generate", json={**body, "top_logprobs_num": 99})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs_num"


def _kv_pages_used(http: httpx.Client) -> float:
    http.post("/flush_cache")  # cached prefixes are not leaks
    return http.get("/get_server_info").json()["engine"]["full_pages_used"]


def _aborted_requests(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('oss_serve:requests_finished_total{finish_reason="abort"}'):
            return float(line.split()[-1])
    return 0.0


def test_dropped_streams_free_their_kv(server: ServerProcess, http: httpx.Client) -> None:
    before = _kv_pages_used(http)
    aborted_before = _aborted_requests(http)
    body = {"model": MODEL, "prompt": "Count slowly: one two three", "max_tokens": 400, "stream": True,
            "ignore_eos": True}
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        for _ in range(50):
            with client.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        break  # drop the stream mid-way
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = http.get("/get_server_info").json()["engine"]
        if engine["num_running"] == 0 and engine["num_waiting"] == 0:
            break
        time.sleep(0.2)
    assert _kv_pages_used(http) == before
    assert _aborted_requests(http) - aborted_before == 50  # each dropped stream was cancelled in the engine


def test_metrics(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    for name in ("oss_serve:generation_tokens_total", "oss_serve:time_to_first_token_seconds",
                 "oss_serve:inter_token_latency_seconds", "oss_serve:num_queue_reqs", "oss_serve:token_usage"):
        assert name in text


def test_flush_cache_empties_the_prefix_cache(http: httpx.Client) -> None:
    body = {"input_ids": list(range(1000, 1100)), "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
    http.post("/generate", json=body).raise_for_status()
    assert http.post("/generate", json=body).json()["meta_info"]["cached_tokens"] > 0
    assert http.post("/flush_cache").status_code == 200
    assert http.post("/generate", json=body).json()["meta_info"]["cached_tokens"] == 0
