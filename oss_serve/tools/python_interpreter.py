"""One Python interpreter process that runs code cells sent over a pipe, wherever a backend put it.

The interpreter runs `CELL_DRIVER`: it reads length-prefixed cells from stdin, executes them in one
namespace (notebook style: the value of a trailing expression is printed), and after each cell
writes an end marker to stdout. stdout and stderr share one pipe so the model sees them in order.
The host side caps what it keeps and enforces the per-call timeout.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Runs inside the sandbox. Kept free of imports beyond the standard library so any python3 works.
CELL_DRIVER = r'''
import ast, linecache, os, sys, traceback
driver_pid = os.getpid()
marker = sys.argv[1].encode()
# Cells arrive on a private copy of stdin; user code (and its children) get /dev/null instead, so
# they cannot swallow the next cell. A buffered read(n) returns n bytes unless the pipe closes.
cells = os.fdopen(os.dup(0), "rb")
null_fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(null_fd, 0)
sys.stdin = open(os.devnull)
# One stream for both: docker relays stdout and stderr separately and would reorder them.
os.dup2(1, 2)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}

def run_cell(source):
    # Lets tracebacks quote the cell's lines.
    linecache.cache["<cell>"] = (len(source), None, source.splitlines(True), "<cell>")
    tree = ast.parse(source, "<cell>", "exec")
    trailing_expression = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        trailing_expression = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), namespace)
    if trailing_expression is not None:
        value = eval(compile(trailing_expression, "<cell>", "eval"), namespace)
        if value is not None:
            print(repr(value))

while True:
    header = cells.readline()
    if not header:
        break
    size = int(header)
    body = cells.read(size)
    if len(body) < size:
        break
    try:
        run_cell(body.decode("utf-8", "replace"))
    except SystemExit:
        pass
    except BaseException as error:
        if os.getpid() != driver_pid:
            os._exit(1)
        frames = traceback.extract_tb(error.__traceback__)
        # Drop the driver's own frames; keep the ones from the cell and the libraries it called.
        while frames and frames[0].filename != "<cell>":
            frames.pop(0)
        sys.stderr.write("Traceback (most recent call last):\n")
        sys.stderr.write("".join(traceback.format_list(frames)))
        sys.stderr.write("".join(traceback.format_exception_only(type(error), error)))
    if os.getpid() != driver_pid:
        # A forked child of the cell finished: it must not answer for the driver.
        os._exit(0)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os.write(1, b"\n" + marker + b"\n")
'''


@dataclass
class CellOutcome:
    output: str
    timed_out: bool = False
    exit_code: int | None = None  # set when the interpreter died during the cell


class _CappedOutput:
    """Keeps the head and the tail of a stream: the start shows what ran, the end shows the error."""

    def __init__(self, cap_bytes: int, marker: bytes) -> None:
        self.head_cap = cap_bytes // 2
        self.tail_cap = cap_bytes - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.marker = b"\n" + marker + b"\n"

    def add(self, chunk: bytes) -> None:
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        keep = self.tail_cap + len(self.marker)
        if len(self.tail) > keep:
            self.dropped += len(self.tail) - keep
            del self.tail[:len(self.tail) - keep]

    def finished(self) -> bool:
        return (self.tail or self.head).endswith(self.marker)

    def text(self) -> str:
        head, tail = bytes(self.head), bytes(self.tail)
        if self.finished():
            if tail:
                tail = tail[:-len(self.marker)]
            else:
                head = head[:-len(self.marker)]
        dropped = self.dropped + max(0, len(tail) - self.tail_cap)
        tail = tail[-self.tail_cap:] if self.tail_cap else b""
        if dropped:
            return (head.decode("utf-8", "replace")
                    + f"\n[... {dropped} bytes of output truncated ...]\n"
                    + tail.decode("utf-8", "replace"))
        return (head + tail).decode("utf-8", "replace")


async def kill_process_group(process: asyncio.subprocess.Process) -> None:
    """Kills the interpreter and everything it started (they share its new session)."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            process.kill()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        logger.warning("python tool process %d did not exit after SIGKILL", process.pid)


class InterpreterProcess:
    """A running CELL_DRIVER. Not safe for concurrent cells: callers serialize per session."""

    def __init__(self, command: list[str], *, output_cap_bytes: int, spawn_options: dict[str, Any],
                 kill: Callable[[asyncio.subprocess.Process], Awaitable[None]]) -> None:
        self.command = command
        self.output_cap_bytes = output_cap_bytes
        self.spawn_options = spawn_options
        self.kill_with = kill
        self.marker = ("__oss_serve_cell_done_" + secrets.token_hex(12)).encode()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, self.marker.decode(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, **self.spawn_options)

    async def run_cell(self, code: str, timeout_s: float) -> CellOutcome:
        if self.process is None:
            await self.start()
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        body = code.encode("utf-8")
        collected = _CappedOutput(self.output_cap_bytes, self.marker)
        try:
            self.process.stdin.write(str(len(body)).encode() + b"\n" + body)
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the interpreter died at start; its output (e.g. a docker error) explains why

        async def read_until_marker() -> None:
            assert self.process is not None and self.process.stdout is not None
            while not collected.finished():
                chunk = await self.process.stdout.read(65536)
                if not chunk:
                    return
                collected.add(chunk)

        timed_out = False
        try:
            await asyncio.wait_for(read_until_marker(), timeout_s)
        except TimeoutError:
            timed_out = True
            await self.stop()
        exit_code = None
        if not timed_out and not collected.finished():
            # EOF without the marker: the interpreter crashed or was killed mid-cell.
            try:
                exit_code = await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                await self.stop()
                exit_code = self.process.returncode
        return CellOutcome(output=collected.text(), timed_out=timed_out, exit_code=exit_code)

    async def stop(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None and not self.process.stdin.is_closing():
                self.process.stdin.close()
            await self.kill_with(self.process)
