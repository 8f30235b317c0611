"""Several tool servers behind one: calls are routed by the namespace of the recipient."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai_harmony

from oss_serve.tools.base import ToolResult, ToolServer, ToolSession, error_result, tool_kind

logger = logging.getLogger(__name__)


class ToolServerGroup(ToolServer):
    def __init__(self, servers: list[ToolServer]) -> None:
        self.servers = servers

    async def start(self) -> None:
        results = await asyncio.gather(*(server.start() for server in self.servers), return_exceptions=True)
        failure = next((result for result in results if isinstance(result, BaseException)), None)
        if failure is not None:
            await self.aclose()  # the servers that did start (and any half-started) are not left running
            raise failure
        seen: set[str] = set()
        for server in self.servers:
            for namespace in server.namespaces():
                if namespace.name in seen:
                    logger.warning("two tool servers both provide the namespace %r; calls go to the first",
                                   namespace.name)
                seen.add(namespace.name)

    def namespaces(self) -> list[openai_harmony.ToolNamespaceConfig]:
        return [namespace for server in self.servers for namespace in server.namespaces()]

    def server_for(self, recipient: str) -> ToolServer | None:
        return next((server for server in self.servers if server.has_tool(recipient)), None)

    def has_tool(self, recipient: str) -> bool:
        return self.server_for(recipient) is not None

    async def open_session(self) -> ToolGroupSession:
        return ToolGroupSession(self)

    async def aclose(self) -> None:
        await asyncio.gather(*(server.aclose() for server in self.servers), return_exceptions=True)


class ToolGroupSession(ToolSession):
    """Opens each server's session on first use, so a response that never browses holds no pages."""

    def __init__(self, group: ToolServerGroup) -> None:
        self.group = group
        self.sessions: dict[int, ToolSession] = {}

    async def call(self, recipient: str, arguments: str) -> ToolResult:
        server = self.group.server_for(recipient)
        if server is None:
            known = ", ".join(n.name for n in self.group.namespaces()) or "none"
            return error_result(recipient, tool_kind(recipient),
                                f"Unknown tool {recipient!r}. Available namespaces: {known}.")
        session = self.sessions.get(id(server))
        if session is None:
            session = self.sessions[id(server)] = await server.open_session()
        try:
            return await session.call(recipient, arguments)
        except Exception as error:  # noqa: BLE001 - the contract: failures are tool output, not exceptions
            logger.exception("tool call %s failed", recipient)
            return error_result(recipient, tool_kind(recipient), f"Error: the tool failed: {error}")

    def annotate(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        annotations: list[dict[str, Any]] = []
        for session in self.sessions.values():
            text, found = session.annotate(text)
            annotations.extend(found)
        return text, annotations

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self.sessions.values()), return_exceptions=True)
        self.sessions.clear()
