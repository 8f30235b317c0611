"""The engine process: receives requests over ZeroMQ, steps the EngineCore, streams deltas back.

Wire protocol (pickled tuples; the caller binds both ipc sockets, this process connects):
  caller -> engine (PUSH/PULL): ("add", request_id, prompt_ids, SamplingParams) | ("abort", request_id)
  | ("flush",)   (answered at once with ("flushed", ok, stats))
                                | ("shutdown",)
  engine -> caller (PUSH/PULL): ("ready", EngineInfo) | ("outputs", [RequestDelta], stats)
                                | ("fatal", traceback text)
One "outputs" message per step carries every request's delta, so the per-token cost of the
transport is amortised over the batch.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
import traceback

import zmq

from oss_serve.engine.request import RequestDelta
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
        outbox.send_pyobj(("ready", core.info))
        _serve(core, inbox, outbox, parent_pid)
    except BaseException:  # noqa: BLE001 - reported to the caller, which fails every stream
        outbox.send_pyobj(("fatal", traceback.format_exc()))
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
                kind = message[0]
                if kind == "shutdown":
                    return
                if kind == "add":
                    _, request_id, prompt_ids, params = message
                    try:
                        delta = core.add_request(request_id, prompt_ids, params)
                        if delta is not None:
                            deltas.append(delta)
                    except ValueError as error:
                        deltas.append(RequestDelta(request_id, [], None, len(prompt_ids), 0, 0, True,
                                                   error=str(error), error_status=400))
                    except Exception as error:  # noqa: BLE001 - one bad request must not stop the engine
                        logger.exception("request %s could not be added", request_id)
                        deltas.append(RequestDelta(request_id, [], None, len(prompt_ids), 0, 0, True,
                                                   error=f"the engine could not accept the request: {error!r}"))
                elif kind == "flush":
                    outbox.send_pyobj(("flushed", core.flush_cache(), core.stats()))
                elif kind == "abort":
                    delta = core.abort(message[1])
                    if delta is not None:
                        deltas.append(delta)
        elif os.getppid() != parent_pid:
            logger.info("parent process is gone; engine exits")
            return
        if core.has_work:
            deltas.extend(core.step_isolated())
        if deltas or not core.has_work:
            outbox.send_pyobj(("outputs", deltas, core.stats()))


def main() -> None:
    """Entry point of `python -m oss_serve.engine.engine_process`: the caller pipes in
    pickled (ServerArgs, input address, output address, parent pid)."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where the engine is
    args, input_address, output_address, parent_pid = pickle.load(sys.stdin.buffer)
    run_engine_process(args, input_address, output_address, parent_pid)


if __name__ == "__main__":
    main()
