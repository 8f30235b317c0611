"""The server's view of the engine, and the per-request plumbing around it.

The server only needs: generate (an async stream of StreamOutput), abort, stats. Whatever
ends a request early (client gone, handler cancelled, error) closes the engine's stream, and the
engine's generate aborts the request there, so its KV pages are freed at once.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from oss_serve.api.access_log import current_record
from oss_serve.api.errors import APIError
from oss_serve.engine.messages import EngineStats
from oss_serve.engine.outputs import StreamOutput
from oss_serve.engine.sampling_params import SamplingParams

T = TypeVar("T")


class Engine(Protocol):
    def generate(self, prompt_ids: list[int], sampling_params: SamplingParams, request_id: str, *,
                 detokenize: bool = True) -> AsyncIterator[StreamOutput]:
        """Closing the stream early aborts the request; detokenize=False leaves new_text empty."""

    async def abort(self, request_id: str) -> None: ...

    async def flush_cache(self) -> bool:
        """Empty the prefix cache; False while requests run."""
        ...

    def stats(self) -> EngineStats: ...


class RequestObserver(Protocol):
    """Sees every output of every request (metrics)."""

    def on_output(self, output: StreamOutput, *, started_at: float, previous_at: float) -> None: ...

    def on_abort(self, request_id: str) -> None: ...


@dataclass
class Generator:
    """Runs engine requests for the handlers."""
    engine: Engine
    observers: list[RequestObserver] = field(default_factory=list)

    async def stream(self, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
                     detokenize: bool = True) -> AsyncIterator[StreamOutput]:
        """The engine's outputs for one request. Leaving early aborts the request: the engine's generate
        does, and this closes it at once rather than whenever it is garbage collected."""
        started_at = previous_at = time.monotonic()
        finished = False
        record = current_record()
        outputs = self.engine.generate(prompt_ids, params, request_id, detokenize=detokenize)
        try:
            async with aclosing(outputs):
                async for output in outputs:
                    if record is not None:
                        record.observe(request_id, output)
                    for observer in self.observers:
                        observer.on_output(output, started_at=started_at, previous_at=previous_at)
                    previous_at = time.monotonic()
                    if output.error:  # refused by the engine (400), failed in a step (500), or no engine (503)
                        finished = True
                        message = f"The engine failed: {output.error}" if output.error_status == 503 else output.error
                        raise APIError(message[:1].upper() + message[1:], status=output.error_status)
                    finished = output.finished
                    yield output
                    if finished:
                        return
        except ValueError as error:  # how the engine refuses a request it cannot run: a bad request
            raise APIError(str(error)) from None
        finally:
            if not finished:
                for observer in self.observers:
                    observer.on_abort(request_id)

    async def merged(self, prompts: Sequence[tuple[list[int], SamplingParams, str]], *, detokenize: bool = True
                     ) -> AsyncIterator[tuple[int, StreamOutput]]:
        """Several requests at once (n > 1, batched prompts), outputs tagged with their index,
        in arrival order."""
        if len(prompts) == 1:
            async with aclosing(self.stream(*prompts[0], detokenize=detokenize)) as outputs:
                async for output in outputs:
                    yield 0, output
            return
        queue: asyncio.Queue[tuple[int, StreamOutput | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, prompt: tuple[list[int], SamplingParams, str]) -> None:
            try:
                async for output in self.stream(*prompt, detokenize=detokenize):
                    await queue.put((index, output))
                await queue.put((index, None))
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                await queue.put((index, error))

        tasks = [asyncio.create_task(pump(i, prompt)) for i, prompt in enumerate(prompts)]
        remaining = len(tasks)
        try:
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def collect_until_disconnected(generator: Generator,
                                     prompts: Sequence[tuple[list[int], SamplingParams, str]],
                                     add: Callable[[int, StreamOutput], object],
                                     is_disconnected: Callable[[], Awaitable[bool]], *,
                                     detokenize: bool = True) -> None:
    """Feed every output of `prompts` to `add(index, output)`; cancelled (requests aborted) if the
    client goes away first. The non-streamed body of every generation endpoint."""
    async def collect() -> None:
        async for index, output in generator.merged(prompts, detokenize=detokenize):
            add(index, output)

    await until_disconnected(collect(), is_disconnected)


async def until_disconnected(work: Awaitable[T], is_disconnected: Callable[[], Awaitable[bool]],
                             poll_seconds: float = 0.25) -> T:
    """Run `work`; cancel it (which aborts its engine requests) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_seconds)
            if done:
                return task.result()
            if await is_disconnected():
                task.cancel()
                raise APIError("client disconnected", status=499)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
