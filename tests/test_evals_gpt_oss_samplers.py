"""OpenAI's own eval samplers (PyPI `gpt-oss[eval]`, as SGLang's GPT-OSS guide prescribes) as the client of a real
server on the tiny checkpoint.

Those samplers ask for 131,072 output tokens on every request (`max_output_tokens` / `max_tokens`), far past any
context this server is run with here. A 400 for that would make every GPQA answer an empty "Bad Request Error", so the
server must clamp the budget to what fits the context and finish with `length` instead, as SGLang does.

gpt-oss 0.0.9 declares Python >= 3.12 and this project runs 3.11, so it is not a dependency: the pure-Python wheel is
downloaded once into a cache folder and its sampler modules (which need only `openai`) are imported from the zip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from server_process import ServerProcess

GPT_OSS_VERSION = "0.0.9"
WHEEL_NAME = f"gpt_oss-{GPT_OSS_VERSION}-py3-none-any.whl"
# Small, and a GPQA-sized question takes most of it (prefill is one cheap step): a clamped generation is then the
# ~10 tokens left, a few seconds of decoding on the CPU, rather than a minute.
CONTEXT_LENGTH = 240
# What `python -m gpt_oss.evals` passes to every sampler it builds.
EVAL_MAX_TOKENS = 131_072
# A GPQA-style question in gpt_oss.evals.gpqa_eval's QUERY_TEMPLATE_MULTICHOICE form, the message the gpqa eval sends.
GPQA_QUESTION = (
    "A spin-1/2 particle is prepared in the eigenstate of the x component of its spin with eigenvalue +hbar/2 and is "
    "then placed in a uniform magnetic field of magnitude B pointing along the z axis. The gyromagnetic ratio of the "
    "particle is gamma, and the field is switched on suddenly at time t = 0. Ignoring any relaxation or coupling to "
    "the environment, and treating the field as classical, what is the angular frequency with which the expectation "
    "value of the x component of the spin oscillates as a function of time after the field is switched on?\n\n"
    "(A) gamma*B/2\n(B) gamma*B\n(C) sqrt(2)*gamma*B\n(D) 2*gamma*B\n\n"
    "Express your final answer as the corresponding option 'A', 'B', 'C', or 'D'.")
GPQA_MESSAGE = {"role": "user", "content": GPQA_QUESTION}
# Ceiling on one HTTP request: the samplers' own 24-hour timeout would let a hung server hang the test run.
REQUEST_TIMEOUT_S = 120.0


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oss_serve"


def _gpt_oss_wheel() -> Path:
    """The gpt-oss wheel from the cache, downloaded with pip on first use; a skip when it cannot be fetched."""
    wheel = _cache_dir() / WHEEL_NAME
    if wheel.is_file():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    # Into a scratch folder first, then renamed: an interrupted download never leaves a truncated wheel to reuse.
    with tempfile.TemporaryDirectory(dir=wheel.parent) as scratch:
        # --python-version 3.12 because the package declares Requires-Python >= 3.12; the wheel itself is pure Python.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   "3.12", "--timeout", "30", "--disable-pip-version-check", "-q", "-d", scratch,
                   f"gpt-oss=={GPT_OSS_VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download gpt-oss=={GPT_OSS_VERSION} took over 180 s (no network?)")
        downloaded = Path(scratch) / WHEEL_NAME
        if done.returncode != 0 or not downloaded.is_file():
            pytest.skip(f"cannot download gpt-oss=={GPT_OSS_VERSION} (no network?): {done.stderr.strip()[-500:]}")
        os.replace(downloaded, wheel)
    return wheel


@pytest.fixture(scope="module")
def samplers() -> Iterator[SimpleNamespace]:
    """gpt_oss.evals.responses_sampler and .chat_completions_sampler, imported from the wheel file (zipimport)."""
    wheel = str(_gpt_oss_wheel())
    sys.path.insert(0, wheel)
    try:
        from gpt_oss.evals import chat_completions_sampler, responses_sampler

        yield SimpleNamespace(responses=responses_sampler, chat_completions=chat_completions_sampler)
    finally:
        # Leave no trace for other test modules: nothing else should find a half-usable 3.12 package on the path.
        sys.path.remove(wheel)
        for name in [name for name in sys.modules if name == "gpt_oss" or name.startswith("gpt_oss.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tiny_ckpt, ["--device", "cpu", "--context-length", str(CONTEXT_LENGTH),
                                        "--max-total-tokens", "4096", "--response-store", ":memory:"],
                            startup_timeout=240)
    yield running
    assert running.stop(timeout=60) == 0, running.log_tail()


@dataclass
class Exchange:
    """One HTTP request the sampler's SDK client sent, and what the server answered."""
    method: str
    path: str
    status: int
    body: dict[str, Any]


class SamplerRetried(Exception):
    """Raised in place of the sampler's back-off sleep: one retry is evidence enough, an endless loop is not a test."""


