"""The engine process: receives requests over ZeroMQ, steps the EngineCore, streams deltas back.
The messages and their order are in `oss_serve.engine.messages`."""
from __future__ import annotations

import logging
import os
import pickle
import sys
import traceback

import zmq

from oss_serve.engine.messages import (
    AbortRequest,
    AddRequest,
    CacheFlushed,
    EngineFailed,
    EngineReady,
    EngineStartup,
    FlushCache,
    RequestDelta,
    Shutdown,
    StepOutputs,
)
from oss_serve.server_args import ServerArgs

logger = logging.getLogger(__name__)
# While idle, wake this often to notice that the parent process is gone.
_IDLE_POLL_MS = 1000


def run_engine_process(args: ServerArgs, input_address: str, output_address: str, parent_pid: int) -> None:
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s engine %(levelname)s %(message)s")
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.connect(input_address)
    outbox = context.socket(zmq.PUSH)
    outbox.connect(output_address)
    try:
        from oss_serve.engine.engine_core import EngineCore

        core = EngineCore(args)
        outbox.send_pyobj(EngineReady(core.info))
        _serve(core, inbox, outbox, parent_pid)
    except BaseException:  # noqa: BLE001 - reported to the caller, which fails every stream
        outbox.send_pyobj(EngineFailed(traceback.format_exc()))
    finally:
        outbox.close(linger=2000)
        inbox.close(linger=0)
        context.term()


def _serve(core, inbox: zmq.Socket, outbox: zmq.Socket, parent_pid: int) -> None:
    while True:
        deltas: list[RequestDelta] = []
        # Block only when there is nothing to run; otherwise take what has arrived and step.
        timeout = 0 if core.has_work else _IDLE_POLL_MS
        if inbox.poll(timeout):
            while True:
                try:
                    message = inbox.recv_pyobj(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if isinstance(message, Shutdown):
                    return
                if isinstance(message, AddRequest):
                    deltas.extend(_add(core, message))
                elif isinstance(message, FlushCache):
                    outbox.send_pyobj(CacheFlushed(core.flush_cache(), core.stats()))
                elif isinstance(message, AbortRequest):
                    delta = core.abort(message.request_id)
                    if delta is not None:
                        deltas.append(delta)
        elif os.getppid() != parent_pid:
            logger.info("parent process is gone; engine exits")
            return
        if core.has_work:
            deltas.extend(core.step_isolated())
        if deltas or not core.has_work:
            outbox.send_pyobj(StepOutputs(deltas, core.stats()))


def _add(core, message: AddRequest) -> list[RequestDelta]:
    """A refused request ends at once with its error; a request with nothing to generate, with its output."""
    try:
        delta = core.add_request(message.request_id, message.prompt_ids, message.params)
        return [] if delta is None else [delta]
    except ValueError as error:
        return [RequestDelta(message.request_id, [], None, len(message.prompt_ids), 0, 0, True,
                             error=str(error), error_status=400)]
    except Exception as error:  # noqa: BLE001 - one bad request must not stop the engine
        logger.exception("request %s could not be added", message.request_id)
        return [RequestDelta(message.request_id, [], None, len(message.prompt_ids), 0, 0, True,
                             error=f"the engine could not accept the request: {error!r}")]


def main() -> None:
    """Entry point of `python -m oss_serve.engine.engine_process`: the caller pipes in a pickled EngineStartup."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where the engine is
    startup: EngineStartup = pickle.load(sys.stdin.buffer)
    run_engine_process(startup.args, startup.input_address, startup.output_address, startup.parent_pid)


if __name__ == "__main__":
    main()
