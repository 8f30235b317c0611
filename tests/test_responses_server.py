"""/v1/responses on the real server (`python -m oss_serve.launch_server`) and the tiny random-weight
checkpoint, through the openai SDK: shapes, streaming, usage, stored / background responses, restart."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.responses import Response
from server_process import ServerProcess, free_port

MODEL = "tiny-gpt-oss"


class Server:
    """One server process on a store file; stop() then start() brings up a new process on the same file."""

    def __init__(self, checkpoint: Path, store_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.checkpoint, self.store_path, self.extra_args = checkpoint, store_path, extra_args
        self.process: ServerProcess | None = None

    def start(self) -> None:
        self.process = ServerProcess(self.checkpoint, [
            "--served-model-name", MODEL, "--context-length", "1024", "--device", "cpu", "--max-total-tokens", "16384",
            "--response-store", str(self.store_path), *self.extra_args], startup_timeout=240)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=60)

    def log_text(self) -> str:
        return self.process.log_text() if self.process is not None else ""

    def sdk(self) -> openai.OpenAI:
        assert self.process is not None
        return openai.OpenAI(base_url=self.process.base_url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tiny_ckpt, tmp_path_factory.mktemp("store") / "responses.sqlite3")
    running.start()
    yield running
    running.stop()


def test_create_shapes_and_usage(server: Server) -> None:
    sdk = server.sdk()
    response = sdk.responses.create(model=MODEL, input="Hello", max_output_tokens=24, temperature=0)
    Response.model_validate(response.model_dump())
    assert response.status in ("completed", "incomplete") and response.id.startswith("resp_")
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"
    usage = response.usage
    assert usage.input_tokens > 20 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.output_tokens_details.reasoning_tokens <= usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens < usage.input_tokens
    assert isinstance(response.output_text, str)
    assert len({item.id for item in response.output}) == len(response.output)


def test_streaming_event_sequence_and_stream_helper(server: Server) -> None:
    sdk = server.sdk()
    events = list(sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=16, stream=True))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert [event.type for event in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response
    assert final.usage.output_tokens <= 16
    added = [event for event in events if event.type == "response.output_item.added"]
    done = [event for event in events if event.type == "response.output_item.done"]
    assert len(added) == len(done) == len(final.output)

    with sdk.responses.stream(model=MODEL, input="Hi", max_output_tokens=16) as stream:
        helper_events = list(stream)
        if helper_events[-1].type == "response.completed":  # the helper only accepts a completed end
            assert isinstance(stream.get_final_response().output_text, str)
    assert helper_events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in helper_events if event.type == "response.output_text.delta")
    assert text == helper_events[-1].response.output_text


def test_store_retrieve_input_items_delete(server: Server) -> None:
    sdk = server.sdk()
    created = sdk.responses.create(model=MODEL, input="Store me", max_output_tokens=8, metadata={"k": "v"})
    retrieved = sdk.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output == created.output and retrieved.metadata == {"k": "v"}
    items = sdk.responses.input_items.list(created.id)
    assert items.data[0].type == "message" and items.data[0].content[0].text == "Store me"
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)
    unstored = sdk.responses.create(model=MODEL, input="x", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


def test_previous_response_id_reuses_the_cached_prefix(server: Server) -> None:
    sdk = server.sdk()
    first = sdk.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=8,
                                 instructions="Answer briefly.")
    second = sdk.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                  max_output_tokens=8, instructions="Answer briefly.")
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_background_poll_cancel_and_replay(server: Server) -> None:
    sdk = server.sdk()
    queued = sdk.responses.create(model=MODEL, input="Count", max_output_tokens=16, background=True)
    assert queued.status == "queued"
    deadline = time.monotonic() + 60
    polled = queued
    while polled.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.05)
        polled = sdk.responses.retrieve(queued.id)
    assert polled.status in ("completed", "incomplete") and polled.usage.output_tokens <= 16

    replay = list(sdk.responses.retrieve(queued.id, stream=True, starting_after=1))
    assert replay[0].sequence_number == 2 and replay[-1].type in ("response.completed", "response.incomplete")

    long_running = sdk.responses.create(model=MODEL, input="Write a lot", max_output_tokens=900, background=True)
    cancelled = sdk.responses.cancel(long_running.id)
    assert cancelled.status in ("cancelled", "completed", "incomplete")
    assert sdk.responses.retrieve(long_running.id).status == cancelled.status


def test_bad_requests(server: Server) -> None:
    sdk = server.sdk()
    with pytest.raises(openai.BadRequestError, match="--tool-server"):
        sdk.responses.create(model=MODEL, input="x",
                             tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_unknown")


def test_stored_response_survives_restart(server: Server) -> None:
    created = server.sdk().responses.create(model=MODEL, input="Remember", max_output_tokens=8)
    server.stop()
    server.start()
    retrieved = server.sdk().responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output == created.output


def test_unreachable_tool_server_is_reported_at_launch(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A --tool-server nobody answers at is named in the launch log; the server still comes up and
    /v1/responses answers 503 (it retries, so a tool server started later is picked up)."""
    address = f"127.0.0.1:{free_port()}"
    server = Server(tiny_ckpt, tmp_path / "responses.sqlite3", ("--tool-server", address, "--tool-timeout", "5"))
    server.start()
    try:
        launch_log = server.log_text()
        assert "tool servers could not be started" in launch_log and address in launch_log
        with pytest.raises(openai.InternalServerError, match="tool servers could not be started"):
            server.sdk().responses.create(model=MODEL, input="hi", max_output_tokens=4)
    finally:
        server.stop()
