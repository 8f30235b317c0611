"""SSE parsing and every backend's request body and reply reading, on literal wire text."""
from __future__ import annotations

import json

import pytest

from oss_serve.bench.backends import BACKEND_NAMES, StreamUpdate, deep_merge, get_backend
from oss_serve.bench.datasets import BenchRequest
from oss_serve.bench.sse import SSEParser, parse_sse_text


def _read_stream(backend_name: str, wire: str) -> list[StreamUpdate]:
    reader = get_backend(backend_name).new_reader()
    return [reader.read(event) for event in parse_sse_text(wire)]


def _data(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def test_sse_fields_comments_multiline_and_unterminated_last_event() -> None:
    events = parse_sse_text(": keep-alive\n\nevent: response.created\ndata: {\"a\":\ndata: 1}\n\n"
                            "data:[DONE]\r\n\r\ndata: tail")
    assert [(e.event, e.data) for e in events] == [("response.created", '{"a":\n1}'), (None, "[DONE]"),
                                                   (None, "tail")]


def test_sse_parser_fed_line_by_line() -> None:
    parser = SSEParser()
    assert parser.feed_line("event: x\n") is None
    assert parser.feed_line("data: 1\n") is None
    event = parser.feed_line("\n")
    assert event is not None and (event.event, event.data) == ("x", "1")
    assert parser.feed_line("\n") is None and parser.finish() is None


def test_native_stream_turns_cumulative_text_into_deltas_and_counts_tokens() -> None:
    wire = (_data({"text": "Hel", "meta_info": {"prompt_tokens": 5, "completion_tokens": 1}})
            + _data({"text": "Hel", "meta_info": {"completion_tokens": 2}})  # half a character: no text yet
            + _data({"text": "Hello", "meta_info": {"completion_tokens": 3, "finish_reason": {"type": "length"}}})
            + "data: [DONE]\n\n")
    updates = _read_stream("oss-serve", wire)
    assert [u.text for u in updates] == ["Hel", "", "lo", ""]
    assert [u.is_token_chunk for u in updates] == [True, True, True, False]
    assert updates[2].output_tokens == 3 and updates[-1].done


def test_completions_stream_with_usage_chunk() -> None:
    wire = (_data({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
            + _data({"choices": [{"index": 0, "text": "", "finish_reason": None}]})
            + _data({"choices": [{"index": 0, "text": " b", "finish_reason": "length"}]})
            + _data({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}})
            + "data: [DONE]\n\n")
    updates = _read_stream("sglang-oai", wire)
    assert "".join(u.text for u in updates) == "a b"
    assert [u.is_token_chunk for u in updates] == [True, False, True, False, False]
    assert updates[3].output_tokens == 3


def test_chat_stream_counts_reasoning_content_and_tool_arguments() -> None:
    wire = (_data({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            + _data({"choices": [{"index": 0, "delta": {"reasoning_content": "think"}}]})
            + _data({"choices": [{"index": 0, "delta": {"reasoning": "ing"}}]})
            + _data({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
            + _data({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"name": "f", "arguments": "{}"}}]}}]})
            + _data({"choices": [], "usage": {"completion_tokens": 9}})
            + "data: [DONE]\n\n")
    updates = _read_stream("openai-chat", wire)
    assert [u.text for u in updates] == ["", "think", "ing", "Hi", "f{}", "", ""]
    assert updates[5].output_tokens == 9


def test_responses_stream_reads_deltas_and_final_usage() -> None:
    def event(kind: str, **fields) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': 0, **fields})}\n\n"

    wire = (event("response.created", response={"id": "r"})
            + event("response.reasoning_text.delta", delta="mull", item_id="rs", output_index=0, content_index=0)
            + event("response.output_text.delta", delta="Yes", item_id="m", output_index=1, content_index=0)
            + event("response.output_text.done", text="Yes")
            + event("response.completed", response={"id": "r", "usage": {"input_tokens": 3, "output_tokens": 6}}))
    updates = _read_stream("openai-responses", wire)
    assert [u.text for u in updates] == ["", "mull", "Yes", "", ""]
    assert updates[-1].done and updates[-1].output_tokens == 6


@pytest.mark.parametrize("backend_name", BACKEND_NAMES)
def test_error_bodies_become_errors(backend_name: str) -> None:
    if backend_name == "openai-responses":
        wire = _data({"type": "response.failed", "response": {"error": {"message": "kv full"}}})
    else:
        wire = _data({"error": {"message": "kv full", "type": "server_error"}})
    [update] = _read_stream(backend_name, wire)
    assert update.error == "kv full"


def test_request_bodies() -> None:
    request = BenchRequest(prompt="hello", prompt_len=1, output_len=7)
    native = get_backend("oss-serve").payload(request, "m", stream=True, ignore_eos=True)
    assert native == {"text": "hello", "stream": True,
                      "sampling_params": {"temperature": 0.0, "max_new_tokens": 7, "ignore_eos": True}}
    ids = get_backend("oss-serve").payload(BenchRequest([1, 2], 2, 3), "m", stream=False, ignore_eos=False)
    assert ids["input_ids"] == [1, 2] and "text" not in ids

    completions = get_backend("openai").payload(request, "m", stream=True, ignore_eos=True)
    assert completions["prompt"] == "hello" and completions["max_tokens"] == 7
    assert completions["stream_options"] == {"include_usage": True} and completions["temperature"] == 0.0

    chat = get_backend("sglang-oai-chat").payload(request, "m", stream=False, ignore_eos=False)
    assert chat["messages"] == [{"role": "user", "content": "hello"}] and "stream_options" not in chat
    assert chat["ignore_eos"] is False

    responses = get_backend("openai-responses").payload(request, "m", stream=True, ignore_eos=True)
    assert responses["input"] == "hello" and responses["max_output_tokens"] == 7


def test_extra_request_body_merges_nested_fields() -> None:
    base = {"sampling_params": {"temperature": 0.0, "max_new_tokens": 7}, "stream": True}
    merged = deep_merge(base, {"sampling_params": {"top_p": 0.5}, "stream": False})
    assert merged == {"sampling_params": {"temperature": 0.0, "max_new_tokens": 7, "top_p": 0.5}, "stream": False}
    assert base["sampling_params"] == {"temperature": 0.0, "max_new_tokens": 7}


def test_non_streamed_replies() -> None:
    assert get_backend("oss-serve").read_response(
        {"text": "abc", "meta_info": {"completion_tokens": 3}}).output_tokens == 3
    chat = get_backend("openai-chat").read_response(
        {"choices": [{"message": {"role": "assistant", "reasoning_content": "r", "content": "c"}}],
         "usage": {"completion_tokens": 2}})
    assert (chat.text, chat.output_tokens) == ("rc", 2)
    responses = get_backend("openai-responses").read_response(
        {"output": [{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}]},
                    {"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
         "usage": {"output_tokens": 4}})
    assert (responses.text, responses.output_tokens) == ("rok", 4)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tgi")