def _recording_client_factory(exchanges: list[Exchange]) -> Callable[..., openai.OpenAI]:
    """Stands in for the `OpenAI` name in a sampler module: the real SDK client, built with the sampler's own
    arguments, whose HTTP client also records every response (the sampler keeps only parsed objects, and only
    on success), and whose timeout is bounded."""
    def record(response: httpx.Response) -> None:
        response.read()  # the hook runs before the SDK reads the body; reading here leaves it readable for the SDK
        try:
            body = response.json()
        except ValueError:
            body = {"unparsed": response.text}
        exchanges.append(Exchange(response.request.method, response.request.url.path, response.status_code, body))

    def make_client(**kwargs: Any) -> openai.OpenAI:
        kwargs["timeout"] = min(float(kwargs.get("timeout", REQUEST_TIMEOUT_S)), REQUEST_TIMEOUT_S)
        return openai.OpenAI(**kwargs, http_client=httpx.Client(event_hooks={"response": [record]}))

    return make_client


def _instrument(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[Exchange]:
    exchanges: list[Exchange] = []
    monkeypatch.setattr(module, "OpenAI", _recording_client_factory(exchanges))

    def no_back_off(seconds: float) -> None:
        raise SamplerRetried(f"the sampler would sleep {seconds} s and send the request again")

    # Only the sampler module's `time`: the SDK's own retry sleeps (on 5xx / connection errors) stay real, and the
    # recorded exchanges would show those extra requests.
    monkeypatch.setattr(module, "time", SimpleNamespace(sleep=no_back_off))
    monkeypatch.setenv("OPENAI_API_KEY", "unused")  # the SDK refuses to build a client without one
    return exchanges


def test_responses_sampler_gets_a_clamped_answer(samplers: SimpleNamespace, server: ServerProcess, tiny_ckpt: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    exchanges = _instrument(samplers.responses, monkeypatch)
    sampler = samplers.responses.ResponsesSampler(model=str(tiny_ckpt), max_tokens=EVAL_MAX_TOKENS,
                                                  reasoning_model=True, reasoning_effort="low",
                                                  base_url=server.base_url + "/v1")
    # Any exception but a 400 makes this sampler retry; SamplerRetried then fails the test with the sampler's reason.
    result = sampler([dict(GPQA_MESSAGE)])
    printed = capsys.readouterr().out
    assert "Bad Request Error" not in printed, printed
    assert "retry" not in printed, printed
    [exchange] = exchanges  # one request: neither the sampler nor the SDK sent it again
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/v1/responses", 200), exchange.body
    body = exchange.body
    # The 131,072-token budget was cut to what the context leaves: the output ran to the end of the context.
    assert body["status"] == "incomplete", body
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}, body
    assert body["max_output_tokens"] == EVAL_MAX_TOKENS, body
    usage = body["usage"]
    assert 0 < usage["input_tokens"] < CONTEXT_LENGTH and usage["output_tokens"] > 0, usage
    assert usage["input_tokens"] + usage["output_tokens"] == CONTEXT_LENGTH, usage
    # What the eval gets back: the served response, not the sampler's empty bad-request stand-in (usage None).
    assert result.response_metadata["usage"] is not None
    assert result.response_metadata["usage"].output_tokens == usage["output_tokens"]


def test_chat_completions_sampler_gets_a_clamped_answer(samplers: SimpleNamespace, server: ServerProcess,
                                                        tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    exchanges = _instrument(samplers.chat_completions, monkeypatch)
    sampler = samplers.chat_completions.ChatCompletionsSampler(model=str(tiny_ckpt), max_tokens=EVAL_MAX_TOKENS,
                                                               reasoning_model=True, reasoning_effort="low",
                                                               base_url=server.base_url + "/v1")
    try:
        result = sampler([dict(GPQA_MESSAGE)])
    except SamplerRetried:
        # This sampler also retries a 200 whose message has no content, which a random-weight model may well send
        # (all its tokens reasoning, or cut off before the final channel). That is the model, not the server: what
        # is checked is what the server answered, below.
        result = None
    printed = capsys.readouterr().out
    assert "Bad Request Error" not in printed, printed
    [exchange] = exchanges  # one request: the SDK did not resend it (no 5xx, no connection error)
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/v1/chat/completions", 200), exchange.body
    body = exchange.body
    [choice] = body["choices"]
    content = choice["message"].get("content")
    if result is None:
        # The only retry allowed is the empty-content one, named as such in what the sampler printed.
        assert not content and "OpenAI API returned empty response" in printed, (printed, body)
    else:
        assert "retry" not in printed and result.response_text == content, (printed, body)
    # The 131,072-token budget was cut to what the context leaves: the output ran to the end of the context.
    assert choice["finish_reason"] == "length", body
    usage = body["usage"]
    assert 0 < usage["prompt_tokens"] < CONTEXT_LENGTH and usage["completion_tokens"] > 0, usage
    assert usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT_LENGTH, usage
