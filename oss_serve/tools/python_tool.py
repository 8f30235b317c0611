"""The built-in `python` tool: describes itself truthfully and runs cells on a PythonBackend.

Stateless mode (default): every call gets a fresh interpreter (a fresh container for docker).
Stateful mode: one interpreter per session, like a notebook; a timeout or crash restarts it.
"""
from __future__ import annotations

import asyncio
import json

import openai_harmony

from oss_serve.tools.base import ToolCallDetails, ToolResult, ToolServer, ToolSession, error_result
from oss_serve.tools.python_backends import InterpreterLaunch, PythonBackend
from oss_serve.tools.python_interpreter import CellOutcome, InterpreterProcess

DEFAULT_OUTPUT_CAP_BYTES = 16 * 1024

_PURPOSE = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
    "This tool should be used for internal reasoning, but not for code that is intended to be visible to the "
    "user (e.g. when creating plots, tables, or files).\n\n"
)


class PythonToolServer(ToolServer):
    def __init__(self, backend: PythonBackend, *, timeout_s: float = 120.0, stateful: bool = False,
                 output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES) -> None:
        self.backend = backend
        self.timeout_s = timeout_s
        self.stateful = stateful
        self.output_cap_bytes = output_cap_bytes

    def description(self) -> str:
        answer = (f"python will respond with the output of the execution (stdout and stderr, then the value of a "
                  f"final expression) or time out after {self.timeout_s:g} seconds; output longer than "
                  f"{self.output_cap_bytes} bytes is truncated in the middle.")
        if self.stateful:
            environment = ("stateful Jupyter notebook environment: variables, imports and files persist between "
                           f"messages of this conversation. {answer} A timeout restarts the interpreter and clears "
                           f"its state. {self.backend.files_note}")
        else:
            environment = ("stateless environment: every message runs in a fresh Python interpreter, so variables, "
                           f"imports and files do not carry over between messages. {answer}")
        internet = "available" if self.backend.has_network else "disabled"
        return (_PURPOSE + "When you send a message containing Python code to python, it will be executed in a "
                f"{environment} Internet access for this session is {internet}.")

    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        return [openai_harmony.ToolNamespaceConfig(name="python", description=self.description(), tools=[])]

    def has_tool(self, recipient: str) -> bool:
        return recipient.strip() == "python"

    async def open_session(self) -> PythonSession:
        return PythonSession(self)


def code_from_arguments(arguments: str) -> str:
    """The model sends raw code; clients (and the CLI) may wrap it as {"code": ...}."""
    stripped = arguments.strip()
    if stripped.startswith("{"):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            return arguments
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), str):
            return parsed["code"]
    return arguments


class PythonSession(ToolSession):
    def __init__(self, tool: PythonToolServer) -> None:
        self.tool = tool
        self.lock = asyncio.Lock()  # cells of one session run one at a time, in order
        self.interpreter: InterpreterProcess | None = None
        self.launch: InterpreterLaunch | None = None

    async def _fresh_interpreter(self) -> InterpreterProcess:
        backend = self.tool.backend
        launch = self.launch = backend.launch()
        self.interpreter = InterpreterProcess(launch.command, output_cap_bytes=self.tool.output_cap_bytes,
                                              spawn_options=launch.spawn_options,
                                              kill=lambda process: backend.kill(process, launch))
        return self.interpreter

    async def _discard_interpreter(self) -> None:
        if self.interpreter is not None:
            await self.interpreter.stop()
        if self.launch is not None:
            self.tool.backend.release(self.launch)
        self.interpreter = None
        self.launch = None

    async def call(self, recipient: str, arguments: str) -> ToolResult:
        code = code_from_arguments(arguments)
        details = ToolCallDetails(kind="python", code=code)
        if recipient.strip() != "python":
            return error_result(recipient, "python", f"Unknown tool {recipient!r}.", code=code)
        async with self.lock:
            try:
                interpreter = self.interpreter
                if interpreter is None or not self.tool.stateful:
                    interpreter = await self._fresh_interpreter()
                outcome = await interpreter.run_cell(code, self.tool.timeout_s)
                restarted = outcome.timed_out or outcome.exit_code is not None
                if not self.tool.stateful or restarted:
                    await self._discard_interpreter()
            except Exception as error:  # a backend that cannot start must not break the response
                await self._discard_interpreter()
                return ToolResult(recipient="python", text=f"The python tool failed to run the code: {error}",
                                  details=details, is_error=True)
        details.timed_out = outcome.timed_out
        return ToolResult(recipient="python", text=self._render(outcome),
                          is_error=outcome.timed_out or outcome.exit_code is not None, details=details)

    def _render(self, outcome: CellOutcome) -> str:
        text = outcome.output
        lost_state = " The interpreter was restarted; earlier variables are lost." if self.tool.stateful else ""
        if outcome.timed_out:
            text += f"\n[Execution timed out after {self.tool.timeout_s:g} seconds and was stopped.{lost_state}]"
        elif outcome.exit_code is not None:
            cause = " (killed, possibly for using too much memory)" if outcome.exit_code in (-9, 137) else ""
            text += f"\n[The Python process exited with code {outcome.exit_code}{cause}.{lost_state}]"
        return text.strip("\n") if text.strip() else "[no output]"

    async def close(self) -> None:
        async with self.lock:
            await self._discard_interpreter()
