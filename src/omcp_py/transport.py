"""The stdio transport, guarded: no message in or out can end the connection.

The SDK's stdio transport drops a line its strict JSON parser refuses without an
answer (a lone surrogate such as ``\\ud800`` is valid JSON to Python but not to it),
so the client waits forever; and a message it cannot encode ends its writer, and with
it the connection and every sandbox of the session. Between the transport and the
server, these guards answer the first with an error naming what was wrong, and make
every outgoing message encodable (text from a sandbox is hostile) or, failing that,
turn it into an error for that one request.
"""

import json
import logging
from types import TracebackType
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ErrorData, JSONRPCError
from pydantic import ValidationError

from omcp_py.boundary import clean

log = logging.getLogger(__name__)


def _first_surrogate(value: Any, where: str) -> str | None:
    """Where in a parsed request the first lone surrogate is, e.g. ``arguments.code``."""
    if isinstance(value, str):
        for index, char in enumerate(value):
            if "\ud800" <= char <= "\udfff":
                return f"{where or 'the request'} (U+{ord(char):04X} at character {index})"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value or [])
    if not isinstance(value, dict | list):
        return None
    for key, item in items:
        found = _first_surrogate(key, where) if isinstance(key, str) else None
        found = found or _first_surrogate(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def refusal(exc: Exception) -> JSONRPCError | None:
    """The answer to a request line the SDK could not parse, when it has an id.

    Returns:
        An INVALID_PARAMS error for that id naming what was wrong, or None when the
        line is no request we can answer (no id, or not JSON at all).
    """
    if not isinstance(exc, ValidationError):
        return None
    for error in exc.errors():
        line = error.get("input")
        if error.get("type") != "json_invalid" or not isinstance(line, str):
            continue
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(request, dict):
            return None
        rid = request.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int | str):
            return None
        where = _first_surrogate(request.get("params"), "")
        what = (
            f"a lone surrogate in {where}, which is not valid Unicode text"
            if where
            else "JSON the server cannot read"
        )
        return JSONRPCError(
            jsonrpc="2.0",
            id=clean(rid),
            error=ErrorData(
                code=INVALID_PARAMS,
                message=f"Invalid request: it holds {what}. Send the text as valid UTF-8 "
                f"(binary data as base64).",
            ),
        )
    return None


class _Wrapped:
    """Delegates to one of the transport's streams (what the SDK reads of it too)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # last_context, and what else the SDK reads

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None


class AnsweringReader(_Wrapped):
    """The transport's read stream, but a request it could not parse gets an answer."""

    def __init__(self, inner: Any, write: Any) -> None:
        super().__init__(inner)
        self._write = write

    async def receive(self) -> Any:
        return await self._answered(self._inner.receive)

    async def _answered(self, take: Any) -> Any:
        while True:
            item = await take()
            if isinstance(item, Exception):
                answer = refusal(item)
                if answer is not None:
                    log.warning("refused an unreadable request: %s", answer.error.message)
                    await self._write.send(SessionMessage(answer))
                    continue
            return item

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        return await self._answered(self._inner.__anext__)


class EncodableWriter(_Wrapped):
    """The transport's write stream, but every message is one it can encode."""

    async def send(self, item: SessionMessage) -> None:
        message = clean(item.message)
        try:
            message.model_dump_json(by_alias=True, exclude_unset=True)
        except (ValueError, TypeError) as exc:
            rid = getattr(message, "id", None)
            if rid is None:
                log.error("dropped a notification that cannot be encoded: %s", exc)
                return
            log.error("a result could not be encoded: %s", exc)
            message = JSONRPCError(
                jsonrpc="2.0",
                id=rid,
                error=ErrorData(
                    code=INTERNAL_ERROR,
                    message=f"The result could not be encoded as JSON ({exc}); the server "
                    f"and its sandboxes are unharmed. Try again with less or plainer output.",
                ),
            )
        if message is not item.message:
            item = SessionMessage(message, metadata=item.metadata)
        await self._inner.send(item)


async def run_stdio(server: MCPServer) -> None:
    """``server.run_stdio_async()``, with the guards between transport and server."""
    lowlevel = server._lowlevel_server  # MCPServer offers no way to pass streams in
    async with stdio_server() as (read_stream, write_stream):
        writer = EncodableWriter(write_stream)
        await lowlevel.run(
            AnsweringReader(read_stream, writer),
            writer,
            lowlevel.create_initialization_options(),
        )
