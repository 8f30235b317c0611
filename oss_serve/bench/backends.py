"""The wire formats bench_serving speaks: how to ask each kind of endpoint for a completion and how
to read what comes back, streamed or whole.

Readers turn each SSE event into a `StreamUpdate` (new text, token count if the server says,
end, error); the client loop in `client.py` timestamps them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from oss_serve.bench.datasets import BenchRequest
from oss_serve.bench.sse import SSEEvent


@dataclass
class StreamUpdate:
    text: str = ""
    # Completion tokens so far (native meta_info) or in total (usage); None when not reported.
    output_tokens: int | None = None
    done: bool = False
    error: str | None = None
    # Set by readers that know better than "has text": the native stream counts tokens, so a
    # token that decodes to no text yet (half a UTF-8 character) still makes a token chunk.
    carries_tokens: bool | None = None

    @property
    def is_token_chunk(self) -> bool:
        return self.carries_tokens if self.carries_tokens is not None else bool(self.text)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, merging nested dicts so that e.g. extra sampling_params keep the defaults."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _error_message(body: Any) -> str | None:
    if isinstance(body, dict) and body.get("error"):
        error = body["error"]
        return error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)
    return None


class Backend:
    name: str = ""
    path: str = ""
    accepts_token_ids: bool = False

    def payload(self, request: BenchRequest, model: str, stream: bool, ignore_eos: bool) -> dict[str, Any]:
        raise NotImplementedError

    def new_reader(self) -> StreamReader:
        raise NotImplementedError

    def read_response(self, body: dict[str, Any]) -> StreamUpdate:
        """A non-streamed reply."""
        raise NotImplementedError


class StreamReader:
    def read(self, event: SSEEvent) -> StreamUpdate:
        if event.data.strip() == "[DONE]":
            return StreamUpdate(done=True)
        try:
            body = json.loads(event.data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return StreamUpdate(error=f"unparseable event: {event.data[:200]}")
        return self.read_body(body, event)

    def read_body(self, body: dict[str, Any], event: SSEEvent) -> StreamUpdate:
        """One event whose data is a JSON object."""
        raise NotImplementedError


# --- native /generate ---------------------------------------------------------------------------

class NativeReader(StreamReader):
    """`/generate` streams cumulative text; the delta is what is new since the last event."""

    def __init__(self) -> None:
        self._text_so_far = ""
        self._tokens_so_far = 0

    def read_body(self, body: dict[str, Any], event: SSEEvent) -> StreamUpdate:
        if (error := _error_message(body)) is not None:
            return StreamUpdate(error=error, done=True)
        text = str(body.get("text", ""))
        delta = text[len(self._text_so_far):] if text.startswith(self._text_so_far) else text
        self._text_so_far = text
        tokens = (body.get("meta_info") or {}).get("completion_tokens")
        if tokens is None:
            return StreamUpdate(text=delta)
        grew = int(tokens) > self._tokens_so_far
        self._tokens_so_far = max(self._tokens_so_far, int(tokens))
        return StreamUpdate(text=delta, output_tokens=int(tokens), carries_tokens=grew or bool(delta))


class NativeBackend(Backend):
    name = "oss-serve"
    path = "/generate"
    accepts_token_ids = True

    def payload(self, request: BenchRequest, model: str, stream: bool, ignore_eos: bool) -> dict[str, Any]:
        prompt_key = "input_ids" if isinstance(request.prompt, list) else "text"
        return {
            prompt_key: request.prompt,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": request.output_len, "ignore_eos": ignore_eos},
            "stream": stream,
        }

    def new_reader(self) -> StreamReader:
        return NativeReader()

    def read_response(self, body: dict[str, Any]) -> StreamUpdate:
        if (error := _error_message(body)) is not None:
            return StreamUpdate(error=error, done=True)
        tokens = (body.get("meta_info") or {}).get("completion_tokens")
        return StreamUpdate(text=str(body.get("text", "")), output_tokens=tokens, done=True)


# --- OpenAI /v1/completions and /v1/chat/completions --------------------------------------------

def _usage_tokens(body: dict[str, Any], key: str) -> int | None:
    usage = body.get("usage")
    if isinstance(usage, dict) and usage.get(key) is not None:
        return int(usage[key])
    return None


def _chat_text(part: dict[str, Any]) -> str:
    """Everything the model generated in a message or delta: reasoning, answer and tool-call arguments."""
    pieces = [part.get("reasoning_content") or part.get("reasoning") or "", part.get("content") or ""]
    for call in part.get("tool_calls") or []:
        function = call.get("function") or {}
        pieces.append(function.get("name") or "")
        pieces.append(function.get("arguments") or "")
    return "".join(str(piece) for piece in pieces)


class ChoicesReader(StreamReader):
    """Completions and chat chunks: the new text of every choice; usage in the last chunk."""

    def __init__(self, backend: CompletionsBackend) -> None:
        self.backend = backend

    def read_body(self, body: dict[str, Any], event: SSEEvent) -> StreamUpdate:
        if (error := _error_message(body)) is not None:
            return StreamUpdate(error=error, done=True)
        return StreamUpdate(text=self.backend.choices_text(body, streamed=True),
                            output_tokens=_usage_tokens(body, "completion_tokens"))


class CompletionsBackend(Backend):
    path = "/v1/completions"
    accepts_token_ids = True  # the OpenAI API takes a token array as prompt

    def __init__(self, name: str) -> None:
        self.name = name

    def prompt_fields(self, request: BenchRequest) -> dict[str, Any]:
        return {"prompt": request.prompt}

    def choice_text(self, choice: dict[str, Any], streamed: bool) -> str:
        return str(choice.get("text") or "")

    def choices_text(self, body: dict[str, Any], streamed: bool) -> str:
        return "".join(self.choice_text(choice, streamed) for choice in body.get("choices") or [])

    def payload(self, request: BenchRequest, model: str, stream: bool, ignore_eos: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, **self.prompt_fields(request), "temperature": 0.0,
                                "max_tokens": request.output_len, "stream": stream, "ignore_eos": ignore_eos}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def new_reader(self) -> StreamReader:
        return ChoicesReader(self)

    def read_response(self, body: dict[str, Any]) -> StreamUpdate:
        if (error := _error_message(body)) is not None:
            return StreamUpdate(error=error, done=True)
        return StreamUpdate(text=self.choices_text(body, streamed=False),
                            output_tokens=_usage_tokens(body, "completion_tokens"), done=True)


class ChatBackend(CompletionsBackend):
    path = "/v1/chat/completions"
    accepts_token_ids = False

    def prompt_fields(self, request: BenchRequest) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": request.prompt}]}

    def choice_text(self, choice: dict[str, Any], streamed: bool) -> str:
        return _chat_text(choice.get("delta" if streamed else "message") or {})


# --- OpenAI /v1/responses -----------------------------------------------------------------------

def _response_output_text(response: dict[str, Any]) -> str:
    pieces = []
    for item in response.get("output") or []:
        item_type = item.get("type")
        if item_type in ("message", "reasoning"):
            for part in item.get("content") or []:
                pieces.append(str(part.get("text") or ""))
        elif item_type == "function_call":
            pieces.append(str(item.get("name") or "") + str(item.get("arguments") or ""))
        elif item_type == "code_interpreter_call":
            pieces.append(str(item.get("code") or ""))
    return "".join(pieces)


class ResponsesReader(StreamReader):
    _FINAL = ("response.completed", "response.incomplete")

    def read_body(self, body: dict[str, Any], event: SSEEvent) -> StreamUpdate:
        event_type = body.get("type") or event.event or ""
        if event_type.endswith(".delta") and isinstance(body.get("delta"), str):
            return StreamUpdate(text=body["delta"])
        if event_type in self._FINAL:
            response = body.get("response") or {}
            return StreamUpdate(output_tokens=_usage_tokens(response, "output_tokens"), done=True)
        if event_type in ("response.failed", "error"):
            response = body.get("response") or {}
            error = _error_message(response) or _error_message(body) or body.get("message") or event.data[:300]
            return StreamUpdate(error=str(error), done=True)
        return StreamUpdate()


class ResponsesBackend(Backend):
    name = "openai-responses"
    path = "/v1/responses"

    def payload(self, request: BenchRequest, model: str, stream: bool, ignore_eos: bool) -> dict[str, Any]:
        return {"model": model, "input": request.prompt, "temperature": 0.0,
                "max_output_tokens": request.output_len, "stream": stream, "store": False,
                "ignore_eos": ignore_eos}

    def new_reader(self) -> StreamReader:
        return ResponsesReader()

    def read_response(self, body: dict[str, Any]) -> StreamUpdate:
        if (error := _error_message(body)) is not None:
            return StreamUpdate(error=error, done=True)
        return StreamUpdate(text=_response_output_text(body), output_tokens=_usage_tokens(body, "output_tokens"),
                            done=True)


def get_backend(name: str) -> Backend:
    if name == "oss-serve":
        return NativeBackend()
    if name in ("sglang-oai", "openai"):
        return CompletionsBackend(name)
    if name in ("sglang-oai-chat", "openai-chat"):
        return ChatBackend(name)
    if name == "openai-responses":
        return ResponsesBackend()
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")


BACKEND_NAMES = ("oss-serve", "sglang-oai", "openai", "sglang-oai-chat", "openai-chat", "openai-responses")
