"""Start the HTTP server: `python -m oss_serve.launch_server --model-path PATH [flags]`.

Loads the engine, serves the API, sends one warm-up request through HTTP and then logs the
ready line. SIGTERM stops accepting requests, lets running ones finish (bounded), exits 0.
If the engine process dies, requests get 503 for a short while (so clients and load balancers
see why), then the server exits with status 1 for its supervisor to restart it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from oss_serve.api.app import build_app
from oss_serve.api.engine_client import Generator
from oss_serve.api.errors import APIError
from oss_serve.api.metrics import ServerMetrics
from oss_serve.api.responses.service import ResponsesService
from oss_serve.api.state import ServingState
from oss_serve.server_args import ServerArgs

logger = logging.getLogger("oss_serve.launch_server")

READY_LINE = "The server is fired up and ready to roll!"
GRACEFUL_SHUTDOWN_SECONDS = 30
ENGINE_WATCH_INTERVAL_SECONDS = 0.5
# How long a server whose engine died keeps answering 503 before it exits.
ENGINE_DEATH_GRACE_SECONDS = 2.0
EXIT_ENGINE_DIED = 1
WARM_UP_BODY = {"text": "The capital city of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises the SIGTERM it handled once it has shut down, so the process would die
    of the signal; a stop we asked for and completed is a clean exit (status 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oss_serve.launch_server", allow_abbrev=False,
                                     description="Serve a gpt-oss model over an OpenAI-compatible HTTP API.")
    ServerArgs.add_cli_args(parser)
    return parser


def parse_server_args(argv: list[str] | None) -> ServerArgs:
    parser = build_arg_parser()
    args = ServerArgs.from_cli_args(parser.parse_args(argv))  # an unknown flag exits with an error
    try:
        args.validate()
    except ValueError as error:
        parser.error(str(error))
    return args


def _create_engine(args: ServerArgs) -> Any:
    from oss_serve.engine.async_engine import AsyncEngine  # imported late: it pulls in torch

    return AsyncEngine(args)


def build_state(args: ServerArgs, engine: Any) -> ServingState:
    """Handler state from a started engine (its tokenizer, context length, sampling defaults)."""
    info = engine.info
    return ServingState(server_args=args, engine=engine, generator=Generator(engine), tokenizer=engine.tokenizer,
                        context_length=info.context_length, model_name=args.model_name, vocab_size=info.vocab_size,
                        default_params=info.default_params)


async def _warm_up(args: ServerArgs) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(f"http://{host}:{args.port}/generate", json=WARM_UP_BODY, headers=headers)
        response.raise_for_status()


async def _stop_when_engine_dies(engine: Any, server: uvicorn.Server) -> bool:
    """Polls the engine; once it is dead, lets requests see the 503 briefly, then stops the
    HTTP server. True when it stopped the server for that reason."""
    while not server.should_exit:
        if not engine.stats().engine_alive:
            logger.error("The engine process is gone (%s); the server exits.", engine.death_reason)
            await asyncio.sleep(ENGINE_DEATH_GRACE_SECONDS)
            server.should_exit = True
            return True
        await asyncio.sleep(ENGINE_WATCH_INTERVAL_SECONDS)
    return False


async def serve(args: ServerArgs) -> int:
    """Runs until SIGTERM (returns 0) or the engine dies (returns EXIT_ENGINE_DIED)."""
    engine = _create_engine(args)
    await engine.start()
    responses = None
    try:
        state = build_state(args, engine)
        metrics = ServerMetrics(engine.stats) if args.enable_metrics else None
        if metrics is not None:
            state.generator.observers.append(metrics)
        responses = ResponsesService(state)  # owns the --tool-server tools: started below, stopped at exit
        app = build_app(state, metrics, responses)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, lifespan="off",
                                access_log=False)  # oss_serve.access logs each request, with its tokens
        server = GracefulServer(config)
        serving = asyncio.create_task(server.serve())
        watchdog: asyncio.Task[bool] | None = None
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # re-raise why it could not start (port in use, ...)
                    raise RuntimeError("the HTTP server stopped before it started")
                await asyncio.sleep(0.05)
            watchdog = asyncio.create_task(_stop_when_engine_dies(engine, server))
            await _start_tool_servers(responses)
            await _warm_up(args)
            state.ready = True
            logger.info(READY_LINE)
            await serving
            engine_died = watchdog.done() and watchdog.result()
            return EXIT_ENGINE_DIED if engine_died else 0
        finally:
            # Also when warm-up failed: neither task may outlive serve().
            server.should_exit = True
            tasks = [task for task in (serving, watchdog) if task is not None and not task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        try:
            if responses is not None:
                await responses.aclose()  # the --tool-server processes/connections and the store
        finally:
            await engine.shutdown()


async def _start_tool_servers(responses: ResponsesService) -> None:
    """Start the --tool-server tools now, so a wrong address shows at launch. One that is not up yet
    (started after this server, say) is not fatal: /v1/responses retries on each request until it is."""
    try:
        await responses.server_tools()
    except APIError as error:
        logger.warning("%s; /v1/responses retries on each request until they start.", error.message)


def main(argv: list[str] | None = None) -> int:
    args = parse_server_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    if args.node_rank > 0:  # a multi-node run's other nodes host tensor-parallel workers, no HTTP server
        from oss_serve.engine.tp_launcher import run_worker_node

        return run_worker_node(args)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
