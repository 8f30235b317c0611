"""The async engine: a separate engine process, streamed increments, abort, stats, death."""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from oss_serve import LLM, SamplingParams
from oss_serve.engine.async_engine import AsyncEngine
from oss_serve.server_args import ServerArgs


def engine_args(ckpt: Path, **extra) -> ServerArgs:
    return ServerArgs(model_path=str(ckpt), max_total_tokens=4096, page_size=4, **extra)


def test_streams_match_offline_and_abort_frees_pages(tiny_ckpt: Path) -> None:
    prompts = [[1000 + i * 7 + j for j in range(5 + 3 * i)] for i in range(6)]
    params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True, logprobs=True)
    offline = LLM(str(tiny_ckpt), max_total_tokens=4096, page_size=4, stream_interval=3).generate(prompts, params)

    async def run() -> None:
        engine = AsyncEngine(engine_args(tiny_ckpt, stream_interval=3))
        await engine.start()
        try:
            async def collect(i: int) -> list:
                return [o async for o in engine.generate(prompts[i], params, f"req-{i}")]

            streams = await asyncio.gather(*(collect(i) for i in range(len(prompts))))
            for stream, expected in zip(streams, offline):
                assert stream[-1].finished and stream[-1].finish_reason == "length"
                assert [t for o in stream for t in o.new_token_ids] == expected.token_ids
                assert "".join(o.new_text for o in stream) == expected.text
                assert [lp for o in stream for lp in o.new_logprobs] == expected.logprobs
                assert all(len(o.new_token_ids) <= 3 for o in stream)  # stream_interval
                assert stream[-1].completion_tokens == 10 and stream[-1].prompt_tokens == len(expected.prompt_token_ids)

            # Callers that parse the ids themselves (chat, Responses) get the same tokens and no text.
            bare = [o async for o in engine.generate(prompts[0], params, "bare", detokenize=False)]
            assert [t for o in bare for t in o.new_token_ids] == offline[0].token_ids
            assert all(o.new_text == "" for o in bare) and bare[-1].finish_reason == "length"

            # Abort mid-stream: the stream ends with "abort" and the engine holds no request pages.
            long_params = SamplingParams(max_new_tokens=2000, temperature=0, ignore_eos=True)
            seen = []
            async for output in engine.generate([42] * 30, long_params, "to-abort"):
                seen.append(output)
                if len(seen) == 3:
                    await engine.abort("to-abort")
            assert seen[-1].finished and seen[-1].finish_reason == "abort"

            # Leaving a stream early aborts it too.
            async for _ in engine.generate([43] * 30, long_params, "left"):
                break
            for _ in range(50):
                await asyncio.sleep(0.05)
                if engine.stats().num_running == 0 and engine.stats().num_waiting == 0:
                    break
            stats = engine.stats()
            assert stats.num_running == 0 and stats.num_waiting == 0 and stats.engine_alive

            with pytest.raises(ValueError, match="4097 tokens"):
                async for _ in engine.generate([5] * 4097, params, "too-long"):
                    pass
        finally:
            await engine.shutdown()

    asyncio.run(run())


def test_engine_death_ends_every_stream_with_an_error(tiny_ckpt: Path) -> None:
    async def run() -> None:
        engine = AsyncEngine(engine_args(tiny_ckpt))
        await engine.start()
        try:
            params = SamplingParams(max_new_tokens=100000, temperature=0, ignore_eos=True)

            async def consume(i: int) -> list:
                return [o async for o in engine.generate([100 + i] * 10, params, f"d{i}")]

            tasks = [asyncio.create_task(consume(i)) for i in range(3)]
            await asyncio.sleep(1.0)
            os.kill(engine._process.pid, signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
            for outputs in results:
                assert outputs[-1].finished and outputs[-1].error
            assert not engine.stats().engine_alive
            late = [o async for o in engine.generate([1, 2, 3], params, "late")]
            assert len(late) == 1 and late[0].error
        finally:
            await engine.shutdown()

    asyncio.run(run())
