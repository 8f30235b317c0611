"""The async engine API the HTTP server uses. The model runs in a separate process; this side
tokenizes nothing, detokenizes incrementally, and never blocks the event loop on a forward pass.

    engine = AsyncEngine(server_args)
    await engine.start()                       # spawns the engine process, waits until it is ready
    async for out in engine.generate(prompt_ids, params, request_id):   # AsyncIterator[StreamOutput]
        ...                                    # new_token_ids + new_text per increment; last has finished=True
    engine.generate(..., detokenize=False)     # new_text stays "": for callers that parse the ids themselves
    await engine.abort(request_id)             # frees the request's KV pages at once; its stream ends "abort"
    engine.stats() -> EngineStats              # num_running, num_waiting, kv_usage, pool sizes, engine_alive
    engine.info -> EngineInfo                  # context_length, eos ids, pool sizes, default params
    engine.default_sampling_params() -> SamplingParams   # from generation_config.json
    engine.tokenizer                           # the checkpoint's Tokenizer
    await engine.shutdown()

- `generate` raises ValueError on its first iteration for a prompt longer than the context
  length (the message gives both numbers), an empty prompt, or n > 1 (the server submits n
  requests; `oss_serve.engine.llm.expand_n` makes the copies). Out-of-range params are refused
  by the engine process: the stream's one output carries the error (status 400). The API checks
  them first, naming the request's field.
- Leaving the `async for` early aborts the request: at once if the caller closes the stream
  (`contextlib.aclosing`) or is cancelled while it waits, else when the stream is garbage collected.
- If the engine process dies, every open stream ends with one StreamOutput whose `error` is set,
  and later `generate` calls yield such an output at once.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import zmq
import zmq.asyncio

from oss_serve.engine.detokenizer import IncrementalDetokenizer
from oss_serve.engine.engine_core import validate_prompt
from oss_serve.engine.messages import (
    AbortRequest,
    AddRequest,
    CacheFlushed,
    EngineFailed,
    EngineInfo,
    EngineReady,
    EngineStartup,
    EngineStats,
    FlushCache,
    RequestDelta,
    Shutdown,
)
from oss_serve.engine.outputs import StreamOutput
from oss_serve.engine.sampling_params import SamplingParams
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)
_LIVENESS_POLL_MS = 500


@dataclass
class _Stream:
    request_id: str  # the caller's id; the engine knows the stream by a fresh id of its own
    queue: asyncio.Queue[StreamOutput]
    detokenizer: IncrementalDetokenizer | None


class AsyncEngine:
    def __init__(self, args: ServerArgs) -> None:
        self.args = args
        self.info: EngineInfo | None = None
        self.tokenizer = None
        # Keyed by engine-side ids, unique per generate() call: a caller reusing an id right after
        # aborting it must never receive the old request's late updates.
        self._streams: dict[str, _Stream] = {}
        self._engine_ids: dict[str, str] = {}  # caller's request id -> engine-side id
        self._flush_answers: list[asyncio.Future[bool]] = []  # in the order the flushes were sent
        self._stats = EngineStats()
        self._dead: str | None = None
        self._process: subprocess.Popen | None = None
        self._reader: asyncio.Task | None = None
        self._context = zmq.asyncio.Context()
        self._socket_dir = tempfile.mkdtemp(prefix="oss-serve-")
        tag = uuid.uuid4().hex[:8]
        self._input_address = f"ipc://{self._socket_dir}/in-{tag}"
        self._output_address = f"ipc://{self._socket_dir}/out-{tag}"
        self._to_engine = self._context.socket(zmq.PUSH)
        self._from_engine = self._context.socket(zmq.PULL)

    async def start(self, timeout_s: float | None = None) -> None:
        self._to_engine.bind(self._input_address)
        self._from_engine.bind(self._output_address)
        # A fresh interpreter rather than fork (the caller runs threads) or multiprocessing's spawn
        # (which re-imports the caller's __main__ and so needs a main guard in every script).
        self._process = subprocess.Popen([sys.executable, "-m", "oss_serve.engine.engine_process"],
                                         stdin=subprocess.PIPE)
        startup = EngineStartup(self.args, self._input_address, self._output_address, os.getpid())
        self._process.stdin.write(pickle.dumps(startup))
        self._process.stdin.close()
        try:
            await self._wait_until_ready(timeout_s)
        except BaseException:
            # A half-started engine (possibly holding a GPU) must not outlive a failed start.
            self._process.kill()
            self._process.wait()
            await self.shutdown()
            raise
        from oss_serve.model.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_pretrained(self.args.tokenizer_path or self.info.model_folder)
        logger.info("engine ready: %d full-layer KV tokens, %d sliding-layer KV tokens, context %d",
                    self.info.num_full_tokens, self.info.num_sliding_tokens, self.info.context_length)
        self._reader = asyncio.create_task(self._read_outputs())

    async def _wait_until_ready(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            if await self._from_engine.poll(_LIVENESS_POLL_MS):
                message = await self._from_engine.recv_pyobj()
                if isinstance(message, EngineReady):
                    self.info = message.info
                    return
                if isinstance(message, EngineFailed):
                    raise RuntimeError(f"the engine process failed to start:\n{message.traceback}")
            elif self._process.poll() is not None:
                raise RuntimeError(f"the engine process exited during start (exit code {self._process.returncode})")
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError("the engine process did not become ready in time")

    def default_sampling_params(self) -> SamplingParams:
        return copy.deepcopy(self.info.default_params)

    def stats(self) -> EngineStats:
        alive = self._dead is None and self._process is not None and self._process.poll() is None
        return dataclasses.replace(self._stats, engine_alive=alive, num_streams=len(self._streams))

    @property
    def death_reason(self) -> str | None:
        """Why the engine process is gone, or None while it runs."""
        if self._dead is not None:
            return self._dead
        if self._process is not None and self._process.poll() is not None:
            return f"the engine process exited with code {self._process.returncode}"
        return None

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str, *,
                       detokenize: bool = True) -> AsyncIterator[StreamOutput]:
        if self.info is None:
            raise RuntimeError("AsyncEngine.start() has not been awaited")
        validate_prompt(prompt_ids, self.info.context_length, self.info.vocab_size)
        if params.n != 1:
            raise ValueError("AsyncEngine.generate runs one sample; submit n requests for n > 1")
        if request_id in self._engine_ids:
            raise ValueError(f"request id {request_id!r} is already running")
        if self._dead is not None:
            yield self._error_output(request_id, len(prompt_ids), self._dead)
            return
        engine_id = f"{request_id}#{uuid.uuid4().hex[:8]}"
        detokenizer = IncrementalDetokenizer(self.tokenizer, params) if detokenize else None
        stream = _Stream(request_id, asyncio.Queue(), detokenizer)
        self._streams[engine_id] = stream
        self._engine_ids[request_id] = engine_id
        finished = False
        try:
            await self._to_engine.send_pyobj(AddRequest(engine_id, list(prompt_ids), params))
            while not finished:
                output = await stream.queue.get()
                finished = output.finished
                yield output
        finally:
            self._engine_ids.pop(request_id, None)
            if not finished:
                self._streams.pop(engine_id, None)
                if self._dead is None:
                    # Shielded: a second cancellation of the caller must not lose the abort (and the pages).
                    await asyncio.shield(self._to_engine.send_pyobj(AbortRequest(engine_id)))

    async def abort(self, request_id: str) -> None:
        engine_id = self._engine_ids.get(request_id)
        if self._dead is None and engine_id is not None:
            await self._to_engine.send_pyobj(AbortRequest(engine_id))

    async def flush_cache(self) -> bool:
        """Empty the prefix cache; False while requests run (as SGLang) or when the engine is gone.
        Returns once the engine has answered, so what follows sees the empty cache."""
        if self._dead is not None:
            return False
        answer = asyncio.get_running_loop().create_future()
        self._flush_answers.append(answer)
        await self._to_engine.send_pyobj(FlushCache())
        return await answer

    async def shutdown(self) -> None:
        if self._process is not None and self._process.poll() is None:
            await self._to_engine.send_pyobj(Shutdown())
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._fail_all("the engine was shut down")
        self._to_engine.close(linger=0)
        self._from_engine.close(linger=0)
        self._context.term()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    # ---- the output side ---------------------------------------------------------------------
    def _error_output(self, request_id: str, prompt_tokens: int, error: str) -> StreamOutput:
        return StreamOutput(request_id, [], "", None, prompt_tokens, 0, 0, finished=True, error=error)

    def _fail_all(self, error: str) -> None:
        if self._dead is None:
            self._dead = error
        for stream in self._streams.values():
            stream.queue.put_nowait(self._error_output(stream.request_id, 0, error))
        for answer in self._flush_answers:
            answer.set_result(False)
        self._flush_answers.clear()
        self._streams.clear()

    async def _read_outputs(self) -> None:
        try:
            while True:
                if not await self._from_engine.poll(_LIVENESS_POLL_MS):
                    if self._process.poll() is not None:
                        self._fail_all(f"the engine process died (exit code {self._process.returncode})")
                        return
                    continue
                message = await self._from_engine.recv_pyobj()
                if isinstance(message, EngineFailed):
                    logger.error("engine process failed:\n%s", message.traceback)
                    self._fail_all(f"the engine process failed: {message.traceback.strip().splitlines()[-1]}")
                    return
                self._stats = message.stats
                if isinstance(message, CacheFlushed):
                    self._flush_answers.pop(0).set_result(message.flushed)
                else:
                    for delta in message.deltas:
                        self._deliver(delta)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a broken reader must not leave streams hanging
            logger.exception("engine output reader failed")
            self._fail_all(f"engine output reader failed: {error!r}")

    def _deliver(self, delta: RequestDelta) -> None:
        stream = self._streams.get(delta.request_id)
        if stream is None:
            return  # aborted on this side already
        if delta.error is not None:
            output = self._error_output(stream.request_id, delta.prompt_tokens, delta.error)
            output.error_status = delta.error_status
        else:
            text = ("" if stream.detokenizer is None
                    else stream.detokenizer.feed(delta.new_token_ids, delta.finished, delta.matched_stop))
            output = StreamOutput(
                request_id=stream.request_id, new_token_ids=delta.new_token_ids, new_text=text,
                new_logprobs=delta.new_logprobs, prompt_tokens=delta.prompt_tokens,
                completion_tokens=delta.completion_tokens, cached_tokens=delta.cached_tokens,
                finished=delta.finished, finish_reason=delta.finish_reason, matched_stop=delta.matched_stop)
        if output.finished:
            del self._streams[delta.request_id]
        stream.queue.put_nowait(output)
